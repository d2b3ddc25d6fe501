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

    def metric_names(self) -> list[str]:
        return list(dict.fromkeys(name for result in self.objects for name in result.metrics))

    def counts(self) -> dict[str, int]:
        return {name: sum(not isinstance(r.metrics.get(name), str) for r in self.objects) for name in self.metric_names()}

    def mean(self) -> dict[str, Value]:
        """Mean over objects with a number; a metric no object has keeps the first object's reason."""
        means: dict[str, Value] = {}
        for name in self.metric_names():
            values = [r.metrics[name] for r in self.objects if not isinstance(r.metrics.get(name), str)]
            means[name] = math.fsum(values) / len(values) if values else self.objects[0].metrics[name]
        return means

    def passing(self, min_iou: float) -> list[str]:
        """Object ids whose mean hull IoU is >= ``min_iou`` (VFusion3D §3.2: the data engine's quality filter)."""
        return [r.object_id for r in self.objects if r.metrics["hull_iou"] >= min_iou]

    def to_dict(self) -> dict:
        return {"root": self.root, "reference": self.reference, "settings": self.settings, "mean": self.mean(),
                "counts": self.counts(), "dataset": self.dataset, "objects": [asdict(r) for r in self.objects]}

    def write_json(self, path: str | os.PathLike) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    def table(self) -> str:
        """Objects x metrics with numbers, then the mean row, dataset metrics and the unavailable reasons."""
        names = [n for n in self.metric_names() if self.counts()[n]]
        widths = [max(len(n), 8) for n in names]
        id_width = max([len("mean"), *(len(r.object_id) for r in self.objects)])
        lines = [f"{'object':<{id_width}}  {'views':>5}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))]
        rows = [(r.object_id, str(r.num_views), r.metrics) for r in self.objects]
        rows.append(("mean", "", self.mean()))
        for object_id, views, metrics in rows:
            cells = [_cell(metrics.get(n), w) for n, w in zip(names, widths, strict=True)]
            lines.append(f"{object_id:<{id_width}}  {views:>5}  " + "  ".join(cells))
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
        return "\n".join(lines)


def _cell(value: Value | None, width: int) -> str:
    if value is None or isinstance(value, str):
        return f"{'n/a':>{width}}"
    return f"{value:>{width}.4g}"
