"""What `tunemv fit` picks when a config does not say (issue 32): the progress bar counts optimizer steps out of
`trainer.max_steps`, and the logs and checkpoints follow `trainer.default_root_dir`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# The tiny pipelines, dataset and one-thread/tmp-dir fixtures of test_cli_fit, shared rather than built twice
# (pytest finds fixtures by the names a module holds; `noqa: F811` where a test takes one as an argument).
from test_cli_fit import TINY_RUN, _in_tmp, _one_thread, assets, fit_args  # noqa: F401

from tunemv.cli import main


def _quiet_but_the_bar(args: list[str]) -> list[str]:
    """TINY_RUN with the progress bar left on (its last word on it wins)."""
    return [*args, *TINY_RUN, "--trainer.enable_progress_bar", "true"]


@pytest.mark.parametrize("bar", [None, "tunemv.training.progress.TQDMStepProgressBar"], ids=["default", "tqdm"])
def test_the_progress_bar_counts_steps_out_of_max_steps(assets, capsys, bar):  # noqa: F811
    """`Epoch 1/-2` was Lightning's bar in a step-bounded run, and `3/2` after a resume."""
    args = ["fit", *fit_args("tiny.yaml", assets), "--trainer.limit_train_batches", "1",
            *([f"--trainer.callbacks+={bar}"] if bar else [])]
    assert main(_quiet_but_the_bar([*args, "--trainer.max_steps", "2"])) == 0  # two 1-batch epochs, one bar
    first = capsys.readouterr().out
    assert "Step" in first and "2/2" in first, first
    assert "/-2" not in first and "Epoch" not in first, first

    assert main(_quiet_but_the_bar([*args, "--trainer.max_steps", "3", "--ckpt_path", "last"])) == 0
    resumed = capsys.readouterr().out
    assert "3/3" in resumed and "/-2" not in resumed and "Epoch" not in resumed, resumed


@pytest.mark.parametrize("terminal", [True, False])
def test_a_run_logged_to_a_file_gets_a_bar_that_writes_as_it_goes(monkeypatch, terminal):
    """Rich draws into a file or pipe only when the run ends: `tunemv demo > log` showed nothing for 20 minutes."""
    import sys

    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    from tunemv.training.progress import RichStepProgressBar, TQDMStepProgressBar, step_progress_bar

    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal, raising=False)
    expected = RichStepProgressBar if terminal and _RICH_AVAILABLE else TQDMStepProgressBar
    assert type(step_progress_bar()) is expected


def test_a_config_s_own_progress_bar_is_kept(assets):  # noqa: F811
    from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

    from tunemv.training.lightning_cli import run_lightning

    cli = run_lightning([*fit_args("tiny.yaml", assets), *TINY_RUN, "--trainer.enable_progress_bar", "true",
                         "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"], run=False)
    bars = [callback for callback in cli.trainer.callbacks if isinstance(callback, ProgressBar)]
    assert [type(bar) for bar in bars] == [TQDMProgressBar]


@pytest.mark.parametrize("logger", ["tunemv.training.lightning_cli.WandbLogger", "tunemv.training.lightning_cli.CSVLogger"])
def test_default_root_dir_moves_the_logs_and_checkpoints(assets, tmp_path, monkeypatch, logger):  # noqa: F811
    """configs/ spell a run's folder once, as trainer.default_root_dir; the logger and checkpoints follow it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "elsewhere"
    args = ["fit", *fit_args("tiny.yaml", assets), *TINY_RUN, "--trainer.logger", logger,
            "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", str(run)]
    assert main([*args, "--trainer.max_steps", "1"]) == 0
    assert (run / "checkpoints/last.ckpt").is_file()
    assert (run / "wandb").is_dir() if "Wandb" in logger else (run / "lightning_logs/version_0/metrics.csv").is_file()
    assert not (tmp_path / "outputs").exists()  # nothing under the config's own outputs/tiny
    assert main([*args, "--trainer.max_steps", "2", "--ckpt_path", "last"]) == 0  # `last` is found there
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2


def test_paths_a_config_gives_are_kept(assets, tmp_path):  # noqa: F811
    from tunemv.training.lightning_cli import run_lightning

    callbacks = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"dirpath": str(tmp_path / "ckpts"), "save_last": True}},
                            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"save_weights_only": True}}])
    cli = run_lightning([*fit_args("tiny.yaml", assets), *TINY_RUN, "--trainer.default_root_dir", str(tmp_path / "run"),
                         "--trainer.logger", "tunemv.training.lightning_cli.CSVLogger",
                         "--trainer.logger.save_dir", str(tmp_path / "logs"), "--trainer.callbacks", callbacks],
                        run=False)
    assert cli.trainer.logger.save_dir == str(tmp_path / "logs")
    assert [Path(c.dirpath) for c in cli.trainer.checkpoint_callbacks] == [tmp_path / "ckpts", tmp_path / "run/checkpoints"]
