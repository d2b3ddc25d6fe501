"""`tunemv data check` must catch each kind of broken dataset with a message naming the file and problem."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from tunemv.cli import main
from tunemv.data.check import check_dataset
from tunemv.data.format import read_object
from tunemv.errors import DatasetError

OBJ = "00000_chair"


@pytest.fixture
def dataset(procedural_root, tmp_path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(procedural_root, root)
    return root


def edit_cameras(root: Path, edit) -> None:
    path = root / OBJ / "cameras.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def set_view(field, value, view=3):
    def edit(meta):
        meta["views"][view][field] = value
    return edit


def edit_mesh(root: Path, edit) -> None:
    path = root / OBJ / "mesh.ply"
    edit(trimesh.load(path, process=False)).export(path)


def rotation_scaled(meta):
    meta["views"][2]["c2w"][0][0] *= 1.2


def reflected(meta):
    for row in range(3):
        meta["views"][2]["c2w"][row][0] *= -1


def nan_c2w(meta):
    meta["views"][1]["c2w"][1][3] = float("nan")


def negative_focal(meta):
    meta["views"][0]["K"][0][0] = -50.0


def all_transparent(root):
    """Every view of the object fully transparent (alpha 0): an invisible object that scores 0 everywhere."""
    for path in (root / OBJ / "images").glob("*.png"):
        Image.new("RGBA", (32, 32), (255, 255, 255, 0)).save(path)


def symlink_out(root):
    """images/003.png replaced by a symlink to another object's image (outside this object's folder)."""
    link = root / OBJ / "images" / "003.png"
    link.unlink()
    link.symlink_to(root / "00001_table" / "images" / "000.png")


BROKEN = {
    # name: (mutation, expected message fragment, file the message must name)
    "missing cameras.json": (lambda r: (r / OBJ / "cameras.json").unlink(), "missing (every object folder needs cameras.json)", "cameras.json"),
    "invalid json": (lambda r: (r / OBJ / "cameras.json").write_text("{not json"), "not valid JSON", "cameras.json"),
    "bad convention": (lambda r: edit_cameras(r, lambda m: m.update(convention="directx")), "convention must be one of", "cameras.json"),
    "non-integer width": (lambda r: edit_cameras(r, lambda m: m.update(width=32.5)), "width must be a positive integer", "cameras.json"),
    "empty views": (lambda r: edit_cameras(r, lambda m: m.update(views=[])), "views must be a non-empty list", "cameras.json"),
    "missing image": (lambda r: (r / OBJ / "images" / "004.png").unlink(), "image file is missing", "images/004.png"),
    "corrupt image": (lambda r: (r / OBJ / "images" / "002.png").write_bytes(b"\x89PNG garbage"), "image is not readable", "images/002.png"),
    "wrong image size": (lambda r: Image.new("RGB", (20, 32), "white").save(r / OBJ / "images" / "006.png"), "image is 20x32, but cameras.json says 32x32", "images/006.png"),
    "negative focal": (lambda r: edit_cameras(r, negative_focal), "focal length must be > 0", "cameras.json"),
    "non-orthonormal rotation": (lambda r: edit_cameras(r, rotation_scaled), "rotation is not orthonormal", "cameras.json"),
    "reflection": (lambda r: edit_cameras(r, reflected), "rotation is a reflection", "cameras.json"),
    "NaN in c2w": (lambda r: edit_cameras(r, nan_c2w), "views[1].c2w contains NaN or inf", "cameras.json"),
    "K wrong shape": (lambda r: edit_cameras(r, set_view("K", [[1, 0], [0, 1]])), "views[3].K must be a 3x3", "cameras.json"),
    "image escapes folder": (lambda r: edit_cameras(r, set_view("image", "../00001_table/images/000.png")), "climbs out of the object folder", "cameras.json"),
    "absolute image path": (lambda r: edit_cameras(r, set_view("image", "/etc/hostname")), "relative path inside the object folder", "cameras.json"),
    "every view transparent": (all_transparent, "all 16 views are fully transparent", "images"),
    "image symlink escapes": (lambda r: symlink_out(r), "is a symlink that escapes the object folder", "cameras.json"),
    "duplicate image": (lambda r: edit_cameras(r, set_view("image", "images/000.png")), "is listed twice", "cameras.json"),
    "empty caption": (lambda r: (r / OBJ / "caption.txt").write_text("\n"), "caption is empty", "caption.txt"),
    "missing caption": (lambda r: (r / OBJ / "caption.txt").unlink(), "caption file is missing", "caption.txt"),
    "depth wrong shape": (lambda r: np.save(r / OBJ / "depth" / "003.npy", np.zeros((4, 4))), "depth has shape (4, 4)", "depth/003.npy"),
    "depth with inf": (lambda r: np.save(r / OBJ / "depth" / "005.npy", np.full((32, 32), np.inf)), "depth contains NaN or inf", "depth/005.npy"),
    "missing mask": (lambda r: (r / OBJ / "masks" / "007.png").unlink(), "missing, but masks/ exists", "masks/007.png"),
    "corrupt mesh": (lambda r: (r / OBJ / "mesh.ply").write_bytes(b"ply\ngarbage"), "mesh is not readable", "mesh.ply"),
    "mesh without triangles": (lambda r: edit_mesh(r, lambda m: trimesh.Trimesh(m.vertices, np.zeros((0, 3), int))), "mesh has no triangles", "mesh.ply"),
    "mesh with NaN": (lambda r: edit_mesh(r, lambda m: trimesh.Trimesh(m.vertices * np.nan, m.faces, process=False)), "mesh vertices contain NaN or inf", "mesh.ply"),
    "mesh in millimetres": (lambda r: edit_mesh(r, lambda m: m.apply_scale(1000.0)), "lies behind camera", "mesh.ply"),
    "split lists unknown object": (lambda r: (r / "train.txt").write_text("ghost\n"), "lists 'ghost'", "train.txt"),
    "only one split file": (lambda r: (r / "val.txt").unlink(), "missing, but the other split file exists", "val.txt"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_check_catches_broken_dataset(dataset, name, capsys):
    mutate, fragment, file = BROKEN[name]
    mutate(dataset)
    report = check_dataset(dataset)
    assert not report.ok
    matching = [p for p in report.problems if fragment in p.message]
    assert matching, f"{name}: no problem mentions {fragment!r}; got {[str(p) for p in report.problems]}"
    assert all(p.path.endswith(file) for p in matching), [p.path for p in matching]
    # every other object is still fine: problems stay with the broken object (or the split files)
    assert report.broken_objects <= {OBJ}
    # the CLI prints the problem with its path and exits non-zero
    assert main(["data", "check", str(dataset)]) == 1
    out = capsys.readouterr()
    assert fragment in out.out and file in out.out and "FAILED" in out.err


def test_check_passes_a_good_dataset(dataset, capsys):
    report = check_dataset(dataset, min_views=16)
    assert report.ok, report.problems
    assert (report.num_objects, report.num_views) == (6, 96)
    assert main(["data", "check", str(dataset), "--min-views", "16"]) == 0
    assert "OK: 6 objects, 96 views" in capsys.readouterr().out


def test_check_requires_min_views(dataset):
    report = check_dataset(dataset, min_views=20)
    assert len(report.broken_objects) == 6
    assert "has 16 views, need at least 20" in report.problems[0].message


def test_check_a_single_object_folder(dataset):
    assert check_dataset(dataset / OBJ).ok


@pytest.mark.parametrize("setup, fragment", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "contains no object folders"),
])
def test_check_bad_roots(tmp_path, setup, fragment, capsys):
    root = tmp_path / "nothing"
    setup(root)
    assert main(["data", "check", str(root)]) == 1
    assert fragment in capsys.readouterr().out


def test_check_reports_every_problem_not_just_the_first(dataset):
    BROKEN["negative focal"][0](dataset)
    BROKEN["missing image"][0](dataset)
    BROKEN["empty caption"][0](dataset)
    assert len(check_dataset(dataset).problems) == 3


def test_reader_raises_on_the_first_problem_naming_the_file(dataset):
    BROKEN["reflection"][0](dataset)
    with pytest.raises(DatasetError, match=r"cameras\.json: views\[2\]\.c2w: rotation is a reflection"):
        read_object(dataset / OBJ)


def test_the_mesh_is_optional_and_on_the_record(dataset):
    assert read_object(dataset / OBJ).mesh_path == dataset / OBJ / "mesh.ply"
    (dataset / OBJ / "mesh.ply").unlink()
    assert check_dataset(dataset).ok
    assert read_object(dataset / OBJ).mesh_path is None
