"""Helpers shared by the benchmark scripts: interleaved timing and RESULT lines."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def result(name: str, value: float, unit: str, baseline: float) -> str:
    """One line per figure: RESULT <name> value=<x> unit=<u> baseline=<y> ratio=<x/y>."""
    ratio = value / baseline if baseline else float("nan")
    line = f"RESULT {name} value={value:.6g} unit={unit} baseline={baseline:.6g} ratio={ratio:.4f}"
    print(line, flush=True)
    return line


def interleaved_median_ms(fns: dict[str, Callable[[], object]], rounds: int = 30, inner: int = 20,
                          warmup: int = 10) -> dict[str, float]:
    """Median per-call time of each fn, measured round-robin so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter_ns()
            for _ in range(inner):
                fn()
            samples[k].append((time.perf_counter_ns() - t0) / inner / 1e6)
    return {k: float(np.median(v)) for k, v in samples.items()}


UNRELIABLE_SPREAD = 0.20  # rounds that disagree by more than this (range / median) make a ratio unreliable


def spread(values: list[float]) -> float:
    """(max - min) / median of a side's rounds; 0 with fewer than two."""
    if len(values) < 2 or not np.median(values):
        return 0.0
    return float((max(values) - min(values)) / np.median(values))


def rounds_note(sides: dict[str, list[float]]) -> str:
    """One line: each side's rounds, median and spread, the load average, and UNRELIABLE when a side's
    rounds disagree by more than 20% (then its ratio says little)."""
    import os

    parts = [f"{k}: rounds {[round(v, 3) for v in vs]} median {np.median(vs):.4g} spread {spread(vs):.0%}"
             for k, vs in sides.items() if vs]
    bad = [k for k, vs in sides.items() if spread(vs) > UNRELIABLE_SPREAD]
    return "; ".join(parts) + f"; load average {os.getloadavg()[0]:.2f}" + \
        (f"; UNRELIABLE ({', '.join(bad)} rounds disagree by > 20%)" if bad else "")
