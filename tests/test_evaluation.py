"""`tunemv evaluate`: calibrated consistency metrics, fidelity, unavailable metrics, the quality filter, errors.

Calibration: procedural ground-truth renders must score near each metric's ceiling; the same views shuffled
across objects, views whose cameras are perturbed, and views whose colours disagree must score clearly lower.
The measured numbers (seeded, 6 objects x 12 views at 48 px, grid 96) sit next to each threshold and in
evaluation/README.md.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunemv.cli import main
from tunemv.errors import DatasetError
from tunemv.evaluation.availability import is_unavailable
from tunemv.evaluation.distribution import DistributionMetrics
from tunemv.evaluation.evaluate import evaluate_dataset
from tunemv.evaluation.mvc import fit_and_reproject
from tunemv.evaluation.views import load_views, object_dirs

NUM_OBJECTS, NUM_VIEWS, RESOLUTION, GRID = 6, 12, 48, 96


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: extra threads only add contention on a shared machine
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ variants
def object_ids(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "cameras.json").is_file())


def shuffled(source: Path, out: Path) -> Path:
    """View i of object k is view i (same camera) of another object: ((k + 1 + i mod (N-1)) mod N)."""
    shutil.copytree(source, out)
    ids = object_ids(source)
    for k, object_id in enumerate(ids):
        for i in range(NUM_VIEWS):
            other = ids[(k + 1 + i % (len(ids) - 1)) % len(ids)]
            for sub, suffix in (("images", ".png"), ("masks", ".png"), ("depth", ".npy")):
                shutil.copy(source / other / sub / f"{i:03d}{suffix}", out / object_id / sub / f"{i:03d}{suffix}")
    return out


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(degrees)
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def perturbed(source: Path, out: Path, degrees=(10.0, 15.0), shift: float = 0.0, seed: int = 0) -> Path:
    """Every camera is rotated about the world origin by a random 10-15 deg (and moved by ``shift``):
    the views still show the object, but from a pose other than the one cameras.json states."""
    shutil.copytree(source, out)
    rng = np.random.default_rng(seed)
    for path in sorted(out.glob("*/cameras.json")):
        meta = json.loads(path.read_text())
        for view in meta["views"]:
            c2w = np.asarray(view["c2w"])
            c2w[:3] = rotation(rng.normal(size=3), rng.uniform(*degrees)) @ c2w[:3]
            direction = rng.normal(size=3)
            c2w[:3, 3] += shift * direction / np.linalg.norm(direction)
            view["c2w"] = c2w.tolist()
        path.write_text(json.dumps(meta))
    return out


def recoloured(source: Path, out: Path) -> Path:
    """Every other view is tinted half-way to cyan: the silhouettes agree, the colours do not."""
    shutil.copytree(source, out)
    for path in sorted(out.glob("*/images/*.png"))[::2]:
        rgba = np.asarray(Image.open(path)).astype(np.float32)
        rgba[..., :3] = 0.5 * rgba[..., :3] + 0.5 * np.array([0, 200, 255])
        Image.fromarray(rgba.round().astype(np.uint8)).save(path)
    return out


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> Path:
    from tunemv.data.generate import generate_procedural_dataset

    root = tmp_path_factory.mktemp("evaluation") / "truth"
    torch.set_num_threads(1)
    generate_procedural_dataset(root, num_objects=NUM_OBJECTS, num_views=NUM_VIEWS, resolution=RESOLUTION,
                                seed=0, workers=1, progress=False)  # chair, table, stool, lamp, mug, vase: ~1 s
    return root


@pytest.fixture(scope="module")
def reports(truth) -> dict:
    """Reports of the ground truth and of each corrupted copy, computed once (~0.15 s per object)."""
    torch.set_num_threads(1)
    variants = {"truth": truth, "shuffled": shuffled(truth, truth.parent / "shuffled"),
                "rotated": perturbed(truth, truth.parent / "rotated"),
                "moved": perturbed(truth, truth.parent / "moved", shift=0.15),
                "recoloured": recoloured(truth, truth.parent / "recoloured")}
    reports = {name: evaluate_dataset(root, grid=GRID) for name, root in variants.items()}
    for name, report in reports.items():  # the calibration table (pytest -s)
        iou = ", ".join(f"{x:.3f}" for x in column(report, "hull_iou"))
        psnr = ", ".join(f"{x:.1f}" if isinstance(x, float) else "n/a" for x in column(report, "photo_psnr"))
        print(f"{name:>10}: hull IoU {iou} | photo PSNR {psnr} | {np.mean([r.seconds for r in report.objects]):.2f} s/object")
    return reports


def column(report, name: str) -> list:
    return [r.metrics[name] for r in report.objects]


# --------------------------------------------------------------------------------------- calibration
def test_ground_truth_renders_score_near_the_ceiling(reports):
    truth = reports["truth"]
    # Measured: hull IoU 0.939-0.992 (mean 0.962; voxel and pixel discretisation keep it below 1).
    assert min(column(truth, "hull_iou")) >= 0.92
    # Measured: photo PSNR 35.3-59.2 dB (mean 48.6); exact depth instead of the hull gives 40-63 dB.
    assert min(column(truth, "photo_psnr")) >= 32.0


def test_views_shuffled_across_objects_score_far_lower(reports):
    shuffled, truth = reports["shuffled"], reports["truth"]
    # Measured: hull IoU 0.000-0.103 (the silhouettes of six objects carve almost nothing in common).
    assert max(column(shuffled, "hull_iou")) <= 0.25
    # Measured: photo PSNR 15.6-17.4 dB; one object's hull is empty, so its photo metric is unavailable.
    photo = column(shuffled, "photo_psnr")
    assert all(value <= 22.0 for value in photo if isinstance(value, float))
    assert all(is_unavailable(value) for value in photo if not isinstance(value, float))
    assert shuffled.mean()["hull_iou"] <= truth.mean()["hull_iou"] - 0.6


@pytest.mark.parametrize("variant", ["rotated", "moved"])
def test_perturbed_cameras_score_clearly_lower(reports, variant):
    perturbed, truth = reports[variant], reports["truth"]
    # Measured mean hull IoU: truth 0.962, rotated 10-15 deg 0.663, rotated + moved 0.15: 0.343. Per object the
    # smallest drop is 0.087 (the rotationally symmetric mug, rotated).
    assert perturbed.mean()["hull_iou"] <= truth.mean()["hull_iou"] - 0.2
    for ours, theirs in zip(column(perturbed, "hull_iou"), column(truth, "hull_iou"), strict=True):
        assert ours <= theirs - 0.05
    # Measured mean photo PSNR: truth 48.6 dB, rotated 34.1, moved 31.2; every object drops by >= 4.5 dB.
    assert perturbed.mean()["photo_psnr"] <= truth.mean()["photo_psnr"] - 8.0
    for ours, theirs in zip(column(perturbed, "photo_psnr"), column(truth, "photo_psnr"), strict=True):
        assert ours <= theirs - 3.0


def test_recoloured_views_keep_the_hull_but_lose_photo_consistency(reports):
    recoloured, truth = reports["recoloured"], reports["truth"]
    assert column(recoloured, "hull_iou") == column(truth, "hull_iou")  # same silhouettes, same hull
    # Measured: photo PSNR 14.8-17.6 dB against 35.3-59.2 dB.
    assert max(column(recoloured, "photo_psnr")) <= 22.0


def test_hull_candidates_do_not_change_the_render(truth):
    from tunemv.evaluation.hull import carve_visual_hull, hull_candidates, render_hull

    views = load_views(truth / "00000_chair")
    for grid in (32, GRID):
        occupancy = carve_visual_hull(views.masks, views.cameras, grid)
        full = render_hull(occupancy, views.cameras, RESOLUTION, RESOLUTION)
        fast = render_hull(occupancy, views.cameras, RESOLUTION, RESOLUTION,
                           candidates=hull_candidates(views.masks, views.cameras, grid))
        assert full.silhouette.any() and torch.equal(full.silhouette, fast.silhouette)
        assert torch.equal(full.depth, fast.depth)


def test_mvc_fit_returns_a_reprojection_error(truth):
    views = load_views(truth / "00004_mug")
    result = fit_and_reproject(views.images, views.masks, views.cameras, steps=2, render_resolution=8)
    assert result.steps == 2 and 0 < result.mse < 1 and math.isfinite(result.psnr)
    assert result.psnr == pytest.approx(-10 * math.log10(result.mse), abs=1e-3)


@pytest.mark.slow
def test_mvc_calibration(truth, tmp_path):
    """NeuS fitted to consistent views re-renders them far better than views shuffled across objects (~6 min)."""
    variants = {"truth": truth, "shuffled": shuffled(truth, tmp_path / "shuffled"),
                "rotated": perturbed(truth, tmp_path / "rotated")}
    psnr = {}
    for name, root in variants.items():
        for object_id in ("00000_chair", "00004_mug"):
            views = load_views(root / object_id)
            psnr[name, object_id] = fit_and_reproject(views.images, views.masks, views.cameras, steps=100).psnr
    print(psnr)
    # Measured MVC PSNR (chair, mug): truth 27.4, 30.0 dB; shuffled 16.7, 16.6 dB; rotated 19.6, 26.3 dB (the
    # mug is nearly rotationally symmetric, so a rotated camera still sees almost the same image).
    for object_id in ("00000_chair", "00004_mug"):
        assert psnr["shuffled", object_id] <= psnr["truth", object_id] - 8.0
        assert psnr["rotated", object_id] <= psnr["truth", object_id] - 2.0


# ------------------------------------------------------------------------------------------ fidelity
def add_noise(source: Path, out: Path, sigma: float) -> Path:
    """Gaussian noise of std ``sigma`` on every pixel of the views composited on white (saved as RGB)."""
    from tunemv.data.format import load_image

    shutil.copytree(source, out)
    generator = torch.Generator().manual_seed(0)
    for path in sorted(out.rglob("images/*.png")):
        rgb = load_image(path)[0]
        noisy = rgb + sigma * torch.randn(rgb.shape, generator=generator)
        Image.fromarray((noisy.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()).save(path)
    return out


def test_psnr_is_infinite_for_identical_views_and_drops_with_noise(truth, tmp_path):
    one = truth / "00001_table"
    identical = evaluate_dataset(one, reference=one, grid=32).objects[0].metrics
    assert identical["psnr"] == math.inf and identical["ssim"] == pytest.approx(1.0, abs=1e-5)
    psnr, ssim = [], []
    for sigma in (0.02, 0.1):
        noisy = add_noise(one, tmp_path / f"noisy{sigma}", sigma)
        metrics = evaluate_dataset(noisy, reference=one, grid=32).objects[0].metrics
        psnr.append(metrics["psnr"])
        ssim.append(metrics["ssim"])
    # Measured: PSNR 36.2 and 22.5 dB (-20 log10 s = 34.0 and 20.0; clipping at white halves the error on the
    # background), SSIM 0.928 and 0.519.
    assert 34.0 < psnr[0] < 38.5 and 20.5 < psnr[1] < 24.5
    assert 0.9 < ssim[0] < 0.96 and 0.4 < ssim[1] < 0.65


def test_reference_views_are_matched_by_camera(truth, tmp_path):
    """A generated object may hold some of the reference views, in any order."""
    subset = tmp_path / "subset" / "00001_table"
    shutil.copytree(truth / "00001_table", subset)
    meta = json.loads((subset / "cameras.json").read_text())
    meta["views"] = meta["views"][::-3]  # views 11, 8, 5, 2
    (subset / "cameras.json").write_text(json.dumps(meta))
    report = evaluate_dataset(subset.parent, reference=truth, grid=32)
    assert report.objects[0].num_views == 4 and report.objects[0].metrics["psnr"] == math.inf


# ------------------------------------------------------------------------------ unavailable metrics
def test_unavailable_metrics_are_reasons_not_numbers(truth, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))  # no cached weights
    one = truth / "00002_stool"
    report = evaluate_dataset(one, reference=one, grid=32, clip=tmp_path / "no-clip",
                              classifier=tmp_path / "no-classifier", inception=tmp_path / "no-inception.pth")
    metrics = report.objects[0].metrics
    for name in ("lpips", "clip_text", "clip_image", "prompt_category", "prompt_colour", "mvc_psnr"):
        assert is_unavailable(metrics[name]), (name, metrics[name])
        assert is_unavailable(report.mean()[name]) and report.counts()[name] == 0
    assert "no-clip" in metrics["clip_text"] and "not requested" in metrics["mvc_psnr"]
    assert all(is_unavailable(value) for value in report.dataset.values())  # FID, KID
    assert "needs ground truth" in evaluate_dataset(one, grid=32).objects[0].metrics["psnr"]
    assert "n/a" not in report.table().splitlines()[0]  # columns are metrics with at least one number
    # Every metric not computed is named on one line, grouped by reason (a plain run had one line each).
    (line,) = [line for line in report.table().splitlines() if "unavailable" in line]
    for name in ("lpips", "clip_text", "mvc_psnr", "prompt_colour", "fid"):
        assert name in line
    assert line.count("not requested (--mvc)") == 1


def tiny_clip(folder: Path) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_pipelines import clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer()
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              tokenizer)
    processor.save_pretrained(folder)
    return folder


def test_clip_similarity_from_a_local_model(truth, tmp_path):
    one = truth / "00003_lamp"
    metrics = evaluate_dataset(one, reference=one, grid=32, clip=tiny_clip(tmp_path / "clip")).objects[0].metrics
    assert 0.0 <= metrics["clip_text"] <= 100.0
    assert metrics["clip_image"] == pytest.approx(100.0, abs=1e-3)  # every view against itself: cos = 1


class FakeClassifier:
    """The attribute classifier's API; it sees ``category`` in every image and ``colour`` in none."""

    def __init__(self, category: str):
        self.category = category

    def predict(self, images):
        return {"category": [self.category] * len(images), "colour": ["nocolour"] * len(images),
                "category_prob": torch.ones(len(images), 1), "colour_prob": torch.ones(len(images), 1)}

    @staticmethod
    def parse_caption(caption: str):
        return ("chair" if "chair" in caption else None), ("red" if "red" in caption else None)


