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


def test_the_sampler_plugin_installed_by_its_entry_point_reaches_tunemv_sample(assets, tmp_path):
    """examples/sampler_plugin.py said `tunemv sample --sampler decaying` "then reaches it", but its in-process
    registration cannot reach another process (issue 32). Installed as its docstring says, as my_package with
    a `tunemv.samplers` entry point (here an added-path install: the package and its .dist-info on
    PYTHONPATH), a separate `tunemv sample` process finds it, builds it with its option and samples."""
    source = (ROOT / "examples/sampler_plugin.py").read_text()
    entry_point = 'decaying = "my_package.samplers:DecayingConsistency"'
    assert entry_point in source  # the pyproject.toml snippet the example shows
    site = tmp_path / "site"
    (site / "my_package").mkdir(parents=True)
    (site / "my_package/__init__.py").write_text("")
    (site / "my_package/samplers.py").write_text(source)
    dist_info = site / "my_package-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[tunemv.samplers]\n" + entry_point.replace('"', "") + "\n")

    def sample(out: str, pythonpath: str | None) -> subprocess.CompletedProcess:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env |= {"OMP_NUM_THREADS": "1", **({"PYTHONPATH": pythonpath} if pythonpath else {})}
        return subprocess.run([sys.executable, "-m", "tunemv", "sample", "--adapter", str(assets["root"] / "adapter"),
                               "--prompt", "a red chair", "--num-views", "2", "--steps", "2", "--sampler", "decaying",
                               "--sampler-option", "decay=0.5", "--out", str(tmp_path / out),
                               "--turntable-frames", "0", "--quiet"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)

    installed = sample("installed", str(site))
    assert installed.returncode == 0, installed.stderr[-3000:]
    record = json.loads(next((tmp_path / "installed").glob("*/sampling.json")).read_text())
    assert record["sampler"] == "decaying" and record["sampler_options"] == {"decay": 0.5}
    assert len(list((tmp_path / "installed").glob("*/images/*.png"))) == 2

    alone = sample("alone", None)  # not installed: the script's own registration reaches no other process
    assert alone.returncode == 2 and "unknown sampler 'decaying'" in alone.stderr, alone.stderr[-3000:]
