"""``tunemv sample``: text→multiview and image→multiview from the command line.

Cheap to import (the parser is built for every ``tunemv`` call); torch and diffusers load in ``run_sample``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunemv.errors import TunemvError

if TYPE_CHECKING:
    from tunemv.sampling.object_folders import ObjectFolderOptions


def add_sample_parser(commands) -> None:
    sample = commands.add_parser(
        "sample", help="generate multiview images (and meshes) with a trained adapter",
        description="Each prompt becomes a dataset-format object folder under --out (images, cameras.json, "
                    "caption.txt) plus grid.png, turntable.gif and, with --mesh, mesh.ply/mesh.glb.")
    source = sample.add_argument_group("model (one of --adapter or --ckpt)")
    source.add_argument("--adapter", help="an adapter folder written by `tunemv export`")
    source.add_argument("--ckpt", help="a checkpoint written by `tunemv fit`")
    source.add_argument("--config", help="the fit config of --ckpt; its model.backbone names the backbone")
    source.add_argument("--backbone", help="override the backbone the adapter names (hub id or folder)")
    source.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="with --ckpt: the EMA weights (default: them when the run kept an EMA)")
    prompts = sample.add_argument_group("what to generate")
    prompts.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    prompts.add_argument("--prompts", help="a text file with one prompt per line")
    prompts.add_argument("--negative-prompt", default="", help="the classifier-free guidance prompt (default: empty)")
    prompts.add_argument("--image", action="append", default=[],
                         help="a reference image (repeatable): image→multiview; placed at views 0, 1, ...")
    views = sample.add_argument_group("cameras")
    views.add_argument("--num-views", type=int, default=8, help="views per object on an orbit (default: 8)")
    views.add_argument("--cameras", help="a cameras.json whose views to generate instead of an orbit")
    views.add_argument("--elevation", type=float, default=20.0, help="orbit elevation in degrees (default: 20)")
    views.add_argument("--radius", type=float, default=2.2, help="orbit radius (default: 2.2)")
    views.add_argument("--fov", type=float, default=50.0, help="horizontal field of view in degrees (default: 50)")
    views.add_argument("--azimuth-start", type=float, default=0.0, help="azimuth of view 0 in degrees")
    how = sample.add_argument_group("sampling")
    how.add_argument("--sampler", default=None, help="mv, consistency, mixed, 2d, refine, one-step or a plugin's "
                     "(default: the folder's own: mv for an adapter, one-step for a distilled generator)")
    how.add_argument("--scheduler", default="auto", help="auto, ddim, ddpm, dpmsolver++, euler, ... (default: auto, "
                     "the backbone family's own: ddpm for pixel-space IF-family models, ddim otherwise)")
    how.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    how.add_argument("--guidance-scale", type=float, default=None,
                     help="text CFG scale w (default: 7.5 for an adapter, 1 for a distilled generator)")
    options = sample.add_argument_group(
        "sampler options", "each maps onto the chosen sampler's own option; a sampler without it refuses it")
    options.add_argument("--consistency-scale", type=float, default=None,
                         help="consistency guidance α: consistency_scale (default: the sampler's, 7.5)")
    options.add_argument("--consistency-ratio", type=float, default=None,
                         help="fraction K of steps with consistency guidance: consistency_ratio (default: the "
                              "sampler's, 0.5 for consistency, 0 otherwise)")
    options.add_argument("--mix-schedule", default=None, help="λ(t) of the mixed sampler: constant, linear, "
                         "cosine, quadratic (alias seed002) (default: quadratic)")
    options.add_argument("--mix-start", type=float, default=None, help="λ at pure noise (default: 0.2)")
    options.add_argument("--mix-end", type=float, default=None, help="λ at the clean image (default: 1.0)")
    options.add_argument("--two-d-model", default=None, help="another 2D backbone for ε_2d (mixed, 2d): two_d_model")
    options.add_argument("--refine-rounds", type=int, default=None, help="refine rounds: rounds (default: 2)")
    options.add_argument("--refine-strength", type=float, default=None,
                         help="refine re-noising strength: strength (default: 0.5)")
    options.add_argument("--sampler-option", action="append", default=[], metavar="KEY=VALUE",
                         help="any option of the sampler, typed by its signature (repeatable), e.g. a plugin's "
                              "--sampler-option decay=0.8")
    how.add_argument("--seed", type=int, default=0, help="the result is a function of the seed (default: 0)")
    how.add_argument("--batch-size", type=int, default=1, help="prompts per sampling call (default: 1)")
    how.add_argument("--view-chunk", type=int, default=None, help="images per UNet call (bounds memory)")
    how.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    how.add_argument("--dtype", default=None, help="backbone dtype, e.g. float16 on GPU (default: float32)")
    out = sample.add_argument_group("output")
    out.add_argument("--out", required=True, help="output root; one object folder per prompt")
    out.add_argument("--mesh", action="store_true", help="also extract mesh.ply and mesh.glb")
    out.add_argument("--export", choices=["transforms"], action="append", default=[],
                     help="also write transforms/ (NeRF-synthetic transforms.json, RGBA views with the field's "
                          "opacity as alpha) for nerfstudio, instant-ngp or a 3DGS trainer")
    out.add_argument("--mesh-resolution", type=int, default=128, help="marching-cubes grid (default: 128)")
    out.add_argument("--turntable-frames", type=int, default=24, help="turntable GIF frames; 0 for none")
    out.add_argument("--overwrite", action="store_true", help="replace existing object folders")
    out.add_argument("--resume", action="store_true",
                     help="keep the object folders that already exist (a killed run's finished ones) and make the rest")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    engine = sample.add_argument_group(
        "data engine", "split the prompts across processes with Lightning's DDP (object i is seeded seed + i, "
        "as with --batch-size 1, so N processes write what one does)")
    engine.add_argument("--devices", type=int, default=1, help="processes (GPUs, or CPU processes) (default: 1)")
    engine.add_argument("--accelerator", default="auto", help="auto, cpu, gpu (default: auto)")
    engine.add_argument("--strategy", default="ddp", help="Lightning strategy for --devices > 1 (default: ddp)")
    engine.add_argument("--num-nodes", type=int, default=1, help="machines, each with --devices (default: 1)")
    engine.add_argument("--filter", type=float, default=None, metavar="MIN_IOU",
                        help="then list the objects whose mean hull IoU reaches MIN_IOU in OUT/passed.txt")
    sample.set_defaults(handler=run_sample)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise TunemvError(f"{path}: no such prompts file")
        prompts += read_prompt_file(path)
    if not prompts:
        raise TunemvError("tunemv sample needs --prompt or --prompts (an image-only run still needs a caption)")
    return prompts


def read_prompt_file(path: Path) -> list[str]:
    """The non-empty lines of a UTF-8 prompts file, stripped (a byte-order mark included); bytes that are not
    UTF-8 are one error naming the file and the line."""
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise TunemvError(f"--prompts {path}: line {number} is not UTF-8 text (byte {raw[error.start]:#04x} at "
                              f"column {error.start + 1}); save the file as UTF-8") from error
        line = line.replace("\ufeff", "").strip()  # a BOM (Windows editors) is no part of any prompt
        if line:
            lines.append(line)
    return lines


def _backbone_from_config(path: str) -> str | None:
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise TunemvError(f"{path}: cannot read the config ({' '.join(str(error).split())})") from error
    backbone = (config.get("model") or {}).get("backbone") if isinstance(config, dict) else None
    if backbone is None:
        raise TunemvError(f"{path}: has no model.backbone")
    return backbone


MAX_VIEWS = 64

FLAG_OPTIONS = {"consistency_scale": "consistency_scale", "consistency_ratio": "consistency_ratio",
                "two_d_model": "two_d_model", "refine_rounds": "rounds", "refine_strength": "strength"}


def sampler_options(args: argparse.Namespace) -> dict:
    """The sampler's options from the flags the user set (unset flags leave the sampler's own defaults) and
    ``--sampler-option``; checked against the sampler's signature."""
    from tunemv.sampling.guidance import MixSchedule
    from tunemv.sampling.options import check_options, parse_option_strings
    from tunemv.sampling.registry import get_sampler

    options = {option: getattr(args, flag) for flag, option in FLAG_OPTIONS.items() if getattr(args, flag) is not None}
    mix = {"kind": args.mix_schedule, "start": args.mix_start, "end": args.mix_end}
    if any(value is not None for value in mix.values()):
        try:
            options["schedule"] = MixSchedule(**{key: value for key, value in mix.items() if value is not None})
        except ValueError as error:
            raise TunemvError(str(error)) from error
    check_options(args.sampler, get_sampler(args.sampler), options)
    return options | parse_option_strings(args.sampler, args.sampler_option)


