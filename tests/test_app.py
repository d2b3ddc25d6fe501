"""``tunemv app``: the Gradio page over an adapter folder, driven through gradio_client on 127.0.0.1 and, in
the slow test, by a user in a real headless browser (Debian's chromium through Playwright)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sampling_fixtures import adapter_pipeline, save_adapter, save_backbones

gradio = pytest.importorskip("gradio")

from tunemv.cli import main  # noqa: E402
from tunemv.cli.app import KEEP_OUTPUTS, MultiviewApp, RequestTooLong, build_demo, without_paths  # noqa: E402
from tunemv.errors import TunemvError  # noqa: E402


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    folders = save_backbones(root / "backbones")
    return save_adapter(adapter_pipeline(folders["if"], awake=True), root / "adapter")


@pytest.fixture(scope="module")
def served(adapter):
    """The app on 127.0.0.1, as `tunemv app` serves it, in this process."""
    app = MultiviewApp(str(adapter), max_steps=4, max_views=4, mesh_resolution=32, turntable_frames=4)
    demo = build_demo(app)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app, demo.local_url
    demo.close()
    app.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_generation_through_gradio_client_returns_views_turntable_and_mesh(served):
    from gradio_client import Client

    _, url = served
    client = Client(url, verbose=False)
    views, turntable, mesh, info = client.predict("a red chair", None, "mv", 2, 3, 4.0, 7, api_name="/generate")
    assert len(views) == 3
    assert Path(mesh).suffix == ".glb" and Path(mesh).stat().st_size > 0
    turntable_path = turntable["video"] if isinstance(turntable, dict) else turntable
    assert Path(turntable_path).is_file()
    info = info if isinstance(info, dict) else json.loads(info)
    assert info["seed"] == 7 and info["views"] == 3


def test_requests_are_bounded_and_a_random_seed_is_reported(adapter):
    app = MultiviewApp(str(adapter), max_steps=2, max_views=3, mesh_resolution=16, turntable_frames=2)
    with pytest.raises(TunemvError, match=r"seed must be -1 \(random\) or in \[0, 2\*\*63-1\], got 18446744073709551616"):
        app.generate("a red chair", steps=1, num_views=2, seed=2**64)
    with pytest.raises(TunemvError, match="the prompt is 100000 characters long; at most 1000 are accepted"):
        app.generate("x" * 100_000, steps=1, num_views=2)
    with pytest.raises(TunemvError, match=r"steps must be in \[1, 2\]"):
        app.generate("a red chair", steps=5, num_views=3)
    with pytest.raises(TunemvError, match="views"):
        app.generate("a red chair", steps=1, num_views=9)
    with pytest.raises(TunemvError, match="prompt"):
        app.generate("  ", steps=1, num_views=2)
    app.time_limit_s = 0.0
    with pytest.raises(RequestTooLong, match="stopped after"):
        app.generate("a red chair", steps=2, num_views=2)
    app.time_limit_s = 60.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the pipeline's callback= deprecation, among others
        first, second = (app.generate("a red chair", steps=1, num_views=2, seed=-1).info["seed"] for _ in range(2))
    assert first != second  # -1: a fresh random seed each time, reported back
    assert app.generate("a red chair", steps=1, num_views=2, seed=2**63 - 1).info["seed"] == 2**63 - 1
    app.close()
    assert not app.outputs.exists()


def white_png(path: Path, width: int, height: int) -> Path:
    """A white grey-scale PNG of any size, written a row band at a time (144 megapixels: ~0.2 MB, no 144 MB array)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compress, row, band = zlib.compressobj(9), b"\x00" + b"\xff" * width, 256
    data = b"".join(compress.compress(row * min(band, height - y)) for y in range(0, height, band)) + compress.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_rejected_inputs_are_one_log_line_and_a_message_without_server_paths(served, tmp_path, capfd):
    from gradio_client import Client, handle_file

    _, url = served
    client = Client(url, verbose=False, download_files=False)
    big = white_png(tmp_path / "big.png", 12000, 12000)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    cases = [  # (inputs, the message on the page)
        (("a red chair", None, "mv", 1, 2, 4.0, 2**64), "seed must be -1 (random) or in [0, 2**63-1], got 18446744073709551616"),
        (("x" * 100_000, None, "mv", 1, 2, 4.0, 1), "the prompt is 100000 characters long; at most 1000 are accepted"),
        (("a red chair", handle_file(big), "mv", 1, 3, 4.0, 1),
         "the reference image is 12000x12000 (144.0 megapixels); at most 16.8 megapixels (e.g. 4096x4096) are accepted"),
        (("a red chair", handle_file(not_an_image), "mv", 1, 3, 4.0, 1),
         "the reference image is not an image file that can be read (PNG, JPEG, WebP, ...)"),
        (("a red chair", None, "mv", 9, 2, 4.0, 1), "steps: Value 9 is greater than maximum value 4."),  # Gradio's check
        (("a red chair", None, "no-such-sampler", 1, 2, 4.0, 1), "sampler: Value: no-such-sampler is not in the list"),
    ]
    capfd.readouterr()
    for inputs, message in cases:
        with pytest.raises(Exception) as caught:  # gradio_client's AppError: the page's message
            client.predict(*inputs, api_name="/generate")
        assert message in str(caught.value), str(caught.value)[:300]
        assert str(tmp_path) not in str(caught.value) and os.getcwd() not in str(caught.value)
    log = capfd.readouterr().err
    assert "Traceback" not in log, log[-2000:]
    rejected = [line for line in log.splitlines() if line.startswith("tunemv app: rejected: ")]
    assert len(rejected) == len(cases), log[-2000:]
    assert without_paths(f"cannot open '{tmp_path}/a b.png' or /srv/x/model.glb in {os.getcwd()}") \
        == "cannot open 'a b.png' or model.glb in " + Path(os.getcwd()).name
    assert without_paths("steps must be in [1, 4]; 1/2 of views") == "steps must be in [1, 4]; 1/2 of views"


