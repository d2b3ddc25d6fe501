"""``evaluate_dataset``: every metric of this package over a dataset-format folder (what ``tunemv sample`` writes).

Per object: hull IoU and photo-consistency always; MVC with ``mvc=True``; PSNR/SSIM/LPIPS, novel-view accuracy
by azimuth offset with camera retrieval and the copy baseline (``novel_view.py``), CLIP image similarity and
FID/KID with a ``reference`` folder; mesh accuracy where the reference object has mesh.ply; CLIP text similarity with ``clip``; prompt fidelity with
``classifier``. Whatever cannot be computed is an "unavailable: <reason>" string. Models are loaded once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tunemv.data.dataset import WHITE_THRESHOLD
from tunemv.data.format import CAMERAS_FILE, MESH_FILE, is_object_dir, read_mesh, read_object
from tunemv.errors import DatasetError
from tunemv.evaluation.availability import unavailable
from tunemv.evaluation.clip import load_clip
from tunemv.evaluation.distribution import DistributionMetrics, load_inception
from tunemv.evaluation.fidelity import fidelity, load_lpips, match_views
from tunemv.evaluation.hull import carve_visual_hull, hull_candidates, render_hull, silhouette_iou
from tunemv.evaluation.mesh_accuracy import DEFAULT_RESOLUTION, DEFAULT_SAMPLES, mesh_accuracy
from tunemv.evaluation.novel_view import SUMMARY_KEYS as NOVEL_KEYS
from tunemv.evaluation.novel_view import novel_view_metrics
from tunemv.evaluation.photo import photo_consistency
from tunemv.evaluation.pose import POSE_KEYS, pose_accuracy
from tunemv.evaluation.prompt import load_classifier, prompt_fidelity
from tunemv.evaluation.report import EvaluationReport, ObjectResult
from tunemv.evaluation.views import ObjectViews, load_views, object_dirs

SAMPLING_FILE = "sampling.json"  # written by `tunemv sample`; "references" lists the clean input views
PHOTO_TOLERANCE_VOXELS = 2.0  # depth-test slack of the photo-consistency visibility, in hull voxels


def evaluate_dataset(root: str | os.PathLike, reference: str | os.PathLike | None = None, *, grid: int = 96,
                     mask_source: str = "auto", white_threshold: float | None = None, mvc: bool = False,
                     mvc_steps: int = 100, clip=None, classifier=None, inception: str | os.PathLike | None = None,
                     mesh_grid: int = DEFAULT_RESOLUTION, mesh_samples: int = DEFAULT_SAMPLES,
                     progress: bool = False, skip_unreadable: bool = False) -> EvaluationReport:
    """Evaluate every object under ``root`` (or ``root`` itself, one object folder).

    ``reference``: ground truth in the dataset format, matched by object id and camera. ``clip``: a CLIP folder
    or hub id. ``classifier``: an attribute classifier folder, or an object with its API. ``inception``: a
    torch-fidelity Inception weights file (default: its torch hub cache). ``mesh_grid``, ``mesh_samples``: the
    volume-IoU grid and the Chamfer surface samples of mesh accuracy. Bad arguments raise ``DatasetError``
    naming the file, as does an object that cannot be read (a corrupt image, a broken reference object),
    unless ``skip_unreadable`` (what ``tunemv evaluate`` passes): then it is listed in ``report.failed`` with its
    error and the others are scored. An object whose masks are all empty (fully transparent views) is scored
    (0) and named in ``report.warnings``.
    """
    white_threshold = WHITE_THRESHOLD if white_threshold is None else white_threshold
    directories = object_dirs(root)
    references = _reference_dirs(directories, Path(reference)) if reference is not None else None
    scorer = load_clip(clip) if clip is not None else unavailable("no CLIP model given (--clip)")
    attributes = classifier  # the loaded classifier, or why there is none
    if classifier is None:
        attributes = unavailable("no attribute classifier given (--classifier)")
    elif isinstance(classifier, (str, os.PathLike)):
        attributes = load_classifier(classifier)
    lpips = load_lpips() if references else None
    needs_reference = unavailable("needs ground truth (--reference)")
    distribution = DistributionMetrics(load_inception(inception) if references else needs_reference)

    results, failed, warned = [], [], []
    for index, directory in enumerate(tqdm(directories, desc="evaluating", unit="obj", disable=not progress)):
        try:  # an object that cannot be read is listed as failed; the others are still scored
            result, pair, warning = _evaluate_object(
                directory, references[index] if references else None, grid, mask_source, white_threshold, mvc,
                mvc_steps, scorer, attributes, lpips, needs_reference, mesh_grid, mesh_samples)
        except DatasetError as error:
            if not skip_unreadable:
                raise
            failed.append({"object": directory.name, "error": str(error)})
            continue
        results.append(result)
        if pair is not None:
            distribution.update(*pair)
        if warning is not None:
            warned.append(warning)
    settings = {"grid": grid, "mask_source": mask_source, "white_threshold": white_threshold, "mvc": mvc,
                "mvc_steps": mvc_steps if mvc else None, "clip": _name(clip),
                "classifier": _name(classifier),
                "photo_tolerance_voxels": PHOTO_TOLERANCE_VOXELS, "mesh_grid": mesh_grid, "mesh_samples": mesh_samples}
    return EvaluationReport(str(root), None if reference is None else str(reference), settings, results,
                            distribution.compute() if results else {}, failed=failed, warnings=warned)


def _evaluate_object(directory: Path, reference: Path | None, grid: int, mask_source: str, white_threshold: float,
                     mvc: bool, mvc_steps: int, scorer, attributes, lpips, needs_reference: str, mesh_grid: int,
                     mesh_samples: int) -> tuple[ObjectResult, tuple | None, str | None]:
    """One object's result, the (generated, matched truth) views for FID/KID (None without a reference), and a
    warning when its masks are empty (an invisible object scores 0, which is no measure of consistency)."""
    start = time.perf_counter()
    views = load_views(directory, mask_source, white_threshold)
    warning = None
    if not views.masks.any():
        warning = (f"{directory}: every view's mask is empty (mask_source={mask_source!r}: e.g. fully transparent "
                   "images); its scores are 0 and measure nothing")
    metrics, per_view = consistency(views, grid)
    metrics.update(_mvc(views, mvc_steps) if mvc else _missing(["mvc_psnr", "mvc_mse"], "not requested (--mvc)"))
    generated = generated_views(directory, views.num_views)
    images, matched, pair = views.images[generated], None, None  # matched: the reference view of each camera
    if reference is not None and not generated.any():
        metrics.update(_missing(["psnr", "ssim", "lpips", *NOVEL_KEYS],
                                f"every view is a clean reference ({SAMPLING_FILE})"))
    elif reference is not None:
        truth = load_views(reference, mask_source, white_threshold)
        cameras = match_views(views, truth, reference / CAMERAS_FILE)
        matched = truth.images[cameras][generated]
        scores = fidelity(images, matched, lpips)
        per_view["psnr"] = scores.pop("psnr_per_view")
        per_view["fidelity_views"] = torch.nonzero(generated).flatten().tolist()
        metrics.update(scores)
        novel, novel_per_view = novel_view_metrics(views, truth, cameras, generated)
        metrics.update(novel)
        per_view.update(novel_per_view)
        pair = (images, matched)
    else:
        metrics.update(_missing(["psnr", "ssim", "lpips", *NOVEL_KEYS], needs_reference))
    metrics.update(mesh_metrics(views, reference, mesh_grid, mesh_samples))
    metrics.update(_clip(scorer, views, images, matched))
    if isinstance(attributes, str):
        metrics.update(_missing(["prompt_category", "prompt_colour", *POSE_KEYS], attributes))
    else:
        metrics.update(prompt_fidelity(attributes, views.images, views.captions[0]))
        metrics.update(pose_accuracy(attributes, views.images, views.cameras, views.captions[0]))
    result = ObjectResult(views.object_id, views.num_views, metrics, per_view, round(time.perf_counter() - start, 3))
    return result, pair, warning


@torch.no_grad()
def consistency(views: ObjectViews, grid: int) -> tuple[dict, dict]:
    """Hull IoU (mean and per view) and photo-consistency of one object's views."""
    height, width = views.images.shape[-2:]
    occupancy = carve_visual_hull(views.masks, views.cameras, grid)
    candidates = hull_candidates(views.masks, views.cameras, grid)
    hull = render_hull(occupancy, views.cameras, height, width, candidates=candidates)
    iou = silhouette_iou(hull.silhouette, views.masks)
    photo = photo_consistency(views.images, views.masks, views.cameras, hull,
                              tolerance=PHOTO_TOLERANCE_VOXELS * 2 / grid)
    metrics: dict = {"hull_iou": float(iou.mean())}
    if photo.psnr is None:
        metrics.update(_missing(["photo_psnr", "photo_variance"],
                                "no hull surface point is seen by 2 views (the silhouettes disagree)"))
    else:
        metrics.update(photo_psnr=photo.psnr, photo_variance=photo.variance)
    return metrics, {"hull_iou": iou.tolist()}


