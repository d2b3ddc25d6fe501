"""``tunemv app``: a Gradio web app over one adapter or generator folder (the optional ``[app]`` extra).

Inputs: a prompt and, for image→multiview, a reference image; the sampler, steps, views, guidance and seed.
Outputs: the views in a gallery, the turntable of the fused field, and its mesh in a 3D viewer (GLB), with
the step's progress shown. A generator folder (``tunemv distill``) samples in one step by default.

Every request is bounded: views and steps by the app's limits, its run time by ``time_limit_s`` (checked at
every denoising step), and the queue by ``max_queue`` requests, served one at a time, since one CPU
generation uses every core.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_VIEWS, MAX_STEPS, TIME_LIMIT_S, MAX_QUEUE = 16, 100, 300.0, 8


@dataclass
class Generation:
    views: list[Any]  # PIL images
    turntable: str | None  # mp4 or gif path
    mesh: str  # glb path
    info: dict[str, Any]


class RequestTooLong(RuntimeError):
    pass


class MultiviewApp:
    """The model and the bounded generate function behind the web page (usable without Gradio, for tests)."""

    def __init__(self, adapter: str, device: str | None = None, max_views: int = MAX_VIEWS, max_steps: int = MAX_STEPS,
                 time_limit_s: float = TIME_LIMIT_S, mesh_resolution: int = 64, turntable_frames: int = 24):
        import torch

        from tunemv.sampling.pipeline import MultiviewPipeline

        torch.set_flush_denormal(True)  # as tunemv sample on CPU
        self.pipe = MultiviewPipeline.from_pretrained(adapter)
        self.pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.adapter, self.max_views, self.max_steps = adapter, max_views, max_steps
        self.time_limit_s, self.mesh_resolution, self.turntable_frames = time_limit_s, mesh_resolution, turntable_frames
        self.default_sampler = self.pipe.sampling_defaults["sampler"]
        self.default_guidance = float(self.pipe.sampling_defaults["guidance_scale"])
        self.outputs = Path(tempfile.mkdtemp(prefix="tunemv-app-"))

    @staticmethod
    def turntable_is_video() -> bool:
        from tunemv.sampling.outputs import has_ffmpeg

        return has_ffmpeg()

    def generate(self, prompt: str, image: Any = None, sampler: str | None = None, steps: int = 25,
                 num_views: int = 8, guidance_scale: float | None = None, seed: int | None = -1,
                 elevation: float = 20.0, progress=None) -> Generation:
        from tunemv.errors import TunemvError
        from tunemv.sampling.outputs import has_ffmpeg, mp4_bytes, to_uint8, upscale_for_preview

        prompt = (prompt or "").strip()
        if not prompt:
            raise TunemvError("type a prompt")
        steps, num_views = int(steps), int(num_views)
        if not 1 <= steps <= self.max_steps or not 2 <= num_views <= self.max_views:
            raise TunemvError(f"steps must be in [1, {self.max_steps}] and views in [2, {self.max_views}]")
        seed = random.randrange(2**31) if seed is None or int(seed) < 0 else int(seed)
        sampler = sampler or self.default_sampler
        guidance_scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        options = {} if sampler != self.default_sampler else dict(self.pipe.sampling_defaults.get("sampler_options") or {})
        start = time.perf_counter()

        def on_step(step: int, t, latents) -> None:  # progress, and the request's time bound
            if time.perf_counter() - start > self.time_limit_s:
                raise RequestTooLong(f"stopped after {self.time_limit_s:.0f} s; use fewer steps or views")
            if progress is not None:
                progress((step + 1) / steps, desc=f"step {step + 1} of {steps}")

        out = self.pipe(prompt, num_views=num_views, sampler=sampler, sampler_options=options, steps=steps,
                        guidance_scale=guidance_scale, seed=seed, elevation=elevation,
                        reference_images=None if image is None else [image], callback=on_step, progress=False)
        folder = Path(tempfile.mkdtemp(dir=self.outputs))
        from PIL import Image

        views = [Image.fromarray(frame) for frame in to_uint8(upscale_for_preview(out.pixels[0], 256))]
        frames = to_uint8(upscale_for_preview(out.field.turntable(self.turntable_frames)[0], 256))
        if has_ffmpeg():
            turntable = folder / "turntable.mp4"
            turntable.write_bytes(mp4_bytes(frames))
        else:
            turntable = folder / "turntable.gif"
            Image.fromarray(frames[0]).save(turntable, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]],
                                            duration=80, loop=0)
        mesh = folder / "mesh.glb"
        out.field.mesh(0, self.mesh_resolution, views=out.pixels[0]).export(mesh)
        info = {"prompt": prompt, "sampler": sampler, "steps": 1 if sampler == "one-step" else steps,
                "views": num_views, "guidance_scale": guidance_scale, "seed": seed,
                "seconds": round(time.perf_counter() - start, 2), "adapter": self.adapter}
        (folder / "sampling.json").write_text(json.dumps(info, indent=2) + "\n")
        return Generation(views, str(turntable), str(mesh), info)


def build_demo(app: MultiviewApp, max_queue: int = MAX_QUEUE):
    """The Gradio Blocks page over ``app``."""
    import gradio as gr

    from tunemv.errors import TunemvError
    from tunemv.sampling.registry import available_samplers

    def run(prompt, image, sampler, steps, num_views, guidance_scale, seed, progress=gr.Progress()):  # noqa: B008
        try:
            result = app.generate(prompt, image, sampler, steps, num_views, guidance_scale, seed, progress=progress)
        except (RequestTooLong, TunemvError, ValueError) as error:  # the user's input: shown on the page
            raise gr.Error(str(error)) from error
        return result.views, result.turntable, result.mesh, result.info

    one_step = app.default_sampler == "one-step"
    with gr.Blocks(title="tunemv") as demo:
        gr.Markdown(f"## tunemv: multiview generation\n`{app.adapter}`"
                    + (" (a one-step generator)" if one_step else ""))
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value="a red chair", elem_id="prompt")
                image = gr.Image(label="Reference image (optional: image→multiview)", type="pil")
                sampler = gr.Dropdown(sorted(available_samplers()), value=app.default_sampler, label="Sampler")
                steps = gr.Slider(1, app.max_steps, value=min(25, app.max_steps), step=1,
                                  label="Steps (one-step ignores them)")
                num_views = gr.Slider(2, app.max_views, value=min(8, app.max_views), step=1, label="Views")
                guidance = gr.Slider(1.0, 15.0, value=app.default_guidance, step=0.5, label="Guidance scale")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gallery = gr.Gallery(label="Views", columns=4, elem_id="views")
                turntable = gr.Video(label="Turntable", autoplay=True, loop=True) if app.turntable_is_video() \
                    else gr.Image(label="Turntable", type="filepath")
                mesh = gr.Model3D(label="Mesh (GLB)", elem_id="mesh")
                info = gr.JSON(label="Settings")
        button.click(run, [prompt, image, sampler, steps, num_views, guidance, seed], [gallery, turntable, mesh, info],
                     api_name="generate")
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    return demo


def add_app_parser(commands) -> None:
    app = commands.add_parser("app", help="a web app (Gradio) over an adapter or generator folder; needs the [app] extra")
    app.add_argument("--adapter", default="models/demo-generator",
                     help="adapter or generator folder, or hub id (default: models/demo-generator)")
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    app.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    app.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    app.add_argument("--max-steps", type=int, default=MAX_STEPS, help=f"steps allowed per request (default: {MAX_STEPS})")
    app.add_argument("--max-views", type=int, default=MAX_VIEWS, help=f"views allowed per request (default: {MAX_VIEWS})")
    app.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                     help=f"seconds a request may run (default: {TIME_LIMIT_S:.0f})")
    app.set_defaults(handler=run_app)


def run_app(args) -> int:
    from tunemv.errors import TunemvError

    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise TunemvError("tunemv app needs Gradio: pip install 'tunemv[app]'") from error
    start = time.perf_counter()
    app = MultiviewApp(args.adapter, device=args.device, max_views=args.max_views, max_steps=args.max_steps,
                       time_limit_s=args.time_limit)
    demo = build_demo(app)
    demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, show_error=True)
    print(f"tunemv app: serving {args.adapter} at http://{args.host}:{args.port} "
          f"(started in {time.perf_counter() - start:.1f} s); Ctrl-C stops it", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        demo.close()
    return 0
