"""The adapter's two on-disk formats, each with its writer and its reader in one place.

An **adapter folder** (``tunemv export`` writes it, ``MultiviewPipeline.from_pretrained`` reads it)::

    FOLDER/neus/            LatentSparseNeuS.save_pretrained
    FOLDER/control_branch/  ControlBranch.save_pretrained
    FOLDER/adapter.json     {"backbone": hub id or folder, "tunemv_version", "ema", "global_step", "checkpoint"}

A **pretrained NeuS folder** (stage 1, ``tunemv export`` of a ``configs/neus_pretrain.yaml`` run; what
``model.init_from`` and ``models/tiny-neus`` are)::

    FOLDER/config.json, FOLDER/diffusion_pytorch_model.safetensors   LatentSparseNeuS.save_pretrained
    FOLDER/neus.json        {"backbone", "tunemv_version", "global_step", "checkpoint"}

A **training checkpoint** (``tunemv fit``'s Lightning ``.ckpt``) keeps only the trainable weights and a
``"tunemv"`` entry that declares everything a reader needs, so neither reading it nor exporting it needs the
backbone or knows how training names its modules::

    "format": 2                 CHECKPOINT_FORMAT; an entry without one is format 1 (checkpoint_format_1.py)
    "backbone": hub id or folder
    "neus_config", "control_branch_config": the modules' diffusers configs (a stage-1 NeuS: neus_config only)
    "prefixes": {"live": {"neus": P, "control_branch": P}, "ema": {...}, "unet": P}   state_dict prefixes;
                 "ema" where the run kept an EMA, "unet" where it fine-tuned the backbone's UNet
    "weights": "live", "live+ema", or "ema" (a weights-only snapshot: the EMA under the live prefixes)
    "sampling": {"sampler", "sampler_options", "guidance_scale"}   how it samples, where not as an adapter
    "kind": "neus" | "generator", "generator": {...}, "skipped_steps": what the writer adds

What each trusts: an adapter or NeuS folder is data only (JSON and safetensors). A ``.ckpt`` is a pickle, which
can name any Python callable to run while it is read; ``read_checkpoint`` reads it with
``torch.load(weights_only=True)``, which builds only tensors, plain containers and ``CHECKPOINT_GLOBALS``, and
refuses a file that asks for anything else. Either way every config value and weight is checked as it loads
(types, ranges, finite floats), so a broken model is one line naming the file and the key.

This lives in ``adapters/`` (not in ``training/``) because sampling reads both formats and may not import
training.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from tunemv.adapters import checkpoint_format_1
from tunemv.adapters.backbones import first_line, looks_local
from tunemv.adapters.control_branch import ControlBranch
from tunemv.atomic import apply_umask, make_temporary_dir
from tunemv.errors import TunemvError
from tunemv.neus.latent_sparseneus import ConfigError, LatentSparseNeuS

ADAPTER_FILE = "adapter.json"
NEUS_FOLDER, BRANCH_FOLDER = "neus", "control_branch"

CHECKPOINT_FORMAT = 2  # the "tunemv" entry's layout version; see the module docstring
MODULES = ("neus", "control_branch")  # the adapter's two trainable modules, as "prefixes" names them
NEUS_INFO_FILE = "neus.json"  # beside a pretrained NeuS folder's config.json: its backbone and training run
CONFIG_FILE, WEIGHTS_GLOB = "config.json", "diffusion_pytorch_model*.safetensors"  # what save_pretrained writes
# The globals a .ckpt may name beyond torch's own weights-only set (tensors, dtypes, OrderedDict, plain
# containers). Today's writers need none: fit, distill and NeuS-pretraining checkpoints, resumable and
# weights-only, hold only dicts, lists, strings, numbers and tensors (tests/test_checkpoint_trust.py asks
# torch.serialization.get_unsafe_globals_in_checkpoint). PosixPath: checkpoints written before module_config
# (commit 4862728) recorded an init_from folder as a Path in neus_config; building a path runs no code.
CHECKPOINT_GLOBALS = (pathlib.PosixPath,)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SAFETENSORS_FLOATS = ("F32", "F16", "BF16", "F64")
SAFETENSORS_NAMES = {"I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool"}


class AdapterError(TunemvError, ValueError):
    """An adapter folder that is missing or incomplete."""


class CheckpointError(TunemvError):
    """A checkpoint that is unreadable, not from ``tunemv fit``, or lacks the requested weights."""


# ------------------------------------------------------------------------------------------ adapter folder
def write_adapter_folder(out_dir: str | Path, neus: LatentSparseNeuS, control_branch: ControlBranch,
                         info: dict[str, Any], overwrite: bool = False, extra_files: dict[str, str] | None = None
                         ) -> Path:
    """Write an adapter folder atomically: a temporary sibling folder renamed into place.

    ``info`` must name the ``backbone``; the tunemv version is added. ``extra_files`` (name -> text, e.g. the
    model card's README.md) are written into the folder too. With ``overwrite`` the old folder is moved aside
    first, so a failure never loses both.
    """
    from tunemv import __version__

    out_dir = Path(out_dir)
    if not info.get("backbone"):
        raise AdapterError(f"{out_dir}: an adapter folder must name its backbone")
    info = {**info, "backbone": portable_backbone(info["backbone"], out_dir)}
    with _staged_folder(out_dir, overwrite) as staging:
        neus.save_pretrained(staging / NEUS_FOLDER)
        control_branch.save_pretrained(staging / BRANCH_FOLDER)
        (staging / ADAPTER_FILE).write_text(json.dumps({**info, "tunemv_version": __version__}, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
    return out_dir


@contextmanager
def _staged_folder(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling folder to write into, renamed to ``out_dir`` when the block succeeds and removed
    when it fails. An old ``out_dir`` is moved aside first, so a failure never loses both."""
    if out_dir.exists() and not overwrite:
        raise AdapterError(f"{out_dir}: already exists; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_dir(out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp")
    try:
        yield staging
        apply_umask(staging)
        if out_dir.exists():
            trash = make_temporary_dir(out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old")
            out_dir.rename(trash / out_dir.name)
            staging.rename(out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def read_adapter_info(adapter_dir: str | Path) -> dict[str, Any]:
    """``adapter.json`` of a complete adapter folder; a missing part or bad JSON is an ``AdapterError``."""
    adapter_dir = Path(adapter_dir)
    info_path = adapter_dir / ADAPTER_FILE
    if not info_path.is_file():
        raise AdapterError(f"{info_path}: missing; an adapter folder is what `tunemv export` writes")
    info = _read_info_file(info_path)
    for part in (NEUS_FOLDER, BRANCH_FOLDER):
        if not (adapter_dir / part).is_dir():
            raise AdapterError(f"{adapter_dir / part}: missing; an adapter folder is what `tunemv export` writes")
    if info.get("backbone") is not None:
        info["backbone"] = resolve_backbone(info["backbone"], adapter_dir)
    return info


def _read_info_file(info_path: Path) -> dict[str, Any]:
    """``adapter.json`` or ``neus.json``: a JSON object whose ``backbone``, when there, names one."""
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as error:
        raise AdapterError(f"{info_path}: not valid JSON ({error})") from error
    if not isinstance(info, dict):
        raise AdapterError(f"{info_path}: must be a JSON object with a 'backbone' key (what `tunemv export` "
                           f"writes), got a JSON {type(info).__name__}")
    backbone = info.get("backbone")
    if backbone is not None and (not isinstance(backbone, str) or not backbone.strip()):
        # "" would resolve to the folder itself ("./" + "" beside it), and load it as the backbone.
        raise AdapterError(f"{info_path}: 'backbone' must name the backbone (a hub id or a folder), got {backbone!r}")
    return info


def portable_backbone(backbone: str, folder: Path) -> str:
    """How a folder names its backbone so that it loads from any working directory: a hub id as it is; a local
    folder beside ``folder`` (in its parent folder or below it) relative to ``folder`` ("../tiny-if"; "./" or
    "../" keeps it from reading as a hub id), so the two move and share together; any other local folder by its
    absolute path, as given when given so: a path climbing to the filesystem root ("../../../work/...")
    would only name the same folder while nothing moves."""
    if not looks_local(backbone) or not Path(backbone).expanduser().is_dir():
        return backbone
    relative = os.path.relpath(Path(backbone).expanduser().resolve(), Path(folder).resolve())
    if Path(relative).parts.count("..") <= 1:
        return relative if relative.startswith("..") else f"./{relative}"
    return backbone if os.path.isabs(backbone) else os.path.abspath(os.path.expanduser(backbone))


def resolve_backbone(backbone: str, folder: Path) -> str:
    """The backbone a folder names, as a path that loads from here: a relative local path is read against the
    folder (as ``portable_backbone`` writes it); folders written before that named it relative to the working
    directory of the fit, which is what is left when nothing is found beside the folder."""
    if not looks_local(backbone) or os.path.isabs(os.path.expanduser(backbone)):
        return backbone
    beside = os.path.normpath(Path(folder) / backbone)
    return beside if os.path.isdir(beside) else backbone


def read_adapter_folder(adapter_dir: str | Path) -> tuple[LatentSparseNeuS, ControlBranch, dict[str, Any]]:
    """(NeuS, control branch, adapter.json) of an adapter folder, the modules in eval mode."""
    adapter_dir = Path(adapter_dir)
    info = read_adapter_info(adapter_dir)
    neus = read_module_folder(LatentSparseNeuS, adapter_dir / NEUS_FOLDER)
    branch = read_module_folder(ControlBranch, adapter_dir / BRANCH_FOLDER)
    return neus, branch, info


def read_module_folder(module, folder: Path):
    """A ``save_pretrained`` folder of ``module`` (LatentSparseNeuS or ControlBranch), in eval mode. A config
    value of the wrong type or range, or a weight that is missing, extra, not a float or not finite, is one
    ``AdapterError`` naming the file and the key, checked before the weights are read where it can be."""
    try:
        stored = _stored_dtypes(folder)  # from the header: from_pretrained would cast an int8 weight silently
        with torch.device("meta"):  # only the names of the weights the config makes: nothing is allocated
            expected = list(module.from_config(module.load_config(folder)).state_dict())
        problem = _stored_weight_problem(stored, expected)
        loaded = None if problem else module.from_pretrained(folder)
    except ConfigError as error:
        raise AdapterError(f"{folder / CONFIG_FILE}: {error}") from error
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # a truncated or zeroed safetensors
        raise AdapterError(f"{folder}: cannot load its {module.__name__} weights ({first_line(error)}); "
                           "export the adapter again") from error
    if loaded is not None:
        broken = first_non_finite(loaded.state_dict())  # a NaN weight renders every view black
        problem = f"weight '{broken}' is not finite (NaN or inf)" if broken else None
    if problem:
        file = next(iter(sorted(folder.glob(WEIGHTS_GLOB))), folder)
        raise AdapterError(f"{file}: {problem}; export the adapter again")
    return loaded.eval()


def _stored_dtypes(folder: Path) -> dict[str, str]:
    """{key: safetensors dtype ("F32", "I8", ...)} of a folder's weights, from the files' headers alone."""
    dtypes = {}
    for file in sorted(folder.glob(WEIGHTS_GLOB)):
        with safe_open(file, "pt") as weights:
            dtypes.update({key: weights.get_slice(key).get_dtype() for key in weights.keys()})  # noqa: SIM118
    return dtypes


def _stored_weight_problem(stored: dict[str, str], expected: list[str]) -> str | None:
    """What is wrong with the weights a folder stores for a module whose config makes ``expected`` (a missing
    one would stay an empty meta tensor, an extra one be ignored, an int8 one be cast silently)."""
    if not stored:
        return None  # no safetensors: from_pretrained says what is missing
    missing = [key for key in expected if key not in stored]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return f"no weight '{missing[0]}'{more}, which its config.json needs"
    expected_keys = set(expected)
    extra = next((key for key in stored if key not in expected_keys), None)
    if extra:
        return f"weight '{extra}' is not part of the model its config.json describes"
    wrong = next((key for key, dtype in stored.items() if dtype not in SAFETENSORS_FLOATS), None)
    if wrong:
        return f"weight '{wrong}' is {SAFETENSORS_NAMES.get(stored[wrong], stored[wrong])}, not a float"
    return None


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    return next((key for key, value in state.items()
                 if value.is_floating_point() and not bool(torch.isfinite(value).all())), None)


# -------------------------------------------------------------------------------------------- checkpoints
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ``tunemv fit``/``distill`` checkpoint, read as data only: a pickle that would run code (anything but
    tensors, plain containers and ``CHECKPOINT_GLOBALS``) is refused before it runs. Its ``tunemv`` entry and
    its weights are checked too, so a broken one is one line naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_GLOBALS)):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise _unreadable(path, error) from error
    check_checkpoint(checkpoint, path)
    return checkpoint


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    text = str(error)
    called = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if called:  # the weights-only unpickler stopped at a callable, before calling it; name them all
        try:
            return refused(path, code_in_checkpoint(path) or [called.group(1)])
        except Exception:  # a legacy (not zip) torch.save file: the one torch named
            return refused(path, [called.group(1)])
    reason = re.search(r"WeightsUnpickler error: \s*(\S[^\n]*)", text)  # e.g. "Unsupported operand 110"
    detail = reason.group(1) if reason else f"{type(error).__name__}: {first_line(error)}"
    return CheckpointError(f"{path}: not a readable checkpoint (truncated, or not written by torch.save: {detail})")


def refused(path: Path | str, names: list[str]) -> CheckpointError:
    return CheckpointError(f"{path}: refused: reading it would call {', '.join(names)}, and tunemv reads "
                           "checkpoints as data only, without running code from them")


def code_in_checkpoint(path: Path | str, allowed=CHECKPOINT_GLOBALS) -> list[str]:
    """The callables a torch.save (zip) checkpoint's pickle names beyond torch's weights-only set and ``allowed``,
    found by reading its opcodes without running them; none for a checkpoint tunemv wrote."""
    allowed_names = {f"{cls.__module__}.{cls.__qualname__}" for cls in allowed}
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    return [name for name in names if name not in allowed_names]


def check_checkpoint(checkpoint: Any, path: Path) -> None:
    """The entries ``tunemv export`` and sampling read, and the weights they load: float and finite."""
    if not isinstance(checkpoint, dict) or "tunemv" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a tunemv checkpoint (no 'tunemv' and 'state_dict' entries); "
                              "export checkpoints written by `tunemv fit`")
    meta, state_dict = checkpoint["tunemv"], checkpoint["state_dict"]
    if not isinstance(meta, dict) or not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: its 'tunemv' and 'state_dict' entries must be dicts")
    configs = ("neus_config",) if meta.get("kind") == "neus" else ("neus_config", "control_branch_config")
    for key in ("backbone", *configs):
        if key not in meta:
            raise CheckpointError(f"{path}: its 'tunemv' entry has no '{key}'; not a checkpoint that `tunemv fit` "
                                  "wrote, or a damaged one")
    if not isinstance(meta["backbone"], str) or not meta["backbone"].strip():
        raise CheckpointError(f"{path}: 'tunemv' entry's 'backbone' must name the backbone, got {meta['backbone']!r}")
    for key in configs:
        if not isinstance(meta[key], dict):
            raise CheckpointError(f"{path}: 'tunemv' entry's '{key}' must be a dict, got {type(meta[key]).__name__}")
    generator = meta.get("generator")  # a distillation checkpoint: its teacher and schedule
    if generator is not None and not (isinstance(generator, dict) and set(GENERATOR_KEYS) <= set(generator)):
        raise CheckpointError(f"{path}: 'tunemv' entry's 'generator' must have {', '.join(map(repr, GENERATOR_KEYS))}")
    version = meta.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: 'tunemv' entry's format {version!r} is not one this tunemv reads (1 to "
                              f"{CHECKPOINT_FORMAT}); a newer tunemv wrote it, or it is damaged")
    if version == 1:  # written before the entry declared its layout: what those writers did, made explicit
        meta = checkpoint["tunemv"] = checkpoint_format_1.declared(meta, state_dict)
    problem = _declaration_problem(meta) or _checkpoint_weight_problem(state_dict, meta["prefixes"])
    if problem:
        raise CheckpointError(f"{path}: {problem}")


