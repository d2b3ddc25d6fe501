"""``tunemv data procedural``: render procedural objects into a dataset in the tunemv format.

Object ``i`` is a pure function of ``(seed, i)``: its category is ``categories[i % len(categories)]`` and its
proportions, colour and camera elevation come from the seed sequence ``(seed, spawn_key=(0, i))``, so the output
does not depend on the number of worker processes or on the order they finish in.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tunemv.atomic import write_text_atomic
from tunemv.data.format import MESH_FILE, list_objects, remove_stale_staging, write_object, write_split_files
from tunemv.data.procedural import CATEGORIES, make_object
from tunemv.data.render import render_sdf
from tunemv.data.sdf import shape_mesh
from tunemv.errors import TunemvError
from tunemv.geometry.cameras import orbit

CAMERA_RADIUS = 2.2  # with a 50 deg fov, an object of radius 0.8 fills ~75% of the frame from any elevation
FOV_DEG = 50.0
ELEVATION_RANGE_DEG = (0.0, 30.0)  # as in the seed papers' Objaverse/ShapeNet renders


def object_id(index: int, category: str) -> str:
    return f"{index:05d}_{category}"


def object_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of object ``index``: its shape first, then its camera elevation."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, index)))


def procedural_shape(object_dir: str | Path):
    """The analytic SDF of a procedural object folder, rebuilt from its ``attributes.json``: exact ground
    truth for geometry probes (``mesh.ply`` is its marching cubes)."""
    path = Path(object_dir) / "attributes.json"
    try:
        attributes = json.loads(path.read_text())
        return make_object(attributes["category"], object_rng(attributes["seed"], attributes["index"])).shape
    except (OSError, ValueError, KeyError) as error:
        raise TunemvError(f"{path}: not a procedural object's attributes ({type(error).__name__}: {error})") from error


def render_object(root: str | Path, index: int, seed: int, categories: Sequence[str], num_views: int,
                  resolution: int, supersample: int = 2, overwrite: bool = False) -> str:
    """Render object ``index`` of the dataset ``seed`` and write its folder; returns its object id."""
    rng = object_rng(seed, index)
    category = categories[index % len(categories)]
    obj = make_object(category, rng)
    elevation = float(rng.uniform(*ELEVATION_RANGE_DEG))
    cameras = orbit(num_views, elevation, CAMERA_RADIUS, FOV_DEG, resolution, azimuth_start_deg=0.0)
    out = render_sdf(obj.shape, cameras, obj.rgb, supersample=supersample)
    images = (out.rgba.numpy() * 255).round().astype(np.uint8)
    attributes = {"category": obj.category, "colour": obj.colour, "attributes": obj.attributes,
                  "details": obj.details, "elevation_deg": elevation, "seed": seed, "index": index}
    name = object_id(index, category)
    mesh = shape_mesh(obj.shape).export(file_type="ply")  # binary PLY, in the frame of cameras.json
    write_object(Path(root) / name, list(images), cameras, obj.captions, depths=list(out.depth.numpy()),
                 masks=list(out.mask.numpy()), overwrite=overwrite,
                 extra_files={"attributes.json": json.dumps(attributes, indent=1), MESH_FILE: mesh})
    return name


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core beats intra-op threads on these small tensors
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent dies (a killed `tunemv data procedural` otherwise
    left its workers rendering, orphaned)."""
    if sys.platform.startswith("linux"):
        import contextlib
        import ctypes
        import signal

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def generate_procedural_dataset(root: str | Path, num_objects: int = 200, num_views: int = 16, resolution: int = 64,
                                categories: Sequence[str] = CATEGORIES, seed: int = 0, val_fraction: float = 0.1,
                                supersample: int = 2, workers: int = 0, overwrite: bool = False,
                                progress: bool = True) -> list[str]:
    """Write ``num_objects`` objects plus ``train.txt``/``val.txt`` under ``root``; returns the object ids."""
    root = Path(root)
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown or not categories:
        raise TunemvError(f"unknown categories {unknown}; available: {', '.join(CATEGORIES)}")
    if num_objects < 1 or num_views < 1 or resolution < 8 or supersample < 1:
        raise TunemvError("need objects >= 1, views >= 1, resolution >= 8 and supersample >= 1")
    if not 0 <= val_fraction < 1:
        raise TunemvError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if root.exists() and not root.is_dir():
        raise TunemvError(f"{root}: exists and is not a folder")
    categories = list(categories)
    manifest = {"seed": seed, "categories": categories, "num_views": num_views, "resolution": resolution,
                "supersample": supersample, "num_objects": num_objects, "val_fraction": val_fraction,
                "camera_radius": CAMERA_RADIUS, "fov_deg": FOV_DEG, "elevation_range_deg": list(ELEVATION_RANGE_DEG)}
    # A rerun of the same command continues an unfinished set (a killed run): each object folder is renamed into
    # place whole and renders deterministically, so only the missing ones are rendered and the result is the
    # uninterrupted set byte for byte. Anything else already there needs --overwrite.
    resuming = not overwrite and _unfinished_with(root, manifest)
    if root.is_dir() and list_objects(root, "all") and not overwrite and not resuming:
        raise TunemvError(f"{root}: already holds objects; pass --overwrite to replace them or choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / MANIFEST_FILE, json.dumps({**manifest, "complete": False}, indent=1))

    job = dict(root=str(root), seed=seed, categories=categories, num_views=num_views, resolution=resolution,
               supersample=supersample, overwrite=overwrite)
    ids = [object_id(index, categories[index % len(categories)]) for index in range(num_objects)]
    todo = [index for index in range(num_objects) if overwrite or not (root / ids[index]).is_dir()]
    remove_stale_staging(root, ids)
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=num_objects, initial=num_objects - len(todo), desc="rendering objects", unit="obj",
               disable=not progress)
    if workers == 1 or len(todo) < 4:
        for index in todo:
            render_object(index=index, **job)
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            for future in as_completed([pool.submit(render_object, index=index, **job) for index in todo]):
                future.result()
                bar.update()
    bar.close()

    num_val = round(val_fraction * num_objects) if num_objects > 1 else 0
    val_index = set(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(num_objects)[:num_val].tolist())
    write_split_files(root, [i for k, i in enumerate(ids) if k not in val_index], [i for k, i in enumerate(ids) if k in val_index])
    write_text_atomic(root / MANIFEST_FILE, json.dumps({**manifest, "complete": True}, indent=1))
    return ids


MANIFEST_FILE = "procedural.json"  # the recipe of a procedural set; "complete" once every object is written


def _unfinished_with(root: Path, manifest: dict) -> bool:
    """Whether ``root`` holds an unfinished procedural set made with these settings."""
    try:
        found = json.loads((root / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return found.get("complete") is False and {k: v for k, v in found.items() if k != "complete"} == manifest
