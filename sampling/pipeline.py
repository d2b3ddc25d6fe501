"""``MultiviewPipeline``: text→multiview and image→multiview with a trained adapter on its frozen backbone.

    pipe = MultiviewPipeline.from_pretrained("outputs/tiny/adapter")       # the folder `tunemv export` writes
    out = pipe("a red chair", num_views=8, sampler="consistency", seed=0)
    out.views          # (B, V, 3, H, W) in [0, 1]
    out.field.mesh(0)  # the NeuS field fused from the views
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.control_branch import ControlBranch
from tunemv.adapters.denoiser import MultiviewDenoiser, Text
from tunemv.errors import TunemvError
from tunemv.geometry.cameras import Cameras, orbit
from tunemv.neus.latent_sparseneus import LatentSparseNeuS
from tunemv.sampling.external import ExternalTwoDScore, check_same_space
from tunemv.sampling.field import MultiviewField, to_unit_range
from tunemv.sampling.guidance import MixSchedule
from tunemv.sampling.job import SamplingJob
from tunemv.sampling.references import prepare_references
from tunemv.sampling.registry import get_sampler
from tunemv.sampling.schedulers import make_scheduler

ADAPTER_FILE = "adapter.json"


class AdapterError(TunemvError, ValueError):
    """An adapter folder that is missing or incomplete."""


@dataclass
class MultiviewPipelineOutput:
    views: torch.Tensor  # (B, V, 3, H, W) RGB in [0, 1]; reference views exactly as given
    latents: torch.Tensor  # (B, V, C, h, w) model space
    cameras: Cameras  # [B, V] at the image resolution H x W
    prompts: list[str]
    references: torch.Tensor  # (B, V) bool
    field: MultiviewField


class MultiviewPipeline:
    """A frozen ``Backbone`` with a trained latent SparseNeuS and control branch."""

    def __init__(self, backbone: Backbone, neus: LatentSparseNeuS, control_branch: ControlBranch,
                 view_chunk: int | None = None):
        # The modules are used as given (train mode and requires_grad untouched): training validates with
        # its live modules through this class. Samples run under no_grad; loaded adapters come in eval mode.
        self.backbone = backbone
        self.denoiser = MultiviewDenoiser.from_backbone(backbone, neus, control_branch, view_chunk=view_chunk)

    @classmethod
    def from_pretrained(cls, adapter_dir: str | Path, backbone: str | Backbone | None = None,
                        torch_dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
                        **backbone_options) -> MultiviewPipeline:
        """Load an adapter folder (``neus/``, ``control_branch/``, ``adapter.json``) and the backbone it names
        (or ``backbone``: a hub id, a folder or a loaded ``Backbone``)."""
        adapter_dir = Path(adapter_dir)
        info_path = adapter_dir / ADAPTER_FILE
        if not info_path.is_file():
            raise AdapterError(f"{info_path}: missing; an adapter folder is what `tunemv export` writes")
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as error:
            raise AdapterError(f"{info_path}: not valid JSON ({error})") from error
        for part in ("neus", "control_branch"):
            if not (adapter_dir / part).is_dir():
                raise AdapterError(f"{adapter_dir / part}: missing; an adapter folder is what `tunemv export` writes")
        neus = LatentSparseNeuS.from_pretrained(adapter_dir / "neus").eval()
        branch = ControlBranch.from_pretrained(adapter_dir / "control_branch").eval()
        return cls._assemble(backbone or info.get("backbone"), neus, branch, torch_dtype, device, info_path,
                             **backbone_options)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, backbone: str | Backbone | None = None, ema: bool | None = None,
                        torch_dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
                        **backbone_options) -> MultiviewPipeline:
        """Load a ``tunemv fit`` checkpoint directly: its EMA weights when the run kept them (``ema=None``),
        or as ``ema`` says."""
        from tunemv.adapters.export import UNET_PREFIX, load_adapter_modules, read_checkpoint, submodule_state

        data = read_checkpoint(checkpoint)
        neus, branch = load_adapter_modules(data, ema=ema, source=str(checkpoint))
        unet = submodule_state(data["state_dict"], UNET_PREFIX)
        if unet and isinstance(backbone, Backbone):
            raise AdapterError(f"{checkpoint}: carries a fine-tuned UNet (train_backbone_unet); pass the backbone "
                               "by name, not a loaded Backbone that loading would change")
        pipe = cls._assemble(backbone or data["tunemv"]["backbone"], neus, branch, torch_dtype, device,
                             checkpoint, **backbone_options)
        if unet:  # a train_backbone_unet baseline: its fine-tuned UNet replaces the hub one
            pipe.backbone.unet.load_state_dict(unet, strict=True)
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
                 sampler: str = "mv", scheduler: str = "auto", steps: int = 50, guidance_scale: float = 7.5,
                 consistency_scale: float = 7.5, consistency_ratio: float | None = None,
                 mix_schedule: MixSchedule | str = "seed002", mix_start: float = 0.2, mix_end: float = 1.0,
                 two_d_model: str | Backbone | None = None, refine_rounds: int = 2, refine_strength: float = 0.5,
                 negative_prompt: str = "", eta: float = 0.0, seed: int | None = None,
                 generator: torch.Generator | None = None, view_chunk_size: int | None = None,
                 callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                 progress: bool = True) -> MultiviewPipelineOutput:
        """Generate ``num_views`` views of each prompt (see ``SamplingJob`` and the samplers for the options).

        ``cameras``: Cameras ``[V]`` or ``[B, V]``, or a cameras.json path; default: an orbit at ``elevation``,
        ``radius``, ``fov`` starting at ``azimuth_start``. ``reference_images``: (R, 3, H, W) or (B, R, 3, H, W)
        in [0, 1], PIL images or paths, placed at ``reference_views`` (default 0..R−1) as clean views.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        backbone, device = self.backbone, self.device
        cameras = self._cameras(cameras, num_views, len(prompts), elevation, radius, fov, azimuth_start)
        batch, views = cameras.shape
        size, model_size = backbone.image_resolution, backbone.sample_size
        model_cameras = cameras.rescale(model_size, model_size).to(device)
        generator = generator or torch.Generator("cpu").manual_seed(0 if seed is None else seed)
        # Drawn as diffusers' pipelines draw (B·V, C, h, w), so "2d" reproduces them view by view.
        shape = (batch * views, backbone.in_channels, model_size, model_size)
        noise = rearrange(randn_tensor(shape, generator=generator, device=device, dtype=torch.float32),
                          "(b v) c h w -> b v c h w", b=batch)
        references = prepare_references(backbone, reference_images, reference_views, batch, views, size)
        text = backbone.encode_prompt(prompts)
        uncond = backbone.encode_prompt([negative_prompt] * batch) if guidance_scale > 1.0 else None
        if isinstance(mix_schedule, str):
            mix_schedule = MixSchedule(mix_schedule, mix_start, mix_end)
        two_d = None
        if two_d_model is not None:
            other = two_d_model if isinstance(two_d_model, Backbone) else Backbone.from_pretrained(
                two_d_model, torch_dtype=backbone.dtype, device=device)
            check_same_space(backbone, other)
            two_d = ExternalTwoDScore(other, prompts, [negative_prompt] * batch if uncond is not None else None,
                                      view_chunk_size)
        previous_chunk, self.denoiser.view_chunk = self.denoiser.view_chunk, view_chunk_size or self.denoiser.view_chunk
        # Sampling is inference: NeuS samples rays uniformly (not stratified) in eval mode, so a seed fixes
        # the result. The caller's mode (training validates through here) is restored afterwards.
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            job = SamplingJob(
                denoiser=self.denoiser, scheduler=make_scheduler(scheduler, backbone.scheduler_config, backbone.family),
                noise=noise,
                cameras=model_cameras, text=_text(text), uncond_text=None if uncond is None else _text(uncond),
                alphas_cumprod=backbone.noise_scheduler.alphas_cumprod, prediction_type=backbone.prediction_type,
                steps=steps, guidance_scale=guidance_scale, consistency_scale=consistency_scale,
                consistency_ratio=consistency_ratio, mix_schedule=mix_schedule,
                references=None if references is None else references.mask,
                reference_latents=None if references is None else references.latents,
                two_d=two_d, refine_rounds=refine_rounds, refine_strength=refine_strength, eta=eta,
                generator=generator, callback=callback, progress=progress)
            # A half-precision backbone next to fp32 adapters: autocast gives every matmul one dtype.
            with torch.autocast(device.type, dtype=backbone.dtype, enabled=backbone.dtype != torch.float32):
                latents = get_sampler(sampler)()(job).latents.float()
        finally:
            self.denoiser.view_chunk = previous_chunk
            self.denoiser.train(was_training)
        images = to_unit_range(backbone.decode_views(latents.to(backbone.dtype)))
        mask = torch.zeros(batch, views, dtype=torch.bool, device=device)
        if references is not None:
            mask = references.mask
            images = torch.where(mask[:, :, None, None, None], references.images.to(images), images)
        return MultiviewPipelineOutput(images, latents, cameras, prompts, mask,
                                       MultiviewField(self.denoiser.neus, backbone, latents, model_cameras))

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
        return cameras.rescale(size, size) if (cameras.height, cameras.width) != (size, size) else cameras


def _text(embeddings) -> Text:
    return Text(embeddings.hidden_states.float(), embeddings.added_cond_kwargs)