def folder_sampling_defaults(args: argparse.Namespace) -> dict:
    """Fill an unset ``--sampler`` and ``--guidance-scale`` with the model folder's own (a generator folder's
    adapter.json names "one-step", unguided; adapters and checkpoints sample "mv" at 7.5); returns the options
    the folder gives its sampler, which the user's own override."""
    from tunemv.sampling.pipeline import sampling_defaults

    declared = None
    if (args.sampler is None or args.guidance_scale is None) and bool(args.adapter) != bool(args.ckpt):
        # A broken folder or checkpoint is reported when it loads, after the cheaper checks of names and options.
        declared = pipeline_source(args).declared_sampling()
    defaults = sampling_defaults(declared)
    folder_options = defaults.get("sampler_options") or {} if args.sampler is None else {}
    args.sampler = args.sampler or defaults["sampler"]
    args.guidance_scale = defaults["guidance_scale"] if args.guidance_scale is None else args.guidance_scale
    return folder_options


def check_names(args: argparse.Namespace) -> tuple[dict, Any]:
    """Unknown sampler, scheduler or option names and bad option values fail here, with what is available;
    returns the sampler's options and the sampler, built once (cheap: models an option names load when it
    runs; samplers hold no state between runs, so every batch and every process reuses it)."""
    from tunemv.sampling.options import build_sampler
    from tunemv.sampling.schedulers import make_scheduler

    options = folder_sampling_defaults(args) | sampler_options(args)
    sampler = build_sampler(args.sampler, options)
    make_scheduler(args.scheduler, {})
    return options, sampler


