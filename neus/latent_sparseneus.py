"""The latent SparseNeuS of TuneMV3D §3.1.1 (eq. 1–3): noisy views -> one surface field -> g_i ≈ x0_i.

    x_t (B, V, C, h, w), t (B, V) --E--> f (B, V, F, h, w)
    rays of each target view -> points -> projected into every view -> mean/var of f (eq. 2)
    -> SDF MLP + feature MLP -> NeuS volume render (eq. 3) -> image (B, T, C, H, W), depth, opacity, normals

The renders are the centralized geometric condition for the control branch; the sample points and NeuS
weights are reused by the geometry-aware cross-view attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import trimesh
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from tunemv.errors import TunemvError
from tunemv.geometry.cameras import Cameras
from tunemv.neus.aggregation import aggregate_mean_var, gather_view_features
from tunemv.neus.encoder import ViewEncoder
from tunemv.neus.field import FeatureNetwork, InverseDeviation, SDFNetwork
from tunemv.neus.mesh import colored_mesh, extract_mesh, vertex_colors
from tunemv.neus.renderer import FieldSample, RaySamplingConfig, ViewRender, render_views


class ConfigError(TunemvError, ValueError):
    """A module config value of the wrong type or outside its range; the message starts with the key."""


def check_int(key: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key} must be an integer in [{low}, {high}], got {value!r}")


def check_number(key: str, value: object, low: float, high: float, low_open: bool = False,
                 high_open: bool = False) -> None:
    """A finite int or float in the interval; ``*_open`` leaves that end out."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < low or value > high or (low_open and value == low) or (high_open and value == high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must be a number in {interval}, got {value!r}")


