"""NVIDIA Jetson through ``tegrastats``: for boards whose INA3221 sysfs files are not readable.

``tegrastats`` prints one line per interval; a reader thread parses each and keeps the latest, so
:meth:`TegrastatsPowerSource.read` never blocks the sampler. Rails are printed as
``NAME cur/avg`` in mW, newer releases with the ``mW`` suffix and some with a third value.

:func:`parse_tegrastats` also reads the other fields of a line (temperatures, GPU and EMC load, RAM)
as printed by the releases in tests/data/captures: a leading ``MM-DD-YYYY HH:MM:SS`` date (JetPack
5/6), lower-case sensor names (Orin Nano, JetPack 6), ``-256C`` for sensors that are off, the
per-GPC ``GR3D_FREQ 0%@[0,0]`` form (AGX Orin), no ``EMC_FREQ`` at all (Orin Nano Super) and rail
names without the ``VDD_`` prefix (JetPack 4.2 Xavier).
"""

from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import dataclass, field
from typing import IO, Callable

from .base import DeviceEnv, PowerReading, PowerSource, board_total, register_power_source, total_rule
from .jetson import is_unconnected_rail

DEFAULT_INTERVAL_MS = 100

# `VDD_IN 4542mW/4000mW`, `POM_5V_IN 4520/4680`, `VDD_IN 5000mW/4000mW/6000mW`. The look-ahead keeps
# memory fields such as `RAM 2298/3964MB` and `IRAM 0/252kB` out: only a bare number or `mW` ends a rail.
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*)\s+(\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?"
                   r"(?:/(\d+(?:\.\d+)?)(?:mW)?)?(?=\s|$)")


# `cpu@47.687C`, `Tdiode@37.25C`, `CV0@-256C`; `0%@729` (CPU, EMC, GPU loads) has no `C`.
_TEMP = re.compile(r"(?<![\w@])([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C(?=\s|$)")
# `GR3D_FREQ 0%`, `GR3D_FREQ 0%@140`, `GR3D_FREQ 0%@[0,0]` (one frequency per GPC).
_GPU = re.compile(r"(?<!\w)GR3D_FREQ\s+(\d+(?:\.\d+)?)%(?:@(?:\[([\d,\s]*)\]|(\d+)))?")
# `EMC_FREQ 0%`, `EMC_FREQ 16%@102`.
_EMC = re.compile(r"(?<!\w)EMC_FREQ\s+(\d+(?:\.\d+)?)%(?:@(\d+))?")
# `RAM 4321/62801MB (lfb 1759x4MB)`; `IRAM 0/252kB(lfb 252kB)` is another field (the look-behind).
_RAM = re.compile(r"(?<!\w)RAM\s+(\d+)/(\d+)MB(?:\s*\(lfb\s+(\d+)x(\d+(?:\.\d+)?)(MB|kB)\))?")

# tegrastats prints -256C for a thermal zone that is switched off (AGX Orin: CV0..CV2, GPU when the
# GPU is power-gated). No Jetson runs anywhere near this, so anything this cold is "off", not a value.
SENSOR_OFF_BELOW_C = -100.0


@dataclass
class TegrastatsSample:
    """Everything :func:`parse_tegrastats` reads from one ``tegrastats`` line.

    The power source only needs :attr:`rails`; the other fields exist because a line carries them and
    callers (and the capture tests) need GPU load, memory-controller load, RAM and temperatures as
    printed. A field is None (or empty) when the line does not print it, never a made-up zero.
    """

    rails: dict[str, float] = field(default_factory=dict)
    """Watts per rail, the instantaneous (first) value, named as printed; ``NC`` channels dropped."""
    temps_c: dict[str, float] = field(default_factory=dict)
    """Degrees C per sensor, named as printed (JetPack 6 Orin Nano prints them lower case)."""
    sensors_off: list[str] = field(default_factory=list)
    """Sensors printed with ``-256C`` (switched off): no temperature, so kept out of :attr:`temps_c`."""
    gpu_load_pct: float | None = None
    """``GR3D_FREQ`` load in percent."""
    gpu_freq_mhz: list[int] = field(default_factory=list)
    """``GR3D_FREQ`` clock(s) in MHz: one, or one per GPC for ``@[f0,f1]``; empty without ``@``."""
    emc_load_pct: float | None = None
    """``EMC_FREQ`` (memory controller) load in percent; None where not printed (Orin Nano Super)."""
    emc_freq_mhz: int | None = None
    """``EMC_FREQ`` clock in MHz; None without ``@`` (not run as root) or without the field."""
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    lfb_blocks: int | None = None
    """Largest free block: the count of ``(lfb NxS)``."""
    lfb_block_mb: float | None = None
    """Largest free block: the size ``S`` of each, in MB."""

    def metrics(self) -> dict[str, float]:
        """The non-power fields as :attr:`PowerReading.metrics` (only those the line printed): GPU
        load and clock (the fastest GPC for the per-GPC form), memory-controller load and clock, RAM
        used and the largest free block in MB."""
        values = {"gpu_load_pct": self.gpu_load_pct,
                  "gpu_freq_mhz": max(self.gpu_freq_mhz) if self.gpu_freq_mhz else None,
                  "emc_load_pct": self.emc_load_pct, "emc_freq_mhz": self.emc_freq_mhz,
                  "ram_used_mb": self.ram_used_mb,
                  "lfb_mb": None if self.lfb_blocks is None else self.lfb_blocks * self.lfb_block_mb}
        return {k: float(v) for k, v in values.items() if v is not None}

    @property
    def board_watts(self) -> float:
        """Board total per :func:`board_total` (VDD_IN/POM_5V_IN, else the sum of the rails)."""
        return board_total(self.rails)[0] if self.rails else 0.0


