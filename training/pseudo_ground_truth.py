"""The teacher's samples and 3D renders, cached once on disk, for distilling a one-step generator (GECO §3.2).

For each of ``num_objects`` (prompt, seed) pairs the teacher adapter samples ``num_views`` views with its
multi-step sampler from the pipeline's own noise for that seed (text→multiview), and for each of
``num_reference_objects`` more, from view 0 of a training object of ``reference_root`` as a clean reference
on that view's orbit, with the object's caption (image→multiview: GECO distils an image-conditioned model); its NeuS, fused from those clean views, then
renders them at the views' cameras and at ``num_render_views`` random viewpoints (GECO renders its teacher's
reconstruction at novel views, not only the generated ones). One file per object::

    CACHE/settings.json                  what made the cache; another setting refuses to mix with it
    CACHE/objects/000000.safetensors     noise, views, cameras, renders, opacity (model space); prompt, seed

Each object is written atomically, so a killed build resumes where it stopped; the dataset reads the files
and gives the generator the same noise the teacher started from (DMD's paired regression) and the renders
its own field must reproduce (stage II).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from tunemv.atomic import atomic_path, current_umask, write_text_atomic
from tunemv.data.batch import collate_multiview
from tunemv.data.datamodule import ResumableDataLoader
from tunemv.data.dataset import EpochSampler
from tunemv.data.vocabulary import CATEGORIES, COLOURS
from tunemv.errors import TunemvError
from tunemv.geometry.cameras import Cameras, orbit

SETTINGS_FILE, OBJECTS = "settings.json", "objects"


class CacheError(TunemvError):
    """A pseudo-ground-truth cache that is unreadable or was made with other settings."""


def default_prompts() -> list[str]:
    """Every "a {colour} {category}" of the procedural vocabulary: what the tiny backbone was trained on."""
    return [f"a {colour} {category}" for category in CATEGORIES for colour in COLOURS]


def random_viewpoints(count: int, generator: torch.Generator, elevation: tuple[float, float], radius: float,
                      fov: float, resolution: int) -> Cameras:
    """``count`` cameras at uniform random azimuth and elevation in ``elevation`` (degrees), looking at the origin."""
    azimuth = torch.rand(count, generator=generator, dtype=torch.float64) * 2 * math.pi
    low, high = elevation
    tilt = torch.deg2rad(low + torch.rand(count, generator=generator, dtype=torch.float64) * (high - low))
    eye = radius * torch.stack([tilt.cos() * azimuth.cos(), tilt.cos() * azimuth.sin(), tilt.sin()], -1)
    return Cameras.look_at(eye.float(), Cameras.intrinsics_from_fov(fov, resolution, resolution), resolution,
                           resolution)


@dataclass
class PseudoGroundTruth:
    """One cached teacher sample (a batch: a leading B, captions and indices as lists), V views at h x w in
    model space and R render viewpoints of its field."""

    caption: str | list[str]
    noise: torch.Tensor  # (V, C, h, w) the teacher's x_T
    views: torch.Tensor  # (V, C, h, w) its clean views (references as given)
    reference: torch.Tensor  # (V,) bool: views given as image→multiview references
    cameras: Cameras  # [V]
    render_cameras: Cameras  # [V + R]: the views' cameras, then the extra viewpoints
    renders: torch.Tensor  # (V + R, C, h, w) the teacher field's renders there
    opacity: torch.Tensor  # (V + R, 1, h, w)
    index: int | torch.Tensor  # the object's index in the cache

    def __len__(self) -> int:  # objects in a batch
        return len(self.caption) if isinstance(self.caption, list) else 1


class PseudoGroundTruthCache:
    """Build (``build``) and read (``__getitem__``) the cache at ``root`` for the teacher adapter folder ``teacher``."""

    def __init__(self, root: str | Path, teacher: str, prompts: Sequence[str] | None = None, num_objects: int = 64,
                 num_views: int = 4, num_render_views: int = 4, sampler: str = "mv", steps: int = 25,
                 guidance_scale: float = 4.0, scheduler: str = "auto", elevation: float = 20.0,
                 render_elevation: tuple[float, float] = (0.0, 40.0), radius: float = 2.2, fov: float = 50.0,
                 seed: int = 0, reference_root: str | None = None, num_reference_objects: int = 0):
        if num_objects < 0 or num_reference_objects < 0 or num_objects + num_reference_objects < 1 \
                or num_views < 1 or num_render_views < 0 or steps < 1:
            raise CacheError(f"{root}: needs at least one object, num_views and steps >= 1 and num_render_views >= 0")
        if num_reference_objects and not reference_root:
            raise CacheError(f"{root}: num_reference_objects needs reference_root, a dataset folder")
        if num_reference_objects and not Path(reference_root).is_dir():
            raise CacheError(f"{reference_root}: reference_root is not a dataset folder; make it first (e.g. "
                             f"`tunemv data procedural --out {reference_root}`, as the config says) or fix the path")
        if num_reference_objects and num_views < 2:
            raise CacheError(f"{root}: image→multiview objects need num_views >= 2 (view 0 is the reference)")
        self.root = Path(root)
        self.prompts = list(prompts) if prompts else default_prompts()
        self.settings = {"teacher": str(teacher), "prompts": self.prompts, "num_objects": num_objects,
                         "num_views": num_views, "num_render_views": num_render_views, "sampler": sampler,
                         "steps": steps, "guidance_scale": guidance_scale, "scheduler": scheduler,
                         "elevation": elevation, "render_elevation": list(render_elevation), "radius": radius,
                         "fov": fov, "seed": seed, "reference_root": reference_root,
                         "num_reference_objects": num_reference_objects}

    def __len__(self) -> int:
        return self.settings["num_objects"] + self.settings["num_reference_objects"]

    def reference_object(self, index: int) -> Path | None:
        """The dataset object whose view 0 is object ``index``'s reference (None: a text→multiview object)."""
        s = self.settings
        if index < s["num_objects"]:
            return None
        from tunemv.data.format import list_objects

        names = list_objects(s["reference_root"], "train")
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(s["seed"] + 1)).tolist()
        return Path(s["reference_root"]) / names[order[(index - s["num_objects"]) % len(names)]]

    def path(self, index: int) -> Path:
        return self.root / OBJECTS / f"{index:06d}.safetensors"

    def object_spec(self, index: int) -> tuple[str, int, float]:
        """(prompt, seed, azimuth of the first view) of object ``index``: prompts cycle in a seeded order."""
        s = self.settings
        order = torch.randperm(len(self.prompts), generator=torch.Generator().manual_seed(s["seed"])).tolist()
        prompt = self.prompts[order[index % len(order)]]
        seed = s["seed"] * 1_000_003 + index
        azimuth = float(torch.rand((), generator=torch.Generator().manual_seed(seed)) * 360.0 / s["num_views"])
        return prompt, seed, azimuth

    def check_settings(self) -> None:
        """Refuse a cache made with other settings (its objects would silently mix two teachers or recipes)."""
        path = self.root / SETTINGS_FILE
        if not path.is_file():
            return
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CacheError(f"{path}: not valid JSON ({error}); delete the cache folder to rebuild it") from error
        differ = sorted(key for key in set(stored) | set(self.settings) if stored.get(key) != self.settings.get(key))
        if differ:
            raise CacheError(f"{path}: this cache was made with other settings ({', '.join(differ)}); delete it or "
                             "point cache_dir at another folder")

    def missing(self) -> list[int]:
        return [index for index in range(len(self)) if not self.path(index).is_file()]

    def build(self, batch_size: int = 4, device: str | torch.device | None = None, log=print) -> None:
        """Sample and render every missing object with the teacher (the existing ones are kept)."""
        from tunemv.sampling.pipeline import MultiviewPipeline

        self.check_settings()
        todo = self.missing()
        if not todo:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.root / SETTINGS_FILE, json.dumps(self.settings, indent=2) + "\n")
        s = self.settings
        pipe = MultiviewPipeline.from_pretrained(s["teacher"], device=device)
        log(f"pseudo ground truth: sampling {len(todo)} of {len(self)} objects with {s['teacher']} into {self.root}")
        text = [index for index in todo if self.reference_object(index) is None]
        image = [index for index in todo if self.reference_object(index) is not None]
        batches = [text[i: i + batch_size] for i in range(0, len(text), batch_size)] + \
            [image[i: i + batch_size] for i in range(0, len(image), batch_size)]  # one kind per pipeline call
        written = 0
        for indices in batches:
            self.build_batch(pipe, indices)
            written += len(indices)
            log(f"pseudo ground truth: {written} of {len(todo)} objects written")

    def build_batch(self, pipe, indices: list[int]) -> None:
        from tunemv.data.format import read_cameras
        from tunemv.sampling.pipeline import initial_noise
        from tunemv.sampling.references import load_reference_image

        s, size = self.settings, pipe.backbone.sample_size
        specs = [self.object_spec(index) for index in indices]
        folders = [self.reference_object(index) for index in indices]
        prompts, orbits, references = [prompt for prompt, _, _ in specs], [], None
        if folders[0] is None:
            orbits = [orbit(s["num_views"], s["elevation"], s["radius"], s["fov"], resolution=size,
                            azimuth_start_deg=azimuth) for _, _, azimuth in specs]
        else:  # image→multiview: the reference's own camera starts the orbit, its caption is the prompt
            prompts = [(folder / "caption.txt").read_text().splitlines()[0].strip() for folder in folders]
            for folder in folders:
                first = read_cameras(folder / "cameras.json")[0]
                centre = first.centers.double()
                distance = float(centre.norm())
                tilt = float(torch.rad2deg(torch.asin(centre[2] / distance)))
                azimuth = float(torch.rad2deg(torch.atan2(centre[1], centre[0])))
                fov = float(torch.rad2deg(2 * torch.atan(first.width / (2 * first.K[0, 0]))))
                orbits.append(orbit(s["num_views"], tilt, distance, fov, resolution=size, azimuth_start_deg=azimuth))
            references = torch.stack([load_reference_image(folder / "images" / "000.png")[None] for folder in folders])
        noise = torch.cat([initial_noise(pipe.backbone, 1, s["num_views"], torch.Generator().manual_seed(seed))
                           for _, seed, _ in specs])
        out = pipe(prompts, cameras=Cameras.stack(orbits), sampler=s["sampler"], scheduler=s["scheduler"],
                   steps=s["steps"], guidance_scale=s["guidance_scale"], latents=noise, reference_images=references,
                   progress=False)
        extra = [random_viewpoints(s["num_render_views"], torch.Generator().manual_seed(seed + 1),
                                   tuple(s["render_elevation"]), s["radius"], s["fov"], size) for _, seed, _ in specs]
        targets = Cameras.cat([out.field.cameras, Cameras.stack(extra)], dim=1) if s["num_render_views"] else \
            out.field.cameras
        renders = out.field.render(targets, decode=False).float()
        opacity = out.field.silhouettes(targets).float()
        for row, (index, prompt, (_, seed, _)) in enumerate(zip(indices, prompts, specs, strict=True)):
            tensors = {"noise": noise[row], "views": out.latents[row].float(), "reference": out.references[row],
                       "K": out.field.cameras.K[row], "c2w": out.field.cameras.c2w[row], "render_K": targets.K[row],
                       "render_c2w": targets.c2w[row], "renders": renders[row], "opacity": opacity[row]}
            with atomic_path(self.path(index)) as temporary:
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temporary),
                          metadata={"prompt": prompt, "seed": str(seed)})
                os.chmod(temporary, 0o666 & ~current_umask())  # safetensors writes owner-only files

    def __getitem__(self, index: int) -> PseudoGroundTruth:
        path = self.path(index)
        try:
            with safe_open(str(path), framework="pt") as file:
                tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not a dict)
                prompt = file.metadata()["prompt"]
        except (OSError, SafetensorError, ValueError, KeyError) as error:
            raise CacheError(f"{path}: not a readable cache object ({error}); delete it and build again") from error
        size = tensors["views"].shape[-1]
        reference = tensors.get("reference", torch.zeros(len(tensors["views"]), dtype=torch.bool)).bool()
        return PseudoGroundTruth(
            caption=prompt, noise=tensors["noise"], views=tensors["views"], reference=reference,
            cameras=Cameras(tensors["K"], tensors["c2w"], size, size),
            render_cameras=Cameras(tensors["render_K"], tensors["render_c2w"], size, size),
            renders=tensors["renders"], opacity=tensors["opacity"], index=index)