def pipeline_source(args: argparse.Namespace):
    """What the pipeline loads from; the backbone from ``--backbone``, else ``--config``'s, else the model's."""
    from tunemv.sampling.pipeline_source import PipelineSource

    backbone = args.backbone or (_backbone_from_config(args.config) if args.config else None)
    return PipelineSource(adapter=args.adapter, checkpoint=args.ckpt, backbone=backbone, ema=args.ema,
                          torch_dtype=args.dtype)


@dataclass
class SamplePlan:
    """What ``tunemv sample`` worked out from its arguments before any model loads."""

    prompts: list[str]
    call: dict[str, Any]  # the pipeline's keyword arguments; ``sampler`` is the instance built once
    settings: dict[str, Any]  # what sampling.json records besides the seed and the backbone
    writing: ObjectFolderOptions
    done: set[int]  # the prompts --resume keeps

    def line(self, objects: int, batch_size: int) -> str:
        """The one line printed before the model loads: objects, views, steps (as they will run)."""
        steps = getattr(self.call["sampler"], "fixed_steps", None) or self.call["steps"]
        views = self.call["num_views"]
        if self.call.get("cameras"):
            from tunemv.data.format import read_cameras

            views = len(read_cameras(self.call["cameras"]))
        return (f"sampling {objects} object(s) x {views} views x {steps} step(s) "
                f"({self.settings['sampler']}, batches of {batch_size}); an estimate follows the first batch")


