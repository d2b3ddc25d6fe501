"""The 3D field behind generated views: NeuS fused from the clean views (t = 0), for turntables and meshes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import trimesh

from tunemv.adapters.backbones import Backbone
from tunemv.geometry.cameras import Cameras, orbit
from tunemv.neus.latent_sparseneus import LatentSparseNeuS, LatentSparseNeuSOutput


@dataclass
class MultiviewField:
    """One NeuS field per object, conditioned on its generated views in model space.

    ``cameras`` are the views' cameras at model resolution ``[B, V]``; renders are decoded to RGB in [0, 1].
    """

    neus: LatentSparseNeuS
    backbone: Backbone
    latents: torch.Tensor  # (B, V, C, h, w)
    cameras: Cameras  # [B, V]

    def __len__(self) -> int:
        return self.latents.shape[0]

    @torch.no_grad()
    def render(self, cameras: Cameras, decode: bool = True) -> torch.Tensor:
        """Render at Cameras ``[T]`` (the same for every object) or ``[B, T]`` at their stated resolution,
        taken in model space -> (B, T, 3, H·f, W·f) RGB in [0, 1] (``decode``) or (B, T, C, H, W) model space."""
        if cameras.K.dim() == 3:
            cameras = Cameras.stack([cameras] * len(self))
        images = self._renders(cameras).image
        return to_unit_range(self.backbone.decode_views(images.to(self.backbone.dtype))) if decode else images

    @torch.no_grad()
    def silhouettes(self, cameras: Cameras | None = None) -> torch.Tensor:
        """(B, T, 1, H, W) rendered opacity at Cameras ``[B, T]`` (default: the views' own cameras), in [0, 1]:
        the field's outline, to compare with the generated views' masks."""
        return self._renders(self.cameras if cameras is None else cameras).opacity

    def _renders(self, cameras: Cameras) -> LatentSparseNeuSOutput:
        """NeuS fused from the clean views (t = 0), rendered at Cameras ``[B, T]`` at their resolution.

        Always in inference behaviour (uniform, not stratified, ray samples), whatever mode the caller's
        modules are in: a render of one field is then the same every time (a turntable was not, issue 22)."""
        zeros = torch.zeros(self.latents.shape[:2], dtype=torch.long, device=self.latents.device)
        was_training = self.neus.training
        self.neus.eval()
        try:
            return self.neus(self.latents.float(), zeros, self.cameras, cameras.to(self.latents.device),
                             resolution=(cameras.height, cameras.width))
        finally:
            self.neus.train(was_training)

    def turntable(self, num_frames: int = 24, elevation_deg: float = 20.0, radius: float = 2.2,
                  fov_deg: float = 50.0) -> torch.Tensor:
        """(B, F, 3, H, W) renders around +z at the model's resolution (a GIF's frames)."""
        height, width = self.latents.shape[-2:]
        return self.render(orbit(num_frames, elevation_deg, radius, fov_deg, resolution=(height, width)))

    def mesh(self, index: int = 0, resolution: int = 128, views: torch.Tensor | None = None) -> trimesh.Trimesh:
        """Marching cubes of object ``index``; with its (V, 3, H, W) ``views`` in [0, 1], vertex colours."""
        zeros = torch.zeros(self.latents.shape[:2], dtype=torch.long, device=self.latents.device)
        with torch.no_grad():
            field = self.neus.fields(self.latents[index: index + 1].float(), zeros[index: index + 1],
                                     self.cameras[index: index + 1])[0]
        if views is None:
            return self.neus.extract_mesh(field, resolution)
        cameras = self.cameras[index].rescale(*views.shape[-2:])
        return self.neus.extract_mesh(field, resolution, images=views.float() * 2 - 1, cameras=cameras)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Model images in [-1, 1] -> [0, 1], clamped (decoders overshoot a little)."""
    return ((images.float() + 1) / 2).clamp(0, 1)
