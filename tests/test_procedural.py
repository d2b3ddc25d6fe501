import json
import math

import numpy as np
import pytest
import torch
import trimesh

from tunemv.data.format import read_object
from tunemv.data.generate import generate_procedural_dataset
from tunemv.data.procedural import CATEGORIES, COLOURS, OBJECT_RADIUS, make_object
from tunemv.data.render import render_sdf
from tunemv.data.sdf import Box, Capsule, Cone, Cylinder, Sphere, Torus, bounding_box
from tunemv.geometry.cameras import orbit


@pytest.mark.parametrize("shape, point, expected", [
    (Sphere(0.5), (1.0, 0.0, 0.0), 0.5),
    (Box((0.5, 0.25, 1.0)), (0.0, 1.25, 0.0), 1.0),
    (Box((0.5, 0.5, 0.5)), (1.5, 1.5, 0.5), math.sqrt(2.0)),
    (Box((0.5, 0.5, 0.5)), (0.0, 0.0, 0.0), -0.5),
    (Cylinder(0.5, 1.0), (1.0, 0.0, 0.0), 0.5),
    (Cylinder(0.5, 1.0), (0.0, 0.0, 2.0), 1.0),
    (Torus(1.0, 0.25), (1.0, 0.0, 0.0), -0.25),
    (Torus(1.0, 0.25), (0.0, 0.0, 0.0), 0.75),
    (Cone(1.0, 0.0, 1.0), (0.0, 0.0, 0.0), -1 / math.sqrt(5)),
    (Cone(1.0, 0.0, 1.0), (0.0, 0.0, -2.0), 1.0),
    (Capsule((0, 0, -1), (0, 0, 1), 0.5), (0.0, 0.0, 2.0), 0.5),
    (Capsule((0, 0, -1), (0, 0, 1), 0.5), (0.0, 2.0, 0.3), 1.5),
])
def test_primitives_match_analytic_distances(shape, point, expected):
    assert shape(torch.tensor([point])).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("shape", [Sphere(0.5), Box((0.5, 0.2, 0.3)), Cylinder(0.4, 0.6), Torus(0.6, 0.2),
                                   Cone(0.5, 0.1, 0.4), Capsule((0, 0, -0.3), (0.2, 0, 0.3), 0.2)])
def test_primitives_are_true_distance_fields(shape):
    """Eikonal property: |grad sdf| = 1 almost everywhere (checked away from the surface's medial axis)."""
    points = (torch.rand(2000, 3) * 3 - 1.5).requires_grad_(True)
    (grad,) = torch.autograd.grad(shape(points).sum(), points)
    norms = grad.norm(dim=-1)
    assert (norms - 1).abs().median() < 1e-4
    assert ((norms - 1).abs() < 1e-3).float().mean() > 0.95


def test_sphere_render_matches_analytic_depth_and_disc_area():
    radius, distance = 0.5, 2.2
    cams = orbit(4, elevation_deg=[0.0, 10.0, 20.0, 30.0], radius=distance, fov_deg=50.0, resolution=64)
    out = render_sdf(Sphere(radius), cams, (0.8, 0.1, 0.1), supersample=2)
    # The centre pixel's ray is half a pixel off axis; its analytic depth differs from d - r by < 0.01%.
    assert torch.allclose(out.depth[:, 32, 32], torch.full((4,), distance - radius), rtol=0.01)
    focal = cams.K[0, 0, 0].item()
    disc_area = math.pi * (focal * radius / math.sqrt(distance**2 - radius**2)) ** 2
    alpha_area = out.rgba[..., 3].sum(dim=(1, 2))
    assert torch.allclose(alpha_area, torch.full((4,), disc_area), rtol=0.03)
    assert out.mask.sum(dim=(1, 2)).float().sub(disc_area).abs().max() < 0.03 * disc_area
    assert (out.depth[~out.mask] == 0).all() and (out.depth[out.mask] > 0).all() and (out.rgb_on_white[~(out.rgba[..., 3] > 0)] == 1).all()


def test_box_render_depth_at_centre():
    cams = orbit(1, elevation_deg=0.0, radius=2.0, fov_deg=40.0, resolution=33)
    out = render_sdf(Box((0.3, 0.3, 0.3)), cams, (0.2, 0.2, 0.8))
    assert out.depth[0, 16, 16].item() == pytest.approx(2.0 - 0.3, rel=0.01)


def test_shading_is_view_independent():
    """Lambertian shading with world-fixed lights: the top of a sphere has the same colour from every view."""
    cams = orbit(6, elevation_deg=60.0, radius=2.2, resolution=48)
    out = render_sdf(Sphere(0.5), cams, (0.3, 0.6, 0.9))
    top = torch.tensor([[0.0, 0.0, 0.5]])
    pixels, _, _ = cams.project(top.expand(6, 1, 3))
    colours = torch.stack([out.rgb_on_white[v, int(pixels[v, 0, 1]), int(pixels[v, 0, 0])] for v in range(6)])
    assert (colours - colours.mean(0)).abs().max() < 0.02


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_builds_inside_the_unit_sphere(category):
    obj = make_object(category, np.random.default_rng(3))
    low, high = bounding_box(obj.shape, extent=1.2, resolution=64)
    assert torch.maximum(low.abs(), high.abs()).norm() < 1.0
    assert (high - low).norm() / 2 == pytest.approx(OBJECT_RADIUS, abs=0.05)
    caption = obj.captions[0]
    assert obj.colour in caption and obj.category in caption and len(obj.captions) >= 2
    out = render_sdf(obj.shape, orbit(2, 15.0, 2.2, 50.0, 32), obj.rgb, supersample=1)
    assert 0.02 < out.mask.float().mean() < 0.9