def parse_tegrastats(line: str) -> TegrastatsSample:
    """Parse one ``tegrastats`` line into a :class:`TegrastatsSample` (unknown fields are ignored)."""
    sample = TegrastatsSample()
    for m in _RAIL.finditer(line):
        if not is_unconnected_rail(m.group(1)):
            sample.rails[m.group(1)] = float(m.group(2)) / 1e3
    for m in _TEMP.finditer(line):
        value = float(m.group(2))
        if value < SENSOR_OFF_BELOW_C:
            sample.sensors_off.append(m.group(1))
        else:
            sample.temps_c[m.group(1)] = value
    if m := _GPU.search(line):
        sample.gpu_load_pct = float(m.group(1))
        if m.group(2) is not None:
            sample.gpu_freq_mhz = [int(f) for f in re.split(r"[,\s]+", m.group(2).strip()) if f]
        elif m.group(3) is not None:
            sample.gpu_freq_mhz = [int(m.group(3))]
    if m := _EMC.search(line):
        sample.emc_load_pct = float(m.group(1))
        sample.emc_freq_mhz = int(m.group(2)) if m.group(2) else None
    if m := _RAM.search(line):
        sample.ram_used_mb, sample.ram_total_mb = int(m.group(1)), int(m.group(2))
        if m.group(3):
            size = float(m.group(4))
            sample.lfb_blocks, sample.lfb_block_mb = int(m.group(3)), size if m.group(5) == "MB" else size / 1024
    return sample


def parse_tegrastats_line(line: str) -> dict[str, float]:
    """Per-rail watts (the first, instantaneous, value of each ``cur/avg[/…]`` field) of one line.

    Unconnected ``NC`` channels (AGX Orin prints two ``NC 0mW/0mW``) are not rails and are dropped.
    """
    return parse_tegrastats(line).rails


@register_power_source("tegrastats")
class TegrastatsPowerSource(PowerSource):
    """Jetson board power parsed from a running ``tegrastats`` (total per :func:`board_total`).

    ``command`` is the full command line, so tests can point it at a script replaying lines.
    """

    looked_for = "the 'tegrastats' program on PATH"

    def __init__(self, command: list[str], clock: Callable[[], float]) -> None:
        self.command = list(command)
        self.clock = clock
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._latest: PowerReading | None = None
        self._rails_seen: list[str] = []

    @classmethod
    def detect(cls, env: DeviceEnv, interval_ms: int = DEFAULT_INTERVAL_MS) -> TegrastatsPowerSource | None:
        try:
            exe = env.which("tegrastats")
            return cls([exe, "--interval", str(int(interval_ms))], env.clock) if exe else None
        except Exception:  # noqa: BLE001 - detection never raises
            return None

    def start(self) -> None:
        """Spawn ``tegrastats`` and the thread that parses its output (idempotent)."""
        if self._proc is not None:
            return
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True, bufsize=1)
        self._thread = threading.Thread(target=self._pump, args=(self._proc.stdout,), name="tegrastats-reader",
                                        daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        try:
            for line in stream:
                sample = parse_tegrastats(line)
                if not sample.rails:
                    continue
                watts, _ = board_total(sample.rails)
                with self._lock:
                    self._latest = PowerReading(self.clock(), watts, sample.rails, sample.metrics())
                    self._rails_seen = list(sample.rails)
        except (OSError, ValueError):  # the pipe closed under us by close()
            return

    def read(self) -> PowerReading | None:
        """The latest parsed line (None until the first arrives); starts ``tegrastats`` if needed."""
        if self._proc is None:
            try:
                self.start()
            except OSError:
                return None
        with self._lock:
            return self._latest

    def describe(self) -> str:
        with self._lock:
            rails = list(self._rails_seen)
        rule = total_rule(rails) if rails else "VDD_IN/POM_5V_IN, else sum of rails"
        return f"tegrastats ({' '.join(self.command)}), {len(rails)} rails, total = {rule}"

    def close(self) -> None:
        """Stop ``tegrastats`` (terminate, then kill if it lingers) and join the reader."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=2)
        if self._thread is not None:  # the pipe hit EOF when the process ended
            self._thread.join(timeout=2)
            self._thread = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