GENERATOR_KEYS = ("timestep", "teacher", "vsd_steps")
SAMPLING_KEYS = ("sampler", "sampler_options", "guidance_scale")


def _declaration_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the entry's ``prefixes`` and ``sampling``, if anything."""
    prefixes = meta.get("prefixes")
    modules = ("neus",) if meta.get("kind") == "neus" else MODULES
    if not isinstance(prefixes, dict) or not isinstance(prefixes.get("live"), dict):
        return "'tunemv' entry's 'prefixes' must be a dict with a 'live' dict of module prefixes"
    for group in ("live", "ema"):
        if group in prefixes and not (isinstance(prefixes[group], dict) and all(
                isinstance(prefixes[group].get(name), str) and prefixes[group][name] for name in modules)):
            return f"'tunemv' entry's prefixes['{group}'] must name a prefix for each of {', '.join(modules)}"
    if "unet" in prefixes and not (isinstance(prefixes["unet"], str) and prefixes["unet"]):
        return "'tunemv' entry's prefixes['unet'] must be a state_dict prefix"
    sampling = meta.get("sampling")
    if sampling is not None and not (isinstance(sampling, dict) and set(SAMPLING_KEYS) >= set(sampling)
                                     and isinstance(sampling.get("sampler"), str)
                                     and isinstance(sampling.get("sampler_options", {}), dict)):
        return (f"'tunemv' entry's 'sampling' must be a dict of {', '.join(SAMPLING_KEYS)} with the sampler's "
                f"name, got {sampling!r}")
    return None