def test_prompt_fidelity_compares_predictions_with_the_caption(truth):
    chair = truth / "00000_chair"
    caption = (chair / "caption.txt").read_text().splitlines()[0]
    right = evaluate_dataset(chair, grid=32, classifier=FakeClassifier("chair")).objects[0].metrics
    wrong = evaluate_dataset(chair, grid=32, classifier=FakeClassifier("table")).objects[0].metrics
    assert right["prompt_category"] == 1.0 and wrong["prompt_category"] == 0.0
    if "red" in caption:
        assert right["prompt_colour"] == 0.0
    else:
        assert is_unavailable(right["prompt_colour"])


def test_prompt_fidelity_with_a_saved_attribute_classifier(truth, tmp_path):
    classifier_module = pytest.importorskip("tunemv.evaluation.attribute_classifier")
    classifier_module.AttributeClassifier().save_pretrained(tmp_path / "classifier")  # random weights
    metrics = evaluate_dataset(truth / "00005_vase", grid=32, classifier=tmp_path / "classifier").objects[0].metrics
    assert 0.0 <= metrics["prompt_category"] <= 1.0 and 0.0 <= metrics["prompt_colour"] <= 1.0
    assert metrics["prompt_category"] * NUM_VIEWS == round(metrics["prompt_category"] * NUM_VIEWS)


