"""The training systems' grouped options: what ``model:`` holds in a config, one documented class per group.

LightningCLI reads each group as a nested section (``model.diffusion_loss.high_noise_weight``, or
``--model.diffusion_loss.high_noise_weight 25``); each value's type and range are checked where the group is
built, so a bad value is one line naming its key. Checkpoints keep the groups as plain dicts (``as_plain``),
which ``load_from_checkpoint`` and ``from_plain`` turn back into the classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunemv.errors import TunemvError
from tunemv.sampling.one_step import MIN_ALPHA_BAR
from tunemv.training.noising import check_high_noise_weight, check_timestep_shift


class ConfigError(TunemvError, ValueError):
    """A model option of the wrong type or out of range."""


def _number(key: str, value: Any, low: float | None = None, high: float | None = None, optional: bool = False,
            whole: bool = False) -> None:
    if value is None and optional:
        return
    kind = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ConfigError(f"model.{key} must be a {'whole ' if whole else ''}number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"model.{key} must be in {bounds}, got {value!r}")


def _choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"model.{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ------------------------------------------------------------------------------ the adapter system (tunemv fit)
@dataclass(frozen=True)
class CrossViewConfig:
    """Geometry-aware cross-view attention in the control branch (TuneMV3D §3.2; ``ControlBranch.from_unet``).

    Args:
        blocks: the branch's down blocks that get a cross-view layer.
        heads, points, patch_size: attention heads, points sampled along each epipolar line, and the patch
            size of the attended features.
        weight_gradient: how the NeuS weights' log passes gradient into NeuS: "detached", "full" or
            "floored" (log max(w, 1e-3)); see ``cross_view_attention``.
    """

    blocks: tuple[int, ...] = (0,)
    heads: int = 4
    points: int = 8
    patch_size: int = 1
    weight_gradient: str = "detached"

    def __post_init__(self):
        if not isinstance(self.blocks, Sequence) or not all(isinstance(b, int) and b >= 0 for b in self.blocks):
            raise ConfigError(f"model.cross_view.blocks must be a list of block indices, got {self.blocks!r}")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        for name in ("heads", "points", "patch_size"):
            _number(f"cross_view.{name}", getattr(self, name), 1, whole=True)
        _choice("cross_view.weight_gradient", self.weight_gradient, ("detached", "full", "floored"))


@dataclass(frozen=True)
class CameraConfig:
    """How each view reads its own camera in the branch, beyond TuneMV3D (``adapters/camera_conditioning.py``).

    Args:
        conditioning: "none", "plucker" (per-pixel Plücker ray maps beside g_i, MV-Adapter), "embedding"
            (added to the branch's time embedding, MVDream) or "both". None: the ``init_from`` adapter's own
            (continuing an adapter keeps how it reads the camera), else "none".
        independent: whether mode "independent" (NeuS dropped) also reads the camera. None: the
            ``init_from`` adapter's own, else True.
        learning_rate: AdamW learning rate of the camera encoders (None: ``optimization.learning_rate``);
            Wonder3D trains its camera embedding at 10x.
        noise: VFusion3D's camera-noise injection: uniform noise of this amplitude on the intrinsics and
            extrinsics of the cameras the model reads (0: off). Renders are supervised at the true ones.
    """

    conditioning: str | None = None
    independent: bool | None = None
    learning_rate: float | None = None
    noise: float = 0.0

    def __post_init__(self):
        if self.conditioning is not None:
            _choice("camera.conditioning", self.conditioning, ("none", "plucker", "embedding", "both"))
        if self.independent is not None and not isinstance(self.independent, bool):
            raise ConfigError(f"model.camera.independent must be true, false or null, got {self.independent!r}")
        _number("camera.learning_rate", self.learning_rate, 0, optional=True)
        _number("camera.noise", self.noise, 0)


@dataclass(frozen=True)
class OptimizationConfig:
    """AdamW over the trainable parameters only, linear warm-up then cosine decay to 0 at ``trainer.max_steps``.

    Args:
        learning_rate: the control branch's (and a fine-tuned UNet's).
        neus_learning_rate: the NeuS field's.
        weight_decay, warmup_steps: AdamW's decoupled weight decay; steps of linear warm-up.
    """

    learning_rate: float = 1e-4
    neus_learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 100

    def __post_init__(self):
        for name in ("learning_rate", "neus_learning_rate", "weight_decay"):
            _number(f"optimization.{name}", getattr(self, name), 0)
        _number("optimization.warmup_steps", self.warmup_steps, 0, whole=True)


@dataclass(frozen=True)
class DropoutConfig:
    """What a training step randomly leaves out, so that one adapter serves several uses.

    Args:
        reference: probability that an object gets 1..V-1 clean reference views (image→multiview).
        neus: probability of a step in mode "independent", NeuS dropped (trains consistency guidance's x̄).
        text: per-object probability of the empty prompt (classifier-free guidance).
    """

    reference: float = 0.1
    neus: float = 0.1
    text: float = 0.1

    def __post_init__(self):
        for name in ("reference", "neus", "text"):
            _number(f"dropouts.{name}", getattr(self, name), 0, 1)


@dataclass(frozen=True)
class NeuSLossConfig:
    """Weights of the NeuS field's loss at the input and supervision views (``NeuSLoss``).

    Args:
        render_weight: rendered views against the clean ones.
        eikonal_weight: the SDF's gradient norm towards 1.
        opacity_weight: rendered opacity against the masks, which keeps the render loss from being met by
            colour alone.
        depth_weight: rendered depth against the dataset's depth/ (0: off).
    """

    render_weight: float = 1.0
    eikonal_weight: float = 0.1
    opacity_weight: float = 0.5
    depth_weight: float = 0.0

    def __post_init__(self):
        for name in ("render_weight", "eikonal_weight", "opacity_weight", "depth_weight"):
            _number(f"neus_loss.{name}", getattr(self, name), 0)


@dataclass(frozen=True)
class DiffusionLossConfig:
    """Where the diffusion loss looks.

    Args:
        timestep_shift: shift training timesteps toward low SNR: log-SNR minus log(shift), as MV-Adapter does
            with the number of views (the global layout is decided at high noise). A number >= 1, "views"
            (the run's view count) or None (off).
        high_noise_weight: weight the ε loss by clip(1 / SNR(t), 1, this), normalised to mean 1: the x0 error
            at high noise, where the ε loss hardly sees the pose (``high_noise_weights``). None: plain ε loss.
    """

    timestep_shift: float | str | None = None
    high_noise_weight: float | None = None

    def __post_init__(self):
        try:
            check_timestep_shift(self.timestep_shift)
            check_high_noise_weight(self.high_noise_weight)
        except ValueError as error:
            raise ConfigError(f"model.diffusion_loss.{error}") from error


@dataclass(frozen=True)
class ValidationConfig:
    """What each validation samples: the view grid and the NeuS renders are logged as images and written as
    PNGs under ``<log dir>/samples/``.

    Args:
        prompts: the prompts (None: the first validation batch's captions).
        sampler, steps, views, guidance_scale: how they are sampled (DDIM); ``steps=0`` turns sampling off.
    """

    prompts: tuple[str, ...] | None = None
    sampler: str = "mv"
    steps: int = 10
    views: int = 4
    guidance_scale: float = 7.5

    def __post_init__(self):
        if self.prompts is not None:
            if isinstance(self.prompts, str) or not all(isinstance(p, str) for p in self.prompts):
                raise ConfigError(f"model.validation.prompts must be a list of prompts or null, got {self.prompts!r}")
            object.__setattr__(self, "prompts", tuple(self.prompts))
        _number("validation.steps", self.steps, 0, whole=True)
        _number("validation.views", self.views, 1, whole=True)
        _number("validation.guidance_scale", self.guidance_scale, 0)


@dataclass(frozen=True)
class EMAConfig:
    """An exponential moving average of the trainable weights, exported and sampled in place of the live ones,
    with diffusers' decay warm-up min(decay, (1 + n) / (10 + n)), so a short run's EMA is not its initial weights.

    Args:
        decay: the EMA's decay.
    """

    decay: float = 0.999

    def __post_init__(self):
        _number("ema.decay", self.decay, 0, 1)
        if self.decay == 1:
            raise ConfigError("model.ema.decay must be below 1 (at 1 the average never moves), got 1")


# ------------------------------------------------------------------------- one-step distillation (tunemv distill)
@dataclass(frozen=True)
class VSDConfig:
    """Stage I: variational score distillation of the teacher into G (GECO §3.1).

    Args:
        steps: stage I's steps (0: stage II only, e.g. from a stage-I generator through ``init_from``).
        teacher_guidance_scale: the teacher's classifier-free guidance.
        weighting: w(t) of eq. 1, "dmd" or "sds" (``training/distillation.py``).
        t_range: t as a fraction of T (GECO §4.1: [0.02, 0.98]).
        regression_weight: DMD's paired regression ‖G(z) − teacher(z)‖² (0: off).
        generator_every: update G every this many steps; the student every step.
        train_neus: also train G's NeuS, which here only renders the branch's condition from noise at t_G;
            off by default, since on 2 CPU cores its backward made a stage-I step 1.7x slower.
    """

    steps: int = 500
    teacher_guidance_scale: float = 4.0
    weighting: str = "dmd"
    t_range: tuple[float, float] = (0.02, 0.98)
    regression_weight: float = 0.25
    generator_every: int = 1
    train_neus: bool = False

    def __post_init__(self):
        _number("vsd.steps", self.steps, 0, whole=True)
        _number("vsd.teacher_guidance_scale", self.teacher_guidance_scale, 0)
        _choice("vsd.weighting", self.weighting, ("dmd", "sds"))
        low, high = self.t_range
        if not 0 <= low < high <= 1:
            raise ConfigError(f"model.vsd.t_range must be [low, high] with 0 <= low < high <= 1, got {self.t_range!r}")
        object.__setattr__(self, "t_range", (float(low), float(high)))
        _number("vsd.regression_weight", self.regression_weight, 0)
        _number("vsd.generator_every", self.generator_every, 1, whole=True)


@dataclass(frozen=True)
class ConsistencyConfig:
    """Stage II: 3D-consistent distillation against the teacher's cached pseudo ground truth (GECO §3.2):
    field_weight·(MSE + ssim_weight·(1 − SSIM)) of the field's renders + opacity_weight·MSE of its opacity +
    view_weight·MSE of the one-step views.

    Args:
        field_weight, ssim_weight, opacity_weight, view_weight: the loss's weights.
        train_neus: also train G's NeuS (False: G's branch only, trained through the views).
    """

    field_weight: float = 1.0
    ssim_weight: float = 0.2
    opacity_weight: float = 0.5
    view_weight: float = 0.5
    train_neus: bool = True

    def __post_init__(self):
        for name in ("field_weight", "ssim_weight", "opacity_weight", "view_weight"):
            _number(f"consistency.{name}", getattr(self, name), 0)


@dataclass(frozen=True)
class GeneratorConfig:
    """G's one timestep t_G.

    Args:
        min_alpha_bar: t_G is the noisiest t with ᾱ ≥ this.
        timestep: t_G as given instead (None: from ``min_alpha_bar``).
    """

    min_alpha_bar: float = MIN_ALPHA_BAR
    timestep: int | None = None

    def __post_init__(self):
        _number("generator.min_alpha_bar", self.min_alpha_bar, 0, 1)
        _number("generator.timestep", self.timestep, 0, optional=True, whole=True)


@dataclass(frozen=True)
class StudentConfig:
    """VSD's student score (stage I), a copy of the teacher trained on G's samples.

    Args:
        train_neus: the student's NeuS too (False: the teacher's field, shared and frozen).
        learning_rate: its AdamW learning rate.
    """

    train_neus: bool = False
    learning_rate: float = 1e-4

    def __post_init__(self):
        _number("student.learning_rate", self.learning_rate, 0)


DISTILLATION_OPTIMIZATION = OptimizationConfig(learning_rate=1e-4, neus_learning_rate=1e-4, weight_decay=0.0,
                                               warmup_steps=20)


# ------------------------------------------------------------------------------------------------ plumbing
def as_group(cls: type, value: Any, key: str) -> Any:
    """``value`` as ``cls``: as given, or built from a dict (a checkpoint's hyperparameters)."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"model.{key} has no option {unknown[0]!r}; its options: {', '.join(sorted(names))}")
        return cls(**value)
    raise ConfigError(f"model.{key} must be a mapping of its options, got {value!r}")


def as_plain(values: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as plain data: groups become dicts (a checkpoint read with weights_only=True holds no
    classes), tuples lists."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return {key: plain(value) for key, value in values.items()}


# Where each former flat key of model: lives now, for a one-line hint on an old config.
MOVED = {
    "cross_view_blocks": "cross_view.blocks", "cross_view_heads": "cross_view.heads",
    "cross_view_points": "cross_view.points", "cross_view_patch_size": "cross_view.patch_size",
    "cross_view_weight_gradient": "cross_view.weight_gradient",
    "camera_conditioning": "camera.conditioning", "independent_camera": "camera.independent",
    "camera_learning_rate": "camera.learning_rate", "camera_noise": "camera.noise",
    "learning_rate": "optimization.learning_rate", "neus_learning_rate": "optimization.neus_learning_rate",
    "weight_decay": "optimization.weight_decay", "warmup_steps": "optimization.warmup_steps",
    "p_reference": "dropouts.reference", "p_drop_neus": "dropouts.neus", "p_drop_text": "dropouts.text",
    "render_weight": "neus_loss.render_weight", "eikonal_weight": "neus_loss.eikonal_weight",
    "opacity_weight": "neus_loss.opacity_weight", "depth_weight": "neus_loss.depth_weight",
    "timestep_shift": "diffusion_loss.timestep_shift", "high_noise_weight": "diffusion_loss.high_noise_weight",
    "validation_prompts": "validation.prompts", "validation_sampler": "validation.sampler",
    "validation_steps": "validation.steps", "validation_views": "validation.views",
    "validation_guidance_scale": "validation.guidance_scale", "ema_decay": "ema.decay",
}
MOVED_DISTILLATION = {
    "vsd_steps": "vsd.steps", "teacher_guidance_scale": "vsd.teacher_guidance_scale",
    "vsd_weighting": "vsd.weighting", "t_range": "vsd.t_range", "regression_weight": "vsd.regression_weight",
    "generator_every": "vsd.generator_every", "vsd_train_neus": "vsd.train_neus",
    "field_weight": "consistency.field_weight", "ssim_weight": "consistency.ssim_weight",
    "opacity_weight": "consistency.opacity_weight", "view_weight": "consistency.view_weight",
    "train_neus": "consistency.train_neus", "min_alpha_bar": "generator.min_alpha_bar",
    "generator_timestep": "generator.timestep", "student_train_neus": "student.train_neus",
    "student_learning_rate": "student.learning_rate", "learning_rate": "optimization.learning_rate",
    "neus_learning_rate": "optimization.neus_learning_rate", "weight_decay": "optimization.weight_decay",
    "warmup_steps": "optimization.warmup_steps", "ema_decay": "ema.decay",
}


def moved_key(key: str, distillation: bool = False) -> str | None:
    """The nested key a former flat ``model.<key>`` became, or None."""
    return (MOVED_DISTILLATION if distillation else MOVED).get(key)