def test_a_surfaceless_field_keeps_the_views_and_warns_and_files_stay_bounded(adapter, monkeypatch, tmp_path):
    from tunemv.sampling.multiview_field import MultiviewField

    def no_surface(*args, **kwargs):
        raise ValueError("the SDF grid has no surface at level 0.0 (range 0.1..0.9)")

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    app = MultiviewApp(str(adapter), max_steps=2, max_views=3, mesh_resolution=16, turntable_frames=2, keep_outputs=2)
    with monkeypatch.context() as patch:
        patch.setattr(MultiviewField, "mesh", no_surface)
        blank = app.generate("a red chair", image=white_png(tmp_path / "white.png", 64, 64), steps=1, num_views=3, seed=1)
    assert len(blank.views) == 3 and blank.mesh is None and Path(blank.turntable).is_file()
    assert blank.info["warnings"] == ["the fused field has no surface, so there is no mesh (a blank or plain reference "
                                      "image, or too few steps?); the views and the turntable are kept"]
    with monkeypatch.context() as patch:
        patch.setattr(MultiviewField, "mesh", broken)
        with pytest.raises(RuntimeError):
            app.generate("a red chair", steps=1, num_views=2, seed=1)
    assert len(list(app.outputs.iterdir())) == 1  # the failed request left no folder behind
    for seed in range(3):
        app.generate("a red chair", steps=1, num_views=2, seed=seed)
    assert len(list(app.outputs.iterdir())) == 2  # keep_outputs
    app.close()
    assert not app.outputs.exists()