class CacheDataset(Dataset):
    """The cache's objects; the index carries the epoch (``EpochSampler``) and is taken modulo the length."""

    def __init__(self, cache: PseudoGroundTruthCache):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> PseudoGroundTruth:
        return self.cache[index % len(self.cache)]


class DistillationDataModule(pl.LightningDataModule):
    """``tunemv distill``'s data: the teacher's pseudo ground truth, built once in ``prepare_data``.

    Args:
        teacher: the adapter folder to distil (``tunemv export``'s); the system's ``model.teacher`` must be it.
        cache_dir: where the pseudo ground truth is written (and read back on every later run).
        prompts: text prompts (default: every colour and category of the procedural vocabulary).
        num_objects: how many (prompt, seed) pairs the teacher samples once (text→multiview).
        reference_root, num_reference_objects: a dataset folder, and how many image→multiview objects the
            teacher samples from view 0 of its training objects (0: none).
        num_views, num_render_views: generated views per object and extra random viewpoints of its field.
        sampler, steps, guidance_scale, scheduler: the teacher's multi-step sampling.
        elevation, render_elevation, radius, fov: the orbit of the views and the range of the extra viewpoints.
        batch_size: objects per training step; build_batch_size: objects the teacher samples at once.
        seed: the prompts' order, every object's noise and viewpoints, and the shuffling.
    """

    def __init__(self, teacher: str, cache_dir: str = "outputs/distill/pseudo-ground-truth",
                 prompts: list[str] | None = None, num_objects: int = 64, num_views: int = 4,
                 num_render_views: int = 4, sampler: str = "mv", steps: int = 25, guidance_scale: float = 4.0,
                 scheduler: str = "auto", elevation: float = 20.0, render_elevation: tuple[float, float] = (0.0, 40.0),
                 radius: float = 2.2, fov: float = 50.0, reference_root: str | None = None,
                 num_reference_objects: int = 0, batch_size: int = 2, build_batch_size: int = 4,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.cache = PseudoGroundTruthCache(cache_dir, teacher, prompts, num_objects, num_views, num_render_views,
                                            sampler, steps, guidance_scale, scheduler, elevation,
                                            tuple(render_elevation), radius, fov, seed, reference_root,
                                            num_reference_objects)

    def prepare_data(self) -> None:  # rank 0 only under DDP: the teacher samples each object once
        self.cache.build(self.hparams.build_batch_size)

    def setup(self, stage: str | None = None) -> None:
        self.cache.check_settings()
        missing = self.cache.missing()
        if missing:
            raise CacheError(f"{self.cache.path(missing[0])}: missing ({len(missing)} of {len(self.cache)} objects); "
                             "prepare_data builds them")

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        dataset = CacheDataset(self.cache)
        return ResumableDataLoader(dataset, batch_size=h.batch_size, sampler=EpochSampler(len(dataset), h.seed),
                                   num_workers=h.num_workers, collate_fn=collate_multiview,
                                   drop_last=len(dataset) >= h.batch_size, persistent_workers=h.num_workers > 0)