class MeanColour(torch.nn.Module):
    """A stand-in Inception: uint8 images -> (N, 3) mean colour features."""

    def forward(self, images):
        return images.float().mean((2, 3)) / 255


def test_fid_and_kid_with_a_feature_extractor():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 16, 16, generator=generator)
    same, shifted = DistributionMetrics(MeanColour()), DistributionMetrics(MeanColour())
    same.update(images, images)
    shifted.update((images + 0.3).clamp(0, 1), images)
    equal, apart = same.compute(), shifted.compute()
    assert equal["fid"] == pytest.approx(0.0, abs=1e-4) and equal["kid_mean"] == pytest.approx(0.0, abs=1e-3)
    assert apart["fid"] > 0.1 and apart["kid_mean"] > 0.01  # (0.3 shift)^2 x 3 features = 0.27 in FID


# ------------------------------------------------------------------------------ CLI, filter, errors
def test_cli_writes_metrics_and_filters_exactly_the_consistent_objects(truth, reports, tmp_path, capsys):
    """A data-engine batch: three objects with consistent views and three whose views are shuffled."""
    batch = tmp_path / "batch"
    for k, object_id in enumerate(object_ids(truth)):
        shutil.copytree((truth if k % 2 == 0 else truth.parent / "shuffled") / object_id, batch / object_id)
    out, passed = tmp_path / "metrics.json", tmp_path / "passed.txt"
    assert main(["evaluate", str(batch), "--out", str(out), "--filter", "0.9", "--filter-out", str(passed),
                 "--grid", str(GRID), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and "hull_iou" in printed and "3 of 6 objects" in printed
    metrics = json.loads(out.read_text())
    assert [o["object_id"] for o in metrics["objects"]] == object_ids(truth)
    assert passed.read_text().split() == object_ids(truth)[::2]
    iou = {o["object_id"]: o["metrics"]["hull_iou"] for o in metrics["objects"]}
    sources = [reports["truth" if k % 2 == 0 else "shuffled"].objects[k] for k in range(NUM_OBJECTS)]
    assert iou == {r.object_id: r.metrics["hull_iou"] for r in sources}  # the same numbers as the API's
    assert metrics["mean"]["hull_iou"] == pytest.approx(sum(iou.values()) / 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch", "metrics.json", "passed.txt"]  # no temp files


def test_cli_defaults_write_next_to_the_data(truth, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(truth / "00004_mug", one)
    assert main(["evaluate", str(one), "--filter", "0.5", "--grid", "32", "--quiet"]) == 0
    assert json.loads((one / "metrics.json").read_text())["objects"][0]["object_id"] == "one"
    assert (one / "passed.txt").read_text() == "one\n"


def broken_cameras(root: Path) -> Path:
    (root / "00001_table" / "cameras.json").write_text("{not json")
    return root / "00001_table" / "cameras.json"


def moved_reference_camera(root: Path) -> Path:
    path = root / "00001_table" / "cameras.json"
    meta = json.loads(path.read_text())
    meta["views"][3]["c2w"][0][3] += 0.1
    path.write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("case", ["missing folder", "broken cameras.json", "reference without the object",
                                  "reference camera mismatch", "filter-out without filter", "filter out of range"])
def test_bad_input_is_one_line_naming_the_file_and_exit_code_2(truth, tmp_path, capsys, case):
    root, reference = tmp_path / "data", tmp_path / "reference"
    for folder in (root, reference):
        folder.mkdir()
        for object_id in ("00001_table", "00002_stool"):
            shutil.copytree(truth / object_id, folder / object_id)
    args, named = ["evaluate", str(root), "--grid", "32", "--quiet"], None
    if case == "missing folder":
        args[1] = named = str(tmp_path / "nowhere")
    elif case == "broken cameras.json":  # in every object: one broken object alone is skipped (see below)
        named = str(broken_cameras(root))
        (root / "00002_stool" / "cameras.json").write_text("{not json")
    elif case == "reference without the object":
        shutil.rmtree(reference / "00002_stool")
        args += ["--reference", str(reference)]
        named = str(reference / "00002_stool")
    elif case == "reference camera mismatch":
        args += ["--reference", str(reference)]
        named = str(moved_reference_camera(reference))
        shutil.rmtree(reference / "00002_stool")
        shutil.copytree(reference / "00001_table", reference / "00002_stool")
    elif case == "filter-out without filter":
        args += ["--filter-out", str(tmp_path / "passed.txt")]
        named = "--filter-out"
    else:
        args += ["--filter", "1.5"]
        named = "--filter"
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("tunemv: error: ") and named in error, error
    assert not (root / "metrics.json").exists()


def test_a_corrupt_object_is_listed_and_the_others_are_scored(truth, tmp_path, capsys):
    """One corrupt PNG no longer costs the good objects their scores: they are scored, the broken one is listed
    (stderr, the table, metrics.json "failed") and the run exits 0; an invisible object is scored and warned of."""
    root = tmp_path / "data"
    for object_id in ("00001_table", "00002_stool", "00004_mug"):
        shutil.copytree(truth / object_id, root / object_id)
    corrupt = root / "00002_stool" / "images" / "003.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for path in (root / "00004_mug" / "images").glob("*.png"):
        Image.new("RGBA", (RESOLUTION, RESOLUTION), (0, 0, 0, 0)).save(path)
    assert main(["evaluate", str(root), "--grid", "32", "--quiet"]) == 0
    out, err = capsys.readouterr()
    metrics = json.loads((root / "metrics.json").read_text())
    assert [r["object_id"] for r in metrics["objects"]] == ["00001_table", "00004_mug"]
    assert [f["object"] for f in metrics["failed"]] == ["00002_stool"]
    assert metrics["failed"][0]["error"].startswith(f"{corrupt}: image is not readable")
    assert f"not scored: {corrupt}: image is not readable" in err and "not scored: 1 of 3 objects (00002_stool)" in out
    assert "00004_mug: every view's mask is empty" in err and len(metrics["warnings"]) == 1


def test_clean_reference_views_are_left_out_of_fidelity(truth, tmp_path):
    """image->multiview returns its input views unchanged; sampling.json lists them (as `tunemv sample` does)."""
    one = add_noise(truth / "00001_table", tmp_path / "00001_table", 0.05)
    for view in (0, 6):  # the clean inputs, identical to the ground truth
        shutil.copy(truth / "00001_table" / "images" / f"{view:03d}.png", one / "images" / f"{view:03d}.png")
    (one / "sampling.json").write_text(json.dumps({"prompt": "a table", "references": [0, 6]}))
    result = evaluate_dataset(one, reference=truth, grid=32).objects[0]
    assert result.per_view["fidelity_views"] == [i for i in range(NUM_VIEWS) if i not in (0, 6)]
    assert math.isfinite(result.metrics["psnr"]) and max(result.per_view["psnr"]) < 35
    (one / "sampling.json").write_text(json.dumps({"references": [0, 99]}))
    with pytest.raises(DatasetError, match=r"sampling\.json: references must be"):
        evaluate_dataset(one, reference=truth, grid=32)
    broken = evaluate_dataset(one, reference=truth, grid=32, skip_unreadable=True)  # listed, not scored (the CLI)
    assert not broken.objects and "sampling.json: references must be" in broken.failed[0]["error"]


def tinted_background(source: Path, out: Path, tint=(0.86, 0.84, 0.93)) -> Path:
    """Ground truth flattened onto a uniform light-violet background, as the tiny backbone's samples come out."""
    shutil.copytree(source, out)
    for path in sorted(out.glob("*/images/*.png")):
        rgba = np.asarray(Image.open(path).convert("RGBA")).astype(np.float32) / 255
        alpha = rgba[..., 3:]
        rgb = rgba[..., :3] * alpha + np.array(tint) * (1 - alpha)
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path)
    return out


def test_border_masks_keep_the_hull_metric_meaningful_on_tinted_backgrounds(truth, reports):
    tinted = tinted_background(truth, truth.parent / "tinted")
    border = evaluate_dataset(tinted, grid=GRID, mask_source="border")
    shuffled = evaluate_dataset(tinted_background(truth.parent / "shuffled", truth.parent / "tinted-shuffled"),
                                grid=GRID, mask_source="border")
    # The white threshold calls every tinted pixel foreground: every view's mask is the full frame.
    assert all(load_views(d, "threshold").masks.min() == 1 for d in object_dirs(tinted))
    # Border masks recover the silhouettes: per object, IoU no lower than the alpha-masked truth's (less
    # 0.03) and above 0.9. (It can be higher: faint anti-aliased edge pixels fall inside the tolerance.)
    for got, want in zip(column(border, "hull_iou"), column(reports["truth"], "hull_iou"), strict=True):
        assert got > max(want - 0.03, 0.9)
    # ...and keep shuffled views clearly apart, which the full-frame masks cannot.
    assert max(column(shuffled, "hull_iou")) < min(column(border, "hull_iou")) - 0.3
