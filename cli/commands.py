"""The ``tunemv`` command line. One entry function, ``main``; heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tunemv.errors import TunemvError
from tunemv.warning_filters import silence_expected_noise

EXIT_PROBLEMS = 1  # the command ran and found problems (e.g. `data check`)
EXIT_BAD_INPUT = 2  # bad arguments or input files


def _data_check(args: argparse.Namespace) -> int:
    from tunemv.data.check import check_dataset

    report = check_dataset(args.root, min_views=args.min_views)
    for problem in report.problems:
        print(problem)
    print(report.summary(), file=sys.stderr if not report.ok else sys.stdout)
    return 0 if report.ok else EXIT_PROBLEMS


def _data_import_transforms(args: argparse.Namespace) -> int:
    from tunemv.data.importers import import_transforms

    written = import_transforms(args.src, args.out, caption=args.caption, scale=args.scale, overwrite=args.overwrite)
    print(f"imported {len(written)} object(s) into {args.out}")
    return 0


def _data_export_transforms(args: argparse.Namespace) -> int:
    from tunemv.data.exporters import export_transforms

    written = export_transforms(args.src, args.out, depth=args.depth, overwrite=args.overwrite)
    print(f"exported {len(written)} object(s) as transforms.json folders into {args.out}")
    return 0


def _data_procedural(args: argparse.Namespace) -> int:
    from tunemv.data.generate import generate_procedural_dataset

    generate_procedural_dataset(
        args.out, num_objects=args.objects, num_views=args.views, resolution=args.resolution,
        categories=args.categories, seed=args.seed, val_fraction=args.val_fraction,
        supersample=args.supersample, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet,
    )
    print(f"wrote {args.objects} objects to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from tunemv.atomic import write_text_atomic
    from tunemv.evaluation.evaluate import evaluate_dataset

    if args.out is not None and Path(args.out).is_dir():
        raise TunemvError(f"--out {args.out}: is a folder; --out names the metrics JSON file")
    if args.filter_out is not None and args.filter is None:
        raise TunemvError("--filter-out needs --filter MIN_IOU")
    if args.filter is not None and not 0 <= args.filter <= 1:
        raise TunemvError(f"--filter takes a mean hull IoU in [0, 1], got {args.filter}")
    if not 16 <= args.grid <= 512:
        raise TunemvError(f"--grid must be in [16, 512], got {args.grid}")
    if not 16 <= args.mesh_grid <= 256 or args.mesh_samples < 100:
        raise TunemvError(f"--mesh-grid must be in [16, 256] and --mesh-samples >= 100, got {args.mesh_grid} and {args.mesh_samples}")
    if args.threads is not None:
        if args.threads < 1:
            raise TunemvError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.mvc:
        torch.set_flush_denormal(True)  # as `tunemv fit` on CPU: denormal floats made NeuS steps 2x slower
    report = evaluate_dataset(args.root, args.reference, grid=args.grid, mask_source=args.mask_source,
                              white_threshold=args.white_threshold, mvc=args.mvc, mvc_steps=args.mvc_steps,
                              clip=args.clip, classifier=args.classifier, inception=args.inception,
                              mesh_grid=args.mesh_grid, mesh_samples=args.mesh_samples, progress=not args.quiet,
                              skip_unreadable=True)
    # An object that cannot be read is listed (stderr, the table, metrics.json "failed") and the rest are scored;
    # the run fails (exit 2, no metrics.json) only when no object could be scored.
    if not report.objects:
        first = report.failed[0]["error"] if report.failed else "no objects"
        raise TunemvError(f"{args.root}: no object could be scored ({len(report.failed)} failed; the first: {first})")
    for failure in report.failed:
        print(f"tunemv evaluate: warning: not scored: {failure['error']}", file=sys.stderr)
    for warning in report.warnings:
        print(f"tunemv evaluate: warning: {warning}", file=sys.stderr)
    print(report.table())
    print(f"metrics written to {report.write_json(args.out or Path(args.root) / 'metrics.json')}")
    if args.filter is not None:
        passed = report.passing(args.filter)
        path = write_text_atomic(args.filter_out or Path(args.root) / "passed.txt", "".join(f"{i}\n" for i in passed))
        print(f"{len(passed)} of {len(report.objects)} objects have a mean hull IoU >= {args.filter:g}; list written to {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from tunemv.adapters.formats import ADAPTER_FILE, read_adapter_info
    from tunemv.training.export import export_adapter

    figures = None
    if args.figures is not None:
        import json

        try:
            figures = json.loads(Path(args.figures).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise TunemvError(f"--figures {args.figures}: not a readable JSON file ({error})") from error
        if not isinstance(figures, dict):
            raise TunemvError(f"--figures {args.figures}: must be a JSON object of name: value")
    out = export_adapter(args.checkpoint, args.out_dir, ema=args.ema, overwrite=args.overwrite, figures=figures)
    if not (out / ADAPTER_FILE).is_file():
        print(f"exported the stage-1 NeuS to {out} (start an adapter fit from it with model.init_from)")
        return 0
    info = read_adapter_info(out)
    what = "one-step generator" if info.get("sampling") else "adapter"
    print(f"exported {'EMA' if info['ema'] else 'live'} {what} weights to {out}")
    return 0


def _foundation_train_backbone(args: argparse.Namespace) -> int:
    from tunemv.tinyif.train import train_backbone_from_file

    summary = train_backbone_from_file(args.config, out=args.out, device=args.device, threads=args.threads)
    print(f"trained {summary['steps']} steps in {summary['wall_seconds']:.0f} s; backbone written to {summary['out']}")
    return 0


def _foundation_train_classifier(args: argparse.Namespace) -> int:
    from tunemv.evaluation.train_classifier import train_classifier_from_file

    summary = train_classifier_from_file(args.config, out=args.out, device=args.device, threads=args.threads)
    print(f"held-out accuracy: category {summary['heldout_category_accuracy']:.3f}, "
          f"colour {summary['heldout_colour_accuracy']:.3f}; classifier written to {summary['out']}")
    return 0


def _lightning(argv: list[str]) -> int:
    """``tunemv fit|validate|distill ...`` through LightningCLI; config errors become one line and exit code 2."""
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from tunemv.training.lightning_cli import run_lightning

    try:
        # `tunemv distill ...` is LightningCLI's fit with the distillation system and its pseudo-ground-truth data.
        run_lightning(["fit", *argv[1:]], system="distill") if argv[0] == "distill" else run_lightning(argv)
    except (ArgumentError, MisconfigurationException, ValueError, TypeError) as exc:
        # A config Lightning refuses is the user's too; so is one of ours that jsonargparse wrapped while it
        # built a class (`data:` is a union, so a DatasetError or CacheError comes back inside a union message
        # with the tracebacks of every alternative): the innermost error of ours is the one line.
        cause = _tunemv_cause(exc)
        if cause is None and not isinstance(exc, ArgumentError | MisconfigurationException):
            raise
        print(f"tunemv {argv[0]}: error: {_file_error(cause or exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as exc:  # --help and --print_config exit; main returns codes instead
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


def _tunemv_cause(exc: BaseException) -> TunemvError | None:
    """The first TunemvError in ``exc``'s chain of causes and contexts (``exc`` itself included), or None."""
    seen, pending = set(), [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TunemvError):
            return current
        pending += [current.__cause__, current.__context__]
    return None


