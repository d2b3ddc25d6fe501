"""Hostile input through the CLI, as a table: command -> exit code 2, one line that names the file or flag,
checked before any model loads where that is possible, and nothing left behind (issue 22). Then kill tests:
a `tunemv sample` killed after its first object resumes to exactly what an uninterrupted run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tunemv.cli import main

REPO = Path(__file__).resolve().parents[1]
ADAPTER = str(REPO / "models/demo-adapter")
QUICK = ["--steps", "1", "--num-views", "2", "--turntable-frames", "0", "--quiet"]


def truncated_adapter(tmp: Path) -> str:
    import shutil

    folder = tmp / "truncated-adapter"
    shutil.copytree(ADAPTER, folder)
    weights = folder / "control_branch/diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return str(folder)


def setup(tmp: Path) -> dict[str, str]:
    (tmp / "notes.png").write_text("not an image\n")
    (tmp / "a-file").write_text("x")
    (tmp / "a-folder").mkdir()
    (tmp / "truncated.ckpt").write_bytes(b"\0" * 64)
    (tmp / "bad.yaml").write_text("model:\n  backbone: [unclosed\n")
    (tmp / "taken/0000_a-red-chair").mkdir(parents=True)
    return {"tmp": str(tmp), "truncated": truncated_adapter(tmp)}


# (name, argv with {tmp}/{truncated}, message fragment that must be on the one error line)
CASES = [
    ("truncated safetensors in an adapter", ["sample", "--adapter", "{truncated}", "--prompt", "x", "--out", "{tmp}/o", *QUICK],
     "control_branch: cannot load its ControlBranch weights"),
    ("--image is a text file", ["sample", "--adapter", ADAPTER, "--prompt", "x", "--image", "{tmp}/notes.png", "--out", "{tmp}/o", *QUICK],
     "--image {tmp}/notes.png: not a readable image"),
    ("--image is missing", ["sample", "--adapter", ADAPTER, "--prompt", "x", "--image", "{tmp}/none.png", "--out", "{tmp}/o", *QUICK],
     "--image {tmp}/none.png: no such file"),
    ("--out is a file", ["sample", "--adapter", ADAPTER, "--prompt", "x", "--out", "{tmp}/a-file", *QUICK],
     "--out {tmp}/a-file: is a file"),
    ("--out holds the prompt's folder", ["sample", "--adapter", ADAPTER, "--prompt", "a red chair", "--out", "{tmp}/taken", *QUICK],
     "0000_a-red-chair: already exists (1 of 1 objects); --resume"),
    ("--view-chunk 0", ["sample", "--adapter", ADAPTER, "--prompt", "x", "--out", "{tmp}/o", "--view-chunk", "0", *QUICK],
     "--view-chunk must be >= 1"),
    ("--num-views 1000", ["sample", "--adapter", ADAPTER, "--prompt", "x", "--out", "{tmp}/o", "--num-views", "1000",
                          "--steps", "1", "--quiet"], "--num-views 1000: at most 64"),
    ("evaluate --out is a folder", ["evaluate", str(REPO / "models/tiny-neus"), "--out", "{tmp}/a-folder"],
     "--out {tmp}/a-folder: is a folder"),
    ("fit --ckpt_path is truncated", ["fit", "--config", str(REPO / "configs/tiny.yaml"), "--ckpt_path", "{tmp}/truncated.ckpt"],
     "{tmp}/truncated.ckpt: not a readable checkpoint"),
    ("fit config is not YAML", ["fit", "--config", "{tmp}/bad.yaml"], "{tmp}/bad.yaml: not valid YAML at line 3"),
    ("fit key misspelt", ["fit", "--config", str(REPO / "configs/tiny.yaml"), "--model.learning_rat", "1"],
     "unrecognized arguments: --model.learning_rat"),
]
if not torch.cuda.is_available():
    CASES.append(("--device cuda on a CPU-only torch", ["sample", "--adapter", ADAPTER, "--prompt", "x", "--out", "{tmp}/o",
                                                        "--device", "cuda", *QUICK], "--device cuda: this torch build has no CUDA"))


@pytest.mark.parametrize(("name", "argv", "message"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_naming_the_problem_with_exit_2(name, argv, message, tmp_path, capsys,
                                                              library_logs_to_stderr):
    names = setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main([arg.format(**names) for arg in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tunemv")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert message.format(**names) in lines[0], lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing left behind


def test_debug_shows_the_traceback_behind_the_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(Exception, match="is a file"):
        main(["sample", "--adapter", ADAPTER, "--prompt", "x", "--out", str(tmp_path / "f"), "--debug", *QUICK])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the case needs a normal user")
def test_a_read_only_out_is_refused_before_sampling(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o555)
    assert main(["sample", "--adapter", ADAPTER, "--prompt", "x", "--out", str(tmp_path / "ro/out"), *QUICK]) == 2
    assert "is not writable" in capsys.readouterr().err


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_whole_then_kill(command: list[str], tmp_path: Path, done, limit: float = 240):
    """Run ``command --out tmp/whole`` to the end, then ``command --out tmp/killed`` until ``done(killed)``
    holds and SIGKILL it. Returns the killed output folder and the killed process's children at the kill."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run([*command, "--out", str(tmp_path / "whole")], env=env, capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None and not (killed.is_dir() and done(killed)):
        time.sleep(0.02)
    children = children_of(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return killed, children, env


def test_a_killed_sample_resumes_to_what_an_uninterrupted_run_writes(tmp_path):
    command = [sys.executable, "-m", "tunemv", "sample", "--adapter", ADAPTER, "--prompt", "a red chair",
               "--prompt", "a blue chair", "--prompt", "a green chair", "--steps", "3", "--num-views", "4",
               "--turntable-frames", "3", "--quiet"]
    killed, _, env = run_whole_then_kill(command, tmp_path, lambda out: (out / "0000_a-red-chair").is_dir())
    finished = sorted(p.name for p in killed.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert "0000_a-red-chair" in finished and len(finished) < 3, finished

    refused = subprocess.run([*command, "--out", str(killed)], env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run([*command, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert tree(killed) == tree(tmp_path / "whole")  # byte-identical, turntables included
    assert not [p for p in killed.iterdir() if p.name.startswith(".")]  # the killed run's staging is cleaned


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_procedural_generation_is_reported_then_completed_byte_identically(tmp_path, capsys):
    command = [sys.executable, "-m", "tunemv", "data", "procedural", "--objects", "10", "--views", "4",
               "--resolution", "16", "--categories", "chair", "mug", "--seed", "3", "--workers", "2", "--quiet"]
    killed, workers, env = run_whole_then_kill(
        command, tmp_path, lambda out: len([p for p in out.glob("0*") if p.is_dir()]) >= 2, limit=120)
    written = [p for p in killed.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert 2 <= len(written) < 10, len(written)
    time.sleep(1.0)
    assert workers and not [pid for pid in workers if alive(pid)]  # the workers died with their parent

    assert main(["data", "check", str(killed)]) == 1  # not OK: the manifest says unfinished
    assert "did not finish" in capsys.readouterr().out
    rerun = subprocess.run([*command, "--out", str(killed)], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert tree(killed) == tree(tmp_path / "whole")
    assert main(["data", "check", str(killed)]) == 0
