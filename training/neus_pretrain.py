"""Stage 1: the latent SparseNeuS pretrained alone as a generalizable reconstructor (SparseNeuS; TuneMV3D's
multi-stage recipe, VFusion3D's stages), before any adapter fit.

No UNet pass: each step encodes V views per object as the adapter will see them (the backbone's own
encoding and noise schedule), fuses them into one field per object, and renders a random batch of rays at
the input views and at held-out supervision views. Supervision: colour, mask (opacity), depth where the
dataset has ``depth/``, and the eikonal term.

The adapter's diffusion training only ever shows the field views that share one noise level; meshes and
turntables are built from all-clean generated views. So the timesteps here mix three regimes per object:
all clean (t = 0), a clean/noisy mix (image→multiview references), and one shared t (text→multiview).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from einops import rearrange

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.formats import checkpoint_metadata_neus
from tunemv.data.batch import MultiviewItem
from tunemv.geometry.cameras import Cameras
from tunemv.neus.latent_sparseneus import LatentSparseNeuS
from tunemv.neus.losses import NeuSLoss
from tunemv.neus.renderer import render_pixels
from tunemv.training.system_setup import neus_arguments, views_and_supervision, warmup_cosine

NEUS_PREFIX = "neus."  # where this system's state_dict keeps the NeuS, which its checkpoints declare


class NeuSPretrainSystem(pl.LightningModule):
    """Trains a ``LatentSparseNeuS`` to reconstruct objects from their (noisy) views.

    Args:
        backbone: hub id or folder of the diffusers pipeline whose views the field will read: its VAE (or
            pixels, for IF) encodes the views and its scheduler noises them. Nothing of it is trained.
        backbone_dtype: storage dtype of the backbone ("float16", "bfloat16"; None keeps fp32).
        neus: ``LatentSparseNeuS`` arguments; channels and background default to the backbone's.
        learning_rate, weight_decay, warmup_steps: AdamW, linear warmup then cosine decay to 10% at
            ``trainer.max_steps``.
        p_all_clean: per-object probability that every input view is clean (t = 0).
        p_mixed: per-object probability of 1..V-1 clean views among noisy ones (the rest share one t).
        rays_per_view: random pixels rendered per target view and step (0: every pixel).
        render_weight, opacity_weight, depth_weight, eikonal_weight: the ``NeuSLoss`` weights.
        seed: seeds every step's randomness together with the global step (exact resume).
    """

    def __init__(self, backbone: str, backbone_dtype: str | None = None, neus: dict[str, Any] | None = None,
                 learning_rate: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 200,
                 p_all_clean: float = 0.25, p_mixed: float = 0.25, rays_per_view: int = 128,
                 render_weight: float = 1.0, opacity_weight: float = 0.5, depth_weight: float = 0.5,
                 eikonal_weight: float = 0.1, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        if not (0 <= p_all_clean <= 1 and 0 <= p_mixed <= 1 and p_all_clean + p_mixed <= 1):
            raise ValueError(f"need p_all_clean, p_mixed in [0, 1] with a sum <= 1, got {p_all_clean}, {p_mixed}")
        if rays_per_view < 0:
            raise ValueError(f"rays_per_view must be >= 0, got {rays_per_view}")
        self.backbone = Backbone.from_pretrained(backbone, torch_dtype=backbone_dtype)
        neus_args = neus_arguments(backbone, self.backbone, neus)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.neus = LatentSparseNeuS(**neus_args)
        self.loss = NeuSLoss(render_weight, eikonal_weight, opacity_weight, depth_weight=depth_weight)
        self.strict_loading = False  # checkpoints carry no backbone weights

    # ------------------------------------------------------------------------------------------ inputs
    def timesteps(self, objects: int, views: int) -> torch.Tensor:
        """(B, V) timesteps: per object all clean, a clean/noisy mix, or one shared t (see the module doc)."""
        h, steps = self.hparams, self.backbone.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (objects, 1)).expand(-1, views).clone()
        regime = torch.rand(objects)
        t[regime < h.p_all_clean] = 0
        for b in torch.nonzero((regime >= h.p_all_clean) & (regime < h.p_all_clean + h.p_mixed)).flatten().tolist():
            if views > 1:
                t[b, torch.randperm(views)[:int(torch.randint(1, views, ()))]] = 0
        return t.to(self.device)

    def noised(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, V, C, h, w) clean views at (B, V) timesteps; t = 0 stays exactly clean, as references are."""
        noise = torch.randn_like(x0)
        flat = self.backbone.noise_scheduler.add_noise(rearrange(x0, "b v c h w -> (b v) c h w"),
                                                       rearrange(noise, "b v c h w -> (b v) c h w"),
                                                       rearrange(t, "b v -> (b v)")).unflatten(0, x0.shape[:2])
        return torch.where((t == 0)[..., None, None, None], x0, flat)

    @torch.no_grad()
    def targets(self, batch: MultiviewItem) -> dict[str, Any]:
        """Clean model-space views of inputs then supervision, with masks and depths at model resolution."""
        views = self.backbone.encode_views(batch.views.images.to(self.backbone.dtype)).float()
        supervision = self.backbone.encode_views(batch.supervision.images.to(self.backbone.dtype)).float()
        height, width = views.shape[-2:]

        cameras = Cameras.cat([batch.views.cameras, batch.supervision.cameras], dim=1).rescale(height, width)
        return dict(inputs=views, clean=torch.cat([views, supervision], 1), masks=views_and_supervision(batch, "masks", height, width),
                    depths=views_and_supervision(batch, "depths", height, width), input_cameras=batch.views.cameras.rescale(height, width),
                    target_cameras=cameras)

    # ------------------------------------------------------------------------------------------- steps
    def losses(self, batch: MultiviewItem) -> dict[str, torch.Tensor]:
        target = self.targets(batch)
        objects, views = target["inputs"].shape[:2]
        t = self.timesteps(objects, views)
        fields = self.neus.fields(self.noised(target["inputs"], t), t, target["input_cameras"])
        height, width = target["clean"].shape[-2:]
        num_targets = target["clean"].shape[1]
        rays = self.hparams.rays_per_view if 0 < self.hparams.rays_per_view < height * width else height * width
        renders, picked = [], []
        for b, field in enumerate(fields):
            pixels = torch.stack([torch.randperm(height * width, device=self.device)[:rays] for _ in range(num_targets)])
            renders.append(render_pixels(field, target["target_cameras"][b], height, width, pixels,
                                         self.neus.sampling, self.neus.background_value, stratified=True,
                                         with_eikonal=bool(self.hparams.eikonal_weight)))
            picked.append(pixels)
        pixels = torch.stack(picked)  # (B, T, P)

        def gather(maps: torch.Tensor) -> torch.Tensor:  # (B, T, K, H, W) -> (B, T, P, K)
            flat = rearrange(maps, "b t k h w -> b t (h w) k")
            return flat.gather(2, pixels[..., None].expand(-1, -1, -1, flat.shape[-1]))

        stack = lambda name: torch.stack([getattr(r, name) for r in renders])  # noqa: E731
        eikonal = torch.cat([r.eikonal_gradients for r in renders]) if self.hparams.eikonal_weight else None
        return self.loss.terms(stack("color"), gather(target["clean"]), stack("opacity"), gather(target["masks"])[..., 0],
                               stack("depth"), gather(target["depths"])[..., 0], eikonal)

    def training_step(self, batch: MultiviewItem, batch_index: int) -> torch.Tensor:
        torch.manual_seed((self.hparams.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank)
        terms = self.losses(batch)
        size = len(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=size)
        self.log("train/inv_s", self.neus.deviation().detach(), batch_size=size)
        return terms["total"]

    @torch.no_grad()
    def validation_step(self, batch: MultiviewItem, batch_index: int) -> None:
        """Full renders at the supervision views from all-clean and from t = T/2 inputs: PSNR and mask IoU."""
        torch.manual_seed(self.hparams.seed * 7_919 + batch_index)
        target = self.targets(batch)
        objects, views = target["inputs"].shape[:2]
        supervision = slice(views, None)
        half = self.backbone.noise_scheduler.config.num_train_timesteps // 2
        for name, step in (("clean", 0), ("half", half)):
            t = torch.full((objects, views), step, device=self.device, dtype=torch.long)
            output = self.neus(self.noised(target["inputs"], t), t, target["input_cameras"],
                               target["target_cameras"][:, supervision], with_eikonal=False)
            images = self.backbone.decode_views(output.image).clamp(-1, 1)
            truth = batch.supervision.images.to(images)
            psnr = 10 * torch.log10(4.0 / (images - truth).square().mean(dim=(2, 3, 4)).clamp(min=1e-10))
            masks = target["masks"][:, supervision] >= 0.5
            predicted = output.opacity >= 0.5
            iou = (predicted & masks).sum((2, 3, 4)) / (predicted | masks).sum((2, 3, 4)).clamp(min=1)
            self.log_dict({f"val/psnr_{name}": psnr.mean(), f"val/mask_iou_{name}": iou.float().mean()},
                          batch_size=objects)

    # ------------------------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        h = self.hparams
        optimizer = torch.optim.AdamW(self.neus.parameters(), lr=h.learning_rate, weight_decay=h.weight_decay)
        total = self.trainer.max_steps if self.trainer is not None and self.trainer.max_steps > 0 else None

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(h.warmup_steps, total, floor=0.1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only the NeuS weights; the backbone is reloaded from its name."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(NEUS_PREFIX)}
        checkpoint["tunemv"] = checkpoint_metadata_neus(self.hparams.backbone, self.neus, NEUS_PREFIX)

    def train(self, mode: bool = True) -> NeuSPretrainSystem:
        super().train(mode)
        self.backbone.eval()
        return self
