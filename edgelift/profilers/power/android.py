"""Android phones, read on the device (e.g. Python under Termux or an adb-pushed runner).

Two sources: the Pixel on-device power monitor (ODPM, per-rail cumulative energy, accurate,
preferred) and the battery fuel gauge (whole-phone |I| x V, available on most phones but noisy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .base import DeviceEnv, PowerReading, PowerSource, register_power_source

# Fuel-gauge directories: the generic one first, then vendor alternatives (Qualcomm bms, Pixel maxfg).
BATTERY_DIRS = ("/sys/class/power_supply/battery", "/sys/class/power_supply/bms", "/sys/class/power_supply/maxfg")
ODPM_GLOB = "/sys/bus/iio/devices/iio:device*/energy_value"

# `t=16086645` then `CH3(T=16086645)[S2M_VDD_CPUCL2], 124265856`
_ODPM_T = re.compile(r"^\s*t=(\d+)\s*$")
_ODPM_CH = re.compile(r"^\s*CH(\d+)(?:\(T=(\d+)\))?\[([^\]]+)\],\s*(\d+)\s*$")


@dataclass(frozen=True)
class OdpmSnapshot:
    """One rail's cumulative energy (µW·s) at the monitor's own timestamp (ms)."""

    t_ms: int
    energy_uws: int


def parse_energy_value(text: str) -> dict[str, OdpmSnapshot]:
    """Rails of one ``energy_value`` file; a channel's own ``T=`` wins over the file's ``t=`` line."""
    t_file: int | None = None
    out: dict[str, OdpmSnapshot] = {}
    for line in text.splitlines():
        if m := _ODPM_T.match(line):
            t_file = int(m.group(1))
        elif (m := _ODPM_CH.match(line)) and (m.group(2) or t_file is not None):
            out[m.group(3)] = OdpmSnapshot(int(m.group(2) or t_file), int(m.group(4)))
    return out


@register_power_source("android-odpm")
class PixelOdpmPowerSource(PowerSource):
    """Pixel ODPM: per-rail watts from energy deltas between reads; total = sum of the monitored rails.

    The monitored rails are the PMIC's main outputs, not the whole phone (no display backlight
    boost, no battery losses). The monitor refreshes at its own rate: a rail whose timestamp has not
    advanced keeps its previous power instead of reading 0 W.
    """

    looked_for = "a Pixel on-device power monitor (/sys/bus/iio/devices/iio:device*/energy_value)"

    def __init__(self, env: DeviceEnv, files: list[Path]) -> None:
        self.env = env
        self.files = files
        self._last: dict[str, OdpmSnapshot] = {}
        self._power: dict[str, float] = {}

    @classmethod
    def detect(cls, env: DeviceEnv) -> PixelOdpmPowerSource | None:
        try:
            files = [f for f in env.glob(ODPM_GLOB) if parse_energy_value(env.read_text(f) or "")]
            return cls(env, files) if files else None
        except Exception:  # noqa: BLE001 - detection never raises
            return None

    def _snapshot(self) -> dict[str, OdpmSnapshot]:
        snap: dict[str, OdpmSnapshot] = {}
        for f in self.files:
            snap.update(parse_energy_value(self.env.read_text(f) or ""))
        return snap

    def start(self) -> None:
        """Take the baseline so the first :meth:`read` already gives watts."""
        self._last = self._snapshot()

    def read(self) -> PowerReading | None:
        t = self.env.clock()
        snap = self._snapshot()
        for rail, now in snap.items():
            prev = self._last.get(rail)
            if prev is None or now.t_ms <= prev.t_ms:
                if prev is None:
                    self._last[rail] = now
                continue
            # µW·s over ms -> W: (dE / 1e6) / (dt / 1e3)
            self._power[rail] = (now.energy_uws - prev.energy_uws) / (now.t_ms - prev.t_ms) / 1e3
            self._last[rail] = now
        if not self._power:
            return None
        return PowerReading(t, sum(self._power.values()), dict(self._power))

    def describe(self) -> str:
        where = ", ".join(self.env.display(f) for f in self.files)
        return f"Pixel ODPM at {where}, {len(self._last)} rails, total = sum of monitored rails (energy deltas)"


@register_power_source("android-battery")
class AndroidBatteryPowerSource(PowerSource):
    """Whole-phone power from the fuel gauge: |current_now| (µA) x voltage_now (µV).

    The current's sign varies by vendor (BatteryManager documents positive = charging; many kernels
    report discharge as negative), hence the absolute value. While charging this measures the
    charge current, not the phone's draw: unplug or suspend charging for a measurement.
    """

    looked_for = "a battery fuel gauge (/sys/class/power_supply/{battery,bms,maxfg}/current_now and voltage_now)"

    def __init__(self, env: DeviceEnv, directory: Path) -> None:
        self.env = env
        self.directory = directory

    @classmethod
    def detect(cls, env: DeviceEnv) -> AndroidBatteryPowerSource | None:
        try:
            for d in BATTERY_DIRS:
                source = cls(env, env.path(d))
                if source.read() is not None:
                    return source
            return None
        except Exception:  # noqa: BLE001 - detection never raises
            return None

    def read(self) -> PowerReading | None:
        t = self.env.clock()
        ua = self.env.read_float(self.directory / "current_now")
        uv = self.env.read_float(self.directory / "voltage_now")
        if ua is None or uv is None:
            return None
        watts = abs(ua) * uv / 1e12
        return PowerReading(t, watts, {"battery": watts})

    def describe(self) -> str:
        return (f"battery fuel gauge at {self.env.display(self.directory)} (|current_now| x voltage_now), "
                "total = battery draw")
