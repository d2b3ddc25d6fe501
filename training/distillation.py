"""Distil a fitted adapter into a one-step multiview generator (GECO §3.1–3.2): ``tunemv distill``.

The generator G is a ``MultiviewDenoiser``: the frozen backbone with a trainable copy of the teacher's control
branch and NeuS. It maps noise z at its timestep t_G, the prompt and the cameras to clean views in one "mv"
evaluation, x̂0 = (z − √(1−ᾱ)·ε_G) / √ᾱ, exactly as the ``one-step`` sampler does at guidance scale 1 (the
teacher's classifier-free guidance is distilled into G, as in DMD).

- **Stage I, VSD** (steps < ``vsd_steps``; §3.1, eq. 1–2). G's views from fresh noise are noised to a random
  t in [0.02, 0.98]·T. The frozen teacher's guided "mv" ε_pre and a student's ε_stu score them; G descends
  the surrogate of ``vsd`` whose gradient is w(t)·(ε_pre − ε_stu)·∂G/∂θ. The student (a trainable copy of the
  teacher's branch, initialised from it) learns G's own distribution with the plain denoising loss (eq. 2) on
  the same noised views. Both losses touch disjoint parameters and both read the pre-update weights, so one
  backward and one optimizer step update both: GECO's alternation without two optimizers (``generator_every``
  > 1 updates G less often than the student, DMD2's two time-scale rule). DMD's paired regression of G(z)
  against the teacher's sample from the same z guards against mode collapse (``regression_weight``).
- **Stage II, 3D-consistent distillation** (the remaining steps; §3.2, eq. 3). G's one-step views from the
  cached noise are fused by G's own NeuS (at t = 0, as every mesh and turntable is) and rendered at the
  teacher field's viewpoints; MSE + (1 − SSIM) against the teacher's renders, plus the field's opacity and,
  to keep the views themselves, their regression (``view_weight``).

w(t) for eq. 1: ``"dmd"``, DMD's normaliser in ε form, √((1−ᾱ)/ᾱ) / mean|x̂0 − x̂0_pre| (GECO gives none;
this makes the step size independent of how far the teacher's estimate is from G's output at that t), or
``"sds"``, σ_t² = 1 − ᾱ_t. Both are divided by the elements of an object, so the loss is per pixel like the
other terms.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.optim.swa_utils import AveragedModel
from torchmetrics.functional.image import structural_similarity_index_measure

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.denoiser import MultiviewDenoiser
from tunemv.adapters.formats import AdapterError, checkpoint_metadata, read_adapter_folder
from tunemv.sampling.algebra import alpha_bar, epsilon_to_sample, to_epsilon
from tunemv.sampling.guidance import classifier_free
from tunemv.sampling.one_step import one_step_timestep, pixel_clip_bound
from tunemv.training.config import (
    DISTILLATION_OPTIMIZATION,
    ConsistencyConfig,
    EMAConfig,
    GeneratorConfig,
    OptimizationConfig,
    StudentConfig,
    VSDConfig,
    as_group,
    as_plain,
)
from tunemv.training.ema import warmup_ema_multi_avg_fn
from tunemv.training.noising import add_noise, diffusion_target
from tunemv.training.pseudo_ground_truth import PseudoGroundTruth
from tunemv.training.system import check_precision, declared_prefixes, trainable_checkpoint_state
from tunemv.training.system_setup import warmup_cosine
from tunemv.training.vsd import dmd_weight, sample_timesteps, sds_weight, vsd_surrogate_loss

GENERATOR_KIND = "generator"
STUDENT_PREFIX = "student."
GENERATOR_SAMPLER = "one-step"  # the registered sampler that draws x0 = G(x_tG) in one evaluation


class OneStepDistillationSystem(pl.LightningModule):
    """Stage I (VSD) for ``vsd_steps`` steps, then stage II (3D-consistent distillation) to ``trainer.max_steps``.

    Args:
        teacher: the adapter folder to distil (``tunemv export``'s); its backbone is loaded frozen, once.
        backbone: another name or folder for the teacher's backbone (default: the one ``adapter.json`` names).
        backbone_dtype: storage dtype of the frozen backbone ("float16", "bfloat16"; None keeps fp32).
        init_from: start G from this generator or adapter folder instead of the teacher (stage II after a
            separate stage-I run).
        vsd: stage I (``VSDConfig``); consistency: stage II (``ConsistencyConfig``).
        generator: G's timestep t_G (``GeneratorConfig``); student: VSD's student score (``StudentConfig``).
        optimization: AdamW for G, with a warm-up then cosine decay in each stage (``OptimizationConfig``).
        ema: an EMA of G's weights (``EMAConfig``; None: off), exported in place of the live ones.
        gradient_checkpointing, view_chunk: memory options of the denoisers.
        seed: with the global step, seeds every step's noise and timesteps (exact resume).
    """

    def __init__(self, teacher: str, backbone: str | None = None, backbone_dtype: str | None = None,
                 init_from: str | None = None, vsd: VSDConfig = VSDConfig(),
                 consistency: ConsistencyConfig = ConsistencyConfig(), generator: GeneratorConfig = GeneratorConfig(),
                 student: StudentConfig = StudentConfig(),
                 optimization: OptimizationConfig = DISTILLATION_OPTIMIZATION, ema: EMAConfig | None = None,
                 gradient_checkpointing: bool = False, view_chunk: int | None = None, seed: int = 0):
        super().__init__()
        # Groups arrive as classes from LightningCLI and as dicts from a checkpoint's hyperparameters.
        self.settings = settings = SimpleNamespace(
            teacher=teacher, backbone=backbone, backbone_dtype=backbone_dtype, init_from=init_from,
            vsd=as_group(VSDConfig, vsd, "vsd"), consistency=as_group(ConsistencyConfig, consistency, "consistency"),
            generator=as_group(GeneratorConfig, generator, "generator"),
            student=as_group(StudentConfig, student, "student"),
            optimization=as_group(OptimizationConfig, optimization, "optimization"),
            ema=as_group(EMAConfig, ema, "ema"), gradient_checkpointing=gradient_checkpointing,
            view_chunk=view_chunk, seed=seed)
        self.save_hyperparameters(as_plain(vars(settings)))
        train_neus, student_train_neus = settings.consistency.train_neus, settings.student.train_neus
        teacher_neus, teacher_branch, info = read_adapter_folder(teacher)
        if info.get("sampling"):
            raise AdapterError(f"{teacher}: is a distilled generator; distil a multi-step adapter folder")
        self.backbone = Backbone.from_pretrained(backbone or info["backbone"], torch_dtype=backbone_dtype)
        self.teacher = MultiviewDenoiser.from_backbone(self.backbone, teacher_neus.requires_grad_(False),
                                                       teacher_branch.requires_grad_(False), view_chunk=view_chunk)
        start_neus, start_branch = (teacher_neus, teacher_branch) if init_from is None else \
            read_adapter_folder(init_from)[:2]
        self.denoiser = MultiviewDenoiser.from_backbone(  # G; named as the adapter system's, so export reads it
            self.backbone, copy.deepcopy(start_neus).requires_grad_(train_neus).train(),
            copy.deepcopy(start_branch).requires_grad_(True).train(), view_chunk=view_chunk)
        self.student = MultiviewDenoiser.from_backbone(
            self.backbone, copy.deepcopy(teacher_neus).requires_grad_(student_train_neus),
            copy.deepcopy(teacher_branch).requires_grad_(True), view_chunk=view_chunk)
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
            self.student.enable_gradient_checkpointing()
        alphas = self.backbone.noise_scheduler.alphas_cumprod
        chosen = settings.generator.timestep
        self.generator_timestep = one_step_timestep(alphas, settings.generator.min_alpha_bar) if chosen is None \
            else int(chosen)
        self.ema = None if settings.ema is None else AveragedModel(
            torch.nn.ModuleList([self.denoiser.neus, self.denoiser.control_branch]),
            multi_avg_fn=warmup_ema_multi_avg_fn(settings.ema.decay), use_buffers=True).requires_grad_(False)
        self.strict_loading = False  # checkpoints carry no backbone or teacher weights

    # ----------------------------------------------------------------------------------------- G itself
    def generate(self, noise: torch.Tensor, cameras, text, reference: torch.Tensor | None = None,
                 clean: torch.Tensor | None = None) -> torch.Tensor:
        """G(z): (B, V, C, h, w) noise at t_G -> clean views, as the ``one-step`` sampler computes them unguided;
        (B, V) ``reference`` views are the ``clean`` ones, entering at t = 0 and returned unchanged."""
        timesteps = torch.full(noise.shape[:2], self.generator_timestep, device=noise.device, dtype=torch.long)
        if reference is not None:
            timesteps = torch.where(reference, torch.zeros_like(timesteps), timesteps)
            noise = keep(reference, clean, noise)
        out = self.denoiser(noise, timesteps, cameras, text.hidden_states.float(), mode="mv",
                            added_cond_kwargs=text.added_cond_kwargs)
        x0 = self.to_sample(out.prediction, noise, timesteps)
        bound = pixel_clip_bound(self.backbone, self.backbone.noise_scheduler.config)
        if bound is not None:
            # The sampler's clip, but straight-through. At init 1/√ᾱ_tG (~14) amplifies ε's errors far outside
            # [-1, 1]; a plain clamp would give those pixels no gradient, and a pixel clipped to the wrong end
            # could never come back.
            x0 = x0 + (x0.clamp(-bound, bound) - x0).detach()
        return x0 if reference is None else keep(reference, clean, x0)

    def to_epsilon(self, prediction: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return to_epsilon(prediction, sample, timesteps, self.alphas_cumprod, self.backbone.prediction_type)

    def to_sample(self, prediction: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return epsilon_to_sample(self.to_epsilon(prediction, sample, timesteps), sample, timesteps,
                                 self.alphas_cumprod)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.backbone.noise_scheduler.alphas_cumprod.to(self.device)

    def in_stage_one(self) -> bool:
        return self.global_step < self.settings.vsd.steps

    # ------------------------------------------------------------------------------------------ stage I
    def vsd_losses(self, batch: PseudoGroundTruth, text, uncond) -> dict[str, torch.Tensor]:
        h = self.settings.vsd
        cameras, reference, clean = batch.cameras, batch.reference, batch.views
        noise = torch.randn_like(batch.noise)  # fresh z: VSD matches G's distribution, not the cached pairs
        update_generator = self.global_step % h.generator_every == 0
        with torch.set_grad_enabled(update_generator):
            x = self.generate(noise, cameras, text, reference, clean)
        objects, views = x.shape[:2]
        t = sample_timesteps(objects, len(self.alphas_cumprod), t_range=tuple(h.t_range), device=self.device)
        timesteps = torch.where(reference, 0, t[:, None].expand(objects, views))  # references stay clean
        epsilon = torch.randn_like(x)
        x_t = keep(reference, x.detach(), add_noise(self.backbone.noise_scheduler, x.detach(), epsilon, timesteps))
        generated = (~reference)[:, :, None, None, None].float()  # the loss terms skip the references
        with torch.no_grad():
            teacher = self.teacher.predict(x_t, timesteps, cameras, text, ("mv",), uncond)
            cond = self.to_epsilon(teacher.cond["mv"], x_t, timesteps)
            unconditional = None if uncond is None else self.to_epsilon(teacher.uncond["mv"], x_t, timesteps)
            epsilon_teacher = classifier_free(cond, unconditional, h.teacher_guidance_scale)
        student = self.student(x_t, timesteps, cameras, text.hidden_states.float(), mode="mv",
                               added_cond_kwargs=text.added_cond_kwargs).prediction
        target = diffusion_target(self.backbone.noise_scheduler, self.backbone.prediction_type, x.detach(), epsilon,
                                  timesteps)
        terms = {"student": masked_mse(student.float(), target, generated)}
        if update_generator:
            epsilon_student = self.to_epsilon(student.detach(), x_t, timesteps)
            a = alpha_bar(self.alphas_cumprod, timesteps)[:, 0, 0, 0, 0].float()  # (B,)
            if h.weighting == "dmd":
                x0_teacher = epsilon_to_sample(epsilon_teacher, x_t, timesteps, self.alphas_cumprod)
                weight = dmd_weight(x, x0_teacher) * ((1 - a) / a).sqrt()
            else:
                weight = sds_weight(self.alphas_cumprod, t)
            terms["vsd"] = vsd_surrogate_loss(x, epsilon_teacher, epsilon_student, weight / x[0].numel())
            if h.regression_weight:
                paired = self.generate(batch.noise, cameras, text, reference, clean)
                terms["regression"] = masked_mse(paired, clean, generated)
        terms["total"] = terms["student"] + terms.get("vsd", 0.0) + h.regression_weight * terms.get("regression", 0.0)
        return terms

    # ----------------------------------------------------------------------------------------- stage II
    def consistency_losses(self, batch: PseudoGroundTruth, text) -> dict[str, torch.Tensor]:
        h = self.settings.consistency
        reference = batch.reference
        x = self.generate(batch.noise, batch.cameras, text, reference, batch.views)
        zeros = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
        targets = batch.render_cameras
        field = self.denoiser.neus(x, zeros, batch.cameras, targets, resolution=(targets.height, targets.width))
        flat = lambda y: rearrange(y, "b v c h w -> (b v) c h w").float()  # noqa: E731
        renders, truth = flat(field.image), flat(batch.renders)
        ssim = structural_similarity_index_measure(renders, truth, data_range=2.0)
        terms = {"field_mse": F.mse_loss(renders, truth), "field_ssim": ssim,
                 "opacity": F.mse_loss(flat(field.opacity), flat(batch.opacity)),
                 "views": masked_mse(x, batch.views, (~reference)[:, :, None, None, None].float())}
        terms["total"] = (h.field_weight * (terms["field_mse"] + h.ssim_weight * (1 - ssim))
                          + h.opacity_weight * terms["opacity"] + h.view_weight * terms["views"])
        return terms

    # --------------------------------------------------------------------------------------- Lightning
    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            check_precision(self.backbone.dtype, str(self.trainer.precision), self.trainer.accelerator)

    def training_step(self, batch: PseudoGroundTruth, batch_index: int) -> torch.Tensor:
        # Seeded from (seed, step, rank): a resumed run replays the same noise and timesteps.
        torch.manual_seed((self.settings.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank)
        text = self.backbone.encode_prompt(batch.caption).float()
        h = self.settings
        # G's NeuS takes gradients in the stages that train it (AdamW skips a parameter without a gradient).
        self.denoiser.neus.requires_grad_(h.vsd.train_neus if self.in_stage_one() else h.consistency.train_neus)
        if self.in_stage_one():
            guided = self.settings.vsd.teacher_guidance_scale > 1.0
            uncond = self.backbone.encode_prompt([""] * len(batch)).float() if guided else None
            terms, stage = self.vsd_losses(batch, text, uncond), 1
        else:
            terms, stage = self.consistency_losses(batch, text), 2
        size = len(batch)
        self.log_dict({f"train/{name}": torch.as_tensor(value).detach() for name, value in terms.items()}, batch_size=size)
        self.log("train/stage", float(stage), batch_size=size)
        self.log("train/loss", terms["total"].detach(), batch_size=size, prog_bar=True)
        return terms["total"]

    def on_before_optimizer_step(self, optimizer) -> None:
        """Each part's gradient norm, before clipping."""
        for name, module in (("generator", self.denoiser.control_branch), ("generator_neus", self.denoiser.neus),
                             ("student", self.student)):
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            if grads:
                self.log(f"train/grad_norm_{name}", torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """``trainer.gradient_clip_val`` per part: G and the student have unrelated losses, and one norm over
        both would let the larger gradient shrink the other's step."""
        if not gradient_clip_val:
            return
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # here, before checkpoint callbacks (see MultiviewAdapterSystem.optimizer_step)
            self.ema.update_parameters(torch.nn.ModuleList([self.denoiser.neus, self.denoiser.control_branch]))

    def configure_optimizers(self):
        h, steps = self.settings.optimization, self.settings.vsd.steps
        # G's NeuS is listed whatever the stage: train_step switches its requires_grad per stage.
        trainable = lambda module: [p for p in module.parameters() if p.requires_grad or module is self.denoiser.neus]  # noqa: E731
        groups = [{"params": trainable(self.denoiser.control_branch), "lr": h.learning_rate, "name": "generator"},
                  {"params": trainable(self.denoiser.neus), "lr": h.neus_learning_rate, "name": "generator_neus"},
                  {"params": trainable(self.student), "lr": self.settings.student.learning_rate, "name": "student"}]
        # AdamW skips a parameter without a gradient: the student in stage II, G between its updates.
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=h.weight_decay)
        total = self.trainer.max_steps if self.trainer is not None and self.trainer.max_steps > 0 else None
        first = warmup_cosine(h.warmup_steps, steps)
        second = warmup_cosine(h.warmup_steps, None if total is None else total - steps)
        factor = lambda step: first(step) if step < steps else second(step - steps)  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """G's weights (and EMA) as an adapter checkpoint, plus the student for an exact resume; no backbone
        or teacher (they are reloaded from ``teacher``)."""
        weights = trainable_checkpoint_state(self, checkpoint, extra_prefixes=(STUDENT_PREFIX,))
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith(f"{STUDENT_PREFIX}unet.")}
        vsd_steps = self.settings.vsd.steps
        checkpoint["tunemv"] = checkpoint_metadata(
            self.backbone.name_or_path, self.denoiser.neus, self.denoiser.control_branch, weights,
            declared_prefixes(weights), sampling=self.sampling(), kind=GENERATOR_KIND,
            generator={"timestep": self.generator_timestep, "teacher": self.settings.teacher, "vsd_steps": vsd_steps,
                       "stage": 1 if self.global_step <= vsd_steps else 2})

    def sampling(self) -> dict:
        """How the generator samples, which its checkpoint and exported folder declare: one evaluation at its
        timestep t_G, unguided (GECO §3.1)."""
        return {"sampler": GENERATOR_SAMPLER, "sampler_options": {"timestep": self.generator_timestep},
                "guidance_scale": 1.0}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from tunemv.training.system import load_ema_snapshot

        load_ema_snapshot(self, checkpoint)

    def train(self, mode: bool = True) -> OneStepDistillationSystem:
        super().train(mode)
        self.backbone.eval()
        self.teacher.eval()  # frozen: inference behaviour always
        if not self.settings.student.train_neus:
            self.student.neus.eval()
        if not self.settings.consistency.train_neus:
            self.denoiser.neus.eval()
        return self


def keep(reference: torch.Tensor, clean: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """``views`` (B, V, C, h, w) with the (B, V) ``reference`` views replaced by their ``clean`` ones."""
    return torch.where(reference[:, :, None, None, None], clean.to(views.dtype), views)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the views ``weight`` (B, V, 1, 1, 1) keeps."""
    squared = (prediction.float() - target.float()).square() * weight
    return squared.sum() / (weight.expand_as(squared).sum()).clamp(min=1)
