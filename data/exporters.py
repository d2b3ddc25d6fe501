"""Exporters from the tunemv format to what reconstruction tools read.

``export_transforms`` writes a NeRF-synthetic / instant-ngp / nerfstudio ``transforms.json`` folder for an
object folder (or every object of a dataset root), which ``import_transforms`` reads back unchanged:

    OUT/transforms.json   {"camera_angle_x", "fl_x", "fl_y", "cx", "cy", "w", "h",
                           "frames": [{"file_path": "images/000.png", "transform_matrix": 4x4 c2w, OpenGL,
                                       "depth_file_path": "depth/000.npy" (optional)}, ...]}
    OUT/images/NNN.png    RGBA: alpha from ``alpha`` (e.g. a NeuS field's opacity), else the object's masks/,
                          else opaque

The tunemv views are composited on white. Where a view has an alpha a, its colour is stored un-composited,
c = 1 − (1 − I)/a, with a raised where needed to the least value that explains the pixel (max over channels of
1 − I), so that compositing the RGBA file on white gives the view back (to 8-bit rounding) and no coloured
pixel is lost to a mask that called it background.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tunemv.atomic import make_temporary_dir
from tunemv.data.format import CAMERAS_FILE, ObjectRecord, list_objects, load_image, load_mask, read_object
from tunemv.errors import DatasetError
from tunemv.geometry.cameras import Cameras

TRANSFORMS_FILE = "transforms.json"


def rgba_over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 3) view in [0, 1] composited on white, (H, W) alpha in [0, 1] -> uint8 (H, W, 4) RGBA."""
    least = (1.0 - rgb).max(axis=-1)  # the smallest alpha that explains each pixel as a composite on white
    alpha = np.maximum(alpha, least)
    colour = np.where(alpha[..., None] > 0, 1.0 - (1.0 - rgb) / np.maximum(alpha[..., None], 1e-8), 1.0)
    rgba = np.concatenate([colour.clip(0, 1), alpha[..., None]], axis=-1)
    return (rgba * 255.0 + 0.5).astype(np.uint8)


def transforms_json(cameras: Cameras, image_paths: Sequence[str], depth_paths: Sequence[str] | None = None) -> dict:
    """The transforms.json of Cameras ``[N]`` (one shared size and intrinsics per frame, written per frame
    as nerfstudio reads them, plus the shared ones at the top for NeRF-synthetic readers)."""
    K = cameras.K.double()
    opengl = cameras.to_opengl().double()
    width, height = cameras.width, cameras.height
    frames = []
    for index, path in enumerate(image_paths):
        frame = {"file_path": path, "transform_matrix": opengl[index].tolist(),
                 "fl_x": float(K[index, 0, 0]), "fl_y": float(K[index, 1, 1]),
                 "cx": float(K[index, 0, 2]), "cy": float(K[index, 1, 2])}
        if depth_paths is not None:
            frame["depth_file_path"] = depth_paths[index]
        frames.append(frame)
    first = frames[0]
    return {"camera_angle_x": 2 * math.atan(width / (2 * first["fl_x"])), "fl_x": first["fl_x"],
            "fl_y": first["fl_y"], "cx": first["cx"], "cy": first["cy"], "w": width, "h": height, "frames": frames}


def write_transforms_folder(out: str | Path, views: np.ndarray, cameras: Cameras, alphas: np.ndarray | None = None,
                            depths: Sequence[np.ndarray] | None = None, overwrite: bool = False) -> Path:
    """(N, H, W, 3) views in [0, 1] on white, Cameras ``[N]``, optional (N, H, W) alphas and depths -> ``out``,
    written to a temporary sibling and renamed into place."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (--overwrite replaces it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_dir(out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        (staging / "images").mkdir()
        names = [f"{index:03d}" for index in range(len(views))]
        for index, name in enumerate(names):
            alpha = np.ones(views.shape[1:3]) if alphas is None else alphas[index]
            Image.fromarray(rgba_over_white(views[index], alpha), "RGBA").save(staging / "images" / f"{name}.png")
        depth_paths = None
        if depths is not None:
            (staging / "depth").mkdir()
            depth_paths = [f"depth/{name}.npy" for name in names]
            for name, depth in zip(names, depths, strict=True):
                np.save(staging / "depth" / f"{name}.npy", np.asarray(depth, dtype=np.float32))
        meta = transforms_json(cameras, [f"images/{name}.png" for name in names], depth_paths)
        (staging / TRANSFORMS_FILE).write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def export_transforms(src: str | Path, out: str | Path, depth: bool = False, overwrite: bool = False) -> list[Path]:
    """An object folder to ``out`` (a transforms folder), or every object of a dataset root to ``out/<id>``.

    Every object is parsed first by the reader `tunemv data check` uses (so an image that cameras.json names
    outside its object folder is refused, as check refuses it) and nothing is written unless all parse."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(src, "source folder does not exist")
    if (src / CAMERAS_FILE).is_file():
        jobs = [(read_object(src), out)]
    else:
        names = list_objects(src)
        if not names:
            raise DatasetError(src, f"neither an object folder ({CAMERAS_FILE}) nor a dataset root with objects")
        jobs = [(read_object(src / name), out / name) for name in names]
    taken = [target for _, target in jobs if target.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{taken[0]}: already exists (--overwrite replaces it)")
    if depth:
        for record, _ in jobs:
            for image_path in record.image_paths:
                depth_path = record.directory / "depth" / f"{image_path.stem}.npy"
                if not depth_path.is_file():
                    raise DatasetError(depth_path, "missing; --depth needs depth/ for every view")
    return [_export_object(record, target, depth, overwrite) for record, target in jobs]


def _export_object(record: ObjectRecord, out: Path, depth: bool, overwrite: bool) -> Path:
    views, alphas, depths = [], [], []
    for image_path, mask_path in zip(record.image_paths, record.mask_paths, strict=True):
        rgb, alpha = load_image(image_path)
        if alpha is None:
            alpha = load_mask(mask_path) if mask_path is not None else np.ones((1, *rgb.shape[-2:]), np.float32)
        views.append(np.asarray(rgb.permute(1, 2, 0)))
        alphas.append(np.asarray(alpha[0]))
        if depth:
            depths.append(np.load(record.directory / "depth" / f"{image_path.stem}.npy"))
    return write_transforms_folder(out, np.stack(views), record.cameras, np.stack(alphas), depths if depth else None,
                                   overwrite=overwrite)