def plan_sample(args: argparse.Namespace) -> SamplePlan:
    """Every check that needs no model, then the plan."""
    import torch

    from tunemv.sampling.object_folders import ObjectFolderOptions

    prompts = read_prompts(args)
    if args.batch_size < 1 or args.steps < 1 or args.num_views < 1:
        raise TunemvError("--batch-size, --steps and --num-views must be >= 1")
    if args.num_views > MAX_VIEWS:
        raise TunemvError(f"--num-views {args.num_views}: at most {MAX_VIEWS}. Every view attends to every other "
                          "(cost and memory grow with the square of the views) and the adapters were trained "
                          "with 4-16; sample more views in several runs with --azimuth-start")
    if args.view_chunk is not None and args.view_chunk < 1:
        raise TunemvError(f"--view-chunk must be >= 1 (views per model call), got {args.view_chunk}")
    chosen, sampler = check_names(args)  # before minutes of model loading
    done = check_outputs(args, prompts)
    check_images(args.image or [])
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise TunemvError(f"--device {args.device}: this torch build has no CUDA or sees no GPU "
                          f"(torch {torch.__version__}); use --device cpu")
    if args.quiet:
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    options = dict(num_views=args.num_views, cameras=args.cameras, reference_images=args.image or None,
                   elevation=args.elevation, radius=args.radius, fov=args.fov, azimuth_start=args.azimuth_start,
                   sampler=args.sampler, sampler_options=chosen, scheduler=args.scheduler, steps=args.steps,
                   guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt,
                   view_chunk_size=args.view_chunk)
    call = {key: value for key, value in options.items() if key != "sampler_options"} | {"sampler": sampler}
    settings = {key: value for key, value in options.items() if key != "reference_images"} | {"images": args.image}
    writing = ObjectFolderOptions(turntable_frames=args.turntable_frames,
                                  mesh_resolution=args.mesh_resolution if args.mesh else 0,
                                  export_transforms="transforms" in args.export, overwrite=args.overwrite or args.resume)
    return SamplePlan(prompts, call, settings, writing, done)


def run_sample(args: argparse.Namespace) -> int:
    """``tunemv sample``: one process, or the data engine across ``--devices`` (and ``--filter``)."""
    distributed = args.devices != 1 or args.num_nodes != 1 or args.filter is not None
    if distributed:
        if args.devices < 1 or args.num_nodes < 1:
            raise TunemvError(f"--devices and --num-nodes must be >= 1, got {args.devices} and {args.num_nodes}")
        if args.batch_size != 1:
            raise TunemvError("--devices and --filter sample one prompt per call (each seeded seed + index); "
                              "drop --batch-size")
        if args.filter is not None and not 0 <= args.filter <= 1:
            raise TunemvError(f"--filter takes a mean hull IoU in [0, 1], got {args.filter}")
    plan = plan_sample(args)
    wrote = sample_with_data_engine(args, plan) if distributed else sample_in_process(args, plan)
    if wrote:
        done = plan.done
        print(f"wrote {len(plan.prompts)} object(s) to {args.out}" + (f" ({len(done)} kept by --resume)" if done else ""))
    return 0


def sample_in_process(args: argparse.Namespace, plan: SamplePlan) -> bool:
    import torch

    from tunemv.sampling.object_folders import write_object_folders

    prompts, done = plan.prompts, plan.done
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    wrote = (lambda message: None) if args.quiet else print  # --quiet: nothing but errors and the final line
    if done:
        log(f"--resume: keeping {len(done)} finished object(s) in {args.out}")
    todo = [start for start in range(0, len(prompts), args.batch_size)
            if not all(start + index in done for index in range(len(prompts[start: start + args.batch_size])))]
    remaining = sum(len(prompts[start: start + args.batch_size]) for start in todo)
    log(plan.line(remaining, args.batch_size))  # before minutes of model loading
    pipe = pipeline_source(args).load()
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = {**plan.settings, "backbone": pipe.backbone.name_or_path}
    began = time.monotonic()
    for count, start in enumerate(todo, start=1):
        batch = prompts[start: start + args.batch_size]
        # Seeded by the batch's first prompt index: with --batch-size 1 a prompt's views do not depend on the
        # prompts before it; a batch is redone whole, so a resumed run writes what an uninterrupted one did.
        try:
            output = pipe(batch, seed=args.seed + start, progress=not args.quiet, **plan.call)
        except ValueError as error:  # option values the pipeline refuses (a bad reference or camera)
            raise TunemvError(str(error)) from error
        folders = write_object_folders(output, args.out, start_index=start, settings=settings, options=plan.writing)
        for folder in folders:
            wrote(f"wrote {folder}" + (" (+ mesh.ply, mesh.glb)" if plan.writing.mesh_resolution > 0 else ""))
        if count == 1 and len(todo) > 1:  # the estimate, from the first batch (model warm-up included)
            log(estimate_line(time.monotonic() - began, len(todo) - 1))
    return True


