"""MultiviewDenoiser: the frozen UNet, steered by the latent SparseNeuS and the control branch (TuneMV3D §3.1–3.3).

Modes:
- ``"mv"``: NeuS renders g_i at the input cameras -> control branch(g_i) with cross-view attention ->
  zero-conv residuals -> frozen UNet;
- ``"independent"``: the control branch on x_t itself, no NeuS, no cross-view attention (x̄ of TuneMV3D §3.3);
  each view still reads its own camera when the branch has camera conditioning and ``independent_camera``
  is on, so consistency guidance (ε_mv − ε_ind) amplifies what the views share, not the camera signal;
- ``"2d"``: the frozen UNet alone.

``forward`` runs one mode through diffusers' own UNet forward; ``predict`` serves every mode a sampler needs
from one pass of the frozen encoder half, because the control residuals only enter the decoder half.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from einops import rearrange, repeat
from torch import nn

from tunemv.adapters.control_branch import ControlBranch, ControlResiduals
from tunemv.adapters.cross_view_attention import CrossViewInputs
from tunemv.adapters.text import Text
from tunemv.adapters.unet_halves import decode, encode, in_unet_dtype
from tunemv.geometry.cameras import Cameras
from tunemv.neus.latent_sparseneus import LatentSparseNeuS, LatentSparseNeuSOutput
from tunemv.neus.latent_sparseneus import check_inputs as check_views

MODES = ("mv", "independent", "2d")


@dataclass
class DenoiserOutput:
    prediction: torch.Tensor  # (B, V, Cp, h, w) in the backbone's parameterisation (learned variance dropped)
    neus: LatentSparseNeuSOutput | None  # "mv" only: renders at the input views, then the supervision views

    @property
    def condition(self) -> torch.Tensor | None:
        """(B, V, C, h, w) g_i, the NeuS renders at the input views that the control branch saw."""
        return None if self.neus is None else self.neus.image[:, : self.prediction.shape[1]]


@dataclass
class ModePredictions:
    """Predictions per mode ("mv", "independent", "2d"), each (B, V, C, h, w): what ``MultiviewDenoiser.predict``
    returns in the backbone's parameterisation and a sampler's scores return in ε, one shape for both."""

    cond: dict[str, torch.Tensor]  # mode -> with the prompt
    uncond: dict[str, torch.Tensor]  # mode -> with the unconditional prompt; empty without one
    # mode -> the learned-variance half with the prompt (IF); empty for backbones without one
    variance: dict[str, torch.Tensor] = field(default_factory=dict)
    neus: LatentSparseNeuSOutput | None = None  # the "mv" renders (text-free, so shared by cond and uncond)

    def merged(self, other: ModePredictions) -> ModePredictions:
        """Both sources' modes in one (``other`` wins a mode both have)."""
        return ModePredictions(self.cond | other.cond, self.uncond | other.uncond, self.variance | other.variance,
                               other.neus if other.neus is not None else self.neus)


