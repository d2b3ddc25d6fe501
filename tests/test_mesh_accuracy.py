"""Mesh accuracy (Chamfer, volume IoU) calibrated on procedural ground truth: self, a perturbed copy, another
object of the same category, and the NeuS init sphere (r = 0.5). Thresholds sit between measured figures."""

import numpy as np
import pytest
import torch
import trimesh

from tunemv.data.procedural import make_object
from tunemv.data.sdf import Sphere, shape_mesh
from tunemv.evaluation.hull import voxel_centres
from tunemv.evaluation.mesh_accuracy import chamfer_distance, mesh_occupancy, occupancy_grid, volume_iou

RESOLUTION = 65  # ground-truth lattice, coarser than the generator's 129 for speed; rows moved < 0.01 from 65 to 97


def procedural(category: str, index: int):
    return make_object(category, np.random.default_rng(np.random.SeedSequence(11, spawn_key=(0, index))))


@pytest.fixture(scope="module")
def calibration() -> dict:
    """Per object of 3 chairs and 1 table: (chamfer, IoU) against itself, the next object of its category, the
    sphere, and itself moved by 0.05 along x. Occupancy grids are computed once per mesh (~0.1 s each)."""
    torch.set_num_threads(1)
    objects = {category: [shape_mesh(procedural(category, i).shape, RESOLUTION) for i in range(n)]
               for category, n in (("chair", 3), ("table", 2))}
    sphere = shape_mesh(Sphere(0.5), RESOLUTION)
    grid = {id(m): occupancy_grid(m) for m in [sphere, *(m for meshes in objects.values() for m in meshes)]}
    figures = {}
    for category, meshes in objects.items():
        for i, mesh in enumerate(meshes[:3 if category == "chair" else 1]):
            moved = mesh.copy().apply_translation([0.05, 0.0, 0.0])
            grid[id(moved)] = occupancy_grid(moved)
            others = {"self": mesh, "moved": moved, "other": meshes[(i + 1) % len(meshes)], "sphere": sphere}
            figures[category, i] = {name: (chamfer_distance(mesh, other), volume_iou(grid[id(mesh)], grid[id(other)]))
                                    for name, other in others.items()}
            print(category, i, {k: f"chamfer {c:.4f} IoU {v:.3f}" for k, (c, v) in figures[category, i].items()})
    return figures


def test_ground_truth_against_itself_is_the_ceiling(calibration):
    # Measured: IoU 1.000; Chamfer 0.0045-0.0049, the floor of two independent 30k-point draws.
    for figures in calibration.values():
        chamfer, iou = figures["self"]
        assert iou == 1.0 and chamfer < 0.008


def test_a_small_move_costs_chamfer_and_iou(calibration):
    # Moved by 0.05 (1.6 voxels of the 64^3 grid). Measured: chairs Chamfer 0.019-0.022, IoU 0.47-0.50; the
    # table, long along x, 0.011 and 0.79. Self is 0.005 and 1.0.
    for figures in calibration.values():
        chamfer, iou = figures["moved"]
        assert figures["self"][0] + 0.004 < chamfer < 0.05 and iou < 0.9


def test_the_init_sphere_scores_far_below(calibration):
    # Measured, chairs: IoU 0.090-0.137 (issue 18 quotes 0.112), Chamfer 0.127-0.153; the table: 0.059, 0.160.
    for figures in calibration.values():
        chamfer, iou = figures["sphere"]
        assert iou < 0.2 and chamfer > 0.1


def test_another_object_of_the_category_lies_between_by_chamfer(calibration):
    # Measured Chamfer: other chair 0.039-0.105, other table 0.089, always below the sphere's (0.127-0.160), but
    # IoU is not ordered: thin parts that miss each other overlap less than the sphere does (0.005-0.18 vs 0.06-0.14).
    for figures in calibration.values():
        assert figures["self"][0] + 0.02 < figures["other"][0] < figures["sphere"][0]
        assert figures["other"][1] < 0.5
    mean = {name: np.mean([f[name][0] for f in calibration.values()]) for name in ("other", "sphere")}
    assert mean["other"] < mean["sphere"] - 0.04


