"""Adapters as Hub repositories: save_pretrained / from_pretrained round trips, a hub id loaded offline from a
pre-populated Hub cache (the real snapshot_download path, no network), push_to_hub, and the model card."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from sampling_fixtures import PROMPT, adapter_pipeline, save_adapter, save_backbones

from tunemv.adapters.formats import AdapterError
from tunemv.sampling.pipeline import MultiviewPipeline

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    backbones = save_backbones(root / "backbones")
    adapter = save_adapter(adapter_pipeline(backbones["if"], awake=True), root / "adapter")
    return {"root": root, "backbone": backbones["if"], "adapter": adapter}


def fake_hub_cache(cache: Path, repo_id: str, folder: Path, subfolder: str | None = None) -> None:
    """The layout huggingface_hub's cache has after a download: blobs behind a snapshot, refs/main -> commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT / (subfolder or "")
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


def test_save_pretrained_round_trips_weights_defaults_and_writes_a_card(folders, tmp_path):
    pipe = MultiviewPipeline.from_pretrained(folders["adapter"])
    pipe.sampling_defaults.update(sampler="one-step", guidance_scale=1.0)
    out = pipe.save_pretrained(tmp_path / "saved", figures={"hull IoU": 0.75})
    again = MultiviewPipeline.from_pretrained(out)
    for name, tensor in pipe.denoiser.control_branch.state_dict().items():
        assert torch.equal(tensor, again.denoiser.control_branch.state_dict()[name])
    assert again.sampling_defaults["sampler"] == "one-step"
    info = json.loads((out / "adapter.json").read_text())
    assert info["backbone"] == str(folders["backbone"])  # not beside the folder: its absolute path
    card = (out / "README.md").read_text()
    assert card.startswith("---") and "library_name: tunemv" in card and "| hull IoU | 0.75 |" in card
    front = yaml.safe_load(card.split("---")[1])  # the Hub's metadata: base_model is the backbone as stored
    assert front["base_model"] == info["backbone"] and front["license"] == "apache-2.0"
    assert front["pipeline_tag"] == "text-to-3d"
    with pytest.raises(AdapterError, match="already exists"):
        pipe.save_pretrained(out)


def test_an_exported_adapter_card_has_the_hub_front_matter(folders, tmp_path):
    """`tunemv export`'s README.md names license, base_model (the backbone as adapter.json stores it) and
    pipeline_tag, which the Hub reads from the front matter."""
    from tunemv.adapters.formats import checkpoint_metadata
    from tunemv.training.export import export_adapter
    from tunemv.training.system import declared_prefixes

    pipe = MultiviewPipeline.from_pretrained(folders["adapter"])
    neus, branch = pipe.denoiser.neus, pipe.denoiser.control_branch
    state = {**{f"denoiser.neus.{k}": v for k, v in neus.state_dict().items()},
             **{f"denoiser.control_branch.{k}": v for k, v in branch.state_dict().items()}}
    meta = checkpoint_metadata(str(folders["backbone"]), neus, branch, "live", declared_prefixes("live"))
    torch.save({"state_dict": state, "tunemv": meta, "global_step": 1}, tmp_path / "run.ckpt")
    out = export_adapter(tmp_path / "run.ckpt", tmp_path / "exported")
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    stored = json.loads((out / "adapter.json").read_text())["backbone"]
    assert front["base_model"] == stored == str(folders["backbone"])
    assert front["license"] == "apache-2.0" and front["pipeline_tag"] == "text-to-3d"


def test_a_folder_names_a_backbone_beside_it_relatively_and_any_other_absolutely(folders, tmp_path, monkeypatch):
    """adapter.json named a far backbone by a path climbing to the filesystem root ("../../../work/..."), which
    breaks as soon as either moves (issue 32). Beside the folder (its parent folder or below): relative, so the
    two move together; elsewhere: the absolute path. Both load from any working directory, and the card's
    base_model is the backbone as stored."""
    pipe = MultiviewPipeline.from_pretrained(folders["adapter"])
    share = tmp_path / "share"
    shutil.copytree(folders["backbone"], share / "backbones/if")
    cases = {"beside": (share / "backbones/if", share / "adapter", "../backbones/if"),
             "inside": (share / "backbones/if", share / "backbones/if-adapter", "../if"),
             "far": (folders["backbone"], tmp_path / "a/b/adapter", str(folders["backbone"]))}
    for name, (backbone, folder, stored) in cases.items():
        pipe.backbone.name_or_path = str(backbone)
        pipe.save_pretrained(folder)
        info = json.loads((folder / "adapter.json").read_text())
        front = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
        assert info["backbone"] == front["base_model"] == stored, name
    moved = tmp_path / "moved"
    shutil.move(share, moved)  # the shared folder moves whole: the relative backbone moves with it
    monkeypatch.chdir(tmp_path / "a")
    for folder, backbone in ((moved / "adapter", moved / "backbones/if"), (tmp_path / "a/b/adapter", folders["backbone"])):
        loaded = MultiviewPipeline.from_pretrained(folder)
        assert Path(loaded.backbone.name_or_path).resolve() == backbone.resolve()


@pytest.mark.parametrize("subfolder", [None, "generator"])
def test_a_hub_id_loads_offline_from_the_hub_cache(folders, tmp_path, subfolder):
    """In a fresh process with HF_HUB_OFFLINE=1: the code path a user takes, with no network."""
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "tunemv-test/tiny-adapter", folders["adapter"], subfolder)
    script = f"""
import torch
from tunemv.sampling.pipeline import MultiviewPipeline
pipe = MultiviewPipeline.from_pretrained("tunemv-test/tiny-adapter", subfolder={subfolder!r},
                                         backbone={str(folders["backbone"])!r})
out = pipe({PROMPT!r}, num_views=2, steps=1, seed=0, progress=False)
local = MultiviewPipeline.from_pretrained({str(folders["adapter"])!r}, backbone={str(folders["backbone"])!r})
assert torch.equal(local({PROMPT!r}, num_views=2, steps=1, seed=0, progress=False).pixels, out.pixels)
try:
    MultiviewPipeline.from_pretrained("tunemv-test/not-cached")
except Exception as error:
    print(type(error).__name__, error)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "AdapterError tunemv-test/not-cached: not in the local Hub cache" in result.stdout


def test_a_missing_local_folder_is_one_clear_error(tmp_path):
    with pytest.raises(AdapterError, match="no such folder"):
        MultiviewPipeline.from_pretrained(tmp_path / "nowhere")


def test_push_to_hub_uploads_what_save_pretrained_writes(folders, monkeypatch):
    from huggingface_hub import HfApi

    uploaded = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: uploaded.update(repo=repo_id))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        uploaded["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        return "https://huggingface.co/tunemv-test/tiny-adapter/commit/abc"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = MultiviewPipeline.from_pretrained(folders["adapter"]).push_to_hub("tunemv-test/tiny-adapter")
    assert url.endswith("/commit/abc") and uploaded["repo"] == "tunemv-test/tiny-adapter"
    assert {"adapter.json", "README.md", "neus/config.json", "control_branch/config.json"} <= set(uploaded["files"])
