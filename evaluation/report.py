"""``EvaluationReport``: per-object and mean metrics, the printed table, metrics.json and the quality filter.

A metric value is a float or an "unavailable: <reason>" string. Means are over the objects that have a
number (``counts`` says how many). PSNR of identical images is ``inf``; metrics.json writes it as
``Infinity``, which Python's ``json`` reads back.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunemv.atomic import write_text_atomic
from tunemv.evaluation import novel_view
from tunemv.evaluation.availability import PREFIX, is_unavailable

Value = float | str


@dataclass
class ObjectResult:
    object_id: str
    num_views: int
    metrics: dict[str, Value]
    per_view: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class EvaluationReport:
    root: str
    reference: str | None
    settings: dict
    objects: list[ObjectResult]
    dataset: dict[str, Value] = field(default_factory=dict)  # metrics over all views at once (FID, KID)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"object", "error"}: not scored, why
    warnings: list[str] = field(default_factory=list)  # e.g. an object whose masks are empty (scores 0)

    def metric_names(self) -> list[str]:
        return list(dict.fromkeys(name for result in self.objects for name in result.metrics))

    def counts(self) -> dict[str, int]:
        return {name: sum(_has_number(r.metrics.get(name)) for r in self.objects) for name in self.metric_names()}

    def mean(self) -> dict[str, Value]:
        """Mean over objects with a number; a metric no object has keeps the first object's reason. Objects without
        the key (a per-offset novel-view key where the object has no view at that offset) do not count."""
        means: dict[str, Value] = {}
        for name in self.metric_names():
            values = [r.metrics[name] for r in self.objects if _has_number(r.metrics.get(name))]
            reasons = [r.metrics[name] for r in self.objects if isinstance(r.metrics.get(name), str)]
            means[name] = math.fsum(values) / len(values) if values else reasons[0]
        return means

    def passing(self, min_iou: float) -> list[str]:
        """Object ids whose mean hull IoU is >= ``min_iou`` (VFusion3D §3.2: the data engine's quality filter)."""
        return [r.object_id for r in self.objects if r.metrics["hull_iou"] >= min_iou]

    def to_dict(self) -> dict:
        return {"root": self.root, "reference": self.reference, "settings": self.settings, "mean": self.mean(),
                "counts": self.counts(), "dataset": self.dataset, "objects": [asdict(r) for r in self.objects],
                "failed": self.failed, "warnings": self.warnings}

    def write_json(self, path: str | os.PathLike) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    def table(self) -> str:
        """Objects x metrics with numbers, then the mean row, the novel-view block (means by azimuth offset, beside
        the copy baseline), dataset metrics and the unavailable reasons."""
        names = [n for n in self.metric_names()
                 if self.counts()[n] and (not novel_view.is_novel_key(n) or n in OBJECT_COLUMNS)]
        widths = [max(len(n), 8) for n in names]
        id_width = max([len("mean"), *(len(r.object_id) for r in self.objects)])
        lines = [f"{'object':<{id_width}}  {'views':>5}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))]
        rows = [(r.object_id, str(r.num_views), r.metrics) for r in self.objects]
        rows.append(("mean", "", self.mean()))
        for object_id, views, metrics in rows:
            cells = [_cell(metrics.get(n), w) for n, w in zip(names, widths, strict=True)]
            lines.append(f"{object_id:<{id_width}}  {views:>5}  " + "  ".join(cells))
        lines += self.novel_view_table()
        lines += [f"{name}: {_cell(value, 0).strip()}" for name, value in self.dataset.items() if not is_unavailable(value)]
        # Metrics not computed, grouped by reason into one line: a plain run leaves a dozen unrequested.
        groups: dict[str, list[str]] = {}
        for name in [*self.metric_names(), *self.dataset]:
            value = self.dataset.get(name, self.mean().get(name))
            missing = [r for r in self.objects if is_unavailable(r.metrics.get(name))]
            if is_unavailable(value) or missing:
                reason = str(value if is_unavailable(value) else missing[0].metrics[name]).removeprefix(PREFIX)
                scope = "" if is_unavailable(value) else f" ({len(missing)} of {len(self.objects)} objects)"
                groups.setdefault(reason + scope, []).append(name)
        if groups:
            lines.append("unavailable: " + "; ".join(f"{', '.join(names)} ({reason})" for reason, names in groups.items()))
        if self.failed:
            lines.append(f"not scored: {len(self.failed)} of {len(self.failed) + len(self.objects)} objects "
                         f"({', '.join(f['object'] for f in self.failed)}); metrics.json lists why")
        return "\n".join(lines)

    def novel_view_table(self) -> list[str]:
        """Novel-view means by azimuth offset (rows), each metric beside its copy baseline (columns); no lines
        when no object has a novel-view number (no --reference)."""
        means, counts, metrics = self.mean(), self.counts(), novel_view.PER_VIEW
        if not counts.get(metrics[0]):
            return []
        offsets = sorted({novel_view.split_offset_key(n)[1] for n in means if "@" in n})
        rows = [(novel_view.offset_label(o), novel_view.offset_key("", o)) for o in offsets] + [("all", "")]
        header = [label for name in metrics for label in (_SHORT[name], "copy")]
        lines = ["novel views vs ground truth by azimuth offset from the reference view (mean over objects; "
                 "copy: the reference image in every view)",
                 f"{'offset':>6}  {'objects':>7}  " + "  ".join(f"{h:>9}" for h in header)]
        for label, suffix in rows:  # suffix: "@+90" of the per-offset keys, "" of the means over all views
            cells = [_cell(means.get(prefix + name + suffix), 9) for name in metrics for prefix in ("", "copy_")]
            lines.append(f"{label:>6}  {counts.get(metrics[0] + suffix, 0):>7}  " + "  ".join(cells))
        chance = _cell(means.get("camera_retrieval_chance"), 0).strip()
        lines.append(f"camera retrieval chance: {chance} (ground-truth views with silhouette IoU >= "
                     f"{novel_view.FOLD_IOU} count as one camera)")
        return lines


def _has_number(value: Value | None) -> bool:
    return value is not None and not isinstance(value, str)


_SHORT = {"novel_mask_iou": "mask_iou", "novel_psnr": "psnr", "novel_ssim": "ssim", "camera_retrieval": "retrieval"}
OBJECT_COLUMNS = ("novel_mask_iou", "camera_retrieval")  # per object in the main table; the rest in the block


def _cell(value: Value | None, width: int) -> str:
    if value is None or isinstance(value, str):
        return f"{'n/a':>{width}}"
    return f"{value:>{width}.4g}"