def test_occupancy_of_open_meshes_grids_and_callables_agree():
    sphere = trimesh.creation.icosphere(4, 0.5)
    exact = voxel_centres(64).norm(dim=-1) < 0.5
    assert torch.equal(mesh_occupancy(sphere), exact)
    holed = trimesh.Trimesh(sphere.vertices, sphere.faces[:-40], process=False)  # not watertight
    assert not holed.is_watertight and volume_iou(holed, exact) > 0.995
    assert volume_iou(lambda p: p.norm(dim=-1) < 0.5, sphere) == 1.0
    box = trimesh.creation.box((1.0, 0.6, 0.4))  # 12 triangles, each spanning many grid columns
    assert volume_iou(box, (voxel_centres(64).abs() < torch.tensor([0.5, 0.3, 0.2])).all(-1)) == 1.0
    # a grid is meshed on its voxel faces: within a voxel (2/64) of the true surface
    assert chamfer_distance(exact, sphere) < 2 / 64
    with pytest.raises(ValueError, match=r"occupancy grid is \(32, 32, 32\), expected \(64, 64, 64\)"):
        volume_iou(torch.zeros(32, 32, 32, dtype=torch.bool), sphere)


def test_evaluate_reports_mesh_accuracy_where_the_reference_has_a_mesh(procedural_root, tmp_path, capsys):
    import json
    import shutil

    from tunemv.cli import main
    from tunemv.evaluation.availability import is_unavailable

    truth, sampled = tmp_path / "truth", tmp_path / "sampled"
    for name in ("00000_chair", "00002_mug"):
        shutil.copytree(procedural_root / name, truth / name)
        shutil.copytree(procedural_root / name, sampled / name)
    (sampled / "00002_mug" / "mesh.ply").unlink()  # as `tunemv sample` without --mesh
    assert main(["evaluate", str(sampled), "--reference", str(truth), "--grid", "32", "--threads", "1", "--quiet"]) == 0
    assert "mesh_volume_iou" in capsys.readouterr().out
    report = json.loads((sampled / "metrics.json").read_text())
    chair, mug = (o["metrics"] for o in report["objects"])
    assert chair["mesh_volume_iou"] == 1.0 and chair["mesh_chamfer"] < 0.008
    assert is_unavailable(mug["mesh_chamfer"]) and "has no mesh.ply" in mug["mesh_chamfer"]
    # the hull of 16 views at 32 px: measured IoU 0.35 (chair; issue 18: 0.345 from 8 views) and 0.17 (mug,
    # whose hollow the hull fills), Chamfer 0.03-0.05: far from the ceiling, above the sphere for the chair
    for metrics in (chair, mug):
        assert 0.1 < metrics["hull_mesh_volume_iou"] < 0.9 and 0.008 < metrics["hull_mesh_chamfer"] < 0.1
    assert report["mean"]["mesh_volume_iou"] == 1.0 and report["counts"]["mesh_volume_iou"] == 1
    (truth / "00000_chair" / "mesh.ply").unlink()
    assert main(["evaluate", str(sampled), "--reference", str(truth), "--grid", "32", "--threads", "1", "--quiet"]) == 0
    chair = json.loads((sampled / "metrics.json").read_text())["objects"][0]["metrics"]
    assert chair["hull_mesh_volume_iou"] == "unavailable: the reference object has no mesh.ply"


def test_mesh_render_draws_the_truth_it_documents_and_refuses_a_bad_mesh_in_one_line(tmp_path, capsys):
    """experiments/mesh_render.py documents --truth: it draws it as a further row; a bad path is one line, exit 2."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    spec = importlib.util.spec_from_file_location(
        "mesh_render", Path(__file__).resolve().parents[1] / "experiments" / "mesh_render.py")
    mesh_render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mesh_render)
    shape_mesh(Sphere(radius=0.5), resolution=16).export(tmp_path / "a.ply")
    assert mesh_render.main([str(tmp_path / "a.ply"), "--truth", str(tmp_path / "a.ply"),
                             "--out", str(tmp_path / "sheet.png")]) == 0
    assert Image.open(tmp_path / "sheet.png").size == (4 * mesh_render.SIZE, 2 * mesh_render.SIZE)
    with pytest.raises(SystemExit) as exit_info:
        mesh_render.main([str(tmp_path / "a.ply"), "--truth", str(tmp_path / "none.ply"), "--out", str(tmp_path / "b.png")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"mesh_render.py: error: --truth {tmp_path / 'none.ply'}: not a readable mesh")
    assert not (tmp_path / "b.png").exists()
