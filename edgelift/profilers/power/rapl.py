"""Intel/AMD RAPL through powercap: CPU package (and sub-domain) energy counters.

``energy_uj`` is cumulative µJ and wraps at ``max_energy_range_uj``, so power comes from deltas
between reads with the wrap undone. Top-level domains (``intel-rapl:N``) are the packages and make
the total; sub-domains (``intel-rapl:N:M``: core, uncore, dram) are parts of them and only rails, as
is a top-level ``psys`` (platform) domain, which contains the packages.
Since Linux 5.10 (CVE-2020-8694) ``energy_uj`` is root-only: unreadable -> not detected, and
:meth:`RaplPowerSource.why_not` says so (with the way to grant it) for the profile's warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .base import DeviceEnv, PowerReading, PowerSource, register_power_source

POWERCAP_GLOB = "/sys/class/powercap/intel-rapl:*"
_TOP = re.compile(r"intel-rapl:(\d+)")


@dataclass(frozen=True)
class RaplDomain:
    """One counter: its rail name, directory, whether it counts toward the total, and its wrap."""

    rail: str
    path: Path
    top_level: bool
    max_energy_uj: float | None


def find_rapl_domains(env: DeviceEnv) -> list[RaplDomain]:
    """Every readable RAPL domain; sub-domains are named ``<package>/<name>`` (e.g. ``package-0/core``)."""
    dirs = {d.name: d for d in env.glob(POWERCAP_GLOB)}
    domains = []
    for key, d in sorted(dirs.items()):
        name = env.read_text(d / "name") or key
        if env.read_float(d / "energy_uj") is None:
            continue
        top = _TOP.fullmatch(key) is not None
        if top and name == "psys":  # the platform domain already contains the packages: a rail only
            domains.append(RaplDomain(name, d, False, env.read_float(d / "max_energy_range_uj")))
            continue
        if not top:
            parent = dirs.get(key.rsplit(":", 1)[0])
            name = f"{(env.read_text(parent / 'name') if parent else None) or key.rsplit(':', 1)[0]}/{name}"
        domains.append(RaplDomain(name, d, top, env.read_float(d / "max_energy_range_uj")))
    return domains


def energy_delta_uj(before: float, after: float, max_energy_uj: float | None) -> float:
    """Energy between two counter values, undoing one wrap at ``max_energy_range_uj``."""
    delta = after - before
    if delta < 0 and max_energy_uj:
        delta += max_energy_uj
    return delta


@register_power_source("rapl")
class RaplPowerSource(PowerSource):
    """CPU package power: total = sum of the top-level (package) domains; sub-domains as rails."""

    looked_for = "readable RAPL counters (/sys/class/powercap/intel-rapl:*/energy_uj; root-only on Linux >= 5.10)"

    def __init__(self, env: DeviceEnv, domains: list[RaplDomain]) -> None:
        self.env = env
        self.domains = domains
        self._last: tuple[float, dict[str, float]] | None = None

    @classmethod
    def detect(cls, env: DeviceEnv) -> RaplPowerSource | None:
        try:
            domains = find_rapl_domains(env)
            return cls(env, domains) if any(d.top_level for d in domains) else None
        except Exception:  # noqa: BLE001 - detection never raises
            return None

    @classmethod
    def why_not(cls, env: DeviceEnv) -> str | None:
        """Why RAPL was not detected although its counters exist: ``energy_uj`` raised PermissionError
        (root-only since Linux 5.10). None when there are no counters or they are readable, so a
        machine without RAPL gets no hint. Without it the profile would only say "no power source
        found", which sends a user of an Intel laptop looking for hardware they have."""
        for d in env.glob(POWERCAP_GLOB):
            try:
                (d / "energy_uj").read_text()
            except PermissionError:
                return ("RAPL counters exist but energy_uj is root-only (Linux >= 5.10): run as root, or grant "
                        "read access until reboot with `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`")
            except OSError:
                continue
        return None

    def _snapshot(self) -> tuple[float, dict[str, float]]:
        t = self.env.clock()
        return t, {d.rail: e for d in self.domains if (e := self.env.read_float(d.path / "energy_uj")) is not None}

    def start(self) -> None:
        """Take the baseline so the first :meth:`read` already gives watts."""
        self._last = self._snapshot()

    def read(self) -> PowerReading | None:
        now = self._snapshot()
        prev, self._last = self._last, now
        if prev is None or now[0] <= prev[0]:
            return None
        dt = now[0] - prev[0]
        rails = {}
        for d in self.domains:
            if d.rail in now[1] and d.rail in prev[1]:
                rails[d.rail] = energy_delta_uj(prev[1][d.rail], now[1][d.rail], d.max_energy_uj) / 1e6 / dt
        total = sum(w for d in self.domains if d.top_level and (w := rails.get(d.rail)) is not None)
        return PowerReading(now[0], total, rails) if rails else None

    def describe(self) -> str:
        tops = [d.rail for d in self.domains if d.top_level]
        return (f"RAPL at {self.env.display(self.env.path('/sys/class/powercap'))}, {len(self.domains)} domains, "
                f"total = {' + '.join(tops)} (energy deltas)")
