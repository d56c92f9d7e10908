"""Power sources: the common interface, the hardware-access seam and the registry.

Every source reads hardware through a :class:`DeviceEnv` instead of touching ``/sys`` or running
commands directly, so tests can replay the published formats (device-power.md) from a temp tree
and fake commands: no Jetson, Pi, phone or RAPL host is attached where the tests run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from ...errors import InvalidOptionError

COMMAND_TIMEOUT_S = 5.0

# Rails that measure the whole board input: when one is present it *is* the total, and adding
# the other rails (which it already contains) would double count.
BOARD_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


def run_command(cmd: list[str]) -> str:
    """Run ``cmd`` and return its stdout; raise on a missing program, a non-zero exit or a hang."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=True)
    return done.stdout


@dataclass
class DeviceEnv:
    """Where hardware is read from: a root for sysfs/procfs, a command runner, ``which`` and a clock.

    The defaults are the live machine. Tests pass a temp ``root`` holding a replayed sysfs tree, a
    ``run`` returning captured command output and a fake ``clock`` so cumulative counters give
    exact watts.
    """

    root: Path = Path("/")
    run: Callable[[list[str]], str] = run_command
    which: Callable[[str], str | None] = shutil.which
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def is_host(self) -> bool:
        """True when reading the live machine (fallbacks to ``platform``/``os`` only make sense then)."""
        return self.root == Path("/")

    def path(self, p: str | Path) -> Path:
        """The device path ``p`` (absolute, as on the device) resolved under :attr:`root`."""
        return self.root / str(p).lstrip("/")

    def display(self, p: Path) -> str:
        """``p`` as it would read on the device (the temp root stripped), for messages."""
        try:
            return "/" + str(Path(p).relative_to(self.root)).lstrip("/")
        except ValueError:
            return str(p)

    def glob(self, pattern: str, base: Path | None = None) -> list[Path]:
        """Sorted matches of an absolute device glob under :attr:`root`, or of a relative ``pattern``
        under ``base`` (a path already resolved by this env); empty on any error."""
        try:
            return sorted((base or self.root).glob(pattern.lstrip("/")))
        except (OSError, ValueError):
            return []

    def read_text(self, p: str | Path) -> str | None:
        """A file's stripped text, or None if it is missing, unreadable (permissions) or binary."""
        try:
            return (p if isinstance(p, Path) else self.path(p)).read_text().strip()
        except (OSError, UnicodeDecodeError, ValueError):
            return None

    def read_float(self, p: str | Path) -> float | None:
        """A file holding one number, or None when it does not."""
        text = self.read_text(p)
        try:
            return float(text) if text is not None else None
        except ValueError:
            return None

    def try_run(self, cmd: list[str]) -> str | None:
        """:attr:`run` that returns None instead of raising (sources must never crash detection)."""
        try:
            return self.run(cmd)
        except Exception:  # noqa: BLE001 - any failure means "not available here"
            return None


@dataclass
class PowerReading:
    """One sample: ``t`` in ``time.monotonic`` seconds, total ``watts`` and per-rail watts.

    ``metrics`` holds what a source prints beside power in the same line (tegrastats: GPU and
    memory-controller load, RAM), named with their unit (``gpu_load_pct``, ``ram_used_mb``), so the
    report's timeline can show GPU load under the power curve without a second sampler.
    """

    t: float
    watts: float
    rails: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def board_total(rails: dict[str, float]) -> tuple[float, str]:
    """Total board watts from Jetson-style rails, and the rule used (for ``describe``).

    ``VDD_IN``/``POM_5V_IN`` is the board input when present. Otherwise (AGX Orin) the rails are
    disjoint and the total is their sum; no single rail (e.g. ``VIN_SYS_5V0``) stands for it.
    """
    for name in BOARD_INPUT_RAILS:
        if name in rails:
            return rails[name], name
    return sum(rails.values()), "sum of rails"