def test_object_parameters_vary_and_colours_are_many():
    assert len(COLOURS) >= 12
    captions = {make_object("chair", np.random.default_rng(i)).captions[0] for i in range(20)}
    assert len(captions) >= 10


def test_generation_is_deterministic_and_independent_of_workers(tmp_path):
    kwargs = dict(num_objects=4, num_views=4, resolution=16, categories=["stool", "lamp"], seed=3, progress=False)
    a = generate_procedural_dataset(tmp_path / "a", workers=1, **kwargs)
    b = generate_procedural_dataset(tmp_path / "b", workers=2, **kwargs)
    c = generate_procedural_dataset(tmp_path / "c", workers=1, **{**kwargs, "seed": 4})
    assert a == b == c == ["00000_stool", "00001_lamp", "00002_stool", "00003_lamp"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 4 * 4 * 3
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / files[1]).read_bytes() != (tmp_path / "c" / files[1]).read_bytes()


def test_stored_depth_unprojects_onto_the_object_surface(procedural_root):
    """End to end: renderer -> writer -> cameras.json -> reader. Depth pixels must land on the SDF's zero set."""
    for directory in sorted(p for p in procedural_root.iterdir() if p.is_dir())[:3]:
        meta = json.loads((directory / "attributes.json").read_text())
        obj = make_object(meta["category"], np.random.default_rng(np.random.SeedSequence(7, spawn_key=(0, meta["index"]))))
        assert obj.captions[0] == (directory / "caption.txt").read_text().splitlines()[0]
        record = read_object(directory)
        for view in (0, 5, 11):
            depth = torch.from_numpy(np.load(record.depth_paths[view]))
            mask = torch.from_numpy(np.asarray(__import__("PIL.Image").Image.open(record.mask_paths[view])) > 127)
            solid = mask & (depth > 0)
            # only pixels fully inside the silhouette (their 2x2 sub-samples all hit the same surface)
            solid &= torch.nn.functional.max_pool2d((~solid).float()[None], 3, 1, 1)[0] == 0
            rows, cols = torch.nonzero(solid, as_tuple=True)
            pixels = torch.stack([cols + 0.5, rows + 0.5], -1).float()
            points = record.cameras[view].unproject(pixels, depth[rows, cols])
            assert obj.shape(points).abs().median() < 0.01


def test_ground_truth_mesh_lies_on_the_surface_in_the_cameras_frame(procedural_root):
    """mesh.ply is marching cubes of the same SDF the views were rendered from, in the frame of cameras.json."""
    for directory in sorted(p for p in procedural_root.iterdir() if p.is_dir())[:3]:
        meta = json.loads((directory / "attributes.json").read_text())
        obj = make_object(meta["category"], np.random.default_rng(np.random.SeedSequence(7, spawn_key=(0, meta["index"]))))
        record = read_object(directory)
        mesh = trimesh.load(record.mesh_path, process=False)
        assert mesh.is_watertight
        distance = obj.shape(torch.as_tensor(mesh.vertices, dtype=torch.float32)).abs()
        # measured: mean 0.0001-0.0002, max 0.004 at the 129^3 lattice (cells of 1/64)
        assert distance.mean() < 0.001 and distance.max() < 0.01
        # every vertex projects inside the views' silhouettes (masks dilated by one pixel for the edges)
        view = 5
        pixels, _, in_front = record.cameras[view].project(torch.as_tensor(mesh.vertices, dtype=torch.float32))
        mask = torch.from_numpy(np.asarray(__import__("PIL.Image").Image.open(record.mask_paths[view])) > 127)
        mask = torch.nn.functional.max_pool2d(mask.float()[None], 3, 1, 1)[0] > 0
        column, row = pixels.floor().long().clamp(0, mask.shape[1] - 1).T
        assert in_front.all() and mask[row, column].float().mean() > 0.99


def test_ground_truth_mesh_occupancy_is_the_sdf_sign_on_the_evaluation_grid():
    """The 129^3 lattice holds every 64^3 voxel centre, so mesh IoU against the analytic shape is exactly 1."""
    from tunemv.data.sdf import shape_mesh
    from tunemv.evaluation.mesh_accuracy import volume_iou

    shape = make_object("chair", np.random.default_rng(np.random.SeedSequence(0, spawn_key=(0, 3)))).shape
    assert volume_iou(shape_mesh(shape), lambda points: shape(points) < 0) == 1.0  # 0.906 at a 97^3 lattice