def mesh_metrics(views: ObjectViews, reference: Path | None, grid: int, samples: int) -> dict:
    """Chamfer and volume IoU against the reference's mesh.ply: of the object's own mesh.ply (``mesh_*``) and,
    as a yardstick, of the visual hull carved from its views on the same grid (``hull_mesh_*``)."""
    names = ["mesh_chamfer", "mesh_volume_iou", "hull_mesh_chamfer", "hull_mesh_volume_iou"]
    if reference is None:
        return _missing(names, "needs ground truth (--reference)")
    truth_path = read_object(reference).mesh_path
    if truth_path is None:
        return _missing(names, f"the reference object has no {MESH_FILE}")
    truth = read_mesh(truth_path)
    if views.mesh_path is None:
        scores = _missing(names[:2], f"the object folder has no {MESH_FILE} (tunemv sample --mesh writes one)")
    else:
        scores = {f"mesh_{k}": v for k, v in mesh_accuracy(read_mesh(views.mesh_path), truth, grid, samples).items()}
    hull = carve_visual_hull(views.masks, views.cameras, grid)
    if hull.any():
        scores.update({f"hull_mesh_{k}": v for k, v in mesh_accuracy(hull, truth, grid, samples).items()})
    else:  # no surface to sample: IoU is 0, Chamfer has no value
        scores.update(hull_mesh_chamfer=unavailable("the visual hull is empty"), hull_mesh_volume_iou=0.0)
    return scores


