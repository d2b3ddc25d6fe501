"""``tunemv demo``: the README's main job, end to end on 2 CPU cores.

1. data: ``--objects`` procedural chairs (16 views, 32 px) under OUT/chairs, reused when already there;
2. fit: an adapter on the frozen ``models/tiny-if`` backbone (``configs/demo.yaml``: it starts from the
   pretrained field ``models/tiny-neus``) for the config's fixed number of steps, so the result does not
   depend on how fast the machine is; then OUT/adapter (``tunemv export``) from the final EMA weights;
3. sample: text→multiview for each ``--prompt`` and image→multiview from a held-out chair's view, each with
   views, grid.png, turntable.gif and a mesh, under OUT/text-to-multiview and OUT/image-to-multiview;
4. measure: each sample's field silhouettes against its views' masks, and the image→multiview mesh against
   the held-out chair's ground-truth mesh (volume IoU, Chamfer), next to the initial sphere's.

Every stage calls the library functions its own command calls (``generate_procedural_dataset``,
``run_lightning``, ``export_adapter``, ``MultiviewPipeline`` and ``write_object_folders``); the demo only chains them
and times them. ``--adapter DIR`` skips stages 1-2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tunemv.errors import TunemvError

DEFAULT_PROMPTS = ("a red chair with a tall back and four thin legs", "a blue chair with arms")
FIT_TARGET_S, SAMPLE_TARGET_S = 12 * 60, 60  # targets on 2 CPU cores


def add_demo_parser(commands) -> None:
    demo = commands.add_parser(
        "demo", help="the main job: fit an adapter on the tiny backbone with procedural chairs, then sample",
        description=__doc__.split("\n\n")[0] + " Prints where every output is.")
    demo.add_argument("--out", default="outputs/demo", help="output root (default: outputs/demo)")
    demo.add_argument("--config", default="configs/demo.yaml", help="fit config (default: configs/demo.yaml)")
    demo.add_argument("--objects", type=int, default=200, help="procedural chairs to fit on (default: 200)")
    demo.add_argument("--max-steps", type=int, default=None,
                      help="fit steps (default: the config's trainer.max_steps, sized for 12 minutes on a slow machine)")
    demo.add_argument("--adapter", default=None, help="skip data and fit: sample with this adapter folder")
    demo.add_argument("--prompt", action="append", default=None,
                      help=f"text→multiview prompt (repeatable; default: {' / '.join(DEFAULT_PROMPTS)})")
    demo.add_argument("--num-views", type=int, default=8, help="views per sample (default: 8)")
    demo.add_argument("--steps", type=int, default=30, help="denoising steps per sample (DDPM, the tiny backbone's own rule; default: 30)")
    demo.add_argument("--sampler", default="mv", help="sampler (default: mv)")
    demo.add_argument("--guidance-scale", type=float, default=4.0,
                      help="text CFG scale (default: 4, where the tiny backbone's samples are cleanest)")
    demo.add_argument("--mesh-resolution", type=int, default=96, help="marching-cubes grid (default: 96)")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    timings: dict[str, float] = {}
    if args.adapter is None:
        config = Path(args.config)
        if not config.is_file():
            raise TunemvError(f"{config}: no such config (run tunemv demo from the repository root, or pass --config)")
        chairs = prepare_chairs(out / "chairs", args.objects)
        adapter, steps, timings["fit"] = fit_adapter(config, chairs, out, args.max_steps)
        print(f"[demo] fit {steps} steps in {timings['fit']:.0f} s "
              f"(target <= {FIT_TARGET_S} s on 2 CPU cores); adapter: {adapter}")
    else:
        adapter, chairs = Path(args.adapter), out / "chairs"
        if not chairs.is_dir():
            chairs = prepare_chairs(chairs, 20)  # only a held-out chair for image→multiview is needed
    reference, caption, elevation = held_out_view(chairs)
    jobs = [("text→multiview", prompt, {}, out / "text-to-multiview") for prompt in args.prompt or DEFAULT_PROMPTS]
    jobs.append((f"image→multiview from {reference}", caption, {"reference_images": [str(reference)],
                 "elevation": elevation}, out / "image-to-multiview"))
    results = sample_jobs(adapter, jobs, args)
    for (kind, prompt, _, root), (seconds, silhouette_iou) in zip(jobs, results, strict=True):
        folder = next(p for p in sorted(root.iterdir()) if p.is_dir() and p.name.endswith(slug(prompt)))
        print(f"[demo] {kind}: '{prompt}' in {seconds:.1f} s (target <= {SAMPLE_TARGET_S} s, including loading); "
              f"field silhouettes vs the views' masks: IoU {silhouette_iou:.3f}")
        for name in ("grid.png", "turntable.gif", "mesh.glb", "mesh.ply", "images"):
            print(f"         {folder / name}")
    truth = reference.parent.parent / "mesh.ply"
    if truth.is_file():
        print(mesh_report(folder / "mesh.ply", truth))
    return 0


def mesh_report(mesh_path: Path, truth_path: Path) -> str:
    """The generated mesh against the held-out object's ground truth, next to the initial field's sphere."""
    import trimesh

    from tunemv.data.format import read_mesh
    from tunemv.evaluation.mesh_accuracy import mesh_accuracy
    from tunemv.neus.latent_sparseneus import LatentSparseNeuS

    truth = read_mesh(truth_path)
    ours = mesh_accuracy(trimesh.load(mesh_path, force="mesh"), truth)
    sphere = mesh_accuracy(trimesh.creation.icosphere(4, LatentSparseNeuS().config.init_radius), truth)
    return (f"[demo] image→multiview mesh vs the held-out chair's ground truth ({truth_path}): volume IoU "
            f"{ours['volume_iou']:.3f}, Chamfer {ours['chamfer']:.3f}; the initial sphere: volume IoU "
            f"{sphere['volume_iou']:.3f}, Chamfer {sphere['chamfer']:.3f}")


def sample_jobs(adapter: Path, jobs: list[tuple[str, str, dict, Path]], args: argparse.Namespace
                ) -> list[tuple[float, float]]:
    """Each (kind, prompt, extra pipeline options, output root) sampled and written as ``tunemv sample`` does;
    returns the seconds each took (the pipeline's loading counted in every one, as a fresh command would)
    and the mask IoU of the field's silhouettes with the views' own masks."""
    import torch

    from tunemv.sampling.object_folders import ObjectFolderOptions, write_object_folders
    from tunemv.sampling.options import build_sampler
    from tunemv.sampling.pipeline import MultiviewPipeline

    build_sampler(args.sampler)  # an unknown name fails before the model loads
    start = time.perf_counter()
    pipe = MultiviewPipeline.from_pretrained(adapter).to("cuda" if torch.cuda.is_available() else "cpu")
    loading = time.perf_counter() - start
    seconds = []
    for index, (_, prompt, extra, root) in enumerate(jobs):
        start = time.perf_counter()
        seed = 0 if extra else index  # text jobs: one seed per prompt; the image job: seed 0
        options = dict(num_views=args.num_views, steps=args.steps, sampler=args.sampler,
                       guidance_scale=args.guidance_scale, **extra)
        output = pipe(prompt, seed=seed, progress=False, **options)
        settings = {**options, "seed": seed, "backbone": pipe.backbone.name_or_path}
        write_object_folders(output, root, settings=settings, log=print,
                             options=ObjectFolderOptions(mesh_resolution=args.mesh_resolution, overwrite=True))
        elapsed = loading + time.perf_counter() - start
        seconds.append((elapsed, silhouette_agreement(output)))
    return seconds


def silhouette_agreement(output) -> float:
    """Mask IoU of the field's rendered opacity (>= 0.5) at the views' cameras with the views' own masks
    (against the border's colour: the tiny backbone's backgrounds are near-white but tinted): whether the
    turntable shows the object."""
    from tunemv.evaluation.views import silhouette_iou

    return silhouette_iou(output.field.silhouettes()[0, :, 0], output.pixels[0])


def slug(prompt: str) -> str:
    from tunemv.sampling.object_folders import object_name

    return object_name(0, prompt)[5:]


def prepare_chairs(root: Path, objects: int) -> Path:
    """Procedural chairs at the tiny backbone's 32 px; an existing complete set is reused, not rendered again."""
    from tunemv.data.generate import generate_procedural_dataset

    if (root / "train.txt").is_file() and (root / "val.txt").is_file():
        count = len((root / "train.txt").read_text().split()) + len((root / "val.txt").read_text().split())
        if count >= objects:
            print(f"[demo] reusing {count} chairs in {root}")
            return root
    if objects < 2:
        raise TunemvError(f"--objects must be >= 2 (one chair is held out for image→multiview), got {objects}")
    start = time.perf_counter()
    generate_procedural_dataset(root, num_objects=objects, num_views=16, resolution=32, categories=["chair"],
                                seed=0, val_fraction=max(0.1, 1 / objects), overwrite=True, progress=False)
    print(f"[demo] rendered {objects} chairs x 16 views in {time.perf_counter() - start:.0f} s: {root}")
    return root


def fit_adapter(config: Path, chairs: Path, out: Path, max_steps: int | None) -> tuple[Path, int, float]:
    """``tunemv fit`` for a fixed number of steps, then ``tunemv export`` of the final (EMA) weights."""
    from tunemv.adapters.formats import read_adapter_info
    from tunemv.training.export import export_adapter
    from tunemv.training.lightning_cli import run_lightning

    if max_steps is not None and max_steps < 1:
        raise TunemvError(f"--max-steps must be >= 1, got {max_steps}")
    fit_dir = out / "fit"
    argv = ["fit", "--config", str(config), "--data.init_args.root", str(chairs),
            "--trainer.default_root_dir", str(fit_dir),  # the logs and checkpoints follow it
            *(["--trainer.max_steps", str(max_steps)] if max_steps else [])]
    start = time.perf_counter()
    cli = run_lightning(argv)
    elapsed = time.perf_counter() - start
    # The run may end between periodic checkpoints: save its final state explicitly.
    final = fit_dir / "checkpoints" / "final.ckpt"
    cli.trainer.save_checkpoint(final, weights_only=True)
    adapter = export_adapter(final, out / "adapter", overwrite=True)
    info = read_adapter_info(adapter)
    return adapter, int(info["global_step"]), elapsed


def held_out_view(chairs: Path) -> tuple[Path, str, float]:
    """View 0 of the first held-out chair, its caption and its camera elevation in degrees."""
    names = (chairs / "val.txt").read_text().split() if (chairs / "val.txt").is_file() else []
    if not names:
        raise TunemvError(f"{chairs}/val.txt: no held-out chair for image→multiview")
    folder = chairs / names[0]
    caption = (folder / "caption.txt").read_text().splitlines()[0].strip()
    elevation = float(json.loads((folder / "attributes.json").read_text())["elevation_deg"])
    return folder / "images" / "000.png", caption, elevation
