"""``tunemv app``: a Gradio web app over one adapter or generator folder (the optional ``[app]`` extra).

Inputs: a prompt and, for image→multiview, a reference image; the sampler, steps, views, guidance and seed.
Outputs: the views in a gallery, the turntable of the fused field, and its mesh in a 3D viewer (GLB), with
the step's progress shown. A generator folder (``tunemv distill``) samples in one step by default.

Every request is bounded: views and steps by the app's limits, its run time by ``time_limit_s`` (checked at
every denoising step), the prompt's length, the reference image's pixels (checked from its header, before
it is decoded), the seed's range, and the queue by ``max_queue`` requests, served one at a time, since one
CPU generation uses every core. A rejected input is one line in the server's log and one message on the page
(no traceback, no server paths).

Temporary files: ``tunemv app`` keeps everything in one folder, ``$TMPDIR/tunemv-app-*`` (Gradio's cache
included), removed when the app stops (Ctrl-C, SIGTERM, or a failed start). While it runs, only the last
``KEEP_OUTPUTS`` requests' own files are kept, and Gradio deletes its copies ``DELETE_CACHE[1]`` seconds old.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_VIEWS, MAX_STEPS, TIME_LIMIT_S, MAX_QUEUE = 16, 100, 300.0, 8
MAX_PROMPT_CHARS = 1000  # far beyond what a text encoder reads (CLIP: 77 tokens)
MAX_REFERENCE_PIXELS = 4096 * 4096  # a reference image is resized to the backbone's few hundred pixels anyway
MAX_SEED = 2**63 - 1
MAX_UPLOAD = "50mb"  # Gradio's bound on an upload's bytes
KEEP_OUTPUTS = 4  # request folders kept on disk; Gradio copies each request's files into its cache
DELETE_CACHE = (300, 1800)  # Gradio deletes its cached files every 5 minutes once 30 minutes old


@dataclass
class Generation:
    views: list[Any]  # PIL images
    turntable: str | None  # mp4 or gif path
    mesh: str | None  # glb path; None when the fused field has no surface (see info["warnings"])
    info: dict[str, Any]


class RequestTooLong(RuntimeError):
    pass


def display_name(adapter: str) -> str:
    """What the page shows of ``adapter``: a local folder's name (no server path), or the hub id."""
    path = Path(adapter)
    return path.resolve().name if path.exists() else adapter


