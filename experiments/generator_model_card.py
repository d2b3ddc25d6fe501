"""Loss curves for a distilled generator's model card (issue 20).

    python experiments/generator_model_card.py --metrics outputs/distill_demo/logs/version_0/metrics.csv \
        --out models/demo-generator

Writes OUT/loss-stage1.png (the paired regression ‖G(z) − teacher(z)‖², the one stage-I term with a fixed
target; the VSD surrogate's value means nothing, only its gradient does), OUT/loss-stage2.png (the field's
render MSE against the teacher field's renders) and OUT/loss.csv with every logged term, means over
``--window`` steps.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from tunemv.tinyif.model_card import plot_curve

TERMS = ("regression", "student", "field_mse", "field_ssim", "opacity", "views")


def windows(rows: list[dict], key: str, window: int) -> tuple[list[int], list[float]]:
    buckets: dict[int, list[float]] = {}
    for row in rows:
        if row.get(key):
            buckets.setdefault(int(row["step"]) // window, []).append(float(row[key]))
    steps = sorted(buckets)
    return [(k + 1) * window for k in steps], [statistics.fmean(buckets[k]) for k in steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--window", type=int, default=20)
    args = parser.parse_args()
    with open(args.metrics, newline="") as file:
        rows = list(csv.DictReader(file))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves = {term: windows(rows, f"train/{term}", args.window) for term in TERMS}
    for name, term, title in (("loss-stage1.png", "regression", "stage I: paired regression MSE"),
                              ("loss-stage2.png", "field_mse", "stage II: field render MSE vs the teacher's")):
        steps, values = curves[term]
        if len(steps) >= 2:
            plot_curve(steps, values, out / name, title=f"{title} (mean per {args.window} steps)")
    with open(out / "loss.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", *TERMS])
        every = sorted({step for steps, _ in curves.values() for step in steps})
        lookup = {term: dict(zip(*curves[term], strict=True)) for term in TERMS}
        writer.writerows([step, *(lookup[term].get(step, "") for term in TERMS)] for step in every)
    print(f"wrote {out / 'loss-stage1.png'}, {out / 'loss-stage2.png'} and {out / 'loss.csv'}")


if __name__ == "__main__":
    main()
