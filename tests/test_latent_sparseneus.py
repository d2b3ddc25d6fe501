"""LatentSparseNeuS: shapes, initialisation, per-view timesteps, save/load, checkpointing, losses, bad input."""

import pytest
import torch

from tunemv.geometry.cameras import Cameras, orbit
from tunemv.neus.latent_sparseneus import LatentSparseNeuS
from tunemv.neus.losses import NeuSLoss

TINY = dict(feature_channels=4, encoder_hidden_channels=8, time_embedding_dim=16, time_condition_dim=4,
            sdf_hidden_dim=16, geometry_dim=8, feature_hidden_dim=16, num_coarse=8, num_importance=8)


def batch(batch_size=2, num_views=3, channels=4, size=8):
    views = torch.randn(batch_size, num_views, channels, size, size)
    timesteps = torch.randint(0, 1000, (batch_size, num_views))
    cameras = Cameras.stack([orbit(num_views, 20.0, resolution=size)] * batch_size)  # [B, V]
    return views, timesteps, cameras


def test_forward_shapes_for_any_number_of_targets_and_a_rectangular_render():
    model = LatentSparseNeuS(in_channels=4, **TINY).eval()
    views, timesteps, cameras = batch()
    targets = Cameras.stack([orbit(5, 10.0, resolution=8)] * 2)  # held-out views, [B, T=5]
    out = model(views, timesteps, cameras, targets, resolution=(6, 10), with_normals=True)
    assert out.image.shape == (2, 5, 4, 6, 10)
    assert out.depth.shape == out.opacity.shape == (2, 5, 1, 6, 10)
    assert out.normals.shape == (2, 5, 3, 6, 10)
    assert out.sample_points.shape == (2, 5, 6, 10, 15, 3)  # 8 + 8 samples -> 15 sections
    assert out.sample_weights.shape == (2, 5, 6, 10, 15)
    assert out.eikonal_gradients is None  # eval renders no eikonal terms by default
    assert ((out.opacity >= 0) & (out.opacity <= 1 + 1e-5)).all()


def test_geometric_initialisation_is_the_sphere_whatever_the_views():
    model = LatentSparseNeuS(in_channels=4, init_radius=0.5)
    views, timesteps, cameras = batch()
    points = torch.randn(500, 3) * 0.5
    expected = points.norm(dim=-1) - 0.5
    for field in model.fields(views, timesteps, cameras):  # two objects with different views
        torch.testing.assert_close(field.sdf(points), expected, atol=1e-6, rtol=0)


def test_each_view_is_read_at_its_own_timestep():
    model = LatentSparseNeuS(in_channels=4, **TINY).eval()
    views, timesteps, cameras = batch(batch_size=1)
    features = model.fields(views, timesteps, cameras)[0].feature_maps
    changed = timesteps.clone()
    changed[0, 1] = 0  # view 1 becomes a clean reference
    other = model.fields(views, changed, cameras)[0].feature_maps
    assert torch.equal(features[[0, 2]], other[[0, 2]]) and not torch.equal(features[1], other[1])


def test_eval_is_deterministic_and_training_jitters_the_samples():
    model = LatentSparseNeuS(in_channels=4, **TINY)
    views, timesteps, cameras = batch()
    model.eval()
    a = model(views, timesteps, cameras, cameras).sample_points
    assert torch.equal(a, model(views, timesteps, cameras, cameras).sample_points)
    model.train()
    assert not torch.equal(a, model(views, timesteps, cameras, cameras).sample_points)


def test_save_and_load_round_trip(tmp_path):
    model = LatentSparseNeuS(in_channels=3, out_channels=3, background=[1.0, 1.0, 1.0],
                             output_activation="tanh", **TINY).eval()
    model.save_pretrained(tmp_path)
    loaded = LatentSparseNeuS.from_pretrained(tmp_path).eval()
    views, timesteps, cameras = batch(channels=3)
    torch.testing.assert_close(loaded(views, timesteps, cameras, cameras).image,
                               model(views, timesteps, cameras, cameras).image, rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = LatentSparseNeuS(in_channels=4, ray_chunk=50, **TINY)
    views, timesteps, cameras = batch()
    loss_fn = NeuSLoss(eikonal_weight=0.0)

    def gradients():
        torch.manual_seed(1)  # the same stratified samples in both runs
        model.zero_grad()
        out = model(views, timesteps, cameras, cameras, with_eikonal=False)
        loss_fn(out, torch.zeros_like(out.image))["total"].backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = gradients()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    checkpointed = gradients()
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)


def test_losses_are_named_terms_and_reach_every_trainable_part():
    model = LatentSparseNeuS(in_channels=4, **TINY).train()
    views, timesteps, cameras = batch()
    out = model(views, timesteps, cameras, cameras)
    masks = torch.rand(2, 3, 1, 8, 8) > 0.5
    terms = NeuSLoss(eikonal_weight=0.1, opacity_weight=0.5)(out, torch.zeros_like(out.image), masks)
    assert set(terms) == {"render", "eikonal", "opacity", "total"}
    expected = terms["render"] + 0.1 * terms["eikonal"] + 0.5 * terms["opacity"]
    torch.testing.assert_close(terms["total"], expected)
    terms["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_inputs_get_clear_errors():
    model = LatentSparseNeuS(in_channels=4, **TINY)
    views, timesteps, cameras = batch()
    with pytest.raises(ValueError, match="timesteps must be"):
        model(views, timesteps[:, :2], cameras, cameras)
    with pytest.raises(ValueError, match="source cameras"):
        model(views, timesteps, cameras[:, :2], cameras)
    with pytest.raises(ValueError, match="target_cameras"):
        model(views, timesteps, cameras, cameras[0])
    with pytest.raises(ValueError, match="background"):
        LatentSparseNeuS(in_channels=4, background=[1.0, 1.0])
    out = model.eval()(views, timesteps, cameras, cameras)
    with pytest.raises(ValueError, match="eikonal"):
        NeuSLoss(eikonal_weight=0.1)(out, torch.zeros_like(out.image))
    with pytest.raises(ValueError, match="masks"):
        NeuSLoss(eikonal_weight=0.0, opacity_weight=1.0)(out, torch.zeros_like(out.image))
    with pytest.raises(ValueError, match="match"):
        NeuSLoss()(out, torch.zeros(2, 3, 4, 4, 4))


def test_extract_mesh_of_the_initial_field_is_the_init_sphere_coloured_by_the_views():
    model = LatentSparseNeuS(in_channels=3, init_radius=0.5, **TINY)
    views, timesteps, cameras = batch(batch_size=1, channels=3)
    field = model.fields(views, timesteps, cameras)[0]
    green = torch.tensor([-1.0, 1.0, -1.0])[None, :, None, None].expand(3, 3, 16, 16)  # [-1, 1] RGB
    mesh = model.extract_mesh(field, resolution=64, images=green, cameras=cameras[0].rescale(16, 16))
    radii = torch.as_tensor(mesh.vertices).norm(dim=-1)
    assert (radii / 0.5 - 1).abs().max() < 0.01
    assert (mesh.visual.vertex_colors[:, :3] == [0, 255, 0]).all()
    with pytest.raises(ValueError, match="RGB images"):
        model.extract_mesh(field, resolution=32, images=green[:, :2], cameras=cameras[0])
