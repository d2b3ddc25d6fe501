"""`tunemv fit|validate|export` end to end on tiny saved pipelines: configs parse and instantiate, a short run
writes an adapter-only checkpoint that resumes and exports, and user errors are one line with exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_pipelines import tiny_if, tiny_sd

from tunemv.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAINING_CONFIGS = sorted([*(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("distill")),
                           *CONFIGS.glob("camera/*.yaml")])
LARGE = {"sd15_chairs": "sd", "sd21_objaverse_mini": "sd", "if_xl_objaverse_mini": "if"}
# The tiny IF pipeline works at 16x16 pixels; the procedural set has 6 views per object.
TINY_RUN = ["--data.resolution", "16", "--data.num_views", "3", "--data.num_supervision_views", "3",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny SD and IF pipeline folders and a 3-object procedural dataset (6 views, 32 px, no val split)."""
    from tunemv.data.generate import generate_procedural_dataset

    root = tmp_path_factory.mktemp("cli_fit")
    tiny_sd().save_pretrained(root / "tiny-sd")
    tiny_if().save_pretrained(root / "tiny-if")
    generate_procedural_dataset(root / "data", num_objects=3, num_views=6, resolution=32, progress=False, workers=1)
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These tensors are tiny: with two intra-op threads on a busy 2-core machine each step was ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch, library_logs_to_stderr):
    monkeypatch.chdir(tmp_path)  # configs write under outputs/, relative to the working directory


def fit_args(config: str, assets: Path, backbone: str = "tiny-if") -> list[str]:
    return ["--config", str(CONFIGS / config), "--model.backbone", str(assets / backbone),
            "--data.root", str(assets / "data")]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("tunemv")]
    assert len(lines) == 1, err
    return lines[0]


def test_help_lists_training_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "distill", "export", "data"):
        assert f"\n    {command} " in out


