"""``MultiviewPipeline``: text→multiview and image→multiview with a trained adapter on its frozen backbone.

    pipe = MultiviewPipeline.from_pretrained("outputs/tiny/adapter")       # the folder `tunemv export` writes
    out = pipe("a red chair", num_views=8, sampler="consistency", seed=0)
    out.images         # per object, its views as PIL images (output_type="pt": a (B, V, 3, H, W) tensor)
    out.field.mesh(0)  # the NeuS field fused from the views
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.control_branch import ControlBranch
from tunemv.adapters.denoiser import MultiviewDenoiser
from tunemv.adapters.formats import (
    ADAPTER_FILE,
    AdapterError,
    checkpoint_sampling,
    load_adapter_modules,
    portable_backbone,
    read_adapter_folder,
    read_checkpoint,
    unet_state,
    write_adapter_folder,
)
from tunemv.adapters.hub import CARD_FILE, model_card, push_folder, resolve_folder
from tunemv.errors import TunemvError
from tunemv.geometry.cameras import Cameras, orbit
from tunemv.geometry.rays import sees_sphere
from tunemv.neus.latent_sparseneus import LatentSparseNeuS
from tunemv.sampling.denoising_loop import SamplingJob
from tunemv.sampling.multiview_field import MultiviewField, to_unit_range
from tunemv.sampling.options import build_sampler
from tunemv.sampling.pipeline_output import MultiviewPipelineOutput, check_output_type, convert_images
from tunemv.sampling.references import prepare_references
from tunemv.sampling.registry import registered_name
from tunemv.sampling.schedulers import make_scheduler
from tunemv.sampling.score import MultiviewScore

DEFAULTS = {"sampler": "mv", "guidance_scale": 7.5}


def sampling_defaults(declared: Mapping[str, Any] | None) -> dict[str, Any]:
    """How a model samples when the caller names no sampler or scale: an adapter's "mv" at CFG 7.5, or what
    its folder or checkpoint declares (a distilled generator: "one-step", unguided, at its t_G)."""
    return {**DEFAULTS, **(declared or {})}


class MultiviewPipeline:
    """A frozen ``Backbone`` with a trained latent SparseNeuS and control branch."""

    def __init__(self, backbone: Backbone, neus: LatentSparseNeuS, control_branch: ControlBranch,
                 view_chunk: int | None = None):
        # The modules are used as given (train mode and requires_grad untouched): training validates with
        # its live modules through this class. Samples run under no_grad; loaded adapters come in eval mode.
        self.backbone = backbone
        self.denoiser = MultiviewDenoiser.from_backbone(backbone, neus, control_branch, view_chunk=view_chunk)
        # What a call without sampler= or guidance_scale= uses: an adapter's are "mv" at CFG 7.5; a distilled
        # generator folder's adapter.json names its own ("one-step", unguided, at its t_G).
        self.sampling_defaults: dict[str, Any] = dict(DEFAULTS)
        self.info: dict[str, Any] = {}  # adapter.json of a loaded folder (what save_pretrained writes back)
        self._progress_bar_config: dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, adapter: str | Path, backbone: str | Backbone | None = None,
                        torch_dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
                        revision: str | None = None, subfolder: str | None = None,
                        cache_dir: str | Path | None = None, token: str | bool | None = None,
                        **backbone_options) -> MultiviewPipeline:
        """Load an adapter or generator folder (``neus/``, ``control_branch/``, ``adapter.json``) and the backbone
        it names (or ``backbone``: a hub id, a folder or a loaded ``Backbone``).

        ``adapter`` is a local folder or a hub id ("owner/name"), fetched at ``revision`` (and ``subfolder``)
        through the Hub's cache, so ``HF_HUB_OFFLINE=1`` loads a cached one without network, as in diffusers.
        """
        folder = resolve_folder(adapter, revision=revision, subfolder=subfolder, cache_dir=cache_dir, token=token)
        neus, branch, info = read_adapter_folder(folder)
        pipe = cls._assemble(backbone or info.get("backbone"), neus, branch, torch_dtype, device,
                             folder / ADAPTER_FILE, **backbone_options)
        pipe.sampling_defaults = sampling_defaults(info.get("sampling"))
        pipe.info = {key: value for key, value in info.items() if key != "tunemv_version"}
        return pipe

    def save_pretrained(self, out_dir: str | Path, overwrite: bool = False,
                        figures: Mapping[str, Any] | None = None) -> Path:
        """Write this pipeline's adapter (or generator) folder, with a model card (``figures``: measured
        figures for it), naming the backbone as it was loaded; atomically, as ``tunemv export`` does."""
        info = {**self.info, "backbone": self.backbone.name_or_path}
        if self.sampling_defaults != DEFAULTS:
            info["sampling"] = dict(self.sampling_defaults)
        # The card's base_model is the backbone as adapter.json stores it (relative to the folder when local).
        card = model_card({**info, "backbone": portable_backbone(str(info["backbone"]), Path(out_dir))}, figures)
        return write_adapter_folder(out_dir, self.denoiser.neus, self.denoiser.control_branch, info,
                                    overwrite=overwrite, extra_files={CARD_FILE: card})

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload tunemv adapter", figures: Mapping[str, Any] | None = None) -> str:
        """``save_pretrained`` into a temporary folder, then upload it to ``repo_id``; returns the commit URL."""
        import tempfile

        with tempfile.TemporaryDirectory() as temporary:
            folder = self.save_pretrained(Path(temporary) / "adapter", figures=figures)
            return push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, backbone: str | Backbone | None = None, ema: bool | None = None,
                        torch_dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
                        **backbone_options) -> MultiviewPipeline:
        """Load a ``tunemv fit`` checkpoint directly: its EMA weights when the run kept them (``ema=None``),
        or as ``ema`` says."""
        data = read_checkpoint(checkpoint)
        neus, branch = load_adapter_modules(data, ema=ema, source=str(checkpoint))
        unet = unet_state(data)
        if unet and isinstance(backbone, Backbone):
            raise AdapterError(f"{checkpoint}: carries a fine-tuned UNet (train_backbone_unet); pass the backbone "
                               "by name, not a loaded Backbone that loading would change")
        pipe = cls._assemble(backbone or data["tunemv"]["backbone"], neus, branch, torch_dtype, device,
                             checkpoint, **backbone_options)
        if unet:  # a train_backbone_unet baseline: its fine-tuned UNet replaces the hub one
            pipe.backbone.unet.load_state_dict(unet, strict=True)
        pipe.sampling_defaults = sampling_defaults(checkpoint_sampling(data))  # a distillation checkpoint
        return pipe

    @classmethod
    def _assemble(cls, backbone, neus, branch, torch_dtype, device, source, **options) -> MultiviewPipeline:
        if backbone is None:
            raise AdapterError(f"{source}: names no backbone; pass backbone=")
        if not isinstance(backbone, Backbone):
            backbone = Backbone.from_pretrained(backbone, torch_dtype=torch_dtype, **options)
        try:
            pipe = cls(backbone, neus, branch)
        except ValueError as error:  # check_compatible: an adapter trained for another backbone
            raise AdapterError(f"{source}: does not fit backbone {backbone.name_or_path} ({error})") from error
        pipe.denoiser.eval()  # a loaded adapter is for inference (a new Module starts in train mode)
        return pipe.to(device) if device is not None else pipe

    def to(self, device: torch.device | str) -> MultiviewPipeline:
        self.backbone.to(device)
        self.denoiser.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # ---------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], num_views: int = 8, cameras: Cameras | str | Path | None = None,
                 reference_images: Any = None, reference_views: Sequence[int] | None = None,
                 elevation: float = 20.0, radius: float = 2.2, fov: float = 50.0, azimuth_start: float = 0.0,
                 sampler: str | Any | None = None, sampler_options: Mapping[str, Any] | None = None,
                 scheduler: str = "auto", steps: int | None = None, guidance_scale: float | None = None,
                 negative_prompt: str = "", eta: float = 0.0, seed: int | None = None,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 view_chunk_size: int | None = None, output_type: str = "pil",
                 callback_on_step_end: Callable[..., dict | None] | None = None,
                 callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                 progress: bool | None = None, *, num_inference_steps: int | None = None,
                 height: int | None = None, width: int | None = None,
                 return_dict: bool = True) -> MultiviewPipelineOutput | tuple:
        """Generate ``num_views`` views of each prompt.

        ``sampler``: a registered name (``available_samplers()``), built with ``sampler_options``, its own
        keyword arguments (e.g. ``{"consistency_ratio": 0.5}``, see ``tunemv.sampling.samplers``), or a
        sampler instance. ``cameras``: Cameras ``[V]`` or ``[B, V]``, or a cameras.json path; default: an
        orbit at ``elevation``, ``radius``, ``fov`` starting at ``azimuth_start``. ``reference_images``:
        (R, 3, H, W) or (B, R, 3, H, W) in [0, 1], PIL images or paths, placed at ``reference_views``
        (default 0..R−1) as clean views. ``latents``: the initial noise x_T (B, V, C, h, w) instead of one
        drawn from ``seed`` (as diffusers' ``latents=``). ``sampler=None`` and ``guidance_scale=None`` take
        ``sampling_defaults``: "mv" at 7.5, or what a distilled generator's folder names ("one-step" at 1.0).

        As in diffusers: ``output_type`` ("pil", "np", "pt") shapes ``.images``; ``seed=None`` without a
        ``generator`` draws a random seed, reported in ``.seed``; ``callback_on_step_end(pipe, step, t,
        {"latents": x, "denoised": x̂0})`` runs after every denoising step (``denoised``: the clean views that
        step's guided ε points at, in model space, as k-diffusion's callback has them) and may return
        ``{"latents": ...}`` to replace the latents;
        ``set_progress_bar_config`` configures the progress bar (``progress=False`` hides it). ``callback(step,
        t, latents)`` is the deprecated form. ``num_inference_steps`` is diffusers' name for ``steps`` (default
        50; both, if they differ, is an error). ``height`` and ``width`` may only name the square size the
        backbone makes (``backbone.image_resolution``); other sizes are refused. ``return_dict=False`` returns
        the tuple ``(images,)``, as diffusers' pipelines without a safety checker do (DDPMPipeline, FluxPipeline;
        StableDiffusionPipeline and IFPipeline append their NSFW/watermark flags, which tunemv has not): index 0
        is the images in every diffusers pipeline. ``return_dict=True`` gives the ``MultiviewPipelineOutput``.
        ``.run`` records what ran: the sampler, its steps (1 for "one-step") and the scheduler ("auto"
        resolved; None where the sampler uses none).
        """
        check_output_type(output_type)
        steps = resolve_steps(steps, num_inference_steps)
        size = self.backbone.image_resolution
        if (height is not None and height != size) or (width is not None and width != size):
            raise ValueError(f"height={height}, width={width}: backbone {self.backbone.name_or_path} makes "
                             f"{size}x{size} views only; pass height={size}, width={size} or leave them out")
        if callback is not None:
            warnings.warn("callback= is deprecated and will be removed in the next release; use "
                          "callback_on_step_end(pipe, step, t, {'latents': ...})", FutureWarning, stacklevel=2)
        defaults = self.sampling_defaults
        if sampler is None:
            sampler = defaults["sampler"]
            if sampler_options is None:
                sampler_options = defaults.get("sampler_options")
        guidance_scale = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        sampler_name = sampler if isinstance(sampler, str) else registered_name(sampler)
        sampler = build_sampler(sampler, sampler_options)  # a bad option fails before any work
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        backbone, device = self.backbone, self.device
        cameras = self._cameras(cameras, num_views, len(prompts), elevation, radius, fov, azimuth_start)
        batch, views = cameras.shape
        size, model_size = backbone.image_resolution, backbone.sample_size
        model_cameras = cameras.rescale(model_size, model_size).to(device)
        if generator is None:
            seed = secrets.randbits(31) if seed is None and latents is None else seed
            generator = torch.Generator("cpu").manual_seed(seed or 0)
        else:
            seed = None  # the caller's generator: its seed is not known here
        noise = initial_noise(backbone, batch, views, generator, device) if latents is None else latents.to(device)
        if tuple(noise.shape) != (batch, views, backbone.in_channels, model_size, model_size):
            raise ValueError(f"latents must be (B, V, C, h, w) = {[batch, views, backbone.in_channels, model_size, model_size]}, "
                             f"got {list(noise.shape)}")
        references = prepare_references(backbone, reference_images, reference_views, batch, views, size)
        negative_prompts = [negative_prompt] * batch if guidance_scale > 1.0 else None
        text = backbone.encode_prompt(prompts).float()
        uncond = None if negative_prompts is None else backbone.encode_prompt(negative_prompts).float()
        previous_chunk, self.denoiser.view_chunk = self.denoiser.view_chunk, view_chunk_size or self.denoiser.view_chunk
        # Sampling is inference: NeuS samples rays uniformly (not stratified) in eval mode, so a seed fixes
        # the result. The caller's mode (training validates through here) is restored afterwards.
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            job = SamplingJob(
                score=MultiviewScore(self.denoiser, backbone, model_cameras, text, uncond),
                scheduler=make_scheduler(scheduler, backbone.scheduler_config, backbone.family), noise=noise,
                prompts=prompts, negative_prompts=negative_prompts, steps=steps, guidance_scale=guidance_scale,
                references=None if references is None else references.mask,
                reference_latents=None if references is None else references.latents,
                eta=eta, generator=generator, callback=self._step_callback(callback, callback_on_step_end),
                progress=self._progress_bar_config.get("disable") is not True if progress is None else progress,
                progress_bar={k: v for k, v in self._progress_bar_config.items() if k != "disable"})
            # A half-precision backbone next to fp32 adapters: autocast gives every matmul one dtype.
            with torch.autocast(device.type, dtype=backbone.dtype, enabled=backbone.dtype != torch.float32):
                latents = sampler(job).latents.float()
        finally:
            self.denoiser.view_chunk = previous_chunk
            self.denoiser.train(was_training)
        images = to_unit_range(backbone.decode_views(latents.to(backbone.dtype)))
        mask = torch.zeros(batch, views, dtype=torch.bool, device=device)
        if references is not None:
            mask = references.mask
            images = torch.where(mask[:, :, None, None, None], references.images.to(images), images)
        fixed_steps = getattr(sampler, "fixed_steps", None)  # "one-step": one evaluation, no step rule
        run = {"sampler": sampler_name, "steps": fixed_steps or steps, "guidance_scale": guidance_scale,
               "scheduler": None if fixed_steps else scheduler_name(scheduler, backbone.family)}
        output = MultiviewPipelineOutput(convert_images(images, output_type), latents, cameras, prompts, mask,
                                         MultiviewField(self.denoiser.neus, backbone, latents, model_cameras),
                                         seed=seed, pixels=images, run=run)
        return output if return_dict else (output.images,)

    def _step_callback(self, callback, callback_on_step_end):
        """The job's per-step callback: the deprecated ``callback`` and diffusers' ``callback_on_step_end``."""
        if callback is None and callback_on_step_end is None:
            return None

        def on_step(step: int, t: torch.Tensor, latents: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor | None:
            if callback is not None:
                callback(step, t, latents)
            if callback_on_step_end is not None:
                returned = callback_on_step_end(self, step, t, {"latents": latents, "denoised": denoised})
                if isinstance(returned, dict) and returned.get("latents") is not None:
                    return returned["latents"]
            return None

        return on_step

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str = "cuda") -> None:
        """Keep the frozen text encoders, UNet and VAE on the CPU and move each to ``device`` only while it runs
        (accelerate's ``cpu_offload_with_hook``, as diffusers does): peak GPU memory is the largest part, not
        their sum. The trainable NeuS and control branch are small and stay on ``device``."""
        try:
            from accelerate import cpu_offload_with_hook
        except ImportError as error:
            raise TunemvError("enable_model_cpu_offload needs accelerate: pip install accelerate") from error
        device = torch.device(device)
        if gpu_id is not None:
            device = torch.device(device.type, gpu_id)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TunemvError(f"enable_model_cpu_offload: no {device} here (torch sees no GPU)")
        backbone, hook = self.backbone, None
        backbone.to("cpu")
        for model in (backbone.text_encoder, backbone.text_encoder_2, backbone.unet, backbone.vae):
            if model is not None:
                _, hook = cpu_offload_with_hook(model, device, prev_module_hook=hook)
        self.denoiser.neus.to(device)
        self.denoiser.control_branch.to(device)
        backbone.execution_device = device

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm options for the denoising progress bar (``disable=True`` hides it), as in diffusers."""
        self._progress_bar_config = dict(kwargs)

    def _cameras(self, cameras, num_views: int, batch: int, elevation, radius, fov, azimuth_start) -> Cameras:
        size = self.backbone.image_resolution
        if cameras is None:
            cameras = orbit(num_views, elevation, radius, fov, resolution=size, azimuth_start_deg=azimuth_start)
        elif isinstance(cameras, str | Path):
            from tunemv.data.format import read_cameras

            cameras = read_cameras(cameras)
        if not isinstance(cameras, Cameras):
            raise TypeError(f"cameras must be Cameras, a cameras.json path or None, got {type(cameras).__name__}")
        if cameras.K.dim() == 3:
            cameras = Cameras.stack([cameras] * batch)
        if cameras.shape[0] != batch:
            raise ValueError(f"cameras are for {cameras.shape[0]} objects but there are {batch} prompts")
        if cameras.height != cameras.width:
            raise ValueError(f"cameras are {cameras.width}x{cameras.height} but the backbone makes square "
                             f"{size}x{size} views")
        seen = sees_sphere(cameras, radius=1.0)  # (B, V): NeuS's bounds, where the object is
        if not seen.any(dim=1).all():
            raise ValueError("no camera sees the unit sphere at the origin, where the object is: every view "
                             "looks away from it (check the cameras' c2w and their convention)")
        if not seen.all():
            warnings.warn(f"{int((~seen).sum())} of {seen.numel()} views see nothing of the unit sphere at the "
                          "origin; they will show background only", stacklevel=3)
        return cameras.rescale(size, size) if (cameras.height, cameras.width) != (size, size) else cameras


DEFAULT_STEPS = 50


def resolve_steps(steps: int | None, num_inference_steps: int | None) -> int:
    """``steps`` or diffusers' ``num_inference_steps`` (the same thing); both, if they differ, is an error."""
    if steps is not None and num_inference_steps is not None and steps != num_inference_steps:
        raise ValueError(f"steps={steps} and num_inference_steps={num_inference_steps} disagree: they are the same "
                         "setting; pass one")
    return next((value for value in (steps, num_inference_steps) if value is not None), DEFAULT_STEPS)


def scheduler_name(asked: Any, family: str | None) -> str:
    """The scheduler that runs, by the name asked for ("auto" resolved to the family's own), or the class name
    of a scheduler instance."""
    from tunemv.sampling.schedulers import AUTO, default_scheduler

    if isinstance(asked, str):
        return default_scheduler(family) if asked == AUTO else asked
    return type(asked).__name__


def initial_noise(backbone: Backbone, batch: int, views: int, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """x_T (B, V, C, h, w) as the pipeline draws it: as diffusers' pipelines draw (B·V, C, h, w), so "2d"
    reproduces them view by view, and distillation can pair a teacher's sample with its noise."""
    size = backbone.sample_size
    shape = (batch * views, backbone.in_channels, size, size)
    return rearrange(randn_tensor(shape, generator=generator, device=device, dtype=torch.float32),
                     "(b v) c h w -> b v c h w", b=batch)