def _mvc(views: ObjectViews, steps: int) -> dict:
    from tunemv.evaluation.mvc import fit_and_reproject  # imports the NeuS model (diffusers)

    result = fit_and_reproject(views.images, views.masks, views.cameras, steps=steps)
    return {"mvc_psnr": result.psnr, "mvc_mse": result.mse}


def _clip(scorer, views: ObjectViews, images: torch.Tensor, matched: torch.Tensor | None) -> dict:
    """CLIP text score of every view; image score of the generated ``images`` against their ``matched`` truth."""
    if isinstance(scorer, str):
        return _missing(["clip_text", "clip_image"], scorer)
    return {"clip_text": float(scorer.text_image(views.images, views.captions[0]).mean()),
            "clip_image": unavailable("needs ground truth (--reference) and a generated view") if matched is None
            else float(scorer.image_image(images, matched).mean())}


def generated_views(directory: Path, num_views: int) -> torch.Tensor:
    """(V,) bool: False for the clean reference views that ``tunemv sample`` lists in sampling.json (image ->
    multiview returns them unchanged, so they would score PSNR = inf against ground truth)."""
    keep = torch.ones(num_views, dtype=torch.bool)
    path = directory / SAMPLING_FILE
    if not path.is_file():
        return keep
    try:
        listed = json.loads(path.read_text(encoding="utf-8")).get("references", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise DatasetError(path, f"not a JSON object ({type(exc).__name__}: {exc})") from exc
    if not isinstance(listed, list) or not all(isinstance(i, int) and 0 <= i < num_views for i in listed):
        raise DatasetError(path, f"references must be a list of view indices in [0, {num_views}), got {listed!r}")
    keep[listed] = False
    return keep


def _name(thing) -> str | None:
    return None if thing is None else str(thing) if isinstance(thing, str | os.PathLike) else type(thing).__name__


def _missing(names: list[str], reason: str) -> dict:
    reason = reason if reason.startswith("unavailable: ") else unavailable(reason)
    return dict.fromkeys(names, reason)


def _reference_dirs(directories: list[Path], reference: Path) -> list[Path]:
    """The reference folder of each object (by id); checked before any work starts."""
    if is_object_dir(reference) and len(directories) == 1 and not is_object_dir(reference / directories[0].name):
        return [reference]  # one object folder against one object folder
    if not reference.is_dir():
        raise DatasetError(reference, "reference folder does not exist or is not a folder")
    found = [reference / d.name for d in directories]
    for path in found:
        if not is_object_dir(path):
            raise DatasetError(path, f"the reference has no object {path.name!r} (reference mismatch)")
    return found

