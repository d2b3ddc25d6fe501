"""The Lightning training system: a frozen backbone, a trainable latent SparseNeuS and control branch (TuneMV3D §3, §4.1).

One training step: encode the clean views; one timestep per object, shared by its views; noise; some views
made clean references (t = 0, out of the diffusion loss); NeuS dropped (mode "independent") or the prompt
dropped with given probabilities; loss = diffusion loss in the backbone's parameterisation + the NeuS render
loss at the input and the supervision views (+ eikonal, + opacity).

Every step seeds torch's RNG from (seed, global step), so a resumed run replays the same noise, timesteps,
dropouts and NeuS samples as an uninterrupted one without storing RNG state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import torch
from torch.optim.swa_utils import AveragedModel

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.control_branch import ControlBranch
from tunemv.adapters.denoiser import MultiviewDenoiser
from tunemv.adapters.formats import (
    ADAPTER_FILE,
    AdapterError,
    checkpoint_metadata,
    read_adapter_folder,
    read_pretrained_neus,
)
from tunemv.data.batch import MultiviewItem
from tunemv.errors import TunemvError
from tunemv.neus.latent_sparseneus import LatentSparseNeuS
from tunemv.neus.losses import NeuSLoss
from tunemv.training.config import (
    CameraConfig,
    CrossViewConfig,
    DiffusionLossConfig,
    DropoutConfig,
    EMAConfig,
    NeuSLossConfig,
    OptimizationConfig,
    ValidationConfig,
    as_group,
    as_plain,
)
from tunemv.training.ema import warmup_ema_multi_avg_fn
from tunemv.training.latent_cache import LatentCache
from tunemv.training.model_inputs import ModelInputs
from tunemv.training.noising import (
    add_noise,
    diffusion_target,
    high_noise_weights,
    shift_timesteps,
)
from tunemv.training.system_setup import neus_arguments, views_and_supervision, warmup_cosine
from tunemv.training.validation import log_validation_samples


class NonFiniteLossError(TunemvError):
    """Too many training steps in a row had a NaN or infinite loss."""


# NeuS settings that change how rays are sampled, not the weights: an init_from run may still set them.
SAMPLING_KEYS = ("num_coarse", "num_importance", "upsample_steps", "ray_chunk", "eikonal_samples",
                 "gradient_checkpointing")


def initial_modules(path: str, neus_overrides: dict[str, Any]) -> tuple[LatentSparseNeuS, ControlBranch | None]:
    """The NeuS (with the run's sampling settings) and, for an adapter folder, the control branch to start from."""
    architecture = sorted(set(neus_overrides) - set(SAMPLING_KEYS))
    if architecture:
        raise AdapterError(f"{path}: model.init_from fixes the NeuS architecture; model.neus may only set "
                           f"{', '.join(SAMPLING_KEYS)}, not {', '.join(architecture)}")
    branch = None
    if (Path(path) / ADAPTER_FILE).is_file():
        neus, branch, _ = read_adapter_folder(path)
    else:
        neus = read_pretrained_neus(path)
    if neus_overrides:
        resampled = LatentSparseNeuS.from_config({**dict(neus.config), **neus_overrides})
        resampled.load_state_dict(neus.state_dict())
        neus = resampled
    return neus, branch


def check_neus_channels(path: str, config: dict[str, Any], channels: int) -> None:
    if config["in_channels"] != channels or (config.get("out_channels") or config["in_channels"]) != channels:
        raise AdapterError(f"{path}: its NeuS reads {config['in_channels']}-channel views but the backbone's have "
                           f"{channels}; pretrain one on this backbone")


def continued_camera(path: str | None, initial: ControlBranch | None, conditioning: str | None,
                     independent: bool | None) -> tuple[str, bool]:
    """The run's camera conditioning: what the config sets, else what the adapter it continues was trained with.

    A run may add a camera encoder to an adapter (from "none" to any, or to "both"; the new encoder starts at
    its init), but not drop or change the one an adapter has: its trained camera weights would have nowhere
    to go."""
    own = initial.camera_conditioning if initial is not None else "none"
    if conditioning is None:
        conditioning = own
    elif own not in ("none", conditioning) and conditioning != "both":
        raise AdapterError(f"{path}: its control branch reads the camera as {own!r}, not {conditioning!r}; "
                           f"leave model.camera.conditioning unset (or {own!r}) to continue it")
    if independent is None:
        independent = initial.independent_camera if initial is not None else True
    return conditioning, independent


def load_initial(module: torch.nn.Module, initial: torch.nn.Module, path: str, new_prefixes: tuple[str, ...] = ()
                 ) -> None:
    """Load ``initial``'s weights; only weights under ``new_prefixes`` may be missing (they keep their init)."""
    try:
        missing, unexpected = module.load_state_dict(initial.state_dict(), strict=False)
        wrong = [key for key in missing if not key.startswith(new_prefixes)] + list(unexpected)
        if wrong:
            raise RuntimeError(f"missing or unexpected weights: {', '.join(wrong[:3])}")
    except RuntimeError as error:
        raise AdapterError(f"{path}: its {type(module).__name__} does not fit this run's configuration "
                           f"({str(error).splitlines()[0]})") from error


def check_precision(backbone_dtype: torch.dtype, precision: str, accelerator: Any = None) -> None:
    """Refuse, in one line, a backbone dtype the trainer's precision cannot run.

    The frozen UNet takes its inputs in its own dtype (``unet_halves.in_unet_dtype``), so fp32, bf16 and fp16
    backbones all run under ``32-true``, and each under the autocast of its own kind. A half-precision
    backbone under the other half type's autocast cannot: autocast refuses to promote between bf16 and fp16."""
    autocast = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
    if autocast is not None and backbone_dtype in (torch.float16, torch.bfloat16) and backbone_dtype != autocast:
        name = str(backbone_dtype).removeprefix("torch.")
        on_cpu = type(accelerator).__name__ == "CPUAccelerator"
        raise TunemvError(f"model.backbone_dtype {name} cannot run under trainer.precision {precision}"
                          f"{' (on CPU Lightning also runs 16-mixed as bf16-mixed)' if on_cpu else ''}; "
                          f"use {'bf16-mixed' if name == 'bfloat16' else '16-mixed on a GPU'} or 32-true, "
                          "or a float32 backbone")


class MultiviewAdapterSystem(pl.LightningModule):
    """Trains the latent SparseNeuS and the control branch next to a frozen text-to-image backbone.

    Args:
        backbone: hub id or local folder of a diffusers pipeline (SD 1.x/2.x, SDXL, DeepFloyd-IF stage I).
        backbone_dtype: storage dtype of the frozen backbone ("float16", "bfloat16"; None keeps fp32).
        neus: ``LatentSparseNeuS`` arguments; ``in_channels``, ``out_channels`` and ``background`` default
            to the backbone's channels and its white.
        init_from: start from a pretrained NeuS folder (stage 1, e.g. ``models/tiny-neus``) or an exported
            adapter folder (its NeuS and control branch), with a fresh optimizer (VFusion3D's stages). The
            folder's architecture wins; ``neus`` may still change how rays are sampled.
        train_neus: False freezes the NeuS (stage 2 after a stage-1 ``init_from``): it then renders the condition
            in inference behaviour and has no loss, which makes a CPU step about twice as cheap.
        cross_view: the branch's cross-view attention (``CrossViewConfig``).
        condition_embedding_channels: the branch's embedding of the NeuS condition g_i.
        camera: how each view reads its camera (``CameraConfig``).
        optimization: AdamW and its schedule (``OptimizationConfig``).
        dropouts: reference views, NeuS and text dropped at random (``DropoutConfig``).
        neus_loss, diffusion_loss: the two losses (``NeuSLossConfig``, ``DiffusionLossConfig``).
        validation: what each validation samples (``ValidationConfig``).
        ema: an EMA of the trainable weights (``EMAConfig``; None: off).
        max_nonfinite_steps: consecutive NaN/inf losses that are skipped before training stops.
        gradient_checkpointing, view_chunk: memory options of the denoiser.
        latent_cache_dir: cache the VAE latents of training views there (latent backbones; see
            ``LatentCache``), so each view is encoded once over the whole run.
        train_backbone_unet: a baseline, not the method: also fine-tune the backbone's UNet (at
            ``optimization.learning_rate``), so that a run measures what full fine-tuning on a small 3D set
            costs the 2D model (TuneMV3D's comparison). Its checkpoints then carry the UNet too.
        seed: seeds every step's randomness together with the global step.
    """

    def __init__(self, backbone: str, backbone_dtype: str | None = None, neus: dict[str, Any] | None = None,
                 init_from: str | None = None, train_neus: bool = True,
                 cross_view: CrossViewConfig = CrossViewConfig(),
                 condition_embedding_channels: Sequence[int] = (16, 32), camera: CameraConfig = CameraConfig(),
                 optimization: OptimizationConfig = OptimizationConfig(), dropouts: DropoutConfig = DropoutConfig(),
                 neus_loss: NeuSLossConfig = NeuSLossConfig(),
                 diffusion_loss: DiffusionLossConfig = DiffusionLossConfig(),
                 validation: ValidationConfig = ValidationConfig(), ema: EMAConfig | None = None,
                 max_nonfinite_steps: int = 10, gradient_checkpointing: bool = False, view_chunk: int | None = None,
                 latent_cache_dir: str | None = None, train_backbone_unet: bool = False, seed: int = 0):
        super().__init__()
        # Groups arrive as classes from LightningCLI and as dicts from a checkpoint's hyperparameters.
        self.settings = settings = SimpleNamespace(
            backbone=backbone, backbone_dtype=backbone_dtype, neus=neus, init_from=init_from, train_neus=train_neus,
            cross_view=as_group(CrossViewConfig, cross_view, "cross_view"),
            condition_embedding_channels=tuple(condition_embedding_channels),
            camera=as_group(CameraConfig, camera, "camera"),
            optimization=as_group(OptimizationConfig, optimization, "optimization"),
            dropouts=as_group(DropoutConfig, dropouts, "dropouts"), neus_loss=as_group(NeuSLossConfig, neus_loss, "neus_loss"),
            diffusion_loss=as_group(DiffusionLossConfig, diffusion_loss, "diffusion_loss"),
            validation=as_group(ValidationConfig, validation, "validation"), ema=as_group(EMAConfig, ema, "ema"),
            max_nonfinite_steps=max_nonfinite_steps, gradient_checkpointing=gradient_checkpointing,
            view_chunk=view_chunk, latent_cache_dir=latent_cache_dir, train_backbone_unet=train_backbone_unet,
            seed=seed)
        self.save_hyperparameters(as_plain(vars(settings)))
        self.backbone = Backbone.from_pretrained(backbone, torch_dtype=backbone_dtype)
        if settings.diffusion_loss.high_noise_weight is not None and self.backbone.prediction_type != "epsilon":
            raise TunemvError(f"model.diffusion_loss.high_noise_weight reweights an ε loss, but {backbone} predicts "
                              f"{self.backbone.prediction_type!r}; leave it null")
        neus_args = neus_arguments(backbone, self.backbone, neus)
        initial_neus, initial_branch = (None, None) if init_from is None else initial_modules(init_from, neus or {})
        if initial_neus is not None:
            check_neus_channels(init_from, dict(initial_neus.config), self.backbone.in_channels)
        camera_conditioning, independent_camera = continued_camera(
            init_from, initial_branch, settings.camera.conditioning, settings.camera.independent)
        views = settings.cross_view
        with torch.random.fork_rng(devices=[]):  # initial weights depend on `seed` only
            torch.manual_seed(seed)
            branch = ControlBranch.from_unet(
                self.backbone.unet, condition_channels=self.backbone.in_channels, cross_view_blocks=views.blocks,
                cross_view_heads=views.heads, cross_view_points=views.points, cross_view_patch_size=views.patch_size,
                cross_view_weight_gradient=views.weight_gradient,
                condition_embedding_channels=settings.condition_embedding_channels,
                camera_conditioning=camera_conditioning, independent_camera=independent_camera).float()
            if initial_branch is not None:
                load_initial(branch, initial_branch, init_from, new_prefixes=ControlBranch.CAMERA_MODULES)
            field = LatentSparseNeuS(**neus_args) if initial_neus is None else initial_neus.train()
            self.denoiser = MultiviewDenoiser.from_backbone(self.backbone, field, branch, view_chunk=view_chunk)
        if train_backbone_unet:
            self.backbone.unet.requires_grad_(True)
        if not train_neus:
            if init_from is None:
                raise TunemvError("model.train_neus: false freezes a pretrained NeuS; set model.init_from to one")
            self.denoiser.neus.requires_grad_(False).eval()
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        weights = settings.neus_loss
        self.neus_loss = NeuSLoss(weights.render_weight, weights.eikonal_weight, weights.opacity_weight,
                                  depth_weight=weights.depth_weight)
        self.validation_neus_loss = NeuSLoss(weights.render_weight, 0.0, weights.opacity_weight,
                                             depth_weight=weights.depth_weight)
        self.ema = None if settings.ema is None else AveragedModel(
            torch.nn.ModuleList([self.denoiser.neus, self.denoiser.control_branch]),
            multi_avg_fn=warmup_ema_multi_avg_fn(settings.ema.decay), use_buffers=True).requires_grad_(False)
        self.latent_cache = None if latent_cache_dir is None else LatentCache(latent_cache_dir, self.backbone)
        self.strict_loading = False  # checkpoints carry no backbone weights
        self.nonfinite_steps = 0  # consecutive
        self.skipped_steps = 0

    # ------------------------------------------------------------------------------------------- the step
    def step_generator_seed(self) -> int:
        # Per rank too: under DDP each GPU must draw its own noise, timesteps and dropouts.
        return (self.settings.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank

    def make_inputs(self, batch: MultiviewItem, dropouts: bool = True) -> ModelInputs:
        """Clean model-space views, noised inputs, references, mode and prompts for one batch.

        Without ``dropouts`` (validation): no references, mode "mv" and every prompt, so that validation
        losses measure the full model.
        """
        scheduler = self.backbone.noise_scheduler
        s = self.settings
        p_reference, p_drop_neus, p_drop_text = (s.dropouts.reference, s.dropouts.neus, s.dropouts.text) if dropouts \
            else (0, 0, 0)
        x0 = self.encode_views(batch.views.images, batch.object_id, batch.views.view_indices)
        x0_supervision = self.encode_views(batch.supervision.images, batch.object_id, batch.supervision.view_indices)
        objects, views = x0.shape[:2]
        height, width = x0.shape[-2:]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (objects, 1), device=self.device)
        shift = views if s.diffusion_loss.timestep_shift == "views" else s.diffusion_loss.timestep_shift
        t = (t if shift is None else shift_timesteps(scheduler, t, float(shift))).expand(-1, views)
        reference = torch.zeros(objects, views, dtype=torch.bool, device=self.device)
        if views > 1:
            for b in torch.nonzero(torch.rand(objects) < p_reference).flatten().tolist():
                count = int(torch.randint(1, views, ()))
                reference[b, torch.randperm(views)[:count]] = True
        t = torch.where(reference, torch.zeros_like(t), t)
        noise = torch.randn_like(x0)
        x_t = add_noise(scheduler, x0, noise, t)
        x_t = torch.where(reference[..., None, None, None], x0, x_t)  # references are clean
        mode = "independent" if torch.rand(()) < p_drop_neus else "mv"
        captions = [("" if torch.rand(()) < p_drop_text else caption) for caption in batch.caption]
        cameras = batch.views.cameras.rescale(height, width)
        return ModelInputs(x0=x0, x0_supervision=x0_supervision, noise=noise, t=t, x_t=x_t, reference=reference,
                           mode=mode, captions=captions,
                           cameras=cameras.with_noise(s.camera.noise) if dropouts else cameras,
                           supervision_cameras=batch.supervision.cameras.rescale(height, width))

    @torch.no_grad()
    def encode_views(self, images: torch.Tensor, object_ids, view_indices: torch.Tensor) -> torch.Tensor:
        """Clean views in model space (float32), through the latent cache when one is set."""
        images = images.to(self.backbone.dtype)
        if self.latent_cache is None:
            return self.backbone.encode_views(images).float()
        return self.latent_cache.encode(images, object_ids, view_indices).float()

    def diffusion_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return diffusion_target(self.backbone.noise_scheduler, self.backbone.prediction_type, x0, noise, t)

    def losses(self, batch: MultiviewItem) -> dict[str, torch.Tensor]:
        """Named loss terms; in eval mode without dropouts or the eikonal term (no SDF gradients there)."""
        inputs = self.make_inputs(batch, dropouts=self.training)
        text = self.backbone.encode_prompt(inputs.captions)
        mv = inputs.mode == "mv"
        supervise_neus = mv and self.settings.train_neus
        output = self.denoiser(inputs.x_t, inputs.t, inputs.cameras, text.hidden_states.float(),
                               mode=inputs.mode, added_cond_kwargs=text.added_cond_kwargs,
                               supervision_cameras=inputs.supervision_cameras if supervise_neus else None)
        target = self.diffusion_target(inputs.x0, inputs.noise, inputs.t)
        per_view = (output.prediction.float() - target).square().mean(dim=(2, 3, 4))  # (B, V)
        cap = self.settings.diffusion_loss.high_noise_weight
        if cap is not None:
            per_view = per_view * high_noise_weights(self.backbone.noise_scheduler, inputs.t,
                                                     float(cap))
        denoised = ~inputs.reference
        terms = {"diffusion": (per_view * denoised).sum() / denoised.sum().clamp(min=1)}
        total = terms["diffusion"]
        if supervise_neus:
            clean = torch.cat([inputs.x0, inputs.x0_supervision], dim=1)
            size = clean.shape[-2:]
            masks = views_and_supervision(batch, "masks", *size) if self.settings.neus_loss.opacity_weight else None
            depths = views_and_supervision(batch, "depths", *size) if self.settings.neus_loss.depth_weight else None
            neus_loss = self.neus_loss if self.training else self.validation_neus_loss
            neus_terms = neus_loss(output.neus, clean, masks, depths)
            terms.update({f"neus_{name}": value for name, value in neus_terms.items() if name != "total"})
            total = total + neus_terms["total"]
        terms["total"] = total
        return terms

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            check_precision(self.backbone.dtype, str(self.trainer.precision), self.trainer.accelerator)

    def training_step(self, batch: MultiviewItem, batch_index: int) -> torch.Tensor | None:
        torch.manual_seed(self.step_generator_seed())  # same randomness on resume (see the module docstring)
        # Diverged weights (an absurd learning rate) are caught here, before they become NaN sample points
        # deep in NeuS; the step is skipped and counted like a non-finite loss.
        trainable = [p for p in self.parameters() if p.requires_grad]
        weights_finite = bool(torch.stack([torch.isfinite(p).all() for p in trainable]).all())  # one sync
        terms = self.losses(batch) if weights_finite else None
        if terms is None or not torch.isfinite(terms["total"]):
            self.nonfinite_steps += 1
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps))
            if self.nonfinite_steps >= self.settings.max_nonfinite_steps:
                what, detail = ("the trainable weights were", "") if terms is None else (
                    "the loss was", f" (last terms: { {k: float(v) for k, v in terms.items()} })")
                raise NonFiniteLossError(f"{what} not finite for {self.nonfinite_steps} steps in a row at step "
                                         f"{self.global_step}{detail}; lower the learning rate or check the data")
            return None  # Lightning skips the optimizer step
        self.nonfinite_steps = 0
        batch_size = len(batch)
        self.log_dict({f"train/{name}": value.detach() for name, value in terms.items()}, batch_size=batch_size,
                      prog_bar=False)
        self.log("train/loss", terms["total"].detach(), batch_size=batch_size, prog_bar=True)
        for group in self.optimizers().optimizer.param_groups:
            self.log(f"train/lr_{group['name']}", group["lr"], batch_size=batch_size)
        return terms["total"]

    def on_before_optimizer_step(self, optimizer) -> None:
        """Log each trainable part's gradient norm (before clipping): which part the loss is moving."""
        for name, module in (("neus", self.denoiser.neus), ("control_branch", self.denoiser.control_branch)):
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            if grads:
                self.log(f"train/grad_norm_{name}", torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in on_train_batch_end: checkpoint callbacks run before the module's batch-end hook, so
        # an update there would be missing from a checkpoint taken at that step and a resume would diverge.
        if self.ema is not None:
            self.ema.update_parameters(torch.nn.ModuleList([self.denoiser.neus, self.denoiser.control_branch]))

    @torch.no_grad()
    def validation_step(self, batch: MultiviewItem, batch_index: int) -> None:
        # Fixed randomness per batch, so validation losses are comparable across the run.
        torch.manual_seed(self.settings.seed * 7_919 + batch_index)
        terms = self.losses(batch)
        self.log_dict({f"val/{name}": value for name, value in terms.items()}, batch_size=len(batch))
        if batch_index == 0 and self.settings.validation.steps > 0 and self.trainer is not None \
                and not self.trainer.sanity_checking:
            log_validation_samples(self, list(self.settings.validation.prompts or batch.caption))

    # ------------------------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        h, s = self.settings.optimization, self.settings
        branch = self.denoiser.control_branch
        camera = {id(p) for p in branch.camera_parameters()}
        groups = [
            {"params": [p for p in branch.parameters() if p.requires_grad and id(p) not in camera],
             "lr": h.learning_rate, "name": "control_branch"},
            {"params": [p for p in branch.camera_parameters() if p.requires_grad],
             "lr": s.camera.learning_rate or h.learning_rate, "name": "camera"},
            {"params": [p for p in self.denoiser.neus.parameters() if p.requires_grad], "lr": h.neus_learning_rate,
             "name": "neus"},
        ]
        groups = [group for group in groups if group["params"]]  # a frozen NeuS has none
        if s.train_backbone_unet:
            groups.append({"params": list(self.backbone.unet.parameters()), "lr": h.learning_rate,
                           "name": "backbone_unet"})
        optimizer = torch.optim.AdamW(groups, weight_decay=h.weight_decay)
        total = self.trainer.max_steps if self.trainer is not None and self.trainer.max_steps > 0 else None

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(h.warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only the trainable weights; the frozen backbone is reloaded from ``backbone``.

        A full checkpoint (``last.ckpt``) keeps the live weights, their EMA and the optimizer state, which is
        what an exact resume needs. A weights-only one (``ModelCheckpoint(save_weights_only=True)``, the
        periodic snapshots in the configs) keeps one copy: the weights to sample from (EMA when it is on),
        stored under the live names, so that it is a quarter of the resumable size.
        """
        extra = (UNET_PREFIX,) if self.settings.train_backbone_unet else ()
        weights = trainable_checkpoint_state(self, checkpoint, extra)
        checkpoint["tunemv"] = checkpoint_metadata(self.settings.backbone, self.denoiser.neus,
                                                   self.denoiser.control_branch, weights,
                                                   declared_prefixes(weights, unet=bool(extra)),
                                                   skipped_steps=self.skipped_steps)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_steps = checkpoint.get("tunemv", {}).get("skipped_steps", 0)
        load_ema_snapshot(self, checkpoint)

    def train(self, mode: bool = True) -> MultiviewAdapterSystem:
        super().train(mode)
        self.backbone.eval()  # frozen: always in inference behaviour
        if not self.settings.train_neus:
            self.denoiser.neus.eval()
        return self


# ------------------------------------------------------------------------ checkpoints (shared with distillation)
# Where this system's state_dict keeps the adapter, which every checkpoint declares ("prefixes"): the modules
# live at self.denoiser.{neus, control_branch}, their EMA in an AveragedModel over ModuleList([neus, branch]).
LIVE_PREFIXES = {"neus": "denoiser.neus.", "control_branch": "denoiser.control_branch."}
EMA_PREFIXES = {"neus": "ema.module.0.", "control_branch": "ema.module.1."}
UNET_PREFIX = "backbone.unet."  # only in checkpoints of the train_backbone_unet baseline
TRAINABLE = (*LIVE_PREFIXES.values(), "ema.")  # the only weights a checkpoint keeps (besides extra prefixes)


def ema_key_pairs(state: dict) -> list[tuple[str, str]]:
    """(EMA key, live key) for every averaged weight (``n_averaged`` has no live twin)."""
    return [(key, LIVE_PREFIXES[name] + key[len(ema):]) for key in state
            for name, ema in EMA_PREFIXES.items() if key.startswith(ema)]


def declared_prefixes(weights: str, unet: bool = False) -> dict:
    """The checkpoint's "prefixes" for what ``trainable_checkpoint_state`` kept (``weights``)."""
    return ({"live": dict(LIVE_PREFIXES)} | ({"ema": dict(EMA_PREFIXES)} if weights == "live+ema" else {})
            | ({"unet": UNET_PREFIX} if unet else {}))


def trainable_checkpoint_state(module: pl.LightningModule, checkpoint: dict, extra_prefixes: tuple[str, ...] = ()
                               ) -> str:
    """Trim ``checkpoint["state_dict"]`` to the trainable weights (``TRAINABLE`` and ``extra_prefixes``) and
    return which weights it holds: "live+ema", "live", or, for a weights-only checkpoint of a module with an
    EMA, "ema" (the EMA stored under the live names, the weights to sample from)."""
    state = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(TRAINABLE + extra_prefixes)}
    ema = getattr(module, "ema", None)
    weights = "live+ema" if ema is not None else "live"
    if "optimizer_states" not in checkpoint and ema is not None:  # weights-only: the EMA replaces the live
        averaged = {live: state[key] for key, live in ema_key_pairs(state)}
        state = {k: v for k, v in state.items() if not k.startswith("ema.")} | averaged  # (other parts stay)
        weights = "ema"
    checkpoint["state_dict"] = state
    return weights


def load_ema_snapshot(module: pl.LightningModule, checkpoint: dict) -> None:
    """A weights-only EMA snapshot (``weights == "ema"``) loads into both the live and the EMA weights."""
    if checkpoint.get("tunemv", {}).get("weights") == "ema" and getattr(module, "ema", None) is not None:
        state = checkpoint["state_dict"]
        inverse = {live: ema for ema, live in ema_key_pairs(module.state_dict())}
        state.update({inverse[key]: value for key, value in list(state.items()) if key in inverse})