class MultiviewDenoiser(nn.Module):
    """Frozen ``unet`` + trainable ``neus`` and ``control_branch``.

    ``prediction_channels`` keeps the first channels of the UNet output (IF's learned-variance half is
    dropped); ``view_chunk`` bounds how many images one frozen-UNet or branch call processes (the branch in
    mode "mv" takes whole objects, since their views attend to each other). ``independent_camera``: whether
    mode "independent" gives the branch each view's camera (it is still per view; default: as the branch was
    trained); only matters for a branch with camera conditioning.
    """

    def __init__(self, unet: UNet2DConditionModel, neus: LatentSparseNeuS, control_branch: ControlBranch,
                 prediction_channels: int | None = None, view_chunk: int | None = None,
                 independent_camera: bool | None = None):
        super().__init__()
        check_compatible(unet, neus, control_branch)
        self.unet = unet.requires_grad_(False).eval()
        self.neus = neus
        self.control_branch = control_branch
        self.prediction_channels = prediction_channels or unet.config.out_channels
        if view_chunk is not None and view_chunk < 1:
            raise ValueError(f"view_chunk must be >= 1 or None, got {view_chunk}")
        self.view_chunk = view_chunk
        self.independent_camera = control_branch.independent_camera if independent_camera is None \
            else independent_camera

    @classmethod
    def from_backbone(cls, backbone, neus: LatentSparseNeuS, control_branch: ControlBranch, **kwargs
                      ) -> MultiviewDenoiser:
        return cls(backbone.unet, neus, control_branch, prediction_channels=backbone.prediction_channels, **kwargs)

    def train(self, mode: bool = True) -> MultiviewDenoiser:
        super().train(mode)
        self.unet.eval()  # frozen: dropout and norms stay in inference behaviour
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward: the branch, NeuS, and the frozen UNet the gradient flows through."""
        for module in (self.control_branch, self.neus, self.unet):
            module.enable_gradient_checkpointing()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def parameter_report(self) -> str:
        """A table of trainable and frozen parameter counts per component."""
        rows = [(name, sum(p.numel() for p in module.parameters() if p.requires_grad),
                 sum(p.numel() for p in module.parameters() if not p.requires_grad))
                for name, module in self.named_children()]
        rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
        lines = [f"{'component':<16}{'trainable':>14}{'frozen':>14}"]
        lines += [f"{name:<16}{trainable:>14,}{frozen:>14,}" for name, trainable, frozen in rows]
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------ one mode
    def forward(self, noisy_views: torch.Tensor, timesteps: torch.Tensor, cameras: Cameras,
                encoder_hidden_states: torch.Tensor, mode: str = "mv",
                added_cond_kwargs: dict[str, torch.Tensor] | None = None,
                supervision_cameras: Cameras | None = None, with_normals: bool = False) -> DenoiserOutput:
        """(B, V, C, h, w) x_t at (B, V) timesteps (0 = clean reference), Cameras ``[B, V]``, (B, L, D) text.

        In mode "mv", NeuS also renders at ``supervision_cameras`` ``[B, S]`` (appended after the V input
        views in ``output.neus``) for the render loss on held-out views.
        """
        check_inputs(noisy_views, timesteps, cameras, encoder_hidden_states, mode)
        batch, views = timesteps.shape
        text = Text(encoder_hidden_states, added_cond_kwargs).per_view(views)
        sample, flat_t = rearrange(noisy_views, "b v c h w -> (b v) c h w"), rearrange(timesteps, "b v -> (b v)")
        renders, residuals = None, None
        if mode == "mv":
            renders = self.render_condition(noisy_views, timesteps, cameras, supervision_cameras, with_normals)
            residuals = self.mv_residuals(sample, flat_t, text, renders, cameras)
        elif mode == "independent":
            residuals = self.independent_residuals(sample, flat_t, text, cameras.flatten())
        outputs = []
        for part in self.chunks(len(sample)):
            down, mid = (None, None) if residuals is None else (
                tuple(r[part] for r in residuals.down), residuals.mid[part])
            part_text = text[part]
            part_sample, hidden, added = in_unet_dtype(self.unet, sample[part], part_text.hidden_states,
                                                       part_text.added_cond_kwargs)
            if residuals is not None:
                down, mid = tuple(r.to(self.unet.dtype) for r in down), mid.to(self.unet.dtype)
            outputs.append(self.unet(part_sample, flat_t[part], hidden, added_cond_kwargs=added,
                                     down_block_additional_residuals=down, mid_block_additional_residual=mid).sample)
        prediction = rearrange(torch.cat(outputs).float(), "(b v) c h w -> b v c h w", b=batch)
        return DenoiserOutput(prediction[:, :, : self.prediction_channels], renders)

    # ------------------------------------------------------------------------------------ shared encoder
    def predict(self, noisy_views: torch.Tensor, timesteps: torch.Tensor, cameras: Cameras, text: Text,
                modes: Sequence[str] = MODES, uncond: Text | None = None,
                cond_only: Collection[str] = ()) -> ModePredictions:
        """Every requested mode, with ``text`` and (given ``uncond``) without the prompt, from one encoder pass.

        The frozen encoder half runs once per distinct input (prompt and, for CFG, the empty prompt), the
        branch once per non-2d mode and NeuS once; the decoder half runs once per mode. Modes in
        ``cond_only`` are predicted with the prompt only (consistency guidance never reads ε_ind(∅)), which
        saves their branch and decoder passes on the unconditional copy.
        """
        for mode in modes:
            check_inputs(noisy_views, timesteps, cameras, text.hidden_states, mode)
        if len(set(modes)) != len(modes) or not modes:
            raise ValueError(f"modes must be distinct and non-empty, got {tuple(modes)}")
        batch, views = timesteps.shape
        texts = [text] if uncond is None else [text, uncond]
        copies = len(texts)
        # Inputs ordered (text, b, v): the same views under each prompt.
        text = Text.cat(texts).per_view(views)
        sample = repeat(noisy_views, "b v c h w -> (k b v) c h w", k=copies)
        flat_t = repeat(timesteps, "b v -> (k b v)", k=copies)

        renders = None
        residuals: dict[str, ControlResiduals | None] = {"2d": None}
        if "mv" in modes:
            renders = self.render_condition(noisy_views, timesteps, cameras)
            residuals["mv"] = self.mv_residuals(sample, flat_t, text, renders, Cameras.cat([cameras] * copies),
                                                copies)
        # Rows of the (k b v) batch each mode needs: all copies, or the prompted copy only.
        cond_rows = batch * views
        needed = {mode: cond_rows if copies > 1 and mode in cond_only else len(sample) for mode in modes}
        if "independent" in modes:
            rows = slice(0, needed["independent"])
            flat_cameras = Cameras.cat([cameras] * copies).flatten()
            residuals["independent"] = self.independent_residuals(sample[rows], flat_t[rows], text[rows],
                                                                  flat_cameras[rows])

        outputs: dict[str, list[torch.Tensor]] = {mode: [] for mode in modes}
        for part in self.chunks(len(sample)):
            part_text = text[part]
            state = encode(self.unet, sample[part], flat_t[part], part_text.hidden_states,
                           part_text.added_cond_kwargs)
            # One decoder call per mode: batching the modes tiles the state and multiplies the attention maps
            # (a 1,024-token map per image at SD-1.5's 32x32 latents); in the P2 benchmark on CPU that batched
            # call was slower than separate full forwards.
            for mode in modes:
                used = slice(part.start, min(part.stop, needed[mode]))
                if used.stop <= used.start:
                    continue
                local = slice(0, used.stop - used.start)
                extra = residuals[mode]
                down, mid = (None, None) if extra is None else (tuple(r[used] for r in extra.down), extra.mid[used])
                outputs[mode].append(decode(self.unet, state if local.stop == len(state.mid) else state.rows(local),
                                            down, mid))
        full = {mode: rearrange(torch.cat(chunks).float(), "(k b v) c h w -> k b v c h w",
                                k=needed[mode] // cond_rows, b=batch) for mode, chunks in outputs.items()}
        channels = self.prediction_channels
        cond = {mode: p[0, :, :, :channels] for mode, p in full.items()}
        uncond = {mode: p[1, :, :, :channels] for mode, p in full.items() if len(p) == 2}
        variance = {mode: p[0, :, :, channels:] for mode, p in full.items() if p.shape[3] > channels}
        return ModePredictions(cond, uncond, variance, renders)

    # --------------------------------------------------------------------------------- the trainable parts
    def render_condition(self, noisy_views: torch.Tensor, timesteps: torch.Tensor, cameras: Cameras,
                         supervision_cameras: Cameras | None = None, with_normals: bool = False
                         ) -> LatentSparseNeuSOutput:
        """NeuS fused from all views, rendered at the input views (then the supervision views), at x_t's size."""
        targets = cameras if supervision_cameras is None else Cameras.cat([cameras, supervision_cameras], dim=1)
        return self.neus(noisy_views, timesteps, cameras, targets, resolution=tuple(noisy_views.shape[-2:]),
                         with_normals=with_normals)

    def mv_residuals(self, sample: torch.Tensor, timesteps: torch.Tensor, text: Text,
                     renders: LatentSparseNeuSOutput, cameras: Cameras, copies: int = 1) -> ControlResiduals:
        """The branch on g_i with cross-view attention; ``copies`` stacked prompt variants share one render."""
        batch, views = cameras.shape
        take = lambda x: torch.cat([x[:, :views]] * copies)  # noqa: E731 - input views only, per prompt copy
        condition = rearrange(take(renders.image), "b v c h w -> (b v) c h w")
        points, weights = take(renders.sample_points), take(renders.sample_weights)
        group = max(1, (self.view_chunk or len(sample)) // views)  # whole objects per call
        results = []
        for start in range(0, batch, group):
            objs = slice(start, min(start + group, batch))
            part = slice(objs.start * views, objs.stop * views)
            cross_view = CrossViewInputs(cameras[objs], points[objs], weights[objs])
            part_text = text[part]
            results.append(self.control_branch(sample[part], timesteps[part], part_text.hidden_states,
                                               condition[part], part_text.added_cond_kwargs,
                                               cross_view=cross_view, cameras=cameras[objs].flatten()))
        return cat_residuals(results)

    def independent_residuals(self, sample: torch.Tensor, timesteps: torch.Tensor, text: Text,
                              cameras: Cameras | None = None) -> ControlResiduals:
        """The branch on x_t itself: no NeuS, no cross-view attention; views are independent. ``cameras``
        ``[N]`` (one per row of ``sample``) reach the branch when ``independent_camera`` is on."""
        cameras = cameras if self.independent_camera else None
        results = []
        for part in self.chunks(len(sample)):
            part_text = text[part]
            results.append(self.control_branch(sample[part], timesteps[part], part_text.hidden_states,
                                               sample[part], part_text.added_cond_kwargs,
                                               cameras=None if cameras is None else cameras[part]))
        return cat_residuals(results)

    def chunks(self, total: int) -> list[slice]:
        step = self.view_chunk or total
        return [slice(start, min(start + step, total)) for start in range(0, total, step)]


def cat_residuals(parts: Sequence[ControlResiduals]) -> ControlResiduals:
    if len(parts) == 1:
        return parts[0]
    down = tuple(torch.cat(level) for level in zip(*[p.down for p in parts], strict=True))
    return ControlResiduals(down, torch.cat([p.mid for p in parts]))


def check_compatible(unet: UNet2DConditionModel, neus: LatentSparseNeuS, branch: ControlBranch) -> None:
    """An incompatible trio fails here, with the mismatch named, not deep inside a forward pass."""
    in_channels = unet.config.in_channels
    if neus.config.in_channels != in_channels:
        raise ValueError(f"NeuS reads {neus.config.in_channels}-channel views but the UNet's are {in_channels}")
    if branch.config.condition_channels != neus.out_channels:
        raise ValueError(f"the control branch takes {branch.config.condition_channels}-channel conditions but "
                         f"NeuS renders {neus.out_channels}")
    if branch.config.condition_channels != in_channels:
        raise ValueError(f"mode 'independent' feeds x_t ({in_channels} channels) as the condition, but the "
                         f"branch takes {branch.config.condition_channels}")
    for key in ("block_out_channels", "down_block_types", "layers_per_block", "in_channels"):
        ours, theirs = branch.config.unet_config.get(key), unet.config.get(key)
        if _as_list(ours) != _as_list(theirs):
            raise ValueError(f"the control branch was built for a UNet with {key}={ours}, not {theirs}")


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def check_inputs(noisy_views: torch.Tensor, timesteps: torch.Tensor, cameras: Cameras,
                 encoder_hidden_states: torch.Tensor, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    check_views(noisy_views, timesteps, cameras)  # the same (B, V) rules as NeuS
    if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[0] != noisy_views.shape[0]:
        raise ValueError(f"encoder_hidden_states must be (B={noisy_views.shape[0]}, L, D) per object, got "
                         f"{list(encoder_hidden_states.shape)}")