def declared_weight_prefixes(prefixes: dict[str, Any]) -> tuple[str, ...]:
    """Every state_dict prefix the declaration names: the live and EMA modules' and a fine-tuned UNet's."""
    return (*[p for group in ("live", "ema") for p in (prefixes.get(group) or {}).values()],
            *([prefixes["unet"]] if "unet" in prefixes else []))


def _checkpoint_weight_problem(state_dict: dict[str, Any], prefixes: dict[str, Any]) -> str | None:
    """Every model weight (under the declared prefixes, which sampling and export load) must be a finite float
    tensor."""
    weights = {}
    loaded = declared_weight_prefixes(prefixes)
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            return f"state_dict['{key}'] is a {type(value).__name__}, not a tensor"
        if key.startswith(loaded):
            if value.dtype not in FLOAT_DTYPES:
                return f"weight '{key}' is {str(value.dtype).removeprefix('torch.')}, not a float"
            weights[key] = value
    broken = first_non_finite(weights)
    return f"weight '{broken}' is not finite (NaN or inf)" if broken else None


def checkpoint_metadata(backbone: str, neus: LatentSparseNeuS, control_branch: ControlBranch, weights: str,
                        prefixes: dict[str, Any], sampling: dict[str, Any] | None = None, **extra) -> dict[str, Any]:
    """The checkpoint's ``"tunemv"`` entry, which ``load_adapter_modules`` reads back: the writer declares its
    ``state_dict`` ``prefixes`` and, for a model that samples otherwise than an adapter, its ``sampling``."""
    meta = {"format": CHECKPOINT_FORMAT, "backbone": backbone, "neus_config": module_config(neus),
            "control_branch_config": module_config(control_branch), "weights": weights, "prefixes": prefixes}
    return meta | ({"sampling": sampling} if sampling is not None else {}) | extra


