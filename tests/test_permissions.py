"""Outputs get the permissions a plain open()/mkdir() gives under the caller's umask, not mkstemp's owner-only
0600/0700: datasets, sample folders, exported adapters and checkpoints are readable by other users (issue 22)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from tunemv.atomic import write_text_atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


def test_atomic_files_and_dataset_folders_follow_the_umask(tmp_path, umask_022):
    from tunemv.data.format import write_object
    from tunemv.geometry.cameras import orbit

    write_text_atomic(tmp_path / "a.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    images = (torch.rand(2, 8, 8, 3) * 255).to(torch.uint8).numpy()
    write_object(tmp_path / "obj", images, orbit(2, 20.0, resolution=8), ["a red chair"])
    assert modes(tmp_path / "obj") == {("dir", 0o755), ("file", 0o644)}


def test_exported_adapter_folders_follow_the_umask(tmp_path, umask_022):
    from sampling_fixtures import adapter_pipeline, save_adapter, save_backbones

    pipe = adapter_pipeline(save_backbones(tmp_path / "backbones")["if"])
    folder = save_adapter(pipe, tmp_path / "adapter")
    assert modes(folder) == {("dir", 0o755), ("file", 0o644)}
    os.umask(0o077)  # a private umask stays private
    private = save_adapter(pipe, tmp_path / "private")
    assert modes(private) == {("dir", 0o700), ("file", 0o600)}


def test_shipped_and_exported_folders_load_from_any_working_directory(tmp_path, monkeypatch):
    """adapter.json stored ./models/tiny-if as typed, so models/demo-adapter loaded only from the repository
    root (issue 22, item 10); folders now name a local backbone relative to themselves."""
    from tunemv.adapters.formats import folder_backbone, portable_backbone, read_adapter_info

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    for folder in (repo / "models/demo-adapter", repo / "models/tiny-neus"):
        assert Path(folder_backbone(folder)).resolve() == (repo / "models/tiny-if").resolve()
    assert Path(read_adapter_info(repo / "models/demo-adapter")["backbone"]).is_dir()
    assert portable_backbone("DeepFloyd/IF-I-XL-v1.0", tmp_path) == "DeepFloyd/IF-I-XL-v1.0"  # hub ids as they are
    (tmp_path / "backbones/tiny").mkdir(parents=True)
    assert portable_backbone("backbones/tiny", tmp_path / "backbones/adapter") == "../tiny"  # beside: relative
    assert portable_backbone("backbones/tiny", tmp_path / "out/adapter") == str(tmp_path / "backbones/tiny")  # not
    assert portable_backbone(str(tmp_path / "out/backbone"), tmp_path / "out") == str(tmp_path / "out/backbone")
