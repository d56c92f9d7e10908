"""The load path of a memory budget: find the cached plan, open the session that holds it.

Kept light (no graph codec, no planner): a budgeted ``load()`` of a model planned before imports this
module and ONNX Runtime, nothing more, so it is as fast as a plain load. Planning (``patch_run``) runs in
a child process the first time.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..core.units import format_bytes
from ..errors import EdgeError, InvalidOptionError, ModelFormatError
from .base import Session

PLAN_FORMAT = 2  # bump when the patched graph a plan describes changes
_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


class PatchedGraphError(EdgeError):
    """The planner failed or produced a graph that is not valid ONNX (a bug: never written, never run)."""


def parse_budget(text: str | int | float) -> int:
    """'256KB' -> 256000, '1.5MB' -> 1500000, '2MiB' -> 2097152, 4096 -> 4096 (bytes)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?[iI]?[bB]?)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise InvalidOptionError(f"memory budget '{text}' not understood; write e.g. 256KB, 1.5MB or 2MiB")
        value = int(round(float(m.group(1)) * _UNITS[m.group(2).lower()]))
    if value <= 0:
        raise InvalidOptionError(f"memory budget must be positive, got {text}")
    return value


human_bytes = format_bytes  # the one size convention (core.units)


@dataclass
class BudgetPlan:
    """What ``load(..., memory_budget=...)`` runs under, planned and measured (``Model.memory_plan``)."""

    budget_bytes: int
    patched: bool  # False: the plain schedule's planned peak already fits
    planned_peak_bytes: int
    plain_peak_bytes: int
    extra_compute: float = 1.0
    stages: list = field(default_factory=list)
    measured_peak_bytes: int | None = None  # activation memory of one run, measured once in a fresh process
    plain_measured_bytes: int | None = None
    process_peak_bytes: int | None = None
    plain_process_peak_bytes: int | None = None

    @classmethod
    def from_metadata(cls, meta: dict) -> "BudgetPlan":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names}, patched=not meta.get("plain_fits"))

    @property
    def reduction(self) -> float:
        return self.plain_peak_bytes / max(1, self.planned_peak_bytes)

    def describe(self) -> str:
        if not self.patched:
            return (f"the plain schedule fits {human_bytes(self.budget_bytes)} "
                    f"(planned peak {human_bytes(self.planned_peak_bytes)}); ONNX Runtime arena off")
        text = (f"{len(self.stages)} patched stage(s), grid {'/'.join(str(s['grid']) for s in self.stages)}: planned "
                f"peak {human_bytes(self.planned_peak_bytes)} (plain {human_bytes(self.plain_peak_bytes)}, "
                f"{self.reduction:.2f}x less), compute x{self.extra_compute:.3f}")
        if self.measured_peak_bytes is not None:
            text += (f"; measured {human_bytes(self.measured_peak_bytes)} "
                     f"(plain {human_bytes(self.plain_measured_bytes or 0)})")
        return text

    def as_dict(self) -> dict:
        return asdict(self)


def budget_session(model, threads: int | None, **options) -> Session:
    """An ONNX Runtime session set up to hold a planned peak: no arena (each tensor its own allocation,
    freed when it dies, so the allocator reuses it for the next patch), no memory pattern (no run-wide
    block) and no buffer reuse between tensors (ONNX Runtime hands a dead tensor's buffer to a later
    output, and such chains held 42 MB across the patches of a U-Net planned at 4.5 MB; without them
    it peaks at 4.4 MB). glibc's M_MMAP_THRESHOLD could also hand freed blocks back to the system at
    once, but every run would then fault its pages in again (2x the latency on MobileNetV2)."""
    from .ort import OrtSession

    if options.get("arena"):
        raise InvalidOptionError("memory_budget runs ONNX Runtime without its arena (the arena keeps freed tensors); "
                                 "drop arena=True")
    options.pop("arena", None)
    return OrtSession(model, threads, arena=False, memory_reuse=False, **options)


def cache_dir() -> Path:
    from ..core.cache import cache_root

    return cache_root() / "plans"


def cached_plan_path(model: str | Path, budget: int) -> Path:
    """Where the plan for ``model`` (by content: a rewritten model never meets a stale plan) under
    ``budget`` bytes is cached. The ONNX Runtime version is part of the key: the cache holds that version's
    optimized graph and its measured peaks, which another version would neither load nor reproduce."""
    model = Path(model)
    h = hashlib.blake2b(digest_size=16)
    with open(model, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(f"onnxruntime {_ort_version()}".encode())
    return cache_dir() / f"{model.stem}-{h.hexdigest()}-{budget}-v{PLAN_FORMAT}.onnx"


def _ort_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


def is_planned(model: str | Path, budget: int) -> bool:
    """Whether ``model`` has a cached plan for ``budget`` bytes (the first budgeted load plans: seconds)."""
    try:
        return cached_plan_path(model, budget).with_suffix(".json").is_file()
    except OSError:
        return False


def open_patched(path, budget, threads: int | None = None, **options) -> tuple[Session, BudgetPlan]:
    """An ONNX model run under ``budget`` bytes of activation memory: the plain schedule (no arena) when
    its planned peak fits, else the cached patched schedule, planned first in a child process."""
    limit = parse_budget(budget)
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path} does not exist")
    cached = cached_plan_path(path, limit)
    sidecar = cached.with_suffix(".json")
    if not sidecar.is_file():
        _plan_in_child(path, limit, cached)
    try:
        meta = json.loads(sidecar.read_text())
        plan = BudgetPlan.from_metadata(meta)
        if meta.get("format") != PLAN_FORMAT or (plan.patched and not cached.is_file()):
            raise ValueError("stale")
    except (OSError, ValueError, TypeError) as e:
        sidecar.unlink(missing_ok=True)
        raise PatchedGraphError(f"the cached plan {sidecar} is unreadable ({e}); it was removed, load the model "
                                "again") from e
    # from the path, not bytes: ONNX Runtime reads the file itself and no second copy passes through Python
    if not plan.patched:
        return budget_session(path, threads, **options), plan
    optimized = cached.with_suffix(".opt.onnx")
    if "optimization" not in options and optimized.is_file():  # ONNX Runtime's own passes, run once at planning
        return budget_session(optimized, threads, optimization="disabled", **options), plan
    return budget_session(cached, threads, **options), plan


def _plan_in_child(path: Path, limit: int, out: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgelift.runtimes.patch_run", str(path), str(limit), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"the planner exited with {proc.returncode}"
        kind, _, text = last.partition(": ")
        from .. import errors

        cls = PatchedGraphError if kind == "PatchedGraphError" else getattr(errors, kind, None)
        if isinstance(cls, type) and issubclass(cls, EdgeError):
            raise cls(text)  # the planner's own one-line error, as if raised here
        raise PatchedGraphError(f"the memory planner failed: {last}")


