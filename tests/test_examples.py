"""Every script in examples/ runs, on the tests' tiny models, as a user runs it (a fresh process, repo root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sampling_fixtures import adapter_pipeline, save_adapter, save_backbones

from tunemv.cli import main
from tunemv.data.generate import generate_procedural_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    folders = save_backbones(root / "backbones")
    save_adapter(adapter_pipeline(folders["if"], awake=True), root / "adapter")
    generate_procedural_dataset(root / "data", num_objects=2, num_views=6, resolution=16, val_fraction=0,
                                progress=False, workers=1)
    assert main(["data", "export-transforms", str(root / "data"), str(root / "renders")]) == 0
    return {"root": root, "if": folders["if"]}


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_text_and_image_to_multiview(assets, tmp_path):
    root = assets["root"]
    run("text_to_multiview.py", "--adapter", str(root / "adapter"), "--steps", "2", "--out", str(tmp_path / "text"))
    assert len(list((tmp_path / "text").glob("view_*.png"))) == 8 and (tmp_path / "text" / "mesh.glb").is_file()
    image = next((root / "data").glob("*/images/000.png"))
    run("image_to_multiview.py", "--adapter", str(root / "adapter"), "--image", str(image), "--steps", "2",
        "--out", str(tmp_path / "image"))
    assert len(list((tmp_path / "image").glob("view_*.png"))) == 8


def test_a_sampler_plugin_with_an_option(assets):
    out = run("sampler_plugin.py", "--adapter", str(assets["root"] / "adapter"), "--decay", "0.5", "--steps", "2")
    assert "with the 'decaying' sampler, decay 0.5" in out.stdout


def test_fit_on_your_renders(assets, tmp_path):
    out = run("fit_on_your_renders.py", "--renders", str(assets["root"] / "renders"), "--backbone", str(assets["if"]),
              "--out", str(tmp_path / "fit"), "--resolution", "16", "--steps", "2")
    assert (tmp_path / "fit" / "adapter" / "adapter.json").is_file(), out.stdout


def test_distill_a_generator(assets, tmp_path):
    out = run("distill_generator.py", "--teacher", str(assets["root"] / "adapter"), "--out", str(tmp_path / "gen"),
              "--objects", "2", "--views", "2", "--teacher-steps", "2", "--steps", "2")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sampler"] == "one-step" and result["views"] == 2
