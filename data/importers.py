"""Importers from common render layouts into the tunemv format.

``import_transforms`` reads NeRF-synthetic / Blender / instant-ngp style ``transforms.json`` folders, which
most Blender and Objaverse render scripts write:

    {"camera_angle_x": 0.69, ... or "fl_x", "fl_y", "cx", "cy", "w", "h",
     "frames": [{"file_path": "./train/r_0", "transform_matrix": 4x4 camera-to-world, OpenGL}, ...]}

Per-frame intrinsics (nerfstudio) override the top-level ones. ``file_path`` may omit the extension.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from tunemv.data.format import camera_problems, outside_reason, read_image_array, relative_file, write_object
from tunemv.errors import DatasetError
from tunemv.geometry.cameras import Cameras

TRANSFORMS_FILES = ("transforms.json", "transforms_train.json", "transforms_val.json", "transforms_test.json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def transforms_files(folder: Path) -> list[Path]:
    """``transforms.json`` if present, otherwise the train/val/test files (all views of the same object)."""
    if (folder / TRANSFORMS_FILES[0]).is_file():
        return [folder / TRANSFORMS_FILES[0]]
    return [folder / name for name in TRANSFORMS_FILES[1:] if (folder / name).is_file()]


def import_transforms(src: str | Path, out: str | Path, caption: str | None = None, scale: float = 1.0,
                      overwrite: bool = False) -> list[Path]:
    """Convert one transforms folder into the object folder ``out``, or a folder of them into ``out/<name>``."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(src, "source folder does not exist")
    if not scale > 0:
        raise DatasetError(src, f"scale must be > 0, got {scale}")
    if transforms_files(src):
        return [_import_object(src, out, caption, scale, overwrite)]
    sources = sorted(d for d in src.iterdir() if d.is_dir() and transforms_files(d))
    if not sources:
        raise DatasetError(src, "no transforms.json or transforms_{train,val,test}.json here or in its sub-folders")
    return [_import_object(d, out / d.name, caption, scale, overwrite) for d in sources]


def _intrinsics(meta: dict, width: int, height: int, path: Path, where: str) -> np.ndarray:
    if "fl_x" in meta:
        try:
            fx = float(meta["fl_x"])
            fy = float(meta.get("fl_y", fx))
        except (TypeError, ValueError) as exc:
            raise DatasetError(path, f"{where}: fl_x and fl_y must be numbers ({exc})") from exc
    elif "camera_angle_x" in meta:
        fx = 0.5 * width / math.tan(0.5 * _angle(meta, "camera_angle_x", path, where))
        fy = 0.5 * height / math.tan(0.5 * _angle(meta, "camera_angle_y", path, where)) if "camera_angle_y" in meta else fx
    else:
        raise DatasetError(path, f"{where}: no intrinsics (need camera_angle_x or fl_x)")
    # Both conventions put the principal point at the image centre by default: cx = W/2 in pixel-edge units.
    try:
        cx, cy = float(meta.get("cx", width / 2)), float(meta.get("cy", height / 2))
    except (TypeError, ValueError) as exc:
        raise DatasetError(path, f"{where}: cx and cy must be numbers ({exc})") from exc
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _angle(meta: dict, key: str, path: Path, where: str) -> float:
    """A field of view in radians, finite and in (0, pi): what tan() of its half is defined for."""
    try:
        angle = float(meta[key])
    except (TypeError, ValueError):
        angle = math.nan
    if not 0 < angle < math.pi:  # NaN fails this too
        raise DatasetError(path, f"{where}: {key} must be a field of view in radians in (0, pi), got {meta[key]!r}")
    return angle


def _find_image(base: Path, file_path: str, path: Path, where: str) -> Path | None:
    """The image ``file_path`` names, with or without its extension; a name that leaves ``base`` (the folder
    of the transforms file) is refused by the rule `tunemv data check` applies to cameras.json."""
    candidate = relative_file(base, file_path)
    if candidate is None:
        reason = outside_reason(base, file_path, folder="source folder")
        raise DatasetError(path, f"{where}.file_path {file_path!r} {reason}")
    found = candidate if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file() else None
    for suffix in () if found else IMAGE_SUFFIXES:
        if candidate.with_name(candidate.name + suffix).is_file():
            found = candidate.with_name(candidate.name + suffix)
            break
    if found is not None and relative_file(base, str(found.relative_to(base.resolve()))) is None:
        raise DatasetError(path, f"{where}.file_path {file_path!r} {outside_reason(base, file_path + found.suffix, 'source folder')}")
    return found


def _import_object(src: Path, out: Path, caption: str | None, scale: float, overwrite: bool) -> Path:
    images, Ks, c2ws, size = [], [], [], None
    for path in transforms_files(src):
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(path, f"not valid JSON ({exc})") from exc
        frames = meta.get("frames") if isinstance(meta, dict) else None
        if not isinstance(frames, list) or not frames:
            raise DatasetError(path, "frames must be a non-empty list")
        for i, frame in enumerate(frames):
            where = f"frames[{i}]"
            if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
                raise DatasetError(path, f"{where}.file_path must be a string")
            image_path = _find_image(path.parent, frame["file_path"], path, where)
            if image_path is None:
                raise DatasetError(path, f"{where}: image {frame['file_path']!r} not found (tried {', '.join(IMAGE_SUFFIXES)})")
            try:
                image = read_image_array(image_path)
            except Exception as exc:  # PIL raises many types for corrupt files
                raise DatasetError(image_path, f"{where} of {path.name}: image is not readable "
                                               f"({type(exc).__name__}: {exc})") from exc
            height, width = image.shape[:2]
            if size is not None and size != (width, height):
                raise DatasetError(image_path, f"is {width}x{height}, but earlier frames are {size[0]}x{size[1]}")
            size = (width, height)
            declared = (frame.get("w", meta.get("w")), frame.get("h", meta.get("h")))
            if any(d is not None for d in declared) and declared != size:
                raise DatasetError(path, f"{where}: w/h say {declared[0]}x{declared[1]} but the image is {width}x{height}")
            K = _intrinsics({**meta, **frame}, width, height, path, where)
            try:
                matrix = np.asarray(frame.get("transform_matrix"), dtype=np.float64)
            except (TypeError, ValueError):
                matrix = np.zeros(0)
            if matrix.shape == (3, 4):
                matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
            c2w = Cameras.from_opengl(torch.from_numpy(K), torch.from_numpy(matrix), width, height).c2w.numpy() \
                if matrix.shape == (4, 4) else matrix
            problems = camera_problems({"K": K.tolist(), "c2w": c2w.tolist()}, where, width, height)
            if problems:
                raise DatasetError(path, problems[0])
            c2w = c2w.copy()
            c2w[:3, 3] *= scale
            images.append(image)
            Ks.append(K)
            c2ws.append(c2w)
    cameras = Cameras(torch.from_numpy(np.stack(Ks)).float(), torch.from_numpy(np.stack(c2ws)).float(), *size)
    caption = caption or src.name.replace("_", " ").replace("-", " ").strip() or "an object"
    return write_object(out, images, cameras, [caption], overwrite=overwrite)
