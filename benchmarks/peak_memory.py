"""Peak resident memory of a code block on CPU, for the benchmarks.

CPU tensors are not visible to tracemalloc and ``ru_maxrss`` cannot be reset, so a thread samples
/proc/self/statm while the block runs.
"""

from __future__ import annotations

import os
import threading
import time


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakResident:
    """``with PeakResident(interval) as memory: ...`` then ``memory.baseline`` and ``memory.peak`` in MiB."""

    def __init__(self, interval_s: float = 0.001):
        self.interval_s, self.baseline, self.peak = interval_s, 0.0, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, resident_mib())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakResident:
        self.baseline = self.peak = resident_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, resident_mib())
