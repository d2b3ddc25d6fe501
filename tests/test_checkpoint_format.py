"""The declared checkpoint format: what a reader needs is in the checkpoint's "tunemv" entry (format 2), and
checkpoints of format 1, saved by the writers before it (tests/fixtures/format1-*.ckpt: a `tunemv distill`
and a NeuS-pretraining weights-only snapshot, cut to half precision and without the distillation student to
stay small), still read, export and sample."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from tiny_pipelines import tiny_if

from tunemv.adapters.formats import CheckpointError, read_checkpoint
from tunemv.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
GENERATOR, NEUS = FIXTURES / "format1-generator.ckpt", FIXTURES / "format1-neus.ckpt"


def test_formats_names_no_training_prefix_and_no_sampler():
    """The reader knows the format, not its writers: no state_dict prefix of a Lightning system and no
    sampler name appears among formats.py's string constants."""
    source = (REPO / "adapters" / "formats.py").read_text(encoding="utf-8")
    strings = [node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)
               and isinstance(node.value, str)]
    for needle in ("denoiser.", "ema.module", "backbone.unet", "student.", "one-step"):
        assert not [text for text in strings if needle in text], needle
    assert "neus." not in strings


def test_a_format_1_generator_reads_as_declared():
    meta = read_checkpoint(GENERATOR)["tunemv"]
    assert meta["format"] == 2 and meta["weights"] == "ema"
    assert meta["prefixes"] == {"live": {"neus": "denoiser.neus.", "control_branch": "denoiser.control_branch."}}
    assert meta["sampling"] == {"sampler": "one-step", "sampler_options": {"timestep": 953}, "guidance_scale": 1.0}
    neus = read_checkpoint(NEUS)["tunemv"]
    assert neus["prefixes"] == {"live": {"neus": "neus."}} and "sampling" not in neus


def test_a_format_1_generator_exports_and_samples_as_before(tmp_path):
    stored = torch.load(GENERATOR, weights_only=True)["state_dict"]
    assert main(["export", str(GENERATOR), str(tmp_path / "generator")]) == 0
    info = json.loads((tmp_path / "generator" / "adapter.json").read_text())
    assert info["sampling"] == {"sampler": "one-step", "sampler_options": {"timestep": 953}, "guidance_scale": 1.0}
    from safetensors.torch import load_file

    (weights,) = (tmp_path / "generator" / "control_branch").glob("*.safetensors")
    exported = load_file(weights)
    for key, value in exported.items():  # the stored (half-precision) weights, exactly
        assert torch.equal(value, stored[f"denoiser.control_branch.{key}"].float()), key
    tiny_if().save_pretrained(tmp_path / "if")
    out = tmp_path / "out"
    assert main(["sample", "--ckpt", str(GENERATOR), "--backbone", str(tmp_path / "if"), "--prompt", "a red chair",
                 "--num-views", "2", "--turntable-frames", "0", "--quiet", "--out", str(out)]) == 0
    (written,) = out.glob("*/sampling.json")
    settings = json.loads(written.read_text())
    assert settings["sampler"] == "one-step" and settings["steps"] == 1 and settings["guidance_scale"] == 1.0


def test_a_format_1_neus_exports(tmp_path):
    assert main(["export", str(NEUS), str(tmp_path / "neus")]) == 0
    assert (tmp_path / "neus" / "neus.json").is_file()


def damaged(tmp_path: Path, change) -> Path:
    checkpoint = torch.load(GENERATOR, weights_only=True)
    change(checkpoint["tunemv"])
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    return tmp_path / "damaged.ckpt"


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.update(format=3), "format 3 is not one this tunemv reads"),
    (lambda m: m.update(format="2"), "format '2' is not one this tunemv reads"),
    (lambda m: m.update(format=2), "'prefixes' must be a dict"),  # format 2 must declare them
    (lambda m: m.update(format=2, prefixes={"live": {"neus": "denoiser.neus."}}), "must name a prefix for each"),
    (lambda m: m.update(format=2, prefixes={"live": {"neus": "a.", "control_branch": "b."}, "unet": 3}),
     "prefixes['unet']"),
    (lambda m: m.update(format=2, prefixes={"live": {"neus": "a.", "control_branch": "b."}},
                        sampling={"guidance_scale": 1.0}), "'sampling' must be a dict"),
])
def test_a_bad_declaration_is_one_line_naming_the_file(tmp_path, change, message):
    path = damaged(tmp_path, change)
    with pytest.raises(CheckpointError, match=re.escape(message)) as error:
        read_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_declared_prefixes_are_what_loads(tmp_path):
    """A format-2 checkpoint whose prefixes point elsewhere loads from there: the reader follows the
    declaration, it does not assume the writer's names."""
    checkpoint = torch.load(GENERATOR, weights_only=True)
    checkpoint["state_dict"] = {key.replace("denoiser.", "model.adapter.", 1): value
                                for key, value in checkpoint["state_dict"].items()}
    checkpoint["tunemv"] |= {"format": 2, "prefixes": {"live": {"neus": "model.adapter.neus.",
                                                                "control_branch": "model.adapter.control_branch."}},
                             "sampling": {"sampler": "one-step", "sampler_options": {"timestep": 953}}}
    torch.save(checkpoint, tmp_path / "renamed.ckpt")
    assert main(["export", str(tmp_path / "renamed.ckpt"), str(tmp_path / "a")]) == 0
    assert main(["export", str(GENERATOR), str(tmp_path / "b")]) == 0
    from safetensors.torch import load_file

    for module in ("neus", "control_branch"):
        (a,), (b,) = (tmp_path / "a" / module).glob("*.safetensors"), (tmp_path / "b" / module).glob("*.safetensors")
        left, right = load_file(a), load_file(b)
        assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
