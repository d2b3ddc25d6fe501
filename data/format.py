"""The tunemv dataset format: one folder per object (see README, "Dataset format").

    ROOT/<object_id>/cameras.json    {"convention": "opencv"|"opengl", "width": W, "height": H,
                                      "views": [{"image": "images/000.png", "K": 3x3, "c2w": 4x4}, ...]}
    ROOT/<object_id>/caption.txt     first line = caption; further non-empty lines = alternatives
    ROOT/<object_id>/images/NNN.png  RGB or RGBA (RGBA is composited on white when loaded)
    ROOT/<object_id>/depth/NNN.npy   optional, float (H, W) camera-frame z, 0 = background
    ROOT/<object_id>/masks/NNN.png   optional, L (H, W), foreground > 127
    ROOT/<object_id>/mesh.ply        optional triangle mesh of the object in the world frame of cameras.json
                                     (the ground truth of procedural data, or what `tunemv sample --mesh`
                                     extracted); mesh accuracy in `tunemv evaluate` compares the two
    ROOT/train.txt, ROOT/val.txt     optional object-id lists, one per line

``inspect_object`` is the one parser and validator: ``tunemv data check`` reports every problem it finds,
and the Dataset raises (or skips) on the first.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from tunemv.atomic import make_temporary_dir
from tunemv.errors import DatasetError
from tunemv.geometry.cameras import Cameras

CAMERAS_FILE = "cameras.json"
CAPTION_FILE = "caption.txt"
MESH_FILE = "mesh.ply"
CONVENTIONS = ("opencv", "opengl")
SPLITS = ("train", "val")
ROTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class ObjectRecord:
    """Everything about one object except the pixels, which are loaded on demand."""

    object_id: str
    directory: Path
    cameras: Cameras  # [N] OpenCV, at (height, width)
    image_paths: list[Path]
    captions: list[str]
    depth_paths: list[Path | None] = field(default_factory=list)
    mask_paths: list[Path | None] = field(default_factory=list)
    mesh_path: Path | None = None  # mesh.ply, when the folder has one

    @property
    def num_views(self) -> int:
        return len(self.image_paths)


# ---------------------------------------------------------------------------------------------- listing
def is_object_dir(path: Path) -> bool:
    return (path / CAMERAS_FILE).is_file()


def list_objects(root: str | Path, split: str = "all") -> list[str]:
    """Object ids under ``root`` for ``split``.

    ``"all"``: every sub-folder (hidden and ``_``-prefixed ones excluded). ``"train"``/``"val"``: the ids in
    ``ROOT/<split>.txt``; when the root has no split files at all, ``"train"`` is every object and ``"val"``
    is empty.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset root does not exist or is not a folder")
    if split not in ("all", *SPLITS):
        raise DatasetError(root, f"unknown split {split!r}; expected one of 'all', 'train', 'val'")
    everything = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if split == "all":
        return everything
    split_file = root / f"{split}.txt"
    if split_file.is_file():
        return read_split_file(split_file)
    problem = split_files_problem(root)
    if problem:
        raise DatasetError(problem.path, problem.message)
    return everything if split == "train" else []


def split_files_problem(root: Path) -> Problem | None:
    """Split files come in pairs: one without the other is an error, not an empty split."""
    present = [s for s in SPLITS if (root / f"{s}.txt").is_file()]
    if len(present) != 1:
        return None
    missing = next(s for s in SPLITS if s not in present)
    return Problem(str(root / f"{missing}.txt"), "missing, but the other split file exists; write both or neither")


def read_split_file(path: Path) -> list[str]:
    ids = [line.strip() for line in path.read_text().splitlines()]
    return [i for i in ids if i and not i.startswith("#")]


# ---------------------------------------------------------------------------------------------- images
def read_image_array(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 4) when the file has transparency, else (H, W, 3); palette and grey images are expanded."""
    with Image.open(path) as img:
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))


def load_image(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Load an image as (rgb [3,H,W] in [0,1] composited on white, alpha [1,H,W] or None)."""
    array = read_image_array(path).astype(np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)  # (h w c) -> (c h w)
    if tensor.shape[0] == 3:
        return tensor.contiguous(), None
    rgb, alpha = tensor[:3], tensor[3:]
    return (rgb * alpha + (1.0 - alpha)).contiguous(), alpha.contiguous()