def total_rule(rail_names: list[str]) -> str:
    """The words for :func:`board_total`'s rule given the rail names (no values needed)."""
    for name in BOARD_INPUT_RAILS:
        if name in rail_names:
            return name
    return "sum of rails (no VDD_IN)"


class PowerSource(ABC):
    """A way to read power on this machine. Subclasses register with :func:`register_power_source`.

    ``looked_for`` says in one phrase what ``detect`` checks, for the error when a source named on
    the command line is not found.
    """

    name: str = ""
    looked_for: str = ""

    @classmethod
    @abstractmethod
    def detect(cls, env: DeviceEnv) -> PowerSource | None:
        """The source if this machine has it and it can be read; None otherwise. Never raises."""

    def start(self) -> None:
        """Prepare for sampling (spawn a process, take a baseline); the default needs nothing."""

    @abstractmethod
    def read(self) -> PowerReading | None:
        """The current power, or None when there is none yet (first read of a cumulative counter)."""

    @abstractmethod
    def describe(self) -> str:
        """What is read and where, and how the total is formed, for reports."""

    def close(self) -> None:
        """Release what :meth:`start`/:meth:`read` acquired; the default holds nothing."""

    def __enter__(self) -> PowerSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


POWER_SOURCES: dict[str, type[PowerSource]] = {}
"""Registered sources by name, in auto-detection priority order (registration order)."""

_S = TypeVar("_S", bound=type[PowerSource])


def register_power_source(name: str) -> Callable[[_S], _S]:
    """Class decorator: register a :class:`PowerSource` under ``name`` (order = detection priority)."""

    def deco(cls: _S) -> _S:
        if name in POWER_SOURCES and POWER_SOURCES[name] is not cls:
            raise ValueError(f"power source {name!r} is already registered by {POWER_SOURCES[name].__name__}")
        cls.name = name
        POWER_SOURCES[name] = cls
        return cls

    return deco


def _safe_detect(cls: type[PowerSource], env: DeviceEnv) -> PowerSource | None:
    try:
        return cls.detect(env)
    except Exception:  # noqa: BLE001 - a buggy/odd source must not break detection of the others
        return None


def detect_power_source(env: DeviceEnv | None = None, name: str = "auto") -> PowerSource | None:
    """The power source to use: ``"auto"`` = first registered that detects, ``"none"`` = None.

    An explicit name that is not found raises :class:`InvalidOptionError` (the user asked for it,
    so silently measuring nothing would mislead); so does an unknown name.
    """
    # Importing this module imports its package first, whose __init__ registers every source.
    env = env or DeviceEnv()
    if name == "none":
        return None
    if name == "auto":
        for cls in POWER_SOURCES.values():
            source = _safe_detect(cls, env)
            if source is not None:
                return source
        return None
    cls = POWER_SOURCES.get(name)
    if cls is None:
        choices = ", ".join(["auto", "none", *POWER_SOURCES])
        raise InvalidOptionError(f"unknown power source {name!r}; choose one of: {choices}")
    source = _safe_detect(cls, env)
    if source is None:
        why = _why_not(cls, env)
        raise InvalidOptionError(f"power source {name!r} not found: " + (why or f"looked for {cls.looked_for}"))
    return source


def _why_not(cls: type[PowerSource], env: DeviceEnv) -> str | None:
    """A source's optional ``why_not(env)`` hook: why it exists on this machine but cannot be used
    (RAPL's root-only counters), or None. A hook that raises gives no hint: hints never break detection."""
    hook = getattr(cls, "why_not", None)
    try:
        return hook(env) if hook is not None else None
    except Exception:  # noqa: BLE001 - a hint is optional
        return None


def absence_hints(env: DeviceEnv) -> list[str]:
    """``"<source>: <why>"`` for each registered source that exists on the machine but could not be
    used, to add to "no power source found"."""
    return [f"{name}: {why}" for name, cls in POWER_SOURCES.items() if (why := _why_not(cls, env))]
