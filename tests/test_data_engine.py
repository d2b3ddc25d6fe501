"""The distributed data engine: `tunemv sample --devices 2` with two real CPU processes (gloo) writes, object
for object and byte for byte, what one process writes; `--filter` lists the objects that pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sampling_fixtures import adapter_pipeline, save_adapter, save_backbones

PROMPTS = ["a red chair", "a blue mug", "a green vase"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    folders = save_backbones(root / "backbones")
    return save_adapter(adapter_pipeline(folders["if"], awake=True), root / "adapter")


def sample(adapter: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "tunemv", "sample", "--adapter", str(adapter), *[a for p in PROMPTS for a in ("--prompt", p)],
            "--num-views", "2", "--steps", "2", "--turntable-frames", "2", "--seed", "5", "--out", str(out), "--quiet",
            *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=400, cwd=out.parent)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_processes_write_what_one_writes_byte_for_byte(adapter, tmp_path):
    single = sample(adapter, tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    double = sample(adapter, tmp_path / "double", "--devices", "2", "--accelerator", "cpu", "--filter", "0.0")
    assert double.returncode == 0, double.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in double.stderr  # two real processes
    one, two = files(tmp_path / "single"), files(tmp_path / "double")
    passed = two.pop("passed.txt").decode().split()
    assert sorted(passed) == sorted({name.split("/")[0] for name in one})  # MIN_IOU 0: every object passes
    assert one.keys() == two.keys() and len({name.split("/")[0] for name in one}) == len(PROMPTS)
    different = [name for name in one if one[name] != two[name]]
    assert not different, different
    assert not [name for name in os.listdir(tmp_path / "double") if name.startswith(".")]  # no staging left
