"""NVIDIA Jetson through ``tegrastats``: for boards whose INA3221 sysfs files are not readable.

``tegrastats`` prints one line per interval; a reader thread parses each and keeps the latest, so
:meth:`TegrastatsPowerSource.read` never blocks the sampler. Rails are printed as
``NAME cur/avg`` in mW, newer releases with the ``mW`` suffix and some with a third value.
"""

from __future__ import annotations

import re
import subprocess
import threading
from typing import IO, Callable

from .base import DeviceEnv, PowerReading, PowerSource, board_total, register_power_source, total_rule

DEFAULT_INTERVAL_MS = 100

# `VDD_IN 4542mW/4000mW`, `POM_5V_IN 4520/4680`, `VDD_IN 5000mW/4000mW/6000mW`. The look-ahead keeps
# memory fields such as `RAM 2298/3964MB` and `IRAM 0/252kB` out: only a bare number or `mW` ends a rail.
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*)\s+(\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?"
                   r"(?:/(\d+(?:\.\d+)?)(?:mW)?)?(?=\s|$)")


def parse_tegrastats_line(line: str) -> dict[str, float]:
    """Per-rail watts (the first, instantaneous, value of each ``cur/avg[/…]`` field) of one line."""
    return {m.group(1): float(m.group(2)) / 1e3 for m in _RAIL.finditer(line)}


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
                rails = parse_tegrastats_line(line)
                if not rails:
                    continue
                watts, _ = board_total(rails)
                with self._lock:
                    self._latest = PowerReading(self.clock(), watts, rails)
                    self._rails_seen = list(rails)
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