def check_choice(key: str, value: object, choices: Sequence) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_bool(key: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


# Why these ranges: every NeuS in models/ and every config in configs/ (and the tests' tiny ones) sits well
# inside them: 3 or 4 channels, widths 4-64, 2-4 SDF layers, 8-32 coarse and importance samples, ray_chunk
# 50-1024. They are there to turn a corrupt or hand-edited config.json into one line naming the key, instead
# of a TypeError, a shape error mid-sampling or a 40 GB allocation; the upper ends are far beyond what any GPU
# renders in a sampling step (1024 samples per ray is 32x SparseNeuS' budget).
NEUS_INTEGERS = {
    "in_channels": (1, 16),  # 3 for IF pixels, 4 for SD latents; 16 leaves room for wider VAEs
    "feature_channels": (1, 1024), "encoder_blocks": (0, 16), "time_embedding_dim": (1, 4096),
    "time_condition_dim": (1, 1024), "sdf_hidden_dim": (1, 4096),
    "sdf_layers": (2, 16),  # the skip connection enters at layer sdf_layers // 2, which may not be the first
    "geometry_dim": (1, 1024), "num_frequencies": (0, 16), "feature_hidden_dim": (1, 4096),
    "num_coarse": (2, 1024), "num_importance": (0, 1024), "upsample_steps": (1, 16),
    "ray_chunk": (1, 2**20), "eikonal_samples": (1, 2**20),
}
ENCODER_GROUPS = 8  # the view encoder's GroupNorm groups: its hidden channels must be a multiple


def check_neus_config(config: dict) -> None:
    """Raise a ``ConfigError`` naming the first key of a ``LatentSparseNeuS`` config that is of the wrong type
    or out of range (``NEUS_INTEGERS``)."""
    for key, (low, high) in NEUS_INTEGERS.items():
        check_int(key, config[key], low, high)
    check_int("encoder_hidden_channels", config["encoder_hidden_channels"], ENCODER_GROUPS, 4096)
    if config["encoder_hidden_channels"] % ENCODER_GROUPS:
        raise ConfigError(f"encoder_hidden_channels must be a multiple of {ENCODER_GROUPS}, got "
                          f"{config['encoder_hidden_channels']}")
    if config["num_importance"] % config["upsample_steps"]:
        raise ConfigError(f"num_importance ({config['num_importance']}) must be a multiple of upsample_steps "
                          f"({config['upsample_steps']})")
    out_channels = config["out_channels"]
    if out_channels is not None:
        check_int("out_channels", out_channels, 1, 16)
    check_number("bound_radius", config["bound_radius"], 0, 10, low_open=True)  # the unit sphere: 1.0
    check_number("init_radius", config["init_radius"], 0, config["bound_radius"], low_open=True, high_open=True)
    # s = exp(10 v) is clamped to [1e-6, 1e6], so |v| > 1.4 means nothing more.
    check_number("init_inv_deviation", config["init_inv_deviation"], -2, 2)
    check_choice("output_activation", config["output_activation"], ("identity", "tanh"))
    check_bool("gradient_checkpointing", config["gradient_checkpointing"])
    background, channels = config["background"], out_channels or config["in_channels"]
    values = background.reshape(-1).tolist() if isinstance(background, torch.Tensor) else background
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(values) not in (1, channels):
        raise ConfigError(f"background must be one value or {channels}, got {len(values)}")
    for value in values:  # white: 1.0 in pixels, about [-1, 2] in SD latents
        check_number("background", value, -1e3, 1e3)


@dataclass
class LatentSparseNeuSOutput:
    image: torch.Tensor  # (B, T, C, H, W) predicted clean views x̂0, background composited
    depth: torch.Tensor  # (B, T, 1, H, W) camera-frame z of the expected surface
    opacity: torch.Tensor  # (B, T, 1, H, W)
    normals: torch.Tensor | None  # (B, T, 3, H, W) world frame; None unless asked for
    sample_points: torch.Tensor  # (B, T, H, W, S, 3) section midpoints along each ray
    sample_weights: torch.Tensor  # (B, T, H, W, S) NeuS weights of those sections
    eikonal_gradients: torch.Tensor | None  # (B, K, 3) SDF gradients at random ray samples (eikonal loss)


class ConditionedField:
    """The surface field of one object: the shared MLPs conditioned on that object's view features."""

    def __init__(self, model: LatentSparseNeuS, feature_maps: torch.Tensor, cameras: Cameras,
                 time_condition: torch.Tensor):
        self.model = model
        self.feature_maps = feature_maps  # (V, F, h, w)
        self.cameras = cameras  # [V]
        self.time_condition = time_condition  # (D,)

    def query(self, points: torch.Tensor, twice_differentiable: bool = False) -> FieldSample:
        features, valid = gather_view_features(points, self.feature_maps, self.cameras, twice_differentiable)
        condition = torch.cat([aggregate_mean_var(features, valid),
                               self.time_condition.expand(points.shape[0], -1)], -1)
        sdf, geometry = self.model.sdf_network(points, condition)
        return FieldSample(sdf, geometry, condition)

    def color(self, sample: FieldSample, directions: torch.Tensor) -> torch.Tensor:
        return self.model.feature_network(sample.geometry, directions, sample.condition)

    def inv_s(self) -> torch.Tensor:
        return self.model.deviation()

    @torch.no_grad()
    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N,) SDF values, for mesh extraction."""
        return self.query(points).sdf


class LatentSparseNeuS(ModelMixin, ConfigMixin):
    """Fuses V noisy views into one NeuS field per object and renders it at any target cameras.

    The constructor arguments are the config (``save_pretrained`` / ``from_pretrained`` store them).
    ``out_channels`` equals the backbone's channels: 4 for SD latents, 3 for IF pixels. ``background`` is what
    an empty ray renders: 1.0 (white) in pixel space, or the VAE latent of white for latent backbones.
    """

    @register_to_config
    def __init__(self, in_channels: int = 4, out_channels: int | None = None, feature_channels: int = 16,
                 encoder_hidden_channels: int = 32, encoder_blocks: int = 2, time_embedding_dim: int = 64,
                 time_condition_dim: int = 16, sdf_hidden_dim: int = 64, sdf_layers: int = 4,
                 geometry_dim: int = 32, num_frequencies: int = 6, feature_hidden_dim: int = 64,
                 init_radius: float = 0.5, init_inv_deviation: float = 0.3,
                 background: float | Sequence[float] = 1.0, output_activation: str = "identity",
                 num_coarse: int = 32, num_importance: int = 32, upsample_steps: int = 2,
                 bound_radius: float = 1.0, ray_chunk: int = 1024, eikonal_samples: int = 4096,
                 gradient_checkpointing: bool = False):
        check_neus_config({name: value for name, value in locals().items() if name not in ("self", "__class__")})
        super().__init__()
        out_channels = out_channels or in_channels
        self.encoder = ViewEncoder(in_channels, feature_channels, encoder_hidden_channels, encoder_blocks,
                                   time_embedding_dim)
        self.time_condition = nn.Linear(time_embedding_dim, time_condition_dim)
        condition_dim = 2 * feature_channels + 1 + time_condition_dim
        self.sdf_network = SDFNetwork(condition_dim, num_frequencies, sdf_hidden_dim, sdf_layers, geometry_dim,
                                      init_radius)
        self.feature_network = FeatureNetwork(geometry_dim, condition_dim, out_channels, feature_hidden_dim,
                                              output_activation=output_activation)
        self.deviation = InverseDeviation(init_inv_deviation)
        background = torch.as_tensor(background, dtype=torch.float32).reshape(-1)
        self.register_buffer("background_value", background.expand(out_channels).clone())
        self.sampling = RaySamplingConfig(num_coarse, num_importance, upsample_steps, bound_radius, ray_chunk,
                                          eikonal_samples)
        self.gradient_checkpointing = gradient_checkpointing

    # diffusers' ModelMixin.enable_gradient_checkpointing() looks for this flag.
    _supports_gradient_checkpointing = True

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.gradient_checkpointing = enable

    def fields(self, noisy_views: torch.Tensor, timesteps: torch.Tensor, cameras: Cameras
               ) -> list[ConditionedField]:
        """One field per object from (B, V, C, h, w) views, (B, V) timesteps and Cameras ``[B, V]``."""
        check_inputs(noisy_views, timesteps, cameras)
        batch = timesteps.shape[0]
        views = rearrange(noisy_views, "b v c h w -> (b v) c h w")
        features, temb = self.encoder(views, rearrange(timesteps, "b v -> (b v)"))
        features = rearrange(features, "(b v) f h w -> b v f h w", b=batch)
        # The field is shared by all views, so it sees the views' noise levels through their mean embedding.
        time_condition = self.time_condition(rearrange(temb, "(b v) d -> b v d", b=batch).mean(1))
        return [ConditionedField(self, features[b], cameras[b], time_condition[b]) for b in range(batch)]

    def render(self, field: ConditionedField, cameras: Cameras, height: int, width: int,
               with_normals: bool = False, with_eikonal: bool = False) -> ViewRender:
        """Render one object's field at Cameras ``[T]``; stratified sampling in training, uniform in eval."""
        return render_views(field, cameras, height, width, self.sampling, self.background_value,
                            stratified=self.training, with_normals=with_normals, with_eikonal=with_eikonal,
                            gradient_checkpointing=self.gradient_checkpointing and self.training)

    def forward(self, noisy_views: torch.Tensor, timesteps: torch.Tensor, source_cameras: Cameras,
                target_cameras: Cameras, resolution: int | tuple[int, int] | None = None,
                with_normals: bool = False, with_eikonal: bool | None = None) -> LatentSparseNeuSOutput:
        """Render (B, V, C, h, w) noisy views at (timesteps (B, V), Cameras ``[B, V]``) from Cameras ``[B, T]``.

        ``resolution`` (default: the views' h x w) is the render size. ``with_normals`` adds normal maps;
        ``with_eikonal`` (default: in training) adds the SDF gradients the eikonal loss needs.
        """
        height, width = _resolution(resolution, noisy_views.shape[-2:])
        if target_cameras.K.dim() != 4 or target_cameras.shape[0] != noisy_views.shape[0]:
            raise ValueError(f"target_cameras must be [B={noisy_views.shape[0]}, T], got {list(target_cameras.shape)}")
        with_eikonal = self.training if with_eikonal is None else with_eikonal
        renders = [self.render(field, target_cameras[b], height, width, with_normals, with_eikonal)
                   for b, field in enumerate(self.fields(noisy_views, timesteps, source_cameras))]

        def stack(name: str) -> torch.Tensor | None:
            values = [getattr(r, name) for r in renders]
            return None if values[0] is None else torch.stack(values)

        return LatentSparseNeuSOutput(**{name: stack(name) for name in LatentSparseNeuSOutput.__dataclass_fields__})

    @torch.no_grad()
    def extract_mesh(self, field: ConditionedField, resolution: int = 256, images: torch.Tensor | None = None,
                     cameras: Cameras | None = None, chunk: int = 65536) -> trimesh.Trimesh:
        """Marching cubes of one object's field on a dense ``resolution``^3 grid over the bounding sphere's cube.

        With (V, 3, H, W) RGB ``images`` in [-1, 1] (e.g. the generated views, decoded) and their Cameras
        ``[V]``, vertices are coloured by the views that see them; visibility comes from depth rendered by
        this field at H x W.
        """
        bound = self.sampling.bound_radius
        mesh = extract_mesh(field.sdf, resolution, bound, chunk, device=self.device)
        if images is None:
            return mesh
        if cameras is None or images.dim() != 4 or images.shape[1] != 3 or len(cameras.flatten()) != len(images):
            raise ValueError("colouring a mesh needs (V, 3, H, W) RGB images and Cameras [V] for them")
        render = render_views(field, cameras, images.shape[-2], images.shape[-1], self.sampling,
                              self.background_value)  # uniform samples, whatever the training mode
        depth = render.depth[:, 0] * (render.opacity[:, 0] > 0.5)  # 0 marks empty pixels
        vertices = torch.as_tensor(mesh.vertices, dtype=images.dtype, device=images.device)
        colors = vertex_colors(vertices, (images + 1) / 2, cameras.flatten(), depth)
        return colored_mesh(mesh, colors)

    @property
    def out_channels(self) -> int:
        return self.background_value.numel()


def _resolution(resolution: int | tuple[int, int] | None, default: Sequence[int]) -> tuple[int, int]:
    if resolution is None:
        return int(default[0]), int(default[1])
    if isinstance(resolution, int):
        return resolution, resolution
    return int(resolution[0]), int(resolution[1])


def check_inputs(noisy_views: torch.Tensor, timesteps: torch.Tensor, cameras: Cameras) -> None:
    if noisy_views.dim() != 5:
        raise ValueError(f"noisy_views must be (B, V, C, h, w), got shape {list(noisy_views.shape)}")
    if tuple(timesteps.shape) != tuple(noisy_views.shape[:2]):
        raise ValueError(f"timesteps must be (B, V) = {list(noisy_views.shape[:2])}, got {list(timesteps.shape)}")
    if tuple(cameras.shape) != tuple(noisy_views.shape[:2]):
        raise ValueError(f"source cameras must be [B, V] = {list(noisy_views.shape[:2])}, got {list(cameras.shape)}")
