"""Writing sampling results: one dataset-format object folder per prompt (VFusion3D's data engine), plus a
grid PNG, a turntable GIF of NeuS renders and, on request, meshes.

    OUT/<index>_<prompt-slug>/images/NNN.png, cameras.json, caption.txt   (passes `tunemv data check`)
                              sampling.json   the settings that made it
                              grid.png        all views in a row   } previews, upscaled to at least
                              turntable.gif   NeuS renders around  } PREVIEW_SIZE px per view; the
                                              the object           } native views stay in images/
                              mesh.ply, mesh.glb   with --mesh
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imageio.v3 as iio
import numpy as np
import torch
from einops import rearrange
from PIL import Image

from tunemv.data.format import write_object

if TYPE_CHECKING:  # a type only: pipeline_output.save() imports this module, not the other way round
    from tunemv.sampling.pipeline_output import MultiviewPipelineOutput

MESH_FILES = ("mesh.ply", "mesh.glb")
PREVIEW_SIZE = 256  # a 32 px view is a thumbnail on a screen; previews are upscaled to at least this


def upscale_for_preview(images: torch.Tensor, size: int = PREVIEW_SIZE) -> torch.Tensor:
    """(..., 3, H, W) -> the same views enlarged by the smallest integer factor that makes them >= ``size``
    px, nearest-neighbour: every model pixel stays a crisp block, nothing is invented between them."""
    factor = max(1, -(-size // min(images.shape[-2:])))
    return images if factor == 1 else images.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] -> (..., H, W, 3) uint8."""
    return (rearrange(images.detach().float().cpu(), "... c h w -> ... h w c").clamp(0, 1) * 255).round().byte().numpy()


def grid_image(views: torch.Tensor) -> Image.Image:
    """(V, 3, H, W) or (B, V, 3, H, W) in [0, 1] -> one PNG-ready image, objects as rows."""
    views = views if views.dim() == 5 else views[None]
    return Image.fromarray(to_uint8(rearrange(views, "b v c h w -> c (b h) (v w)")[None])[0])


def object_name(index: int, prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "object"
    return f"{index:04d}_{slug}"


@dataclass(frozen=True)
class ObjectFolderOptions:
    """What an object folder holds besides its views, cameras and caption."""

    turntable_frames: int = 24  # turntable.gif frames of NeuS renders; 0 for none
    mesh_resolution: int = 0  # marching-cubes grid of mesh.ply and mesh.glb; 0 for none
    export_transforms: bool = False  # transforms/ for nerfstudio, instant-ngp or a 3DGS trainer
    overwrite: bool = False  # replace an existing object folder


def write_object_folders(output: MultiviewPipelineOutput, out_dir: str | Path, start_index: int = 0,
                         settings: dict[str, Any] | None = None, options: ObjectFolderOptions = ObjectFolderOptions(),
                         log: Callable[[str], None] | None = None) -> list[Path]:
    """Write every object of ``output`` under ``out_dir``; returns the object folders.

    ``options.export_transforms`` also writes ``transforms/`` in each (``transforms.json`` with RGBA views whose alpha is
    the fused field's opacity), for nerfstudio, instant-ngp or a 3DGS trainer. The turntable is also written
    as ``turntable.mp4`` when imageio-ffmpeg is installed.

    Everything is computed before anything is written, and each object folder (previews and meshes included)
    is renamed into place in one step, so a folder that exists is complete: a killed run leaves no
    half-written object, and ``tunemv sample --resume`` can skip the ones that exist.
    """
    out_dir = Path(out_dir)
    turntable_frames, mesh_resolution, overwrite = options.turntable_frames, options.mesh_resolution, options.overwrite
    folders = []
    for b, prompt in enumerate(output.prompts):
        folder = out_dir / object_name(start_index + b, prompt)
        if folder.exists() and not overwrite:
            raise FileExistsError(f"{folder}: already exists; pass --overwrite to replace it")
        extras = {"grid.png": _png(grid_image(upscale_for_preview(output.pixels[b])))}
        if turntable_frames > 0:
            frames = upscale_for_preview(output.field.turntable(turntable_frames)[b])
            extras["turntable.gif"] = iio.imwrite("<bytes>", to_uint8(frames), extension=".gif", duration=80, loop=0)
            if has_ffmpeg():
                extras["turntable.mp4"] = mp4_bytes(to_uint8(frames))
        if options.export_transforms:
            extras |= transforms_files(output, b)
        if mesh_resolution > 0:
            mesh = output.field.mesh(b, mesh_resolution, views=output.pixels[b])
            extras |= {name: mesh.export(file_type=name.rsplit(".", 1)[1]) for name in MESH_FILES}
        images = list(to_uint8(output.pixels[b]))
        info = {"prompt": prompt, "references": output.references[b].nonzero().flatten().tolist(),
                "seed": output.seed, **(settings or {}), **(output.run or {})}  # what ran over what was asked
        write_object(folder, images, output.cameras[b].to("cpu"), [prompt], overwrite=overwrite,
                     extra_files={"sampling.json": json.dumps(info, indent=2, default=str) + "\n", **extras})
        folders.append(folder)
        if log is not None:
            log(f"wrote {folder}" + (" (+ mesh.ply, mesh.glb)" if mesh_resolution > 0 else ""))
    return folders


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def transforms_files(output: MultiviewPipelineOutput, index: int) -> dict[str, bytes]:
    """``transforms/`` of object ``index``: transforms.json and RGBA views, alpha from the field's opacity."""
    import torch.nn.functional as F

    from tunemv.data.exporters import TRANSFORMS_FILE, rgba_over_white, transforms_json

    views = output.pixels[index]  # (V, 3, H, W)
    opacity = output.field.silhouettes()[index].float()  # (V, 1, h, w) at model resolution
    if opacity.shape[-2:] != views.shape[-2:]:
        opacity = F.interpolate(opacity, size=views.shape[-2:], mode="bilinear", align_corners=False)
    names = [f"{view:03d}" for view in range(len(views))]
    files = {f"transforms/images/{name}.png": _png(Image.fromarray(rgba_over_white(
        views[view].permute(1, 2, 0).cpu().numpy().astype(np.float64), opacity[view, 0].clamp(0, 1).cpu().numpy()),
        "RGBA")) for view, name in enumerate(names)}
    meta = transforms_json(output.cameras[index].to("cpu"), [f"images/{name}.png" for name in names])
    files[f"transforms/{TRANSFORMS_FILE}"] = json.dumps(meta, indent=1).encode()
    return files


def has_ffmpeg() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def mp4_bytes(frames) -> bytes:
    """(F, H, W, 3) uint8 frames -> H.264 MP4 bytes at 12.5 fps (the GIF's 80 ms per frame)."""
    import os
    import tempfile

    import imageio.v2 as imageio_v2

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "turntable.mp4")
        # Even sizes for yuv420p; macro_block_size=1 keeps small previews from being resized.
        with imageio_v2.get_writer(path, fps=12.5, codec="libx264", macro_block_size=1, quality=8) as writer:
            for frame in frames:
                writer.append_data(frame)
        with open(path, "rb") as file:
            return file.read()
