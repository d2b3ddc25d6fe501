"""Mesh extraction: marching cubes accuracy, coarse-to-fine equivalence, vertex colours, export round trips."""

import numpy as np
import pytest
import torch
import trimesh

from tunemv.data.render import render_sdf
from tunemv.data.sdf import Box, Sphere
from tunemv.geometry.cameras import orbit
from tunemv.neus.mesh import colored_mesh, export_mesh, extract_mesh, sdf_grid, vertex_colors


@pytest.mark.parametrize("coarse_to_fine", [True, False])
def test_sphere_at_128_has_radius_error_below_one_percent(coarse_to_fine):
    mesh = extract_mesh(Sphere(0.6), resolution=128, coarse_to_fine=coarse_to_fine)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii / 0.6 - 1).max() < 0.01
    assert mesh.is_watertight and mesh.volume > 0  # closed, with outward-facing triangles
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.6**3, rel=0.01)


def test_coarse_to_fine_grid_equals_the_dense_grid_near_the_surface():
    shape = Box((0.5, 0.3, 0.2), rounding=0.05)
    dense = sdf_grid(shape, 96, coarse_to_fine=False)
    fast = sdf_grid(shape, 96)
    near = dense.abs() < 2 * (2 / 95)  # every cell that marching cubes can cross
    torch.testing.assert_close(fast[near], dense[near])
    assert torch.equal(fast > 0, dense > 0)
    a, b = extract_mesh(shape, 96), extract_mesh(shape, 96, coarse_to_fine=False)
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-6)


def test_grid_without_a_surface_is_a_clear_error():
    with pytest.raises(ValueError, match="no surface"):
        extract_mesh(Sphere(0.1, center=(5.0, 0.0, 0.0)), resolution=32)
    with pytest.raises(ValueError, match="resolution"):
        extract_mesh(Sphere(0.5), resolution=1)


def test_vertex_colours_come_from_the_views_that_see_each_vertex():
    shape = Sphere(0.6)
    mesh = extract_mesh(shape, 64)
    cameras = orbit(2, 0.0, resolution=32)  # view 0 from +x, view 1 from -x
    depths = render_sdf(shape, cameras, (1.0, 1.0, 1.0), supersample=1).depth
    images = torch.stack([torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])])[:, :, None, None]
    images = images.expand(2, 3, 32, 32)
    vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32)
    colors = vertex_colors(vertices, images, cameras, depths)
    front, back = vertices[:, 0] > 0.3, vertices[:, 0] < -0.3  # seen by camera 0 / camera 1 only
    torch.testing.assert_close(colors[front], torch.tensor([1.0, 0.0, 0.0]).expand(int(front.sum()), 3))
    torch.testing.assert_close(colors[back], torch.tensor([0.0, 0.0, 1.0]).expand(int(back.sum()), 3))


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_export_round_trip_keeps_geometry_and_colours(tmp_path, suffix):
    mesh = extract_mesh(Sphere(0.5), 32)
    colors = torch.rand(len(mesh.vertices), 3)
    path = export_mesh(colored_mesh(mesh, colors), tmp_path / f"object{suffix}")
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) == len(mesh.faces)
    assert loaded.bounds == pytest.approx(mesh.bounds, abs=1e-5)
    if suffix == ".ply":  # PLY keeps per-vertex order, so colours compare one to one
        np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], (colors.numpy() * 255).round())
    assert [p.name for p in tmp_path.iterdir()] == [f"object{suffix}"]  # no temporary left behind


def test_export_rejects_unknown_formats_without_writing(tmp_path):
    with pytest.raises(ValueError, match=r"object\.stl.*unsupported"):
        export_mesh(extract_mesh(Sphere(0.5), 32), tmp_path / "object.stl")
    assert not list(tmp_path.iterdir())
