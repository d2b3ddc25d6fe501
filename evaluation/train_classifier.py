"""``tunemv foundation train-classifier``: fit the attribute classifier on procedural renders and measure it.

Training and held-out views come from different render seeds, so held-out objects have proportions, cameras and
therefore pixels the classifier never saw. Augmentation (small shifts on white, horizontal flips, pixel noise)
keeps it from keying on exact framing, since it will judge generated images, not renders.

The same path trains the optional azimuth head (``train.azimuth_bins``): a flipped view of a mirror-symmetric
object is the view from the mirrored azimuth (``MIRROR_PLANE_DEG``), so flips stay and relabel the azimuth.
``train.init`` starts from a trained classifier and ``train.heads`` names the losses; with ``freeze_trunk`` only
those heads learn, so a head added to a shipped classifier leaves its other predictions bit for bit unchanged.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tunemv.data.procedural import CATEGORIES
from tunemv.data.single_views import RenderConfig, RenderedViews, render_object_views, render_views
from tunemv.evaluation.attribute_classifier import MIRROR_PLANE_DEG, AttributeClassifier, azimuth_bin
from tunemv.evaluation.pose import bin_distance
from tunemv.tinyif.config import load_config, resolve_device

HEADS = ("category", "colour", "azimuth")


@dataclass
class ClassifierTrainConfig:
    seed: int = 0
    device: str = "auto"
    threads: int = 1
    batch_size: int = 128
    epochs: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 3  # pixels of random translation (the border is filled with white)
    noise_std: float = 0.03  # Gaussian pixel noise on [0, 1] images
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    azimuth_bins: int = 0  # 0: no azimuth head
    azimuth_categories: list[str] = field(default_factory=list)  # each must have a MIRROR_PLANE_DEG entry
    heads: list[str] = field(default_factory=lambda: ["category", "colour"])  # the losses trained
    init: str | None = None  # a classifier folder to start from (its weights; a head it lacks starts fresh)
    freeze_trunk: bool = False  # train only ``heads``; everything else keeps init's weights
    out: str = "models/attribute-classifier"

    def __post_init__(self):
        if self.batch_size < 1 or self.epochs < 1 or self.threads < 1 or self.max_shift < 0:
            raise ValueError("batch_size, epochs and threads must be >= 1 and max_shift >= 0")
        if not self.heads or set(self.heads) - set(HEADS) or ("azimuth" in self.heads) != bool(self.azimuth_bins):
            raise ValueError(f"heads must be some of {list(HEADS)}, with 'azimuth' exactly when azimuth_bins > 0")
        if set(self.azimuth_categories) - set(MIRROR_PLANE_DEG):
            raise ValueError(f"azimuth_categories must be among {list(MIRROR_PLANE_DEG)}, got {self.azimuth_categories}")
        if self.freeze_trunk and not self.init:
            raise ValueError("freeze_trunk needs init: a trained classifier whose trunk to keep")


@dataclass
class ClassifierRecipe:
    data: RenderConfig = field(default_factory=lambda: RenderConfig(seed=2000, num_objects=1680, views_per_object=4))
    heldout: RenderConfig = field(default_factory=lambda: RenderConfig(seed=3000, num_objects=336, views_per_object=4))
    train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    categories: list[str] | None = None  # render only the objects of these categories (None: all)


def recipe_views(config: RenderConfig, categories: list[str] | None, progress: bool) -> RenderedViews:
    """``config``'s views, or only those of objects ``i < num_objects`` whose category is in ``categories``
    (object i is ``CATEGORIES[i % 12]``, so colours stay balanced); a subset is rendered, not cached."""
    if categories is None:
        return render_views(config, progress)
    if unknown := sorted(set(categories) - set(CATEGORIES)):
        raise ValueError(f"unknown categories {unknown}; available: {', '.join(CATEGORIES)}")
    start = time.perf_counter()
    wanted = [i for i in range(config.num_objects) if CATEGORIES[i % len(CATEGORIES)] in categories]
    parts = [render_object_views(config, i)
             for i in tqdm(wanted, desc="rendering views", unit="obj", disable=not progress)]
    per_object = {key: [part[key] for part in parts for _ in range(config.views_per_object)]
                  for key in ("captions", "category", "colour")}
    return RenderedViews(images=torch.cat([part["images"] for part in parts]), **per_object,
                         elevation_deg=torch.cat([torch.as_tensor(part["elevation"]) for part in parts]).float(),
                         azimuth_deg=torch.cat([torch.as_tensor(part["azimuth"]) for part in parts]).float(),
                         seconds=time.perf_counter() - start)


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int, noise_std: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) in [0, 1]: one random shift per batch (white border), per-image flips, pixel noise.
    Returns the images and which were flipped (N,) bool, for labels that a flip changes."""
    if max_shift:
        dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
        padded = F.pad(images, (max_shift,) * 4, value=1.0)
        h, w = images.shape[-2:]
        images = padded[..., max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if noise_std:
        images = images + noise_std * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1), flip


