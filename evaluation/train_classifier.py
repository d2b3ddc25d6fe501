"""``tunemv foundation train-classifier``: fit the attribute classifier on procedural renders and measure it.

Training and held-out views come from different render seeds, so held-out objects have proportions, cameras and
therefore pixels the classifier never saw. Augmentation (small shifts on white, horizontal flips, pixel noise)
keeps it from keying on exact framing, since it will judge generated images, not renders.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tunemv.data.single_views import RenderConfig, RenderedViews, render_views
from tunemv.evaluation.attribute_classifier import AttributeClassifier
from tunemv.tinyif.config import load_config, resolve_device


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
    out: str = "models/attribute-classifier"

    def __post_init__(self):
        if self.batch_size < 1 or self.epochs < 1 or self.threads < 1 or self.max_shift < 0:
            raise ValueError("batch_size, epochs and threads must be >= 1 and max_shift >= 0")


@dataclass
class ClassifierRecipe:
    data: RenderConfig = field(default_factory=lambda: RenderConfig(seed=2000, num_objects=1680, views_per_object=4))
    heldout: RenderConfig = field(default_factory=lambda: RenderConfig(seed=3000, num_objects=336, views_per_object=4))
    train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int, noise_std: float) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: one random shift per batch (white border), per-image flips, pixel noise."""
    if max_shift:
        dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
        padded = F.pad(images, (max_shift,) * 4, value=1.0)
        h, w = images.shape[-2:]
        images = padded[..., max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if noise_std:
        images = images + noise_std * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1)


def labels_of(views: RenderedViews, model: AttributeClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor([model.categories.index(c) for c in views.category]),
            torch.tensor([model.colours.index(c) for c in views.colour]))


def accuracy(model: AttributeClassifier, views: RenderedViews) -> dict[str, float]:
    predicted = model.predict(views.images.float() / 255)
    category = sum(p == t for p, t in zip(predicted["category"], views.category, strict=True)) / len(views)
    colour = sum(p == t for p, t in zip(predicted["colour"], views.colour, strict=True)) / len(views)
    return dict(category=category, colour=colour)


def train_classifier(recipe: ClassifierRecipe, out: str | None = None, progress: bool = True) -> dict:
    cfg = recipe.train
    out_dir = Path(out or cfg.out)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    train_views, heldout_views = render_views(recipe.data, progress), render_views(recipe.heldout, progress)
    torch.manual_seed(cfg.seed)
    model = AttributeClassifier(widths=cfg.widths).to(device)
    category, colour = labels_of(train_views, model)
    images = train_views.images
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(images) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.learning_rate, total_steps=cfg.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order, total = torch.randperm(len(images), generator=generator), 0.0
        for index in order.split(cfg.batch_size):
            batch = augment(images[index].float() / 255, generator, cfg.max_shift, cfg.noise_std)
            category_logits, colour_logits = model(batch)
            loss = (F.cross_entropy(category_logits, category[index].to(device))
                    + F.cross_entropy(colour_logits, colour[index].to(device)))
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
                   train_category_accuracy=round(train_acc["category"], 4), train_colour_accuracy=round(train_acc["colour"], 4),
                   heldout_category_accuracy=round(heldout_acc["category"], 4),
                   heldout_colour_accuracy=round(heldout_acc["colour"], 4),
                   render_seconds=round(train_views.seconds + heldout_views.seconds, 1),
                   recipe=json.loads(json.dumps(asdict(recipe))))
    (out_dir / "training.json").write_text(json.dumps(summary, indent=1))
    return summary


def train_classifier_from_file(path: str, out: str | None = None, device: str | None = None,
                               threads: int | None = None, progress: bool = True) -> dict:
    overrides = {key: value for key, value in (("train.device", device), ("train.threads", threads)) if value is not None}
    return train_classifier(load_config(path, ClassifierRecipe, overrides), out=out, progress=progress)
