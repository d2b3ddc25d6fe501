"""Time `tunemv data procedural` on this machine: one worker vs. one per core, side by side in one run.

    python benchmarks/procedural_generation.py [--objects 200] [--views 16] [--resolution 64] [--categories ...]

Prints seconds for each setting, objects/s, and the speed-up ratio; the two outputs are checked to be
byte-identical (generation must not depend on the number of workers).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import tempfile
import time
from pathlib import Path

from tunemv.data.generate import generate_procedural_dataset
from tunemv.data.procedural import CATEGORIES


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; "
          f"{args.objects} objects x {args.views} views at {args.resolution}px, categories={' '.join(args.categories)}")
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, cores):
            start = time.perf_counter()
            generate_procedural_dataset(Path(tmp) / f"w{workers}", args.objects, args.views, args.resolution,
                                        args.categories, workers=workers, progress=False)
            seconds[workers] = time.perf_counter() - start
            print(f"workers={workers}: {seconds[workers]:.1f} s ({args.objects / seconds[workers]:.2f} objects/s)")
        identical = same_tree(Path(tmp) / "w1", Path(tmp) / f"w{cores}")
    print(f"speed-up {cores} workers / 1 worker: {seconds[1] / seconds[cores]:.2f}x; outputs identical: {identical}")


if __name__ == "__main__":
    main()