def load_mask(path: str | Path) -> torch.Tensor:
    """(1, H, W) float {0, 1} foreground mask from an L/RGB/RGBA png (foreground > 127)."""
    with Image.open(path) as img:
        array = np.asarray(img.convert("L"))
    return torch.from_numpy(array > 127).float()[None]


# ------------------------------------------------------------------------------------- validation helpers
def _finite_matrix(view: dict, key: str, rows: int, cols: int, where: str, problems: list[str]) -> np.ndarray | None:
    """``view[key]`` as a finite (rows, cols) array, or None after recording why it is not one."""
    try:
        array = np.asarray(view.get(key), dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.shape != (rows, cols):
        problems.append(f"{where}.{key} must be a {rows}x{cols} list of numbers")
        return None
    if not np.isfinite(array).all():
        problems.append(f"{where}.{key} contains NaN or inf")
        return None
    return array


def camera_problems(view: dict, where: str, width: int, height: int) -> list[str]:
    """Everything wrong with one view's ``K`` and ``c2w`` (shared by ``data check`` and the importers)."""
    problems: list[str] = []
    K = _finite_matrix(view, "K", 3, 3, where, problems)
    if K is not None:
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            problems.append(f"{where}.K: focal length must be > 0, got fx={K[0, 0]:g}, fy={K[1, 1]:g}")
        if not np.allclose(K[2], [0, 0, 1]):
            problems.append(f"{where}.K: last row must be [0, 0, 1], got {K[2].tolist()}")
        if not (0 <= K[0, 2] <= width and 0 <= K[1, 2] <= height):
            problems.append(f"{where}.K: principal point ({K[0, 2]:g}, {K[1, 2]:g}) lies outside the {width}x{height} image")
    c2w = _finite_matrix(view, "c2w", 4, 4, where, problems)
    if c2w is not None:
        if not np.allclose(c2w[3], [0, 0, 0, 1]):
            problems.append(f"{where}.c2w: last row must be [0, 0, 0, 1], got {c2w[3].tolist()}")
        R = c2w[:3, :3]
        error = np.abs(R.T @ R - np.eye(3)).max()
        if error > ROTATION_TOLERANCE:
            problems.append(f"{where}.c2w: rotation is not orthonormal (max |R^T R - I| = {error:.3g} > {ROTATION_TOLERANCE})")
        elif np.linalg.det(R) < 0:
            problems.append(f"{where}.c2w: rotation is a reflection (det = {np.linalg.det(R):.3g}); expected det = +1")
    return problems


def _image_problem(path: Path, width: int, height: int, transparent: list[Path] | None = None) -> str | None:
    """Why ``path`` is no readable ``width`` x ``height`` image, or None; a fully transparent one (alpha 0
    everywhere) is appended to ``transparent`` when given."""
    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
            if (transparent is not None and img.mode in ("RGBA", "LA", "PA")
                    and img.getchannel("A").getextrema()[1] == 0):
                transparent.append(path)
    except FileNotFoundError:
        return "image file is missing"
    except Exception as exc:  # PIL raises many types for corrupt files
        return f"image is not readable ({type(exc).__name__}: {exc})"
    if size != (width, height):
        return f"image is {size[0]}x{size[1]}, but cameras.json says {width}x{height}"
    return None


def _depth_problem(path: Path, width: int, height: int) -> str | None:
    try:
        depth = np.load(path)
    except Exception as exc:
        return f"depth is not a readable .npy ({type(exc).__name__}: {exc})"
    if depth.shape != (height, width):
        return f"depth has shape {depth.shape}, expected ({height}, {width})"
    if not np.isfinite(depth).all():
        return "depth contains NaN or inf"
    return None


def read_mesh(path: str | Path) -> trimesh.Trimesh:
    """A non-empty triangle mesh with finite vertices from ``path``; anything else raises ``DatasetError``."""
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise DatasetError(path, f"mesh is not readable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DatasetError(path, "mesh has no triangles")
    if not np.isfinite(mesh.vertices).all():
        raise DatasetError(path, "mesh vertices contain NaN or inf")
    return mesh


def _mesh_problem(path: Path, cameras: Cameras) -> str | None:
    """Why ``path`` is no usable mesh of the object these cameras see, or None.

    "Seen" means in front of every camera: cameras surround the object, so a mesh in other units (mm) or
    another frame puts vertices behind some of them. Stricter tests (inside every frustum) would reject
    the floaters a learned field leaves in the corners of its bounding cube, which are still in the frame.
    """
    try:
        mesh = read_mesh(path)
    except DatasetError as exc:
        return exc.problem
    vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32)  # (N, 3)
    _, depth, _ = cameras.project(vertices.expand(len(cameras), *vertices.shape))  # (V, N)
    view, vertex = divmod(int(depth.argmin()), len(vertices))
    if depth[view, vertex] <= 0:
        return (f"mesh vertex {tuple(round(x, 3) for x in mesh.vertices[vertex].tolist())} lies behind camera {view}; "
                f"the mesh must be in the world frame and units of {CAMERAS_FILE}")
    return None


def relative_file(directory: Path, name) -> Path | None:
    """``directory / name`` (resolved) when ``name`` is a relative path that stays inside ``directory``. The
    one rule for file names read from a file (cameras.json's images, transforms.json's frames): `data check`,
    the Dataset, `data export-transforms` and `data import-transforms` all apply it."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        return None
    path = (directory / name).resolve()
    return path if path.is_relative_to(directory.resolve()) else None


def outside_reason(directory: Path, name, folder: str = "object folder") -> str:
    """Why ``name`` is not a file inside ``directory``: a symlink out of it, a path climbing out, or not a path."""
    if isinstance(name, str) and name and not os.path.isabs(name):
        link = directory / name
        if link.is_symlink() or any(parent.is_symlink() for parent in link.parents if parent != directory
                                    and parent.is_relative_to(directory)):
            return f"is a symlink that escapes the {folder} (to {link.resolve()})"
        return f"climbs out of the {folder}"
    return f"must be a relative path inside the {folder}"


# ------------------------------------------------------------------------------------------------ parse
def inspect_object(directory: str | Path, min_views: int = 1, check_files: bool = True
                   ) -> tuple[ObjectRecord | None, list[Problem]]:
    """Parse and validate one object folder.

    Returns the record (None when the folder is too broken to use) and every problem found. With
    ``check_files=False`` image/depth/mask files are only checked for existence, not decoded (fast path
    for the Dataset, which decodes them anyway).
    """
    directory = Path(directory)
    problems: list[Problem] = []
    cameras_path = directory / CAMERAS_FILE

    def problem(path, message):
        problems.append(Problem(str(path), message))

    captions = _read_captions(directory, problem)
    meta = _read_cameras_json(cameras_path, problem)
    if meta is None:
        return None, problems
    width, height, views, convention = meta

    image_paths, Ks, c2ws, seen, transparent = [], [], [], set(), []
    for i, view in enumerate(views):
        where = f"views[{i}]"
        if not isinstance(view, dict):
            problem(cameras_path, f"{where} must be an object with image, K and c2w")
            continue
        image_path = relative_file(directory, view.get("image"))
        if image_path is None:
            problem(cameras_path, f"{where}.image {view.get('image')!r} {outside_reason(directory, view.get('image'))}")
        elif image_path in seen:
            problem(cameras_path, f"{where}.image {view['image']!r} is listed twice")
        else:
            seen.add(image_path)
            if check_files:
                message = _image_problem(image_path, width, height, transparent)
                if message:
                    problem(image_path, message)
            elif not image_path.is_file():
                problem(image_path, "image file is missing")
        camera_messages = camera_problems(view, where, width, height)
        for message in camera_messages:
            problem(cameras_path, message)
        if image_path is not None and not camera_messages:
            image_paths.append(image_path)
            Ks.append(np.asarray(view["K"], dtype=np.float64))
            c2ws.append(np.asarray(view["c2w"], dtype=np.float64))

    if len(views) < min_views:
        problem(cameras_path, f"has {len(views)} views, need at least {min_views}")
    if transparent and len(transparent) == len(views):  # every view: an object nothing can score or learn
        problem(directory / "images", f"all {len(views)} views are fully transparent (alpha 0 everywhere): "
                                      "the object is invisible")

    depth_paths = _optional_per_view(directory / "depth", image_paths, ".npy", width, height,
                                     _depth_problem if check_files else None, problem)
    mask_paths = _optional_per_view(directory / "masks", image_paths, ".png", width, height,
                                    _image_problem if check_files else None, problem)
    mesh_path = directory / MESH_FILE
    mesh_path = mesh_path if mesh_path.is_file() else None
    if problems:
        return None, problems

    K = torch.from_numpy(np.stack(Ks)).float()
    c2w = torch.from_numpy(np.stack(c2ws)).float()
    cameras = Cameras.from_opengl(K, c2w, width, height) if convention == "opengl" else Cameras(K, c2w, width, height)
    if mesh_path is not None and check_files:
        message = _mesh_problem(mesh_path, cameras)
        if message:
            return None, [Problem(str(mesh_path), message)]
    record = ObjectRecord(directory.name, directory, cameras, image_paths, captions, depth_paths, mask_paths, mesh_path)
    return record, problems


def read_object(directory: str | Path, min_views: int = 1, check_files: bool = False) -> ObjectRecord:
    """Parse one object folder, raising ``DatasetError`` naming the file of the first problem."""
    record, problems = inspect_object(directory, min_views, check_files)
    if problems:
        raise DatasetError(problems[0].path, problems[0].message)
    assert record is not None
    return record


def read_cameras(path: str | Path) -> Cameras:
    """Cameras ``[N]`` (OpenCV) from a cameras.json alone, e.g. to sample at a dataset object's views; the
    images it lists need not exist. A problem raises ``DatasetError`` naming the file."""
    path = Path(path)
    problems: list[Problem] = []
    meta = _read_cameras_json(path, lambda where, message: problems.append(Problem(str(where), message)))
    if meta is not None:
        width, height, views, convention = meta
        for i, view in enumerate(views):
            if not isinstance(view, dict):
                problems.append(Problem(str(path), f"views[{i}] must be an object with K and c2w"))
            else:
                problems += [Problem(str(path), message) for message in camera_problems(view, f"views[{i}]", width, height)]
    if problems:
        raise DatasetError(problems[0].path, problems[0].message)
    K = torch.tensor([view["K"] for view in views], dtype=torch.float64).float()
    c2w = torch.tensor([view["c2w"] for view in views], dtype=torch.float64).float()
    return Cameras.from_opengl(K, c2w, width, height) if convention == "opengl" else Cameras(K, c2w, width, height)


def _read_captions(directory: Path, problem) -> list[str]:
    path = directory / CAPTION_FILE
    if not path.is_file():
        problem(path, "caption file is missing")
        return []
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        problem(path, "caption is not UTF-8 text")
        return []
    if not lines or not lines[0]:
        problem(path, "caption is empty (the first line must hold the caption)")
        return []
    return [line for line in lines if line]


def _read_cameras_json(path: Path, problem):
    if not path.is_file():
        problem(path, "missing (every object folder needs cameras.json)")
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem(path, f"not valid JSON ({exc})")
        return None
    if not isinstance(meta, dict):
        problem(path, "must hold a JSON object with convention, width, height and views")
        return None
    ok = True
    convention = meta.get("convention")
    if convention not in CONVENTIONS:
        problem(path, f"convention must be one of {CONVENTIONS}, got {convention!r}")
        ok = False
    width, height = meta.get("width"), meta.get("height")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problem(path, f"{name} must be a positive integer, got {value!r}")
            ok = False
    views = meta.get("views")
    if not isinstance(views, list) or not views:
        problem(path, "views must be a non-empty list")
        ok = False
    return (width, height, views, convention) if ok else None


def _optional_per_view(folder: Path, image_paths: list[Path], suffix: str, width: int, height: int,
                       validate, problem) -> list[Path | None]:
    """Per-view files in an optional folder (depth/, masks/), matched to images by file stem."""
    if not folder.is_dir():
        return [None] * len(image_paths)
    paths: list[Path | None] = []
    for image_path in image_paths:
        path = folder / f"{image_path.stem}{suffix}"
        if not path.is_file():
            problem(path, f"missing, but {folder.name}/ exists (it needs one file per view)")
            paths.append(None)
            continue
        message = validate(path, width, height) if validate else None
        if message:
            problem(path, message)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ write
def cameras_to_json(cameras: Cameras, image_names: Sequence[str]) -> dict:
    """The cameras.json dict for Cameras ``[N]`` (written in the OpenCV convention)."""
    cameras = cameras.flatten()
    if len(cameras) != len(image_names):
        raise ValueError(f"{len(cameras)} cameras but {len(image_names)} image names")
    K, c2w = cameras.K.double().cpu().tolist(), cameras.c2w.double().cpu().tolist()
    views = [{"image": name, "K": k, "c2w": m} for name, k, m in zip(image_names, K, c2w, strict=True)]
    return {"convention": "opencv", "width": cameras.width, "height": cameras.height, "views": views}


def _staging_prefix(name: str) -> str:
    return f".{name}."


def remove_stale_staging(root: str | Path, names: Sequence[str]) -> None:
    """Remove the staging folders ``write_object`` left under ``root`` for objects ``names`` when a run was
    killed mid-write (a rerun that continues the run calls this first)."""
    for name in names:
        for stale in Path(root).glob(f"{_staging_prefix(name)}*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)


def write_object(directory: str | Path, images: Sequence[np.ndarray], cameras: Cameras, captions: Sequence[str],
                 depths: Sequence[np.ndarray] | None = None, masks: Sequence[np.ndarray] | None = None,
                 overwrite: bool = False, extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Write one object folder atomically: everything goes to a temporary sibling that is renamed at the end.

    ``images``: uint8 (H, W, 3|4) arrays; ``depths``: float (H, W); ``masks``: bool/uint8 (H, W);
    ``extra_files``: more files by name, text or bytes (``attributes.json`` with the procedural labels,
    ``mesh.ply`` with the ground truth).
    """
    directory = Path(directory)
    if not captions or not captions[0].strip():
        raise ValueError("write_object needs a non-empty caption")
    if any(math.isnan(x) or math.isinf(x) for x in cameras.K.flatten().tolist() + cameras.c2w.flatten().tolist()):
        raise ValueError(f"{directory}: cameras contain NaN or inf")
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory}: already exists (--overwrite, or overwrite=True, replaces it)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_dir(directory.parent, prefix=_staging_prefix(directory.name))
    try:
        names = [f"{i:03d}" for i in range(len(images))]
        (staging / "images").mkdir()
        for name, image in zip(names, images, strict=True):
            Image.fromarray(np.ascontiguousarray(image)).save(staging / "images" / f"{name}.png")
        if depths is not None:
            (staging / "depth").mkdir()
            for name, depth in zip(names, depths, strict=True):
                np.save(staging / "depth" / f"{name}.npy", np.asarray(depth, dtype=np.float32))
        if masks is not None:
            (staging / "masks").mkdir()
            for name, mask in zip(names, masks, strict=True):
                Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(staging / "masks" / f"{name}.png")
        meta = cameras_to_json(cameras, [f"images/{n}.png" for n in names])
        (staging / CAMERAS_FILE).write_text(json.dumps(meta, indent=1))
        (staging / CAPTION_FILE).write_text("\n".join(c.strip() for c in captions) + "\n", encoding="utf-8")
        for name, data in (extra_files or {}).items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)  # e.g. "transforms/images/000.png"
            if isinstance(data, bytes):
                (staging / name).write_bytes(data)
            else:
                (staging / name).write_text(data, encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def write_split_files(root: str | Path, train_ids: Sequence[str], val_ids: Sequence[str]) -> None:
    root = Path(root)
    for split, ids in (("train", train_ids), ("val", val_ids)):
        (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
