"""Sampling a power source in the background, and turning samples into energy.

The sampler runs beside the workload on its own thread at a fixed rate; marks (or ``phase``
blocks) cut the one trace into windows, so an idle baseline and the measured run come from the
same source and clock, and energy above idle can be reported.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

from .base import PowerReading, PowerSource

DEFAULT_RATE_HZ = 10.0


@dataclass
class PowerTrace:
    """Samples in time order: ``t_s`` (monotonic seconds), total ``watts``, per-rail watts and the
    source's other metrics (:attr:`PowerReading.metrics`).

    Every ``rails`` and ``metrics`` list is aligned with ``t_s``; a value missing from a sample is NaN.
    """

    t_s: list[float] = field(default_factory=list)
    watts: list[float] = field(default_factory=list)
    rails: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.t_s)

    @property
    def duration_s(self) -> float:
        """Time from the first to the last sample (0 with fewer than two)."""
        return self.t_s[-1] - self.t_s[0] if len(self.t_s) > 1 else 0.0

    def between(self, t0: float | None = None, t1: float | None = None) -> PowerTrace:
        """The samples with ``t0 <= t <= t1`` (an open end when None)."""
        keep = [i for i, t in enumerate(self.t_s) if (t0 is None or t >= t0) and (t1 is None or t <= t1)]
        return PowerTrace([self.t_s[i] for i in keep], [self.watts[i] for i in keep],
                          {k: [v[i] for i in keep] for k, v in self.rails.items()},
                          {k: [v[i] for i in keep] for k, v in self.metrics.items()})

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def integrate_energy(t_s: Sequence[float], watts: Sequence[float]) -> float:
    """Joules under the power curve by the trapezoid rule.

    Samples are sorted by time first (readings from several threads may interleave); NaN samples
    are dropped. Fewer than two samples span no time, so they hold no energy: 0.0.
    """
    if len(t_s) != len(watts):
        raise ValueError(f"t_s has {len(t_s)} samples but watts has {len(watts)}")
    pts = sorted((t, w) for t, w in zip(t_s, watts) if not (math.isnan(t) or math.isnan(w)))
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(pts, pts[1:]))


def average_power(trace: PowerTrace) -> float | None:
    """Time-weighted mean watts (energy / span), so uneven sampling does not bias it; None if empty."""
    if not trace.t_s:
        return None
    if trace.duration_s > 0:
        return integrate_energy(trace.t_s, trace.watts) / trace.duration_s
    return sum(trace.watts) / len(trace.watts)


@dataclass
class PowerSummary:
    """Power over a measured window, and relative to an idle baseline when one was taken."""

    samples: int
    duration_s: float
    avg_w: float | None
    peak_w: float | None
    std_w: float | None
    energy_j: float | None
    idle_w: float | None = None
    energy_above_idle_j: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize_power(measured: PowerTrace, idle: PowerTrace | None = None,
                    duration_s: float | None = None) -> PowerSummary:
    """Average, peak, spread and energy of ``measured``; idle power and energy above it from ``idle``.

    ``duration_s`` is the window's real length (e.g. :meth:`PowerSampler.phase_duration`): samples
    only start one period into a window, so energy is then ``avg_w x duration_s`` instead of the
    integral over the sampled span. ``energy_above_idle_j`` = ``energy_j - idle_w x duration``:
    what the workload cost beyond keeping the device on.
    """
    n = len(measured)
    avg = average_power(measured)
    duration = measured.duration_s if duration_s is None else duration_s
    if avg is None:
        energy = None
    elif duration_s is None:
        energy = integrate_energy(measured.t_s, measured.watts)
    else:
        energy = avg * duration_s
    std = math.sqrt(sum((w - sum(measured.watts) / n) ** 2 for w in measured.watts) / n) if n else None
    idle_w = average_power(idle) if idle is not None else None
    above = energy - idle_w * duration if energy is not None and idle_w is not None else None
    return PowerSummary(n, duration, avg, max(measured.watts) if n else None, std, energy, idle_w, above)


class PowerSampler:
    """Reads ``source`` every ``1 / rate_hz`` s on a daemon thread until :meth:`stop`.

    Readings that are None (a cumulative counter's baseline) or repeat the previous timestamp
    (a source slower than the rate, e.g. ``tegrastats``) are skipped, so each sample is new.
    Read errors are counted in :attr:`errors`, not raised: the workload must not die of them.
    ``clock`` (for marks) must be the clock the source stamps readings with: ``time.monotonic``,
    unless the source's ``DeviceEnv.clock`` was replaced.
    """

    def __init__(self, source: PowerSource, rate_hz: float = DEFAULT_RATE_HZ,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.source = source
        self.rate_hz = float(rate_hz)
        self.clock = clock
        self.errors = 0
        self._readings: list[PowerReading] = []
        self._marks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PowerSampler:
        """Start the source (baseline, subprocess) and the sampling thread."""
        if self._thread is not None:
            raise RuntimeError("PowerSampler already started")
        self.source.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="power-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> PowerTrace:
        """Stop sampling and return the whole trace (the source stays open: its owner closes it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.trace()

    def __enter__(self) -> PowerSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        period = 1.0 / self.rate_hz
        due = self.clock()
        while not self._stop.is_set():
            self._sample()
            due += period
            delay = due - self.clock()
            if delay < 0:  # fell behind (slow read): restart the schedule rather than burst
                due, delay = self.clock(), 0.0
            self._stop.wait(delay)

    def _sample(self) -> None:
        try:
            r = self.source.read()
        except Exception:  # noqa: BLE001 - counted, not raised (see class docstring)
            self.errors += 1
            return
        if r is None:
            return
        with self._lock:
            if not self._readings or r.t != self._readings[-1].t:
                self._readings.append(r)

    def mark(self, label: str, t: float | None = None) -> float:
        """Record the time ``label`` happened (now by default), to cut windows with :meth:`trace`."""
        t = self.clock() if t is None else t
        with self._lock:
            self._marks[label] = t
        return t

    @property
    def marks(self) -> dict[str, float]:
        with self._lock:
            return dict(self._marks)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark ``<name>.start`` and ``<name>.end`` around a block (e.g. ``"idle"``, ``"run"``)."""
        self.mark(f"{name}.start")
        try:
            yield
        finally:
            self.mark(f"{name}.end")

    def phase_duration(self, name: str) -> float:
        """Seconds between a phase's start and end marks."""
        m = self.marks
        return m[f"{name}.end"] - m[f"{name}.start"]

    def phase_trace(self, name: str) -> PowerTrace:
        """The samples taken during :meth:`phase` ``name``."""
        return self.trace(f"{name}.start", f"{name}.end")

    def trace(self, start: str | float | None = None, end: str | float | None = None) -> PowerTrace:
        """The samples so far, optionally between two marks (labels) or times."""
        with self._lock:
            readings = list(self._readings)
            marks = dict(self._marks)
        t0 = marks[start] if isinstance(start, str) else start
        t1 = marks[end] if isinstance(end, str) else end
        full = PowerTrace([r.t for r in readings], [r.watts for r in readings],
                          _aligned([r.rails for r in readings]), _aligned([r.metrics for r in readings]))
        return full.between(t0, t1)


def _aligned(per_reading: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per-reading dicts as one list per key (first-seen order), NaN where a reading lacks the key."""
    names: dict[str, None] = {}
    for d in per_reading:
        names.update(dict.fromkeys(d))
    return {k: [d.get(k, math.nan) for d in per_reading] for k in names}
