"""benchmarks/gpu_check.sh --smoke: every step of the prepared GPU check runs at toy sizes on CPU, so the
script a GPU session runs has not rotted (issue 19)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# slow: 76 s on 2 quiet cores; it checks the GPU script's CPU path, run before a GPU session
@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(REPO / "benchmarks/gpu_check.sh"), "--smoke", str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=600)
    (report,) = tmp_path.glob("gpu-smoke-*.txt")
    text = report.read_text()
    assert out.returncode == 0, text[-4000:]
    for heading in ("## 1. training step", "## 2. cross-view attention", "## 3. P1", "## 4. sampling",
                    "## 5. tiny-if fit throughput", "## done: 0 failed"):
        assert heading in text, heading
    for figure in ("seconds per training step", "sdpa", "P1  mv / frozen UNet", "P2 shared", "consistency",
                   "fit: 2 steps in"):
        assert figure in text, figure