def _file_error(exc: BaseException) -> str:
    """One line naming the file: OSErrors carry it in ``filename`` (read-only folders, a directory given as a
    file, an unreadable image), ours in their message."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunemv", description="Multiview adapters for frozen 2D diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # fit/validate never reach argparse (main hands them to LightningCLI); they are listed for --help only.
    commands.add_parser("fit", add_help=False,
                        help="train an adapter: tunemv fit --config configs/X.yaml (see tunemv fit --help)")
    commands.add_parser("distill", add_help=False,
                        help="distil an adapter into a one-step generator (GECO): tunemv distill --config "
                             "configs/distill_demo.yaml")
    commands.add_parser("validate", add_help=False, help="validation losses of a checkpoint: "
                        "tunemv validate --config configs/X.yaml --ckpt_path CKPT")

    export = commands.add_parser("export", help="write a checkpoint's NeuS and control branch as diffusers folders")
    export.add_argument("checkpoint", help="a checkpoint written by tunemv fit (e.g. outputs/tiny/checkpoints/last.ckpt)")
    export.add_argument("out_dir", help="output folder: neus/, control_branch/, adapter.json")
    export.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="export the EMA (--ema) or the live (--no-ema) weights; default: the EMA when the "
                             "run kept one (model.ema.decay)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    export.add_argument("--figures", default=None, metavar="JSON",
                        help="a JSON object of measured figures (name: value) for the folder's model card")
    export.set_defaults(handler=_export)

    from tunemv.cli.sample import add_sample_parser  # argparse only; torch loads when it runs

    add_sample_parser(commands)

    from tunemv.cli.demo import add_demo_parser

    add_demo_parser(commands)

    from tunemv.cli.app import add_app_parser  # argparse only; Gradio and torch load when it runs

    add_app_parser(commands)

    evaluate = commands.add_parser("evaluate", help="multiview consistency, fidelity and alignment metrics of a "
                                   "dataset-format folder (e.g. what tunemv sample wrote)")
    evaluate.add_argument("root", help="dataset root (or a single object folder)")
    evaluate.add_argument("--reference", default=None, metavar="GT_DIR",
                          help="ground truth in the dataset format, matched by object id and camera: PSNR, SSIM, LPIPS, FID/KID, "
                               "mesh accuracy where it has mesh.ply, and novel-view accuracy (mask IoU, PSNR, SSIM per "
                               "azimuth offset from the reference view listed in sampling.json, else view 0), camera "
                               "retrieval by silhouette, and the same for the baseline that copies the reference into "
                               "every view (copy_*)")
    evaluate.add_argument("--out", default=None, help="metrics JSON (default: ROOT/metrics.json)")
    evaluate.add_argument("--filter", type=float, default=None, metavar="MIN_IOU",
                          help="write the ids of objects whose mean hull IoU is >= MIN_IOU (data-engine quality filter)")
    evaluate.add_argument("--filter-out", default=None, metavar="FILE", help="where --filter writes (default: ROOT/passed.txt)")
    evaluate.add_argument("--grid", type=int, default=96, help="visual-hull voxels per axis (default: 96)")
    evaluate.add_argument("--mask-source", default="auto", choices=("auto", "alpha", "masks", "threshold", "border"),
                          help="foreground masks: alpha, else masks/, else white threshold (auto, the default), or one only; "
                               "border: against the border's median colour (generated views with tinted backgrounds)")
    evaluate.add_argument("--white-threshold", type=float, default=None,
                          help="threshold masks: a pixel with every channel above this is background (default: the "
                               "dataset loader's, 0.97)")
    evaluate.add_argument("--mesh-grid", type=int, default=64,
                          help="volume-IoU voxels per axis of mesh accuracy, where the reference has mesh.ply (default: 64)")
    evaluate.add_argument("--mesh-samples", type=int, default=30000,
                          help="surface points per mesh for the Chamfer distance (default: 30000)")
    evaluate.add_argument("--mvc", action="store_true", help="also fit NeuS per object and report its reprojection error (slow)")
    evaluate.add_argument("--mvc-steps", type=int, default=100, help="NeuS fitting steps per object (default: 100)")
    evaluate.add_argument("--clip", default=None, metavar="PATH_OR_ID", help="CLIP model for text/image similarity")
    evaluate.add_argument("--classifier", default=None, metavar="DIR", help="attribute classifier for prompt fidelity")
    evaluate.add_argument("--inception", default=None, metavar="FILE",
                          help="torch-fidelity Inception weights for FID/KID (default: the torch hub cache)")
    evaluate.add_argument("--threads", type=int, default=None,
                          help="torch CPU threads (default: torch's; 1 is fastest on a busy machine: the tensors are small)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=_evaluate)

    data = commands.add_parser("data", help="create, import and validate multiview datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    check = data_commands.add_parser("check", help="validate every object of a dataset folder")
    check.add_argument("root", help="dataset root (or a single object folder)")
    check.add_argument("--min-views", type=int, default=1, help="minimum views per object (default: 1)")
    check.set_defaults(handler=_data_check)

    imp = data_commands.add_parser("import-transforms",
                                   help="convert NeRF-synthetic/Blender transforms.json render folders to tunemv format")
    imp.add_argument("src", help="a folder with transforms*.json, or a folder of such folders")
    imp.add_argument("out", help="output object folder (single source) or dataset root (folder of sources)")
    imp.add_argument("--caption", default=None, help="caption for every object (default: the source folder name)")
    imp.add_argument("--scale", type=float, default=1.0,
                     help="multiply camera positions so the object fits the unit sphere (NeRF-synthetic: ~0.66)")
    imp.add_argument("--overwrite", action="store_true", help="replace existing output object folders")
    imp.set_defaults(handler=_data_import_transforms)

    exp = data_commands.add_parser("export-transforms",
                                   help="write NeRF-synthetic/nerfstudio transforms.json folders (RGBA) for objects")
    exp.add_argument("src", help="an object folder, or a dataset root (every object)")
    exp.add_argument("out", help="output transforms folder (one object) or a folder of them (a root)")
    exp.add_argument("--depth", action="store_true", help="also write depth/NNN.npy (the objects need depth/)")
    exp.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    exp.set_defaults(handler=_data_export_transforms)

    from tunemv.data.vocabulary import CATEGORIES  # plain Python: --help imports no torch

    proc = data_commands.add_parser("procedural", help="render a procedural multiview dataset of analytic 3D objects")
    proc.add_argument("--out", required=True, help="output dataset root")
    proc.add_argument("--objects", type=int, default=200, help="number of objects (default: 200)")
    proc.add_argument("--views", type=int, default=16, help="views per object at uniform azimuth (default: 16)")
    proc.add_argument("--resolution", type=int, default=64, help="image size in pixels (default: 64)")
    proc.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES, metavar="CATEGORY",
                      help=f"categories to draw from (default: all of {', '.join(CATEGORIES)})")
    proc.add_argument("--seed", type=int, default=0, help="the dataset is a pure function of its seed (default: 0)")
    proc.add_argument("--val-fraction", type=float, default=0.1, help="fraction of objects listed in val.txt")
    proc.add_argument("--supersample", type=int, default=2, help="supersampling factor per axis (default: 2)")
    proc.add_argument("--workers", type=int, default=0, help="worker processes (default: 0 = one per CPU core)")
    proc.add_argument("--overwrite", action="store_true", help="replace existing object folders")
    proc.add_argument("--quiet", action="store_true", help="no progress bar")
    proc.set_defaults(handler=_data_procedural)

    foundation = commands.add_parser("foundation", help="train the project's own tiny backbone and attribute classifier")
    foundation_commands = foundation.add_subparsers(dest="foundation_command", required=True, metavar="FOUNDATION_COMMAND")
    for name, handler, what in (("train-backbone", _foundation_train_backbone, "the tiny IF-like text-to-image backbone"),
                                ("train-classifier", _foundation_train_classifier, "the category/colour classifier")):
        sub = foundation_commands.add_parser(name, help=f"train {what} from a recipe YAML")
        sub.add_argument("--config", required=True, help="recipe YAML (e.g. configs/foundation/tiny_if.yaml)")
        sub.add_argument("--out", default=None, help="output folder (default: the recipe's train.out)")
        sub.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the recipe's, auto)")
        sub.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the recipe's)")
        sub.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code. ``python -m tunemv`` and the ``tunemv`` script both land here."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: show the traceback behind a one-line error
    argv = [arg for arg in argv if arg != "--debug"]
    silence_expected_noise()
    try:
        if argv and argv[0] in ("fit", "validate", "distill"):
            return _lightning(argv)
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except (TunemvError, OSError) as exc:  # bad input, or a file the user named that cannot be read or written
        if debug:
            raise
        print(f"tunemv: error: {_file_error(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("tunemv: interrupted", file=sys.stderr)
        return 130