def test_command_line_limits_are_checked_before_the_model_loads(capsys, tmp_path, monkeypatch):
    """A folder that does not exist: each case must fail on its own check, before any loading."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = {
            ("--max-steps", "0"): "--max-steps must be >= 1, got 0",
            ("--max-views", "0"): "--max-views must be >= 2 (a multiview request makes at least 2 views), got 0",
            ("--time-limit", "0"): "--time-limit must be > 0 seconds, got 0.0",
            ("--port", "99999"): "--port must be in [1, 65535], got 99999",
            ("--port", str(port)): f"--host 127.0.0.1 --port {port}: cannot serve there (Address already in use); "
                                   "is another app on that port?",
        }
        for extra, message in cases.items():
            assert main(["app", "--adapter", "no/such/folder", *extra]) == 2
            err = capsys.readouterr().err
            assert err == f"tunemv: error: {message}\n", err
    # --max-steps 1 is valid (what a generator samples anyway); it passes the checks and fails only on loading
    assert main(["app", "--adapter", "no/such/folder", "--max-steps", "1", "--max-views", "2",
                 "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "--max-steps" not in err and "no/such/folder" in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []  # the failed start removed its temporary folder


# slow: 28 s on 2 quiet cores (a real server, 20 requests); `pytest -m slow tests/test_app.py`
@pytest.mark.slow
def test_twenty_requests_then_ctrl_c_leave_nothing_in_the_temp_folder(adapter, tmp_path):
    """A real `tunemv app` (--max-steps 1 --max-views 2: one-value fields), TMPDIR and GRADIO_TEMP_DIR in tmp_path."""
    from gradio_client import Client, handle_file

    temp = tmp_path / "temp"
    temp.mkdir()
    image = white_png(tmp_path / "white.png", 64, 64)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tunemv", "app", "--adapter", str(adapter), "--port", str(port),
                               "--max-steps", "1", "--max-views", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(temp),
                                              "GRADIO_TEMP_DIR": str(temp)})
    try:
        started = time.perf_counter()
        for line in server.stdout:
            if "serving" in line:
                break
            assert time.perf_counter() - started < 120, "the app did not start"
        client = Client(f"http://127.0.0.1:{port}", verbose=False, download_files=False)
        for index in range(20):
            reference = handle_file(image) if index % 5 == 0 else None
            client.predict("a red chair", reference, "mv", 1, 2, 4.0, index, api_name="/generate")
        with pytest.raises(Exception, match="seed must be"):
            client.predict("a red chair", None, "mv", 1, 2, 4.0, 2**64, api_name="/generate")
        (root,) = temp.glob("tunemv-app-*")
        assert len(list((root / "outputs").iterdir())) == KEEP_OUTPUTS
        server.send_signal(signal.SIGINT)
        log, _ = server.communicate(timeout=60)
        assert server.returncode == 0, log
        assert "Traceback" not in log and log.count("tunemv app: rejected: seed must be") == 1, log
        assert list(temp.iterdir()) == []
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)


@pytest.mark.slow
def test_a_user_generates_in_a_real_browser(adapter, tmp_path):
    """Types a prompt, clicks Generate, waits for the gallery and the 3D viewer; saves a screenshot.

    ``TUNEMV_APP_ADAPTER`` serves another folder (the README's screenshot: models/demo-generator) and
    ``TUNEMV_SCREENSHOT`` keeps the screenshot there."""
    adapter = os.environ.get("TUNEMV_APP_ADAPTER", adapter)
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tunemv", "app", "--adapter", str(adapter), "--port", str(port),
                               "--max-steps", "4", "--max-views", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        started = time.perf_counter()
        for line in server.stdout:  # "tunemv app: serving ... at http://127.0.0.1:PORT (started in S s)"
            if "serving" in line:
                break
            assert time.perf_counter() - started < 120, "the app did not start"
        screenshot = Path(os.environ.get("TUNEMV_SCREENSHOT", tmp_path / "app.png"))
        with sync_playwright() as playwright:
            # WebGL2 on SwiftShader (software): --disable-gpu alone gets it from chromium 150; newer ones drop that
            # fallback without --enable-unsafe-swiftshader. A viewport the page fits in: the 3D viewer draws only
            # while on screen, so a full-page screenshot of a taller page showed it blank.
            browser = playwright.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 1900})
            page.goto(f"http://127.0.0.1:{port}", timeout=60_000)
            page.locator("#prompt textarea").fill("a blue mug")
            page.locator("#generate").click()
            try:
                page.locator("#views img").first.wait_for(timeout=120_000)
            except Exception:
                page.screenshot(path=str(screenshot.with_suffix(".failed.png")), full_page=True)
                raise
            canvas = page.locator("#mesh canvas").first
            canvas.wait_for(timeout=60_000)
            canvas.scroll_into_view_if_needed()
            page.wait_for_timeout(1500)  # let the viewer draw the mesh
            pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
            height, width = pixels.shape[:2]
            middle = pixels[height // 4:3 * height // 4, width // 4:3 * width // 4]  # clear of the viewer's buttons
            drawn = (np.abs(middle - pixels[height // 2, 2]).sum(-1) > 30).mean()  # unlike the background at the edge
            assert drawn > 0.05, f"the 3D viewer is blank ({drawn:.4f} of its middle drawn)"
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            assert page.locator("#views img").count() >= 2
            browser.close()
        assert screenshot.stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(timeout=30)
