"""Peak resident memory of this process, sampled by a background thread.

``VmHWM`` cannot say *when* the peak happened, and resetting it needs ``/proc/self/clear_refs``
(not always writable); a sampler gives the peak per phase (load, inference) and works the same on
every Linux device. A peak shorter than the period can be missed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int | None:
    """Resident bytes of this process now (``/proc/self/statm``), None where there is no procfs."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class RssSampler:
    """``with RssSampler() as s: ...`` then ``s.peak``: the largest RSS seen while inside."""

    def __init__(self, period_s: float = 0.02) -> None:
        """``period_s``: 50 Hz sees every allocation that lives a run or longer, while a faster sampler
        measurably slows multi-threaded inference on a 2-core board (it preempts a worker thread)."""
        self.period_s = period_s
        self.peak: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edge-rss-sampler", daemon=True)

    def _sample(self) -> None:
        rss = current_rss()
        if rss is not None:
            self.peak = rss if self.peak is None else max(self.peak, rss)
            self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def __enter__(self) -> "RssSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
