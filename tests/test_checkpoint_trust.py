"""A checkpoint is read as data: a pickle payload in a .ckpt runs no code through `tunemv sample --ckpt`,
`tunemv export`, `MultiviewPipeline.from_checkpoint` or `tunemv fit/validate --ckpt_path`; and what today's
`tunemv fit`, `tunemv distill` and NeuS pretraining write needs nothing beyond the allow-list, and still loads,
exports and samples."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import pytest
import torch
from sampling_fixtures import adapter_pipeline, save_adapter
from tiny_pipelines import tiny_if
from torch.serialization import get_unsafe_globals_in_checkpoint

from tunemv.adapters.formats import (
    CheckpointError,
    code_in_checkpoint,
    declared_weight_prefixes,
    read_checkpoint,
)
from tunemv.cli import main
from tunemv.data.generate import generate_procedural_dataset
from tunemv.sampling.pipeline import MultiviewPipeline

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICK = ["--steps", "1", "--num-views", "2", "--turntable-frames", "0", "--quiet"]
TINY_DATA = ["--data.init_args.resolution", "16", "--data.init_args.num_views", "3",
             "--data.init_args.num_supervision_views", "3"]
QUIET_TRAINER = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false", "--trainer.max_steps", "2"]
CACHE = {"num_objects": 2, "num_views": 2, "num_render_views": 1, "steps": 2, "prompts": ["a red chair"],
         "num_reference_objects": 1}


class Payload:
    """Pickles as a call to ``exec`` that creates ``marker``: what a hostile .ckpt carries."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def write_payload_checkpoint(path: Path, marker: Path) -> Path:
    """A file shaped like a tunemv checkpoint whose hyperparameters run ``Payload`` when unpickled."""
    torch.save({"state_dict": {"denoiser.neus.x": torch.zeros(1)}, "tunemv": {"backbone": "x"},
                "hyper_parameters": Payload(marker)}, path)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tunemv")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: two threads on a busy 2-core machine were slower
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _logs(library_logs_to_stderr):
    pass