@pytest.mark.parametrize("config", [str(p.relative_to(CONFIGS)) for p in TRAINING_CONFIGS])
def test_every_config_prints(config, capsys):
    assert main(["fit", "--config", str(CONFIGS / config), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load((CONFIGS / config).read_text())
    model = lambda config: config["model"].get("init_args", config["model"])  # noqa: E731 - class_path configs nest
    assert model(printed)["backbone"] == model(written)["backbone"]
    assert printed["data"]["init_args"]["root"] == written["data"]["init_args"]["root"]
    assert printed["trainer"]["plugins"] == [{"class_path": "tunemv.training.lightning_cli.AtomicCheckpointIO"}]


def test_distill_config_prints(capsys):
    assert main(["distill", "--config", str(CONFIGS / "distill_demo.yaml"), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["teacher"] == "./models/demo-adapter" == printed["data"]["init_args"]["teacher"]
    assert printed["model"]["vsd"]["steps"] < printed["trainer"]["max_steps"]  # both stages run
    # a group given in part keeps the rest of its default: the distillation's own weight decay, 0
    assert printed["model"]["optimization"]["weight_decay"] == 0.0 and printed["model"]["optimization"]["warmup_steps"] == 20


def test_data_section_config_prints(capsys):
    assert main(["fit", "--config", str(CONFIGS / "tiny.yaml"), "--data", str(CONFIGS / "data/procedural.yaml"),
                 "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["num_views"] == 8


@pytest.mark.parametrize("config", sorted(LARGE))
def test_large_configs_instantiate_on_tiny_backbones(config, assets):
    from tunemv.training.lightning_cli import AtomicCheckpointIO

    cli = _instantiate(config, assets)
    model, trainer = cli.model, cli.trainer
    assert model.backbone.family == LARGE[config]
    assert model.denoiser.neus.config.in_channels == model.backbone.in_channels
    assert cli.datamodule.hparams.num_views == 8 and cli.datamodule.hparams.num_supervision_views == 8
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert any(callback.save_last for callback in trainer.checkpoint_callbacks)
    assert model.settings.gradient_checkpointing and model.settings.ema.decay


def _instantiate(config: str, assets: Path):
    from tunemv.training.lightning_cli import run_lightning

    return run_lightning([*fit_args(f"{config}.yaml", assets, f"tiny-{LARGE[config]}"),
                          "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"], run=False)


def test_fit_checkpoint_resume_validate_export(assets, tmp_path, capsys):
    from tunemv.adapters.control_branch import ControlBranch
    from tunemv.neus.latent_sparseneus import LatentSparseNeuS

    args = ["fit", *fit_args("tiny.yaml", assets), *TINY_RUN]
    assert main([*args, "--trainer.max_steps", "3"]) == 0
    last = tmp_path / "outputs/tiny/checkpoints/last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 3
    state = checkpoint["state_dict"]
    assert state and all(k.startswith(("denoiser.neus.", "denoiser.control_branch.", "ema.")) for k in state)
    assert any(k.startswith("ema.module.1.") for k in state)
    assert checkpoint["tunemv"]["backbone"] == str(assets / "tiny-if")

    # Resume: the global step continues from 3 (and the optimizer state comes back with it).
    assert main([*args, "--trainer.max_steps", "5", "--ckpt_path", "last"]) == 0
    resumed = torch.load(last, weights_only=False)
    assert resumed["global_step"] == 5
    assert not torch.equal(resumed["state_dict"]["ema.n_averaged"], checkpoint["state_dict"]["ema.n_averaged"])

    assert main(["validate", *fit_args("tiny.yaml", assets), *TINY_RUN, "--data.val_root", str(assets / "data"),
                 "--ckpt_path", str(last)]) == 0

    for ema in (False, True):
        out = tmp_path / f"adapter-{ema}"
        assert main(["export", str(last), str(out), "--ema" if ema else "--no-ema"]) == 0
        prefix = ("ema.module.0.", "ema.module.1.") if ema else ("denoiser.neus.", "denoiser.control_branch.")
        for module, folder, pre in zip((LatentSparseNeuS, ControlBranch), ("neus", "control_branch"), prefix,
                                       strict=True):
            loaded = module.from_pretrained(out / folder).state_dict()
            expected = {k[len(pre):]: v for k, v in resumed["state_dict"].items() if k.startswith(pre)}
            assert loaded.keys() == expected.keys()
            assert all(torch.equal(loaded[k], expected[k]) for k in loaded)
        info = json.loads((out / "adapter.json").read_text())
        assert (out / info["backbone"]).resolve() == (assets / "tiny-if").resolve()  # relative to the folder
        assert info["ema"] is ema and info["global_step"] == 5
    (tmp_path / "figures.json").write_text('{"hull IoU": 0.5}')
    assert main(["export", str(last), str(tmp_path / "adapter-auto"), "--figures", str(tmp_path / "figures.json")]) == 0
    auto = json.loads((tmp_path / "adapter-auto/adapter.json").read_text())
    assert auto["ema"] is True  # a run with EMA exports the EMA
    assert auto["backbone"] == str(assets / "tiny-if")  # not beside the folder: absolute (test_hub: beside it)
    assert not any(isinstance(value, str) and Path(value).is_absolute() for key, value in auto.items()
                   if key != "backbone")  # shareable
    card = (tmp_path / "adapter-auto/README.md").read_text()  # a model card: backbone, steps, data, figures
    assert "library_name: tunemv" in card and "| training steps | `5` |" in card and "| hull IoU | 0.5 |" in card
    capsys.readouterr()
    assert main(["export", str(last), str(tmp_path / "adapter-False")]) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert main(["export", str(last), str(tmp_path / "adapter-False"), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_a_camera_conditioned_fit_exports_a_folder_that_samples_with_its_cameras(assets, tmp_path):
    """model.camera_conditioning, timestep_shift and high_noise_weight through fit, export and the pipeline."""
    from tunemv.sampling.pipeline import MultiviewPipeline

    args = ["fit", *fit_args("tiny.yaml", assets), *TINY_RUN, "--model.camera.conditioning", "both",
            "--model.diffusion_loss.timestep_shift", "views", "--model.camera.learning_rate", "1e-3", "--model.diffusion_loss.high_noise_weight", "25", "--trainer.max_steps", "2"]
    assert main(args) == 0
    last = tmp_path / "outputs/tiny/checkpoints/last.ckpt"
    state = torch.load(last, weights_only=False)["state_dict"]
    assert any(k.startswith("denoiser.control_branch.ray_encoder.") for k in state)
    assert any(k.startswith("denoiser.control_branch.camera_embedding.") for k in state)
    assert main(["export", str(last), str(tmp_path / "camera-adapter")]) == 0
    assert json.loads((tmp_path / "camera-adapter/adapter.json").read_text())["camera_conditioning"] == "both"
    pipe = MultiviewPipeline.from_pretrained(tmp_path / "camera-adapter")
    assert pipe.denoiser.control_branch.ray_encoder is not None and pipe.denoiser.independent_camera
    out = pipe("a red chair", num_views=2, steps=2, seed=0, progress=False, output_type="pt")
    assert out.pixels.shape[:2] == (1, 2) and torch.isfinite(out.pixels).all()


@pytest.mark.parametrize(("extra", "expected"), [
    (["--model.camera.conditioning", "rays"], "model.camera.conditioning must be one of"),
    (["--model.dropouts.text", "1.5"], "model.dropouts.text must be in [0, 1], got 1.5"),
    (["--model.cross_view.heads", "0"], "model.cross_view.heads must be in [1, inf]"),
    # A former flat key (before the options were grouped) names its new home.
    (["--model.learning_rate", "1e-3"], "--model.learning_rate: is --model.optimization.learning_rate now"),
    (["--model.diffusion_loss.timestep_shift", "0.5"], "timestep_shift"),
    (["--model.diffusion_loss.high_noise_weight", "0.5"], "high_noise_weight"),
    (["--model.no_such_key", "1"], "no_such_key"),
    (["--data.root", "{missing}"], "data root does not exist"),
    (["--data.root", "{empty}"], "no usable objects"),
    (["--model.backbone", "{sd}", "--model.neus", "{{in_channels: 3}}"], "channels"),
    (["--model.backbone", "{missing}"], "no such folder"),
    # LightningCLI traps (issue 19, defect 7): prefix-matched keys were silently taken for another key, and
    # --optimizer replaced the system's configure_optimizers so that training_step raised KeyError.
    (["--model.learning_rat", "1e-3"], "--model.learning_rat"),
    (["--optimizer", "Adam"], "--optimizer"),
    (["--lr_scheduler", "StepLR"], "--lr_scheduler"),
    # An absurd learning rate: NaN weights after step 1 were cast to indices in NeuS's bilinear sampling
    # (IndexError, a traceback); now each step is skipped and counted, then one line (issue 22, item 1).
    (["--model.optimization.learning_rate", "1e6", "--model.optimization.neus_learning_rate", "1e6", "--model.optimization.warmup_steps", "0",
      "--model.max_nonfinite_steps", "3", "--trainer.max_steps", "8"], "not finite for 3 steps in a row"),
])
def test_user_errors_are_one_line(extra, expected, assets, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    names = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "sd": assets / "tiny-sd"}
    extra = [arg.format(**names) for arg in extra]
    assert main(["fit", *fit_args("tiny.yaml", assets), *TINY_RUN, "--trainer.max_steps", "1", *extra]) == 2
    assert expected in one_error_line(capsys)


def test_export_rejects_foreign_and_corrupt_checkpoints(tmp_path, capsys):
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    torch.save({"state_dict": {"denoiser.neus.x": torch.zeros(1)}, "tunemv": {}}, tmp_path / "no_ema.ckpt")
    for name, ema, expected in (("garbage", False, "not a readable checkpoint"),
                                ("foreign", False, "not a tunemv checkpoint"), ("missing", False, "no such")):
        assert main(["export", str(tmp_path / f"{name}.ckpt"), str(tmp_path / "out"),
                     *(["--ema"] if ema else [])]) == 2
        assert expected in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_atomic_checkpoint_io_leaves_no_partial_file(tmp_path):
    from tunemv.training.lightning_cli import AtomicCheckpointIO

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    io, path = AtomicCheckpointIO(), tmp_path / "ckpts/last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.arange(3)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(10_000), "bad": Unpicklable()}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    assert io.load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact


def test_wandb_logger_is_offline_unless_wandb_mode_says_otherwise(tmp_path, monkeypatch):
    from tunemv.training.lightning_cli import WandbLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert WandbLogger(project="p", save_dir=str(tmp_path))._offline
    monkeypatch.setenv("WANDB_MODE", "online")
    assert not WandbLogger(project="p", save_dir=str(tmp_path))._offline
    assert WandbLogger(project="p", save_dir=str(tmp_path), offline=True)._offline


def test_config_without_checkpoint_callback_gets_a_resumable_one(assets):
    from tunemv.training.lightning_cli import run_lightning

    cli = run_lightning([*fit_args("tiny.yaml", assets), *TINY_RUN, "--trainer.callbacks", "[]"], run=False)
    last, snapshots = cli.trainer.checkpoint_callbacks
    assert last.save_last and not last.save_weights_only and last.save_top_k == 0
    assert snapshots.save_weights_only and not snapshots.save_last and snapshots.save_top_k == -1
    for callback in (last, snapshots):
        assert Path(callback.dirpath) == Path("outputs/tiny/checkpoints").resolve()


def test_last_checkpoint_is_the_final_step_when_a_run_ends_between_intervals(assets, tmp_path):
    # Lightning alone would leave last.ckpt at step 2 (its interval) after a 3-step run.
    callbacks = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"dirpath": str(tmp_path / "ckpts"), "save_last": True, "save_top_k": 0,
                                           "every_n_train_steps": 2}}])
    assert main(["fit", *fit_args("tiny.yaml", assets), *TINY_RUN, "--trainer.max_steps", "3",
                 "--trainer.callbacks", callbacks]) == 0
    assert torch.load(tmp_path / "ckpts/last.ckpt", weights_only=False)["global_step"] == 3


def test_a_normal_fit_prints_no_expected_warnings_or_adverts(assets, tmp_path):
    """What a user saw on every `tunemv fit` (issue 19): Lightning's "💡 Tip" adverts, "Found 345 module(s) in
    eval mode" (the frozen backbone, by design), accelerate's 5-line warning per model load, wandb's note on
    its "anonymous" setting and a missing git root. Real problems still print (checked by the other tests)."""
    import subprocess

    args = [sys.executable, "-m", "tunemv", "fit", *fit_args("tiny.yaml", assets), "--data.resolution", "16",
            "--data.num_views", "3", "--data.num_supervision_views", "3", "--trainer.max_steps", "1",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "wandb"), "--trainer.log_every_n_steps", "1",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"]
    env = {**__import__("os").environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = out.stdout + out.stderr
    for noise in ("Tip:", "in eval mode at the start", "accelerate", "anonymous", "git root", "LeafSpec", "Warning"):
        assert noise not in printed, (noise, printed[-3000:])


def test_sdxl_fits_exports_reloads_and_samples(assets, tmp_path, capsys):
    """SDXL end to end (issue 19, defect 3): its two text encoders' pooled embedding and time ids reach the
    frozen UNet and the branch in training, through export, and in sampling from the exported folder."""
    from tiny_pipelines import tiny_sdxl

    from tunemv.sampling.pipeline import MultiviewPipeline

    sdxl = tmp_path / "tiny-sdxl"
    tiny_sdxl().save_pretrained(sdxl)
    args = ["fit", "--config", str(CONFIGS / "tiny.yaml"), "--model.backbone", str(sdxl),
            "--data.root", str(assets / "data"), "--data.resolution", "32", "--data.num_views", "3",
            "--data.num_supervision_views", "3", "--trainer.logger", "false", "--trainer.enable_progress_bar",
            "false", "--trainer.enable_model_summary", "false", "--trainer.max_steps", "2"]
    assert main(args) == 0
    last = tmp_path / "outputs/tiny/checkpoints/last.ckpt"
    state = torch.load(last, weights_only=False)["state_dict"]
    assert main(["export", str(last), str(tmp_path / "adapter"), "--no-ema"]) == 0
    pipe = MultiviewPipeline.from_pretrained(tmp_path / "adapter")
    assert pipe.backbone.family == "sdxl"
    exported = pipe.denoiser.control_branch.state_dict()
    assert all(torch.equal(exported[k], state[f"denoiser.control_branch.{k}"]) for k in exported)
    out = pipe("a red chair", num_views=3, steps=2, seed=0, progress=False, sampler="consistency")
    assert out.pixels.shape[:3] == (1, 3, 3) and torch.isfinite(out.pixels).all()
    capsys.readouterr()
    assert main(["sample", "--adapter", str(tmp_path / "adapter"), "--prompt", "a red chair", "--num-views", "3",
                 "--steps", "2", "--out", str(tmp_path / "samples"), "--turntable-frames", "0", "--quiet"]) == 0
    assert (tmp_path / "samples/0000_a-red-chair/grid.png").is_file()


def test_a_resume_after_a_kill_mid_snapshot_cleans_temporaries_and_writes_the_lost_snapshot(assets, tmp_path):
    """A kill during a snapshot write left 0-byte ``.*.tmp.ckpt`` files, and the snapshot never appeared: the
    resumed run starts past its step (last.ckpt at that step is written first). Simulated here: a run to step 4
    with snapshots every 2, then its step-4 snapshot removed and a 0-byte temporary left, as the kill leaves
    them (issue 22, item 7)."""
    folder = tmp_path / "outputs/tiny/checkpoints"
    checkpoints = {"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(folder), "save_last": True, "save_top_k": 0, "every_n_train_steps": 1}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(folder), "save_weights_only": True, "save_top_k": -1, "every_n_train_steps": 2}},
    ]}}
    (tmp_path / "every2.yaml").write_text(yaml.safe_dump(checkpoints))
    every = ["--config", str(tmp_path / "every2.yaml")]
    args = ["fit", *fit_args("tiny.yaml", assets), *TINY_RUN]
    assert main([*args, "--trainer.max_steps", "4", *every]) == 0
    snapshots = sorted(p.name for p in folder.glob("epoch=*.ckpt"))
    assert snapshots, list(folder.iterdir())
    lost = folder / snapshots[-1]
    lost.unlink()
    (folder / ".epoch=0-step=4.abc123.tmp.ckpt").write_bytes(b"")
    assert main([*args, "--trainer.max_steps", "6", "--ckpt_path", "last", *every]) == 0
    (again,) = [p for p in folder.glob("epoch=*-step=4.ckpt")]  # its epoch may read one more after a resume
    assert torch.load(again, weights_only=False)["global_step"] == 4
    steps = sorted(torch.load(p, weights_only=False)["global_step"] for p in folder.glob("epoch=*.ckpt"))
    assert steps == [2, 4, 6]  # every snapshot of the run is there
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