def module_config(module) -> dict[str, Any]:
    """A module's diffusers config for a checkpoint, without ``_name_or_path``: a module loaded from a folder
    records it as a ``Path``, which ``torch.load(weights_only=True)`` (Lightning's resume) refuses to unpickle."""
    return {key: value for key, value in dict(module.config).items() if key != "_name_or_path"}


def checkpoint_metadata_neus(backbone: str, neus: LatentSparseNeuS, prefix: str, **extra) -> dict[str, Any]:
    """The ``"tunemv"`` entry of a stage-1 checkpoint: a NeuS alone (under ``prefix``), no control branch."""
    return {"format": CHECKPOINT_FORMAT, "kind": "neus", "backbone": backbone, "neus_config": module_config(neus),
            "weights": "live", "prefixes": {"live": {"neus": prefix}}, **extra}


def is_neus_checkpoint(checkpoint: dict[str, Any]) -> bool:
    return checkpoint["tunemv"].get("kind") == "neus"


def load_neus_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint") -> LatentSparseNeuS:
    """The NeuS of a stage-1 checkpoint, in eval mode."""
    neus = _module_from_config(LatentSparseNeuS, checkpoint["tunemv"], "neus_config", source)
    try:
        neus.load_state_dict(submodule_state(checkpoint["state_dict"], live_prefixes(checkpoint)["neus"]),
                             strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{source}: neus weights do not fit its config ({str(error).splitlines()[0]})") from error
    return neus.eval()


# -------------------------------------------------------------------------------- pretrained NeuS folder
def write_neus_folder(out_dir: str | Path, neus: LatentSparseNeuS, info: dict[str, Any],
                      overwrite: bool = False) -> Path:
    """A pretrained NeuS folder (stage 1): ``save_pretrained``'s files plus ``neus.json``, written atomically."""
    from tunemv import __version__

    out_dir = Path(out_dir)
    if info.get("backbone"):
        info = {**info, "backbone": portable_backbone(info["backbone"], out_dir)}
    with _staged_folder(out_dir, overwrite) as staging:
        neus.save_pretrained(staging)
        (staging / NEUS_INFO_FILE).write_text(json.dumps({**info, "tunemv_version": __version__}, indent=2) + "\n")
    return out_dir


def folder_backbone(path: str | Path) -> str | None:
    """The backbone an adapter folder (``adapter.json``) or a pretrained NeuS folder (``neus.json``) names,
    resolved to load from the working directory (``resolve_backbone``)."""
    path = Path(path)
    for name in (ADAPTER_FILE, NEUS_INFO_FILE):
        if (path / name).is_file():
            backbone = _read_info_file(path / name).get("backbone")
            return resolve_backbone(backbone, path) if backbone is not None else None
    return None


def read_pretrained_neus(path: str | Path) -> LatentSparseNeuS:
    """The NeuS of a pretrained NeuS folder (``neus.json``) or of an adapter folder (``adapter.json``)."""
    path = Path(path)
    if (path / ADAPTER_FILE).is_file():
        read_adapter_info(path)
        path = path / NEUS_FOLDER
    elif not (path / NEUS_INFO_FILE).is_file():
        raise AdapterError(f"{path}: neither a pretrained NeuS folder ({NEUS_INFO_FILE}) nor an adapter folder "
                           f"({ADAPTER_FILE}); stage 1 writes the first, `tunemv export` both")
    return read_module_folder(LatentSparseNeuS, path)


def submodule_state(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _module_from_config(module, meta: dict[str, Any], key: str, source: str):
    """``module`` built from the checkpoint's ``tunemv[key]``; a bad value is one line naming the key."""
    try:
        return module.from_config(_clean(meta[key]))
    except (ValueError, TypeError) as error:  # ConfigError: a value of the wrong type or range
        raise CheckpointError(f"{source}: 'tunemv' entry's {key}: {first_line(error)}") from error


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    # diffusers records positionally passed arguments in "_use_default_values" and from_config then drops
    # them as if they had been defaults; checkpoints written before from_unet passed them by name have this.
    return {key: value for key, value in config.items() if key != "_use_default_values"}


def live_prefixes(checkpoint: dict[str, Any]) -> dict[str, str]:
    return checkpoint["tunemv"]["prefixes"]["live"]


def has_ema(checkpoint: dict[str, Any]) -> bool:
    """Whether the checkpoint's weights to sample from are an EMA (a full checkpoint or an EMA snapshot)."""
    return checkpoint["tunemv"].get("weights") == "ema" or "ema" in checkpoint["tunemv"]["prefixes"]


def unet_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone UNet's weights where the run fine-tuned it (the train_backbone_unet baseline), else {}."""
    prefix = checkpoint["tunemv"]["prefixes"].get("unet")
    return submodule_state(checkpoint["state_dict"], prefix) if prefix else {}


def carries_unet(checkpoint: dict[str, Any]) -> bool:
    """Whether the run fine-tuned the backbone's UNet (the train_backbone_unet baseline)."""
    return bool(unet_state(checkpoint))


def checkpoint_sampling(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """How the checkpoint's model samples where not as an adapter (a distilled generator's sampler, options
    and guidance scale), as its writer declared; what its exported folder's adapter.json says."""
    return checkpoint["tunemv"].get("sampling")


def load_adapter_modules(checkpoint: dict[str, Any], ema: bool | None = None, source: str = "checkpoint"
                         ) -> tuple[LatentSparseNeuS, ControlBranch]:
    """Rebuild NeuS and the control branch from a ``tunemv fit`` checkpoint dict.

    ``ema``: True for the EMA weights, False for the live ones, None for the EMA when the run kept one.
    A weights-only snapshot of an EMA run holds only the EMA, under the live names.
    """
    meta, state_dict = checkpoint["tunemv"], checkpoint["state_dict"]
    if ema is None:
        ema = has_ema(checkpoint)
    snapshot_of_ema = meta.get("weights") == "ema"
    if snapshot_of_ema and not ema:
        raise CheckpointError(f"{source}: a weights-only snapshot that holds only the EMA weights; drop --no-ema, "
                              "or use last.ckpt for the live weights")
    modules = (_module_from_config(LatentSparseNeuS, meta, "neus_config", source),
               _module_from_config(ControlBranch, meta, "control_branch_config", source))
    declared = meta["prefixes"]
    if ema and not snapshot_of_ema and "ema" not in declared:
        raise CheckpointError(f"{source}: no EMA weights (the run had no EMA: set model.ema.decay, or export "
                              "without --ema)")
    prefixes = declared["ema" if ema and not snapshot_of_ema else "live"]
    for module, name in zip(modules, MODULES, strict=True):
        prefix = prefixes[name]
        weights = submodule_state(state_dict, prefix)
        if not weights:
            hint = " (the run had no EMA: set model.ema.decay, or export without --ema)" if ema else ""
            raise CheckpointError(f"{source}: no '{prefix}*' weights{hint}")
        try:
            module.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"{source}: {name} weights do not fit its config "
                                  f"({str(error).splitlines()[0]})") from error
        module.eval()
    return modules
