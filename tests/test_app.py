"""``tunemv app``: the Gradio page over an adapter folder, driven through gradio_client on 127.0.0.1 and, in
the slow test, by a user in a real headless browser (Debian's chromium through Playwright)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sampling_fixtures import adapter_pipeline, save_adapter, save_backbones

gradio = pytest.importorskip("gradio")

from tunemv.app import MultiviewApp, RequestTooLong, build_demo  # noqa: E402
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
    first, second = (app.generate("a red chair", steps=1, num_views=2, seed=-1).info["seed"] for _ in range(2))
    assert first != second  # -1: a fresh random seed each time, reported back


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
            browser = playwright.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}", timeout=60_000)
            page.locator("#prompt textarea").fill("a blue mug")
            page.locator("#generate").click()
            try:
                page.locator("#views img").first.wait_for(timeout=120_000)
            except Exception:
                page.screenshot(path=str(screenshot.with_suffix(".failed.png")), full_page=True)
                raise
            page.locator("#mesh canvas").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # let the viewer draw the mesh
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            assert page.locator("#views img").count() >= 2
            browser.close()
        assert screenshot.stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(timeout=30)
