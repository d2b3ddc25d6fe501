"""`tunemv fit` under DDP with two real processes on CPU (gloo): the ranks end with identical weights, and a
run resumed from its last.ckpt continues under DDP (README: Training, DDP)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_pipelines import tiny_if

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from tunemv.data.generate import generate_procedural_dataset

    root = tmp_path_factory.mktemp("ddp")
    tiny_if().save_pretrained(root / "tiny-if")
    generate_procedural_dataset(root / "data", num_objects=4, num_views=4, resolution=16, progress=False, workers=1)
    return root


def fit(assets: Path, run: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "tunemv", "fit", "--config", str(CONFIG), "--model.backbone", str(assets / "tiny-if"),
            "--data.root", str(assets / "data"), "--data.resolution", "16", "--data.num_views", "2",
            "--data.num_supervision_views", "2", "--data.batch_size", "1",
            "--trainer.devices", "2", "--trainer.strategy", "ddp_find_unused_parameters_true",
            "--trainer.max_steps", str(steps), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "0",
            "--trainer.callbacks+=ddp_probe.SaveRankWeights", f"--trainer.callbacks.folder={run / f'ranks-{steps}'}",
            *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(args, cwd=run, env=env, capture_output=True, text=True, timeout=400)


def rank_states(folder: Path) -> list[dict]:
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


def test_two_process_ddp_keeps_the_ranks_identical_and_resumes(assets, tmp_path):
    first = fit(assets, tmp_path, 3)
    assert first.returncode == 0, first.stderr[-3000:]
    zero, one = rank_states(tmp_path / "ranks-3")
    assert zero["world_size"] == one["world_size"] == 2 and zero["global_step"] == one["global_step"] == 3
    assert zero["state"].keys() == one["state"].keys() and zero["state"]
    for key, value in zero["state"].items():
        assert torch.equal(value, one["state"][key]), key  # DDP averaged the gradients: one model
    initial = torch.load(tmp_path / "outputs/tiny/checkpoints/last.ckpt", weights_only=False)
    assert initial["global_step"] == 3

    resumed = fit(assets, tmp_path, 5, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    zero, one = rank_states(tmp_path / "ranks-5")
    assert zero["global_step"] == one["global_step"] == 5
    assert all(torch.equal(value, one["state"][key]) for key, value in zero["state"].items())
    moved = [key for key, value in zero["state"].items() if key.startswith("denoiser.control_branch.")
             and not torch.equal(value, initial["state_dict"][key])]
    assert moved  # the resumed steps trained
    assert torch.load(tmp_path / "outputs/tiny/checkpoints/last.ckpt", weights_only=False)["global_step"] == 5
