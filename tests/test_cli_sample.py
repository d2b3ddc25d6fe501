"""`tunemv sample`: outputs are dataset-format objects (they pass `tunemv data check`), references are exact,
bad input gets one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from sampling_fixtures import adapter_pipeline, save_adapter, save_backbones

from tunemv.cli import main
from tunemv.data.format import read_object


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    folders = save_backbones(root)
    return save_adapter(adapter_pipeline(folders["sd"], awake=True), root / "adapter")


def test_sample_writes_checkable_objects_with_grid_turntable_and_mesh(tmp_path, adapter, capsys):
    out = tmp_path / "out"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\ufeffa red chair\n\na blue mug\n", encoding="utf-8")  # a BOM, as Windows editors write
    code = main(["sample", "--adapter", str(adapter), "--prompts", str(prompts), "--num-views", "4", "--steps", "2",
                 "--sampler", "consistency", "--out", str(out), "--mesh", "--mesh-resolution", "32",
                 "--turntable-frames", "4", "--export", "transforms", "--quiet"])
    assert code == 0
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["0000_a-red-chair", "0001_a-blue-mug"]
    captured = capsys.readouterr()
    # --quiet: nothing but the final line (without it: the plan, "wrote OUT/0000_..." per object, an estimate)
    assert captured.out == f"wrote 2 object(s) to {out}\n" and captured.err == ""
    assert main(["data", "check", str(out), "--min-views", "4"]) == 0
    record = read_object(folders[1])
    assert record.captions[0] == "a blue mug" and record.num_views == 4
    for name in ("grid.png", "turntable.gif", "mesh.ply", "mesh.glb", "sampling.json"):
        assert (folders[0] / name).is_file(), name
    assert Image.open(folders[0] / "turntable.gif").n_frames == 4
    frames = iio.imread(folders[0] / "turntable.mp4", index=None)  # imageio-ffmpeg is installed with [dev]
    assert frames.shape[0] == 4 and frames.shape[-1] == 3
    # transforms/ re-imports as the same cameras, with the field's opacity as the views' alpha.
    assert main(["data", "import-transforms", str(folders[0] / "transforms"), str(tmp_path / "back")]) == 0
    back = read_object(tmp_path / "back")
    torch.testing.assert_close(back.cameras.c2w, record_cameras(folders[0]).c2w, atol=1e-6, rtol=0)
    alpha = np.asarray(Image.open(folders[0] / "transforms" / "images" / "000.png"))[..., 3]
    assert alpha.shape == (32, 32)
    written = json.loads((folders[0] / "sampling.json").read_text())
    assert written["sampler"] == "consistency" and written["steps"] == 2 and written["scheduler"] == "ddim"  # auto
    assert written["prompt"] == "a red chair" == read_object(folders[0]).captions[0]  # no BOM
    assert isinstance(trimesh.load(folders[0] / "mesh.ply"), trimesh.Trimesh)


def test_image_to_multiview_keeps_the_reference_pixels(tmp_path, adapter):
    reference = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(reference).save(tmp_path / "ref.png")
    out = tmp_path / "out"
    assert main(["sample", "--adapter", str(adapter), "--prompt", "a red chair", "--image", str(tmp_path / "ref.png"),
                 "--num-views", "3", "--steps", "2", "--out", str(out), "--turntable-frames", "0", "--quiet"]) == 0
    (folder,) = out.iterdir()
    assert np.array_equal(np.asarray(Image.open(folder / "images" / "000.png")), reference)
    assert json.loads((folder / "sampling.json").read_text())["references"] == [0]


def test_a_non_square_white_reference_is_padded_and_accepted(tmp_path, adapter):
    """A 57x41 RGB reference was refused ("must be in [0, 1]": the antialiased resize gives 1.0000002 on white).
    It is padded with white to a centred square, then resized: nothing squashed, nothing cut off."""
    image = np.full((41, 57, 3), 255, np.uint8)
    image[10:31, 20:37] = (200, 30, 30)  # a red block in the middle
    Image.fromarray(image).save(tmp_path / "ref.png")
    out = tmp_path / "out"
    assert main(["sample", "--adapter", str(adapter), "--prompt", "a red chair", "--image", str(tmp_path / "ref.png"),
                 "--num-views", "3", "--steps", "2", "--out", str(out), "--turntable-frames", "0", "--quiet"]) == 0
    (folder,) = out.iterdir()
    written = np.asarray(Image.open(folder / "images" / "000.png")).astype(int)
    red = (written[..., 0] > 150) & (written[..., 1] < 100)
    rows, cols = np.nonzero(red)
    # The block keeps its aspect (17 wide, 21 high in the original) and stays centred.
    assert 0.6 < (np.ptp(cols) + 1) / (np.ptp(rows) + 1) < 1.0
    assert abs(rows.mean() - 15.5) < 2 and abs(cols.mean() - 15.5) < 2
    assert (written[0, :] > 240).all()  # white padding above


@pytest.mark.parametrize("arguments, message", [
    (["--sampler", "nope"], "unknown sampler 'nope'; available: 2d, consistency"),
    (["--scheduler", "warp"], "unknown scheduler 'warp'"),
    (["--mix-schedule", "exp", "--sampler", "mixed"], "unknown mix schedule 'exp'"),
    (["--cameras", "missing.json"], "missing.json: missing"),
    (["--sampler", "2d", "--consistency-scale", "3"], "sampler '2d' has no option 'consistency_scale'"),
    (["--sampler", "refine", "--refine-strength", "1.5"], "sampler 'refine': strength must be in (0, 1]"),
    (["--sampler-option", "wobble=1"], "sampler 'mv' has no option 'wobble'; its options: consistency_scale"),
    (["--view-chunk", "0"], "--view-chunk must be >= 1"),
])
def test_bad_options_get_one_line_and_exit_2(tmp_path, adapter, capsys, arguments, message):
    code = main(["sample", "--adapter", str(adapter), "--prompt", "a red chair", "--num-views", "2", "--steps", "1",
                 "--out", str(tmp_path / "out"), "--quiet", *arguments])
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def test_missing_model_or_prompt_is_refused(tmp_path, capsys):
    assert main(["sample", "--adapter", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    assert "adapter.json: missing" in capsys.readouterr().err
    assert main(["sample", "--adapter", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "needs --prompt or --prompts" in capsys.readouterr().err
    assert main(["sample", "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    assert "exactly one of --adapter DIR or --ckpt CKPT" in capsys.readouterr().err


def test_existing_output_is_not_overwritten_without_the_flag(tmp_path, adapter, capsys):
    arguments = ["sample", "--adapter", str(adapter), "--prompt", "a red chair", "--num-views", "2", "--steps", "1",
                 "--out", str(tmp_path), "--turntable-frames", "0", "--quiet"]
    assert main(arguments) == 0
    before = (tmp_path / "0000_a-red-chair" / "images" / "000.png").read_bytes()
    assert main(arguments) == 2 and "already exists" in capsys.readouterr().err
    assert main([*arguments, "--overwrite", "--seed", "3"]) == 0
    assert (tmp_path / "0000_a-red-chair" / "images" / "000.png").read_bytes() != before


def test_a_plugin_option_reaches_the_sampler_and_an_unknown_one_fails_before_loading(tmp_path, adapter, capsys,
                                                                                      monkeypatch):
    from tunemv.sampling import registry
    from tunemv.sampling.samplers import GuidedSampler

    monkeypatch.setattr(registry, "_SAMPLERS", dict(registry._SAMPLERS))
    received = []

    @registry.register_sampler("decaying")
    class Decaying(GuidedSampler):
        def __init__(self, decay: float = 0.5):
            super().__init__()
            received.append(decay)

    arguments = ["sample", "--prompt", "a red chair", "--num-views", "2", "--steps", "1", "--sampler", "decaying",
                 "--out", str(tmp_path / "out"), "--turntable-frames", "0", "--quiet"]
    assert main([*arguments, "--adapter", str(adapter), "--sampler-option", "decay=0.8"]) == 0
    assert received and set(received) == {0.8}  # checked before loading, then built for the run
    assert json.loads(next((tmp_path / "out").glob("*/sampling.json")).read_text())["sampler_options"] == {"decay": 0.8}
    # an adapter that does not exist: the option error comes first, so nothing was loaded
    assert main([*arguments, "--adapter", str(tmp_path / "nowhere"), "--sampler-option", "decai=0.8"]) == 2
    assert "sampler 'decaying' has no option 'decai'; its options: decay" in capsys.readouterr().err
    assert main([*arguments, "--adapter", str(tmp_path / "nowhere"), "--sampler-option", "decay=fast"]) == 2
    assert "option 'decay' expects float, got 'fast'" in capsys.readouterr().err


def record_cameras(folder):
    from tunemv.data.format import read_cameras

    return read_cameras(folder / "cameras.json")


def test_a_one_step_run_records_what_ran_and_prints_a_plan_and_an_estimate(tmp_path, capsys):
    """sampling.json of the one-step generator said "steps": 50, "scheduler": "auto"; it records what ran. The run
    prints its plan before the model loads, an estimate after the first object, and one final line."""
    out = tmp_path / "out"
    generator = Path(__file__).resolve().parents[1] / "models/demo-generator"
    assert main(["sample", "--adapter", str(generator), "--prompt", "a red chair", "--prompt", "a mug",
                 "--num-views", "2", "--out", str(out), "--turntable-frames", "0"]) == 0
    captured = capsys.readouterr()
    assert "sampling 2 object(s) x 2 views x 1 step(s) (one-step, batches of 1)" in captured.err.splitlines()[0]
    assert "first batch took" in captured.err and "for the 1 left" in captured.err
    assert captured.out.splitlines()[-1] == f"wrote 2 object(s) to {out}"
    written = json.loads((out / "0000_a-red-chair" / "sampling.json").read_text())
    assert written["sampler"] == "one-step" and written["steps"] == 1 and written["scheduler"] is None


def test_prompts_file_bom_is_stripped_and_bad_bytes_name_the_line(tmp_path):
    from argparse import Namespace

    from tunemv.cli.sample import read_prompts
    from tunemv.errors import TunemvError

    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffa red chair\r\n\r\na mug\n".encode())
    assert read_prompts(Namespace(prompt=[], prompts=str(path))) == ["a red chair", "a mug"]
    path.write_bytes(b"ok\nalso ok\n\xff\xfe bad\n")
    with pytest.raises(TunemvError, match=f"^--prompts {path}: line 3 is not UTF-8 text"):
        read_prompts(Namespace(prompt=[], prompts=str(path)))
