import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunemv.cli import main
from tunemv.data.check import check_dataset
from tunemv.data.format import read_object
from tunemv.data.importers import import_transforms
from tunemv.errors import DatasetError
from tunemv.geometry.cameras import orbit


def opengl_project(point, c2w_gl, fx, fy, cx, cy):
    """The source convention, written out: OpenGL camera looks down -z, image v grows downward."""
    x, y, z = (np.linalg.inv(np.asarray(c2w_gl)) @ np.append(point, 1.0))[:3]
    return np.array([cx + fx * x / -z, cy - fy * y / -z])


def make_nerf_synthetic(root: Path, width=40, height=30, intrinsics="angle", n_train=3, n_test=2, seed=0) -> list[dict]:
    """A NeRF-synthetic style folder: transforms_{train,test}.json, file paths without extension, RGBA pngs."""
    rng = np.random.default_rng(seed)
    cams = orbit(n_train + n_test, elevation_deg=30.0, radius=4.0, resolution=(height, width), azimuth_start_deg=17.0)
    c2w_gl = cams.to_opengl().double().numpy()
    frames = []
    for split, ids in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        (root / split).mkdir(parents=True, exist_ok=True)
        split_frames = []
        for i in ids:
            rgba = rng.integers(0, 255, (height, width, 4), dtype=np.uint8)
            Image.fromarray(rgba).save(root / split / f"r_{i}.png")
            frame = {"file_path": f"./{split}/r_{i}", "transform_matrix": c2w_gl[i].tolist()}
            if intrinsics == "per-frame":
                frame.update(fl_x=50.0 + i, fl_y=48.0 + i, cx=width / 2 + 1.5, cy=height / 2 - 0.5, w=width, h=height)
            split_frames.append(frame)
        meta = {"frames": split_frames}
        if intrinsics == "angle":
            meta["camera_angle_x"] = 0.6911
        (root / f"transforms_{split}.json").write_text(json.dumps(meta))
        frames += split_frames
    return frames


def source_intrinsics(frame, width, height):
    if "fl_x" in frame:
        return frame["fl_x"], frame["fl_y"], frame["cx"], frame["cy"]
    f = 0.5 * width / math.tan(0.5 * 0.6911)
    return f, f, width / 2, height / 2


@pytest.mark.parametrize("intrinsics", ["angle", "per-frame"])
def test_imported_cameras_project_like_the_source(tmp_path, intrinsics):
    frames = make_nerf_synthetic(tmp_path / "lego", intrinsics=intrinsics)
    import_transforms(tmp_path / "lego", tmp_path / "out" / "lego")
    record = read_object(tmp_path / "out" / "lego", check_files=True)
    assert record.num_views == 5 and record.captions == ["lego"]
    assert (record.cameras.width, record.cameras.height) == (40, 30)
    points = np.random.default_rng(1).uniform(-0.5, 0.5, (6, 3))
    for view, frame in enumerate(frames):
        expected = np.stack([opengl_project(p, frame["transform_matrix"], *source_intrinsics(frame, 40, 30)) for p in points])
        pixels, _, in_front = record.cameras[view].project(torch.tensor(points, dtype=torch.float32))
        np.testing.assert_allclose(pixels.numpy(), expected, atol=2e-3)
        assert in_front.all()


def test_import_keeps_pixels_and_alpha(tmp_path):
    make_nerf_synthetic(tmp_path / "src")
    import_transforms(tmp_path / "src", tmp_path / "obj", caption="a toy bulldozer")
    original = np.asarray(Image.open(tmp_path / "src" / "test" / "r_4.png"))
    imported = np.asarray(Image.open(tmp_path / "obj" / "images" / "004.png"))
    np.testing.assert_array_equal(original, imported)
    assert (tmp_path / "obj" / "caption.txt").read_text().strip() == "a toy bulldozer"
    assert check_dataset(tmp_path / "obj").ok


def test_import_scale_moves_cameras_not_pixels(tmp_path):
    frames = make_nerf_synthetic(tmp_path / "src")
    import_transforms(tmp_path / "src", tmp_path / "obj", scale=0.5)
    record = read_object(tmp_path / "obj")
    point = np.array([0.2, -0.1, 0.3])
    expected = opengl_project(point, frames[0]["transform_matrix"], *source_intrinsics(frames[0], 40, 30))
    pixels, _, _ = record.cameras[0].project(torch.tensor(point[None] * 0.5, dtype=torch.float32))
    np.testing.assert_allclose(pixels[0].numpy(), expected, atol=2e-3)


def test_import_a_folder_of_objects_through_the_cli(tmp_path, capsys):
    for name in ("car", "ship"):
        make_nerf_synthetic(tmp_path / "renders" / name)
    assert main(["data", "import-transforms", str(tmp_path / "renders"), str(tmp_path / "ds")]) == 0
    assert check_dataset(tmp_path / "ds", min_views=5).ok
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["car", "ship"]
    # a second import refuses to overwrite, with one line and exit code 2
    assert main(["data", "import-transforms", str(tmp_path / "renders"), str(tmp_path / "ds")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "import-transforms", str(tmp_path / "renders"), str(tmp_path / "ds"), "--overwrite"]) == 0


def _drop_image(root):
    (root / "train" / "r_1.png").unlink()


def _bad_matrix(root):
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["frames"][0]["transform_matrix"][0][0] = 3.0
    (root / "transforms_train.json").write_text(json.dumps(meta))


def _no_intrinsics(root):
    meta = json.loads((root / "transforms_train.json").read_text())
    del meta["camera_angle_x"]
    (root / "transforms_train.json").write_text(json.dumps(meta))


def _mixed_sizes(root):
    Image.new("RGBA", (10, 10)).save(root / "test" / "r_3.png")


@pytest.mark.parametrize("break_source, fragment, file", [
    (_drop_image, "image './train/r_1' not found", "transforms_train.json"),
    (_bad_matrix, "rotation is not orthonormal", "transforms_train.json"),
    (_no_intrinsics, "no intrinsics", "transforms_train.json"),
    (_mixed_sizes, "is 10x10, but earlier frames are 40x30", "r_3.png"),
])
def test_import_rejects_broken_sources_and_writes_nothing(tmp_path, break_source, fragment, file):
    make_nerf_synthetic(tmp_path / "src")
    break_source(tmp_path / "src")
    with pytest.raises(DatasetError, match=fragment) as info:
        import_transforms(tmp_path / "src", tmp_path / "out" / "obj")
    assert info.value.path.endswith(file)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_import_without_transforms_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "import-transforms", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no transforms.json" in err
