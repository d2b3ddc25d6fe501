"""`tunemv demo` (the README's main job) end to end at toy size, on the shipped tiny backbone."""

import json
from pathlib import Path

import pytest
from PIL import Image

from tunemv.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs/demo.yaml names ./models/tiny-if, as the README runs it


def test_demo_fits_exports_and_samples_text_and_image_to_multiview(in_repo, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--objects", "4", "--max-steps", "2", "--num-views", "3",
                 "--steps", "2", "--mesh-resolution", "32", "--prompt", "a red chair"]) == 0
    printed = capsys.readouterr().out
    assert "fit 2 steps" in printed
    info = json.loads((out / "adapter/adapter.json").read_text())
    assert info["global_step"] == 2 and info["ema"] is True
    # Named relative to the adapter folder, so it loads from any working directory (issue 22).
    assert (out / "adapter" / info["backbone"]).resolve() == (REPO / "models/tiny-if").resolve()
    for kind in ("text-to-multiview", "image-to-multiview"):
        (folder,) = [p for p in (out / kind).iterdir() if p.is_dir()]
        assert (folder / "cameras.json").is_file()
        for name in ("grid.png", "turntable.gif", "mesh.glb", "mesh.ply"):
            assert (folder / name).is_file(), folder / name
            assert str(folder / name) in printed  # the demo says where everything is
        assert len(list((folder / "images").iterdir())) == 3
        assert main(["data", "check", str(folder)]) == 0
    # image→multiview keeps the held-out chair's view (composited on white) as view 0, pixel for pixel.
    held_out = (out / "chairs/val.txt").read_text().split()[0]
    (folder,) = [p for p in (out / "image-to-multiview").iterdir() if p.is_dir()]
    rgba = Image.open(out / "chairs" / held_out / "images/000.png").convert("RGBA")
    reference = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")  # as sampled
    assert list(Image.open(folder / "images/000.png").convert("RGB").getdata()) == list(reference.getdata())


def test_demo_errors_are_one_line(in_repo, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such config" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--objects", "1"]) == 2
    assert "--objects must be >= 2" in capsys.readouterr().err