def sample_with_data_engine(args: argparse.Namespace, plan: SamplePlan) -> bool:
    """Lightning's predict loop across processes; rank 0 then runs the ``--filter`` pass. Returns whether this
    process is rank 0, which alone reports."""
    from tunemv.sampling.data_engine import sample_dataset

    if not args.quiet:  # the plan before the model loads; Lightning's progress bar gives the estimate
        print(plan.line(len(plan.prompts) - len(plan.done), 1), file=sys.stderr)
    rank_zero = sample_dataset(pipeline_source(args), plan.prompts, args.out, args.seed,
                               {**plan.call, "progress": False}, plan.settings, plan.writing,
                               devices=args.devices, accelerator=args.accelerator, strategy=args.strategy,
                               num_nodes=args.num_nodes, done=plan.done, progress=not args.quiet)
    if args.filter is not None and rank_zero:  # the quality pass, once, over the whole root
        from tunemv.atomic import write_text_atomic
        from tunemv.evaluation.evaluate import evaluate_dataset

        passed = evaluate_dataset(args.out, mask_source="border", progress=False).passing(args.filter)
        path = write_text_atomic(Path(args.out) / "passed.txt", "".join(f"{name}\n" for name in passed))
        print(f"{len(passed)} of {len(plan.prompts)} objects have a mean hull IoU >= {args.filter:g}; "
              f"list written to {path}")
    return rank_zero


def estimate_line(first: float, batches_left: int) -> str:
    left = first * batches_left
    finish = time.strftime("%H:%M", time.localtime(time.time() + left))
    return (f"first batch took {_duration(first)}; about {_duration(left)} for the {batches_left} left "
            f"(done near {finish})")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def check_images(paths: list[str]) -> None:
    """Every ``--image`` opens as an image, checked before the model loads."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError) as error:
            reason = "no such file" if isinstance(error, FileNotFoundError) else "not a readable image"
            raise TunemvError(f"--image {path}: {reason}") from error


def check_outputs(args: argparse.Namespace, prompts: list[str]) -> set[int]:
    """Refuse, before any model loads, an ``--out`` that is a file, cannot be written, or already holds a
    prompt's folder (unless ``--overwrite`` or ``--resume``); returns the prompts ``--resume`` keeps."""
    import os

    from tunemv.data.format import remove_stale_staging
    from tunemv.sampling.object_folders import object_name

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TunemvError(f"--out {out}: is a file, not a folder")
    existing = next((parent for parent in (out, *out.parents) if parent.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TunemvError(f"--out {out}: {existing} is not writable")
    if args.overwrite and args.resume:
        raise TunemvError("--overwrite and --resume exclude each other: replace every object, or keep the finished ones")
    names = [object_name(index, prompt) for index, prompt in enumerate(prompts)]
    if out.is_dir() and (args.resume or args.overwrite):
        remove_stale_staging(out, names)
    there = {index for index, name in enumerate(names) if (out / name).is_dir()}
    if there and not (args.overwrite or args.resume):
        first = out / names[min(there)]
        raise TunemvError(f"{first}: already exists ({len(there)} of {len(prompts)} objects); --resume keeps the "
                          "finished ones and makes the rest, --overwrite replaces them")
    return there if args.resume else set()