def test_a_payload_checkpoint_runs_no_code_anywhere_it_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "payload-ran"
    payload = write_payload_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(payload, weights_only=False)  # calibration: read the old way, the payload runs
    assert marker.is_file()
    marker.unlink()

    commands = {"sample": ["sample", "--ckpt", str(payload), "--prompt", "x", "--out", str(tmp_path / "out"), *QUICK],
                "export": ["export", str(payload), str(tmp_path / "out")],
                "fit": ["fit", "--config", str(CONFIGS / "tiny.yaml"), "--ckpt_path", str(payload)],
                "validate": ["validate", "--config", str(CONFIGS / "tiny.yaml"), "--ckpt_path", str(payload)]}
    for name, argv in commands.items():
        assert main(argv) == 2, name
        line = one_error_line(capsys)
        assert f"{payload}: refused: reading it would call builtins.exec" in line, (name, line)
        assert not marker.exists() and not (tmp_path / "out").exists(), name
    with pytest.raises(CheckpointError, match=f"{payload}: refused"):
        MultiviewPipeline.from_checkpoint(payload)
    assert not marker.exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints written by today's code on tiny fixtures: `tunemv fit`, NeuS pretraining and `tunemv distill`,
    each as the resumable last.ckpt and as a weights-only snapshot (2 steps each)."""
    root = tmp_path_factory.mktemp("trust")
    tiny_if().save_pretrained(root / "if")
    generate_procedural_dataset(root / "data", num_objects=2, num_views=6, resolution=16, val_fraction=0,
                                categories=["chair"], progress=False, workers=1)
    teacher = save_adapter(adapter_pipeline(root / "if", awake=True), root / "teacher")

    def callbacks(folder: Path) -> str:
        checkpoint = "lightning.pytorch.callbacks.ModelCheckpoint"
        return json.dumps([
            {"class_path": checkpoint, "init_args": {"dirpath": str(folder), "save_last": True, "save_top_k": 0,
                                                     "every_n_train_steps": 1}},
            {"class_path": checkpoint, "init_args": {"dirpath": str(folder), "save_weights_only": True,
                                                     "save_top_k": -1, "every_n_train_steps": 2}}])

    data = ["--data.init_args.root", str(root / "data"), *TINY_DATA]
    commands = {
        "fit": ["fit", "--config", str(CONFIGS / "tiny.yaml"), "--model.backbone", str(root / "if"), *data],
        "neus": ["fit", "--config", str(CONFIGS / "neus_pretrain.yaml"), "--model.init_args.backbone",
                 str(root / "if"), "--trainer.limit_val_batches", "0", *data],
        "distill": ["distill", "--config", str(CONFIGS / "distill_demo.yaml"), "--model.teacher", str(teacher),
                    "--model.vsd.steps", "1", "--data.init_args.teacher", str(teacher),
                    "--data.init_args.cache_dir", str(root / "cache"), "--data.init_args.reference_root",
                    str(root / "data"), *[f"--data.init_args.{k}={json.dumps(v)}" for k, v in CACHE.items()]],
    }
    found = {}
    for name, argv in commands.items():
        folder = root / name
        assert main([*argv, *QUIET_TRAINER, "--trainer.default_root_dir", str(folder),
                     "--trainer.callbacks", callbacks(folder)]) == 0, name
        found[f"{name} last"], found[f"{name} snapshot"] = folder / "last.ckpt", folder / "epoch=1-step=2.ckpt"
    return found


RUNS = ["fit last", "fit snapshot", "neus last", "neus snapshot", "distill last", "distill snapshot"]


@pytest.mark.parametrize("run", RUNS)
def test_todays_checkpoints_name_no_global_beyond_torchs_weights_only_set(runs, run):
    # What the allow-list was found from: none of them names any callable torch's weights-only loader lacks,
    # so Lightning's own resume (weights_only=True, no allow-list) reads them as read_checkpoint does.
    assert get_unsafe_globals_in_checkpoint(str(runs[run])) == []
    assert code_in_checkpoint(runs[run]) == []


@pytest.mark.parametrize("run", RUNS)
def test_todays_checkpoints_load_export_and_sample(runs, run, tmp_path, capsys):
    checkpoint = runs[run]
    assert read_checkpoint(checkpoint)["global_step"] == 2
    assert main(["export", str(checkpoint), str(tmp_path / "export")]) == 0
    exported = "neus.json" if run.startswith("neus") else "adapter.json"
    assert (tmp_path / "export" / exported).is_file()
    if not run.startswith("neus"):  # a stage-1 checkpoint is a NeuS alone: nothing to sample
        assert main(["sample", "--ckpt", str(checkpoint), "--prompt", "a red chair", "--out", str(tmp_path / "out"),
                     *QUICK]) == 0
        assert len(list((tmp_path / "out").glob("*/images/*.png"))) == 2


def test_an_older_checkpoint_with_a_path_in_its_config_still_exports(runs, tmp_path):
    """Before module_config, a run with init_from recorded the NeuS folder as a Path in neus_config: the one
    allow-listed global (a path is built, nothing runs)."""
    checkpoint = torch.load(runs["fit last"], weights_only=True)
    checkpoint["tunemv"]["neus_config"]["_name_or_path"] = pathlib.PosixPath("models/tiny-neus")
    torch.save(checkpoint, tmp_path / "old.ckpt")
    assert get_unsafe_globals_in_checkpoint(str(tmp_path / "old.ckpt")) == ["pathlib.PosixPath"]
    assert code_in_checkpoint(tmp_path / "old.ckpt") == []
    assert main(["export", str(tmp_path / "old.ckpt"), str(tmp_path / "export")]) == 0


@pytest.mark.parametrize("run", RUNS)
def test_todays_checkpoints_declare_their_layout(runs, run):
    """Format 2: every weight a reader loads sits under a declared prefix, and a generator declares how it
    samples, so adapters/formats.py needs to know neither how training names its modules nor its sampler."""
    meta = torch.load(runs[run], weights_only=True)["tunemv"]
    state = torch.load(runs[run], weights_only=True)["state_dict"]
    assert meta["format"] == 2
    prefixes = meta["prefixes"]
    modules = ["neus"] if run.startswith("neus") else ["neus", "control_branch"]
    for group in [g for g in ("live", "ema") if g in prefixes]:
        assert sorted(prefixes[group]) == sorted(modules)
        for prefix in prefixes[group].values():
            assert any(key.startswith(prefix) for key in state), (group, prefix)
    assert ("ema" in prefixes) == (meta["weights"] == "live+ema")
    declared = declared_weight_prefixes(prefixes)
    # what no declared prefix covers: the EMA's step count and the distillation student (resume only)
    assert {key.split(".")[0] for key in state if not key.startswith(declared)} <= {"ema", "student"}
    assert ("sampling" in meta) == run.startswith("distill")
    if run.startswith("distill"):
        assert meta["sampling"] == {"sampler": "one-step", "sampler_options": {"timestep": meta["generator"]["timestep"]},
                                    "guidance_scale": 1.0}


@pytest.mark.parametrize("run", ["fit last", "fit snapshot", "distill last", "neus last"])
def test_a_checkpoint_without_the_declaration_reads_as_format_1(runs, run, tmp_path):
    """Format 1 is today's checkpoint less what format 2 added ("format", "prefixes", "sampling"): read
    through adapters/checkpoint_format_1.py it declares the same layout today's writer declares (the EMA
    copy of a resumable checkpoint included), and exports the same weights."""
    from safetensors.torch import load_file

    checkpoint = torch.load(runs[run], weights_only=True)
    declared = dict(checkpoint["tunemv"])
    for key in ("format", "prefixes", "sampling"):
        checkpoint["tunemv"].pop(key, None)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    upgraded = read_checkpoint(tmp_path / "old.ckpt")["tunemv"]
    assert upgraded["prefixes"] == declared["prefixes"] and upgraded.get("sampling") == declared.get("sampling")
    if run.startswith("neus"):
        return
    assert main(["export", str(tmp_path / "old.ckpt"), str(tmp_path / "old")]) == 0
    assert main(["export", str(runs[run]), str(tmp_path / "new")]) == 0
    for module in ("neus", "control_branch"):
        (old,), (new,) = (tmp_path / "old" / module).glob("*.safetensors"), (tmp_path / "new" / module).glob("*.safetensors")
        left, right = load_file(old), load_file(new)
        assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
