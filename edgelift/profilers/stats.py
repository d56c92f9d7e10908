"""Latency statistics from raw samples, named as llama-bench's JSON where they overlap.

Percentiles use numpy's default (linear interpolation), so a reader can recompute every figure from
``samples_ns`` (when all were kept). A coefficient of variation above ``UNRELIABLE_CV`` flags the figure
as unreliable: on a busy or thermally throttling device the mean then says little, and the report says so.

A sample is one call, or on models faster than ``profile.MIN_SAMPLE_NS`` the mean of ``loops_per_sample``
consecutive calls (as timeit and pyperf do): a 40 µs model timed call by call measures the scheduler's
ticks as much as the model. Reports keep at most ``MAX_STORED_SAMPLES`` samples (spread evenly over the
run) plus a histogram of all of them, so a long run does not write megabytes of JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

UNRELIABLE_CV = 0.10  # stddev / mean above this: the spread makes the mean a poor summary
MAX_STORED_SAMPLES = 2000  # samples kept in a report; beyond, an even subset plus the histogram of all
HISTOGRAM_BINS = 40


@dataclass
class LatencyStats:
    n_samples: int
    avg_ns: float
    stddev_ns: float
    min_ns: int
    median_ns: float
    p90_ns: float
    p95_ns: float
    p99_ns: float
    max_ns: int
    cv: float
    unreliable: bool
    throughput_per_s: float  # items (batch rows) per second at the mean latency
    avg_ts: float  # runs per second, llama-bench's name for the mean rate
    samples_ns: list[int] = field(default_factory=list)  # per-call time of each stored sample
    t_offsets_s: list[float] = field(default_factory=list)  # start of each stored sample, from the first
    loops_per_sample: int = 1  # consecutive calls averaged into one sample
    samples_truncated: bool = False  # True: samples_ns is an even subset of n_samples
    histogram: dict | None = None  # {"edges_ns": [...], "counts": [...]} over every sample

    @classmethod
    def from_samples(cls, samples_ns, *, batch: int = 1, t_offsets_s=None, loops_per_sample: int = 1) -> "LatencyStats":
        """Statistics of per-call times in nanoseconds; ``batch`` items per call for the throughput."""
        a = np.asarray(samples_ns, dtype=np.int64)
        if a.size == 0:
            raise ValueError("no latency samples")
        mean = float(a.mean())
        std = float(a.std(ddof=1)) if a.size > 1 else 0.0  # sample stddev, as llama-bench
        p = np.percentile(a, [50, 90, 95, 99])
        cv = std / mean if mean > 0 else 0.0
        t = np.asarray(t_offsets_s if t_offsets_s is not None else [], dtype=np.float64)
        keep = np.arange(a.size)
        if a.size > MAX_STORED_SAMPLES:
            keep = np.unique(np.linspace(0, a.size - 1, MAX_STORED_SAMPLES).round().astype(np.int64))
        lo, hi = max(int(a.min()), 1), max(int(a.max()), 2)
        edges = np.unique(np.geomspace(lo, hi + 1, HISTOGRAM_BINS + 1).round().astype(np.int64))
        counts, _ = np.histogram(a, bins=edges)
        return cls(int(a.size), mean, std, int(a.min()), float(p[0]), float(p[1]), float(p[2]), float(p[3]),
                   int(a.max()), cv, bool(cv > UNRELIABLE_CV and a.size > 1), batch * 1e9 / mean if mean else 0.0,
                   1e9 / mean if mean else 0.0, [int(x) for x in a[keep]],
                   [float(x) for x in t[keep[keep < t.size]]], int(loops_per_sample), bool(keep.size < a.size),
                   {"edges_ns": [int(e) for e in edges], "counts": [int(c) for c in counts]})

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        ms = lambda v: f"{v / 1e6:.3f} ms"  # noqa: E731
        return (f"median {ms(self.median_ns)}, mean {ms(self.avg_ns)}, p90 {ms(self.p90_ns)}, p99 {ms(self.p99_ns)}, "
                f"std {ms(self.stddev_ns)} (cv {self.cv:.1%}) over {self.n_samples} samples"
                + (f" of {self.loops_per_sample} calls each" if self.loops_per_sample > 1 else ""))


def rate_stats(samples_ns, items: int) -> tuple[float, float]:
    """(mean, sample stddev) of items per second over runs, as llama-bench's avg_ts / stddev_ts."""
    ts = items * 1e9 / np.asarray(samples_ns, dtype=np.float64)
    return float(ts.mean()), float(ts.std(ddof=1)) if ts.size > 1 else 0.0