_PATH = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:)?[\\/](?:[^\s'\"`\\/]+[\\/])*([^\s'\"`\\/]+)")


def without_paths(message: str) -> str:
    """``message`` with each absolute path reduced to its last part: what a page may show of the server."""
    return _PATH.sub(r"\1", message)


def log(message: str) -> None:
    print(f"tunemv app: {message}", file=sys.stderr, flush=True)


def _whole(value: Any, name: str) -> int:
    try:
        number = float(value)
        if number != int(number):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        from tunemv.errors import TunemvError

        raise TunemvError(f"{name} must be a whole number, got {str(value)[:40]}") from None
    return int(value) if isinstance(value, int) else int(number)


class MultiviewApp:
    """The model and the bounded generate function behind the web page (usable without Gradio, for tests).

    ``outputs``: the folder for the requests' files (default: a fresh ``tunemv-app-*`` temporary folder,
    removed by ``close()``); the newest ``keep_outputs`` requests' folders are kept."""

    def __init__(self, adapter: str, device: str | None = None, max_views: int = MAX_VIEWS, max_steps: int = MAX_STEPS,
                 time_limit_s: float = TIME_LIMIT_S, mesh_resolution: int = 64, turntable_frames: int = 24,
                 outputs: str | Path | None = None, keep_outputs: int = KEEP_OUTPUTS):
        import torch

        from tunemv.sampling.pipeline import MultiviewPipeline

        torch.set_flush_denormal(True)  # as tunemv sample on CPU
        self.pipe = MultiviewPipeline.from_pretrained(adapter)
        self.pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.adapter, self.max_views, self.max_steps = adapter, max_views, max_steps
        self.name = display_name(adapter)
        self.time_limit_s, self.mesh_resolution, self.turntable_frames = time_limit_s, mesh_resolution, turntable_frames
        self.default_sampler = self.pipe.sampling_defaults["sampler"]
        self.default_guidance = float(self.pipe.sampling_defaults["guidance_scale"])
        self._own_outputs = outputs is None
        self.outputs = Path(tempfile.mkdtemp(prefix="tunemv-app-")) if outputs is None else Path(outputs)
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.keep_outputs, self._folders = max(1, keep_outputs), deque()

    def close(self) -> None:
        """Remove the requests' files (and the outputs folder, when the app made it)."""
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)
        self._folders.clear()
        if self._own_outputs:
            shutil.rmtree(self.outputs, ignore_errors=True)

    def __enter__(self) -> MultiviewApp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def turntable_is_video() -> bool:
        from tunemv.sampling.object_folders import has_ffmpeg

        return has_ffmpeg()

    @staticmethod
    def reference_image(image: Any) -> Any:
        """A path or PIL image -> a PIL image of at most ``MAX_REFERENCE_PIXELS``, checked from the file's
        header before anything is decoded (an upload arrives as a path)."""
        from PIL import Image, ImageOps, UnidentifiedImageError

        from tunemv.errors import TunemvError

        if image is None:
            return None
        if isinstance(image, str | Path):
            try:
                with warnings.catch_warnings():  # the bound below is tighter than PIL's warning
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    opened = Image.open(image)  # reads the header only
            except Image.DecompressionBombError:  # over twice PIL's own limit
                raise TunemvError(f"the reference image is over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; at "
                                  f"most {MAX_REFERENCE_PIXELS / 1e6:.1f} megapixels (e.g. 4096x4096) are accepted") from None
            except (UnidentifiedImageError, OSError):
                raise TunemvError("the reference image is not an image file that can be read "
                                  "(PNG, JPEG, WebP, ...)") from None
        else:
            opened = image
        width, height = opened.size
        if width * height > MAX_REFERENCE_PIXELS:
            raise TunemvError(f"the reference image is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
                              f"at most {MAX_REFERENCE_PIXELS / 1e6:.1f} megapixels (e.g. 4096x4096) are accepted")
        if opened is image:
            return image
        try:
            return ImageOps.exif_transpose(opened)  # decodes; as Gradio's own type="pil" does
        except (OSError, SyntaxError, ValueError):  # truncated or corrupt pixel data
            raise TunemvError("the reference image's pixel data cannot be read (a truncated or corrupt file?)") from None

    def generate(self, prompt: str, image: Any = None, sampler: str | None = None, steps: int = 25,
                 num_views: int = 8, guidance_scale: float | None = None, seed: int | None = -1,
                 elevation: float = 20.0, progress=None) -> Generation:
        from tunemv.errors import TunemvError
        from tunemv.sampling.object_folders import has_ffmpeg, mp4_bytes, to_uint8, upscale_for_preview

        prompt = (prompt or "").strip()
        if not prompt:
            raise TunemvError("type a prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise TunemvError(f"the prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are accepted")
        steps, num_views = _whole(steps, "steps"), _whole(num_views, "views")
        if not 1 <= steps <= self.max_steps or not 2 <= num_views <= self.max_views:
            raise TunemvError(f"steps must be in [1, {self.max_steps}] and views in [2, {self.max_views}]")
        seed = -1 if seed is None else _whole(seed, "seed")
        if not -1 <= seed <= MAX_SEED:
            raise TunemvError(f"seed must be -1 (random) or in [0, 2**63-1], got {str(seed)[:40]}")
        seed = random.randrange(2**31) if seed < 0 else seed
        sampler = sampler or self.default_sampler
        guidance_scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        options = {} if sampler != self.default_sampler else dict(self.pipe.sampling_defaults.get("sampler_options") or {})
        image = self.reference_image(image)
        start = time.perf_counter()

        def on_step(pipe, step: int, t, state) -> None:  # progress, and the request's time bound
            if time.perf_counter() - start > self.time_limit_s:
                raise RequestTooLong(f"stopped after {self.time_limit_s:.0f} s; use fewer steps or views")
            if progress is not None:
                progress((step + 1) / steps, desc=f"step {step + 1} of {steps}")

        out = self.pipe(prompt, num_views=num_views, sampler=sampler, sampler_options=options, steps=steps,
                        guidance_scale=guidance_scale, seed=seed, elevation=elevation,
                        reference_images=None if image is None else [image], callback_on_step_end=on_step,
                        progress=False)
        from PIL import Image

        views = [Image.fromarray(frame) for frame in to_uint8(upscale_for_preview(out.pixels[0], 256))]
        frames = to_uint8(upscale_for_preview(out.field.turntable(self.turntable_frames)[0], 256))
        folder = Path(tempfile.mkdtemp(dir=self.outputs))
        try:
            if has_ffmpeg():
                turntable = folder / "turntable.mp4"
                turntable.write_bytes(mp4_bytes(frames))
            else:
                turntable = folder / "turntable.gif"
                Image.fromarray(frames[0]).save(turntable, save_all=True,
                                                append_images=[Image.fromarray(f) for f in frames[1:]],
                                                duration=80, loop=0)
            mesh, warnings = folder / "mesh.glb", []
            try:
                out.field.mesh(0, self.mesh_resolution, views=out.pixels[0]).export(mesh)
            except ValueError as error:
                if "no surface" not in str(error):
                    raise
                mesh = None
                warnings.append("the fused field has no surface, so there is no mesh (a blank or plain reference "
                                "image, or too few steps?); the views and the turntable are kept")
            info = {"prompt": prompt, "sampler": sampler, "steps": 1 if sampler == "one-step" else steps,
                    "views": num_views, "guidance_scale": guidance_scale, "seed": seed,
                    "seconds": round(time.perf_counter() - start, 2), "adapter": self.name}
            if warnings:
                info["warnings"] = warnings
            (folder / "sampling.json").write_text(json.dumps(info, indent=2) + "\n")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a failed request leaves nothing behind
            raise
        self._folders.append(folder)
        while len(self._folders) > self.keep_outputs:  # served one at a time: older ones are in Gradio's cache
            shutil.rmtree(self._folders.popleft(), ignore_errors=True)
        return Generation(views, str(turntable), None if mesh is None else str(mesh), info)


def build_demo(app: MultiviewApp, max_queue: int = MAX_QUEUE):
    """The Gradio Blocks page over ``app``; Gradio's cached files older than ``DELETE_CACHE[1]`` s are deleted."""
    import gradio as gr

    from tunemv.errors import TunemvError
    from tunemv.sampling.registry import available_samplers

    def run(prompt, image, sampler, steps, num_views, guidance_scale, seed, progress=gr.Progress()):  # noqa: B008
        try:
            result = app.generate(prompt, image, sampler, steps, num_views, guidance_scale, seed, progress=progress)
        except (RequestTooLong, TunemvError, ValueError) as error:  # the user's input: one line, shown on the page
            message = without_paths(str(error))
            log(f"rejected: {message}")
            raise gr.Error(message, print_exception=False) from None
        except Exception as error:  # a bug: its traceback in the server's log, no server paths on the page
            log(f"failed: {type(error).__name__}: {error}\n{traceback.format_exc()}")
            raise gr.Error(without_paths(f"generation failed ({type(error).__name__}: {error})"),
                           print_exception=False) from None
        for warning in result.info.get("warnings", []):
            log(f"warning: {warning}")
            gr.Warning(warning)
        return result.views, result.turntable, result.mesh, result.info

    def checked(component, name: str, upload: bool = False) -> None:
        """Gradio's own input checks (a slider's range, ...) as one log line and a message without paths, not a
        traceback; an upload passed on as its path (Gradio's own would open it first, outside generate())."""
        gradio_preprocess = component.preprocess

        def preprocess(payload):
            if upload and payload is not None and payload.path and not (payload.url or "").startswith("data:"):
                return payload.path  # in Gradio's cache, checked there before this runs
            try:
                return gradio_preprocess(payload)
            except Exception as error:  # all from the user's input here
                message = without_paths(f"{name}: {error.message if isinstance(error, gr.Error) else 'cannot be read'}")
                log(f"rejected: {message}")
                raise gr.Error(message, print_exception=False) from None

        component.preprocess = preprocess

    def fixed(value: int, label: str):  # a one-value range: a Slider needs minimum < maximum
        return gr.Number(value=value, precision=0, interactive=False, label=label)

    one_step = app.default_sampler == "one-step"
    with gr.Blocks(title="tunemv", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(f"## tunemv: multiview generation\n`{app.name}`" + (" (a one-step generator)" if one_step else ""))
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value="a red chair", elem_id="prompt", max_length=MAX_PROMPT_CHARS)
                # A path, not a decoded image: generate() checks the size from the header before decoding.
                image = gr.Image(label="Reference image (optional: image→multiview)", type="filepath", image_mode=None)
                sampler = gr.Dropdown(sorted(available_samplers()), value=app.default_sampler, label="Sampler")
                steps_label = "Steps (one-step ignores them)"
                steps = fixed(1, steps_label) if app.max_steps == 1 else \
                    gr.Slider(1, app.max_steps, value=min(25, app.max_steps), step=1, label=steps_label)
                num_views = fixed(2, "Views") if app.max_views == 2 else \
                    gr.Slider(2, app.max_views, value=min(8, app.max_views), step=1, label="Views")
                guidance = gr.Slider(1.0, 15.0, value=app.default_guidance, step=0.5, label="Guidance scale")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1: random; at most 2**63-1)")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gallery = gr.Gallery(label="Views", columns=4, elem_id="views")
                turntable = gr.Video(label="Turntable", autoplay=True, loop=True) if app.turntable_is_video() \
                    else gr.Image(label="Turntable", type="filepath")
                mesh = gr.Model3D(label="Mesh (GLB)", elem_id="mesh")
                info = gr.JSON(label="Settings")
        for component, name in ((prompt, "prompt"), (image, "reference image"), (sampler, "sampler"), (steps, "steps"),
                                (num_views, "views"), (guidance, "guidance scale"), (seed, "seed")):
            checked(component, name, upload=component is image)
        button.click(run, [prompt, image, sampler, steps, num_views, guidance, seed], [gallery, turntable, mesh, info],
                     api_name="generate")
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    return demo


