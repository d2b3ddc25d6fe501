"""Pictures of meshes for the docs, without OpenGL: flat-shaded triangles drawn far to near (painter's algorithm).

    python experiments/mesh_render.py outputs/s/0000_a-chair/mesh.ply --truth outputs/demo/chairs/00181_chair/mesh.ply \
        --out docs/images/demo-mesh.png

One row per mesh, 4 azimuths at 20° elevation, orthographic, +z up; faces keep their vertex colours (the
views', as ``tunemv sample --mesh`` writes them) or are grey, shaded by a light from the camera's side.
``--truth`` (repeatable) adds a ground-truth mesh as a further row, below the meshes, always grey. A mesh that
cannot be read is one line naming it, exit code 2, and no picture.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import trimesh
from PIL import Image, ImageDraw

SIZE = 192


def render(mesh: trimesh.Trimesh, azimuth: float, elevation: float = 20.0, size: int = SIZE,
           grey: bool = False) -> Image.Image:
    a, e = math.radians(azimuth), math.radians(elevation)
    forward = -np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])  # camera looks along
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    screen = np.stack([vertices @ right, -(vertices @ up)], axis=1) * (size * 0.45) + size / 2  # unit sphere fits
    depth = vertices @ forward
    faces = np.asarray(mesh.faces)
    normals = np.asarray(mesh.face_normals)
    light = -forward + 0.5 * up
    shade = np.clip(np.abs(normals @ (light / np.linalg.norm(light))), 0.15, 1.0)
    colours = (np.asarray(mesh.visual.face_colors)[:, :3] / 255.0 if mesh.visual.kind in ("face", "vertex")
               and not grey
               else np.full((len(faces), 3), 0.7))
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for index in np.argsort(-depth[faces].mean(axis=1)):  # far to near
        colour = tuple(int(255 * c * shade[index]) for c in colours[index])
        draw.polygon([tuple(point) for point in screen[faces[index]]], fill=colour)
    return image


def fail(message: str) -> None:
    print(f"mesh_render.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def load(path: str, flag: str = "") -> trimesh.Trimesh:
    """The triangle mesh at ``path``; anything else is one line naming it (``flag``: the option that gave it)."""
    try:
        mesh = trimesh.load(path, force="mesh")
    except Exception as error:  # trimesh raises many types for missing or corrupt files
        fail(f"{flag}{path}: not a readable mesh ({type(error).__name__}: {' '.join(str(error).split())})")
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        fail(f"{flag}{path}: has no triangles")
    return mesh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("meshes", nargs="+")
    parser.add_argument("--truth", action="append", default=[], metavar="MESH",
                        help="a ground-truth mesh, drawn grey as a further row (repeatable)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    meshes = [(load(path), False) for path in args.meshes] + [(load(path, "--truth "), True) for path in args.truth]
    rows = [[render(mesh, azimuth, grey=grey) for azimuth in (0, 90, 180, 270)] for mesh, grey in meshes]
    sheet = Image.new("RGB", (SIZE * 4, SIZE * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * SIZE, r * SIZE))
    sheet.save(args.out)
    print(f"{len(rows)} mesh(es), 4 views each: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
