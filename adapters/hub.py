"""Adapter and generator folders on the Hugging Face Hub, as diffusers shares ControlNets.

``resolve_folder`` turns a hub id ("owner/name", with ``revision`` and ``subfolder``) into a local snapshot
through ``huggingface_hub.snapshot_download``, so the Hub's cache, ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE``
work as they do for diffusers; a local folder is returned as it is. ``push_folder`` uploads a folder that
``write_adapter_folder`` wrote. ``model_card`` writes the README.md (``huggingface_hub.ModelCard``) that every
exported folder carries: its backbone, data, steps and whatever measured figures are given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunemv.adapters.backbones import looks_local
from tunemv.adapters.formats import ADAPTER_FILE, AdapterError

CARD_FILE = "README.md"
CARD_LICENSE = "apache-2.0"  # tunemv's (pyproject.toml), the default license of the weights it exports
CARD_PIPELINE_TAG = "text-to-3d"


def resolve_folder(name_or_path: str | Path, revision: str | None = None, subfolder: str | None = None,
                   cache_dir: str | Path | None = None, token: str | bool | None = None) -> Path:
    """A local adapter folder for a folder path or a hub id (downloaded into, or read from, the Hub cache)."""
    path = str(name_or_path)
    if looks_local(path):
        folder = Path(path) / (subfolder or "")
        if not folder.is_dir():
            raise AdapterError(f"{folder}: no such folder")
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = None if not subfolder else [f"{subfolder.strip('/')}/*", f"{subfolder.strip('/')}/**/*"]
    try:
        snapshot = snapshot_download(path, revision=revision, cache_dir=cache_dir, token=token,
                                     allow_patterns=patterns, library_name="tunemv")
    except LocalEntryNotFoundError as error:
        raise AdapterError(f"{path}: not in the local Hub cache and the Hub cannot be reached (offline, or "
                           f"HF_HUB_OFFLINE=1); download it once online or pass a local folder") from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise AdapterError(f"{path}: no such repository or revision on the Hub ({type(error).__name__})") from error
    folder = Path(snapshot) / (subfolder or "")
    if not (folder / ADAPTER_FILE).is_file():
        raise AdapterError(f"{path}{'/' + subfolder if subfolder else ''}: the repository has no {ADAPTER_FILE}; "
                           "is it a tunemv adapter (tunemv export writes one)?")
    return folder


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload tunemv adapter", revision: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload the adapter folder; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / ADAPTER_FILE).is_file():
        raise AdapterError(f"{folder}: not an adapter folder (no {ADAPTER_FILE}); write one with save_pretrained")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                             revision=revision)
    return str(getattr(info, "commit_url", info))


def model_card(info: Mapping[str, Any], figures: Mapping[str, Any] | None = None) -> str:
    """README.md text for an adapter or generator folder: Hub metadata, then what made it and what it scores."""
    from huggingface_hub import ModelCard, ModelCardData

    generator = info.get("sampling", {}).get("sampler") == "one-step"
    backbone = str(info.get("backbone", "unknown"))
    # Front matter the Hub reads: base_model is the backbone as adapter.json stores it (a hub id, or the folder
    # path of a local one); license is tunemv's own unless adapter.json names one (the backbone's license
    # still governs the backbone); pipeline_tag text-to-3d: text (or an image) to consistent views and a mesh.
    data = ModelCardData(library_name="tunemv", tags=["tunemv", "multiview", "neus", "controlnet"]
                         + (["one-step", "distillation"] if generator else []),
                         base_model=backbone, license=str(info.get("license") or CARD_LICENSE),
                         pipeline_tag=CARD_PIPELINE_TAG)
    kind = "one-step multiview generator (distilled with `tunemv distill`)" if generator else "multiview adapter"
    lines = [f"# {info.get('name', 'tunemv ' + kind.split(' (')[0])}", "",
             f"A tunemv {kind} for the frozen backbone `{backbone}`.", "",
             "| | |", "|---|---|"]
    for key, label in (("global_step", "training steps"), ("ema", "EMA weights"), ("data", "data"),
                       ("recipe", "recipe"), ("generator", "distilled from")):
        if info.get(key) is not None:
            value = info[key].get("teacher") if key == "generator" else info[key]
            lines.append(f"| {label} | `{value}` |")
    if figures:
        lines += ["", "## Measured", "", "| figure | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |"
                  for name, value in figures.items()]
    sampler = "one-step" if generator else "mv"
    lines += ["", "## Use", "", "```python", "from tunemv.sampling import MultiviewPipeline", "",
              'pipe = MultiviewPipeline.from_pretrained("<this folder or hub id>")',
              f'out = pipe("a red chair", num_views=8)   # sampler "{sampler}" by default', "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines))
    return str(card)