def add_app_parser(commands) -> None:
    app = commands.add_parser("app", help="a web app (Gradio) over an adapter or generator folder; needs the [app] extra")
    app.add_argument("--adapter", default="models/demo-generator",
                     help="adapter or generator folder, or hub id (default: models/demo-generator)")
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    app.add_argument("--port", type=int, default=7860, help="port, in [1, 65535] (default: 7860)")
    app.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    app.add_argument("--max-steps", type=int, default=MAX_STEPS,
                     help=f"steps allowed per request, >= 1; 1 fixes one step, what a generator folder samples "
                          f"anyway (an adapter then denoises in one step) (default: {MAX_STEPS})")
    app.add_argument("--max-views", type=int, default=MAX_VIEWS,
                     help=f"views allowed per request, >= 2 (default: {MAX_VIEWS})")
    app.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                     help=f"seconds a request may run (default: {TIME_LIMIT_S:.0f})")
    app.set_defaults(handler=run_app)


def check_app_args(args) -> None:
    """The command line's limits and address, checked before the model loads: a TunemvError (one line, exit 2)."""
    import math

    from tunemv.errors import TunemvError

    if args.max_steps < 1:
        raise TunemvError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.max_views < 2:
        raise TunemvError(f"--max-views must be >= 2 (a multiview request makes at least 2 views), got {args.max_views}")
    if not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise TunemvError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if not 1 <= args.port <= 65535:
        raise TunemvError(f"--port must be in [1, 65535], got {args.port}")
    try:
        family = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:  # as uvicorn binds: address reuse allowed
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as error:
        raise TunemvError(f"--host {args.host} --port {args.port}: cannot serve there "
                          f"({error.strerror or error}); is another app on that port?") from None


