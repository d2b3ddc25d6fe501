"""transforms.json export: a round trip through import-transforms gives the same cameras and pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tunemv.cli import main
from tunemv.data.exporters import rgba_over_white
from tunemv.data.format import list_objects, load_image, read_cameras
from tunemv.data.generate import generate_procedural_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    generate_procedural_dataset(root / "data", num_objects=2, num_views=4, resolution=32, val_fraction=0,
                                progress=False, workers=1)
    return root / "data"


def test_export_then_import_gives_the_same_cameras_and_pixels(dataset, tmp_path):
    assert main(["data", "export-transforms", str(dataset), str(tmp_path / "transforms"), "--depth"]) == 0
    for name in list_objects(dataset):
        exported = tmp_path / "transforms" / name
        meta = json.loads((exported / "transforms.json").read_text())
        assert len(meta["frames"]) == 4 and meta["frames"][0]["depth_file_path"] == "depth/000.npy"
        assert main(["data", "import-transforms", str(exported), str(tmp_path / "back" / name)]) == 0
        before, after = read_cameras(dataset / name / "cameras.json"), read_cameras(tmp_path / "back" / name / "cameras.json")
        torch.testing.assert_close(after.K, before.K, atol=1e-6, rtol=0)
        torch.testing.assert_close(after.c2w, before.c2w, atol=1e-6, rtol=0)
        for index in range(4):
            original = load_image(dataset / name / "images" / f"{index:03d}.png")[0]
            returned = load_image(tmp_path / "back" / name / "images" / f"{index:03d}.png")[0]
            # The same pixels to 8-bit rounding of the un-composited colour and alpha (one level).
            assert (returned - original).abs().max() <= 1.01 / 255
        mask = load_image(exported / "images" / "000.png")[1]
        assert mask is not None and 0 < float(mask.mean()) < 1  # the object's mask is the alpha


def test_rgba_over_white_keeps_coloured_pixels_a_mask_calls_background():
    rgb = np.array([[[1.0, 1.0, 1.0], [0.5, 0.8, 1.0]]])  # white, then a light blue anti-aliased edge
    rgba = rgba_over_white(rgb, np.zeros((1, 2))).astype(np.float64) / 255
    composite = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    assert np.abs(composite - rgb).max() <= 1 / 255 and rgba[0, 1, 3] > 0.4 and rgba[0, 0, 3] == 0


def test_a_missing_source_is_one_line(tmp_path, capsys):
    assert main(["data", "export-transforms", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "source folder does not exist" in capsys.readouterr().err