def labels_of(views: RenderedViews, model: AttributeClassifier) -> dict[str, torch.Tensor]:
    """Per-view labels (N,) of every head of ``model``; azimuth as (N, 2) bins [as seen, flipped], -1 where the
    head does not apply (a category it does not read: ignored by the loss)."""
    labels = dict(category=torch.tensor([model.categories.index(c) for c in views.category]),
                  colour=torch.tensor([model.colours.index(c) for c in views.colour]))
    if model.azimuth_head is not None:
        mirror = torch.tensor([MIRROR_PLANE_DEG.get(c, 0.0) for c in views.category])
        azimuth = torch.stack([views.azimuth_deg, 2 * mirror - views.azimuth_deg], -1)  # flipped: 2 phi - a
        read = torch.tensor([c in model.azimuth_categories for c in views.category])
        labels["azimuth"] = torch.where(read[:, None], azimuth_bin(azimuth, model.azimuth_bins), -1)
    return labels


def batch_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], flip: torch.Tensor,
               heads: list[str]) -> torch.Tensor:
    """Summed cross-entropy of ``heads``; a batch in which a head has no valid label adds nothing for it."""
    loss = logits["category"].new_zeros(())
    for head in heads:
        target = labels[head][torch.arange(len(flip)), flip.long()] if head == "azimuth" else labels[head]
        target = target.to(logits[head].device)
        if (target >= 0).any():
            loss = loss + F.cross_entropy(logits[head], target, ignore_index=-1)
    return loss


def accuracy(model: AttributeClassifier, views: RenderedViews) -> dict[str, float]:
    """Held-out accuracy per head; azimuth overall and per category, exact bin and within +-1 bin."""
    predicted = model.predict(views.images.float() / 255)
    category = sum(p == t for p, t in zip(predicted["category"], views.category, strict=True)) / len(views)
    colour = sum(p == t for p, t in zip(predicted["colour"], views.colour, strict=True)) / len(views)
    out = dict(category=category, colour=colour)
    if model.azimuth_head is not None:
        target = labels_of(views, model)["azimuth"][:, 0]
        error = bin_distance(torch.tensor(predicted["azimuth_bin"]), target, model.azimuth_bins)
        for name in ["all", *model.azimuth_categories]:
            keep = target >= 0 if name == "all" else torch.tensor([c == name for c in views.category])
            if keep.any():
                out[f"azimuth_exact_{name}"] = (error[keep] == 0).float().mean().item()
                out[f"azimuth_within_1_{name}"] = (error[keep] <= 1).float().mean().item()
    return out


def build_model(cfg: ClassifierTrainConfig) -> AttributeClassifier:
    """A fresh classifier, or ``cfg.init``'s weights with any head it lacks fresh; frozen as ``cfg`` says."""
    model = AttributeClassifier(widths=cfg.widths, azimuth_bins=cfg.azimuth_bins,
                                azimuth_categories=cfg.azimuth_categories)
    if cfg.init:
        start = AttributeClassifier.from_pretrained(cfg.init)
        if (start.categories, start.colours, start.widths) != (model.categories, model.colours, model.widths):
            raise ValueError(f"{cfg.init}: its labels or widths differ from this recipe's")
        missing, _ = model.load_state_dict(start.state_dict(), strict=False)
        if missing := [name for name in missing if not name.startswith("azimuth_head.")]:
            raise ValueError(f"{cfg.init}: no weights for {missing}")
    if cfg.freeze_trunk:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.split(".")[0] in {f"{head}_head" for head in cfg.heads})
    return model


def train_classifier(recipe: ClassifierRecipe, out: str | None = None, progress: bool = True) -> dict:
    cfg = recipe.train
    out_dir = Path(out or cfg.out)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    train_views = recipe_views(recipe.data, recipe.categories, progress)
    heldout_views = recipe_views(recipe.heldout, recipe.categories, progress)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    labels = labels_of(train_views, model)
    images = train_views.images
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(images) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.learning_rate, total_steps=cfg.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order, total = torch.randperm(len(images), generator=generator), 0.0
        for index in order.split(cfg.batch_size):
            batch, flip = augment(images[index].float() / 255, generator, cfg.max_shift, cfg.noise_std)
            with torch.set_grad_enabled(not cfg.freeze_trunk):  # a frozen trunk needs no backward pass
                features = model.feature_map(batch)
            logits = model.heads(features)
            loss = batch_loss(logits, {name: label[index] for name, label in labels.items()}, flip, cfg.heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs} loss {total / len(images):.4f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    wall = time.perf_counter() - start
    model.cpu().save_pretrained(out_dir)
    train_acc, heldout_acc = accuracy(model, train_views), accuracy(model, heldout_views)
    summary = dict(out=str(out_dir), train_views=len(train_views), heldout_views=len(heldout_views),
                   epochs=cfg.epochs, wall_seconds=round(wall, 1), threads=cfg.threads, device=str(device),
                   parameters=sum(p.numel() for p in model.parameters()),
                   trained_parameters=sum(p.numel() for p in trained),
                   **{f"{split}_{name}_accuracy": round(value, 4)
                      for split, acc in (("train", train_acc), ("heldout", heldout_acc)) for name, value in acc.items()},
                   render_seconds=round(train_views.seconds + heldout_views.seconds, 1),
                   recipe=json.loads(json.dumps(asdict(recipe))))
    (out_dir / "training.json").write_text(json.dumps(summary, indent=1))
    return summary


def train_classifier_from_file(path: str, out: str | None = None, device: str | None = None,
                               threads: int | None = None, progress: bool = True) -> dict:
    overrides = {key: value for key, value in (("train.device", device), ("train.threads", threads)) if value is not None}
    return train_classifier(load_config(path, ClassifierRecipe, overrides), out=out, progress=progress)