def _stop(signum, frame):  # SIGTERM: stop as Ctrl-C does, so the temporary folder is removed
    raise KeyboardInterrupt


def run_app(args) -> int:
    import importlib.util

    from tunemv.errors import TunemvError

    check_app_args(args)
    if importlib.util.find_spec("gradio") is None:
        raise TunemvError("tunemv app needs Gradio: pip install 'tunemv[app]'")
    start = time.perf_counter()
    # One folder for everything the app writes, Gradio's cache included (under GRADIO_TEMP_DIR when set). Set
    # before Gradio is imported: some of its modules read GRADIO_TEMP_DIR once, on import.
    root = Path(tempfile.mkdtemp(prefix="tunemv-app-", dir=os.environ.get("GRADIO_TEMP_DIR") or None))
    previous_cache, previous_term = os.environ.get("GRADIO_TEMP_DIR"), None
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    demo = app = None
    try:
        if threading_main():
            previous_term = signal.signal(signal.SIGTERM, _stop)
        app = MultiviewApp(args.adapter, device=args.device, max_views=args.max_views, max_steps=args.max_steps,
                           time_limit_s=args.time_limit, outputs=root / "outputs")
        demo = build_demo(app)
        demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True,
                    max_file_size=MAX_UPLOAD)
        print(f"tunemv app: serving {args.adapter} at http://{args.host}:{args.port} "
              f"(started in {time.perf_counter() - start:.1f} s); Ctrl-C stops it", flush=True)
        demo.block_thread()  # returns on Ctrl-C or SIGTERM (Gradio closes the server)
    finally:
        if demo is not None:
            demo.close()
        if app is not None:
            app.close()
        shutil.rmtree(root, ignore_errors=True)
        if previous_cache is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous_cache
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    return 0


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
