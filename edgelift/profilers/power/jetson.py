"""NVIDIA Jetson: the INA3221 power monitors through sysfs (no root, no subprocess).

Two kernel layouts exist (as read by rbonghi/jetson_stats): JetPack 5/6 expose an hwmon device
(``in{N}_label``, ``in{N}_input`` mV, ``curr{N}_input`` mA); JetPack 4 an iio device
(``rail_name_{N}``, ``in_power{N}_input`` mW). Devices are found by their i2c ``name`` and at the
known fixed driver paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .base import DeviceEnv, PowerReading, PowerSource, board_total, register_power_source, total_rule

# Channel 7 of the hwmon driver is the sum of the shunt voltages, not a rail.
SUM_CHANNEL = 7
SUM_LABEL = "sum of shunt voltages"

# Driver directories holding the monitors on Xavier/Nano (ina3221x, iio) and Orin (ina3221, hwmon).
FIXED_DEVICE_GLOBS = ("/sys/bus/i2c/drivers/ina3221x/*-*", "/sys/bus/i2c/drivers/ina3221/*-*")


@dataclass(frozen=True)
class Ina3221Channel:
    """One rail: either a power file (iio, mW) or a voltage (mV) and current (mA) pair (hwmon)."""

    name: str
    power_mw: Path | None = None
    volt_mv: Path | None = None
    curr_ma: Path | None = None

    def read_watts(self, env: DeviceEnv) -> float | None:
        if self.power_mw is not None:
            mw = env.read_float(self.power_mw)
            return None if mw is None else mw / 1e3
        if self.volt_mv is None or self.curr_ma is None:
            return None
        v, i = env.read_float(self.volt_mv), env.read_float(self.curr_ma)
        return None if v is None or i is None else v * i / 1e6


# Prefixes that name the supply, not the part it feeds: ``VDD_GPU`` (JetPack 5/6, TX2) and
# ``POM_5V_GPU`` (Nano) are the rail JetPack 4 Xavier prints as plain ``GPU``.
RAIL_PREFIXES = ("VDD_", "POM_5V_")


def is_unconnected_rail(label: str) -> bool:
    """Orin boards label unpopulated channels ``NC``; match it as a word so e.g. ``SYNC`` survives.

    Shared by the INA3221 reader and the tegrastats parser, which both drop such channels (AGX Orin
    tegrastats prints ``NC 0mW/0mW`` twice under one name).
    """
    return "NC" in re.split(r"[^A-Za-z0-9]+", label.upper())


def normalize_rail_name(name: str) -> str:
    """The part a rail feeds, with the supply prefix (:data:`RAIL_PREFIXES`) removed.

    Rail names differ between releases for the same rail: JetPack 4 Xavier prints ``GPU``/``CPU``/
    ``SOC``, TX2 and JetPack 5/6 ``VDD_GPU``/``VDD_CPU``/``VDD_SOC``, the Nano ``POM_5V_GPU``. This
    maps them all to ``GPU``/``CPU``/``SOC`` (and both board inputs ``VDD_IN``/``POM_5V_IN`` to
    ``IN``) so callers can compare boards. Readings keep the names exactly as the device prints
    them; the board total (:func:`board_total`) is decided on those printed names.
    """
    n = name.strip().upper()
    for prefix in RAIL_PREFIXES:
        if n.startswith(prefix) and len(n) > len(prefix):
            return n[len(prefix):]
    return n


def _skip(index: int, label: str) -> bool:
    return index == SUM_CHANNEL or label.strip().lower() == SUM_LABEL or is_unconnected_rail(label)


def _hwmon_channels(env: DeviceEnv, hwmon: Path) -> list[Ina3221Channel]:
    out = []
    for label_file in env.glob("in*_label", hwmon):
        m = re.fullmatch(r"in(\d+)_label", label_file.name)
        label = env.read_text(label_file)
        if not m or not label or _skip(int(m.group(1)), label):
            continue
        n = m.group(1)
        out.append(Ina3221Channel(label, volt_mv=hwmon / f"in{n}_input", curr_ma=hwmon / f"curr{n}_input"))
    return out


def _iio_channels(env: DeviceEnv, iio: Path) -> list[Ina3221Channel]:
    out = []
    for power_file in env.glob("in_power*_input", iio):
        m = re.fullmatch(r"in_power(\d+)_input", power_file.name)
        if not m:
            continue
        n = int(m.group(1))
        label = env.read_text(iio / f"rail_name_{n}") or f"channel{n}"
        if _skip(n, label):
            continue
        out.append(Ina3221Channel(label, power_mw=power_file))
    return out


def _device_dirs(env: DeviceEnv) -> list[Path]:
    dirs = [f.parent for f in env.glob("/sys/bus/i2c/devices/*/name") if "ina3221" in (env.read_text(f) or "").lower()]
    for pattern in FIXED_DEVICE_GLOBS:
        dirs += [d for d in env.glob(pattern) if d.is_dir()]
    return dirs


def find_ina3221(env: DeviceEnv) -> list[tuple[Path, str, list[Ina3221Channel]]]:
    """Every INA3221 monitor: (its hwmon/iio directory, ``"hwmon"``/``"iio"``, its rails).

    The i2c device list and the driver paths are symlinks to the same devices, so directories are
    de-duplicated by their resolved path.
    """
    seen: set[Path] = set()
    found = []
    for dev in _device_dirs(env):
        for layout, pattern, reader in (("hwmon", "hwmon/hwmon*", _hwmon_channels),
                                        ("iio", "iio:device*", _iio_channels)):
            for d in env.glob(pattern, dev):
                key = d.resolve()
                if key in seen:
                    continue
                seen.add(key)
                channels = reader(env, d)
                if channels:
                    found.append((d, layout, channels))
    return found


@register_power_source("jetson-ina3221")
class Ina3221PowerSource(PowerSource):
    """Jetson board power from the INA3221 monitors; total per :func:`board_total`."""

    looked_for = "an INA3221 monitor (/sys/bus/i2c/devices/*/name containing 'ina3221', /sys/bus/i2c/drivers/ina3221*/)"

    def __init__(self, env: DeviceEnv, monitors: list[tuple[Path, str, list[Ina3221Channel]]]) -> None:
        self.env = env
        self.monitors = monitors
        self.channels: list[Ina3221Channel] = []
        names: set[str] = set()
        for d, layout, chans in monitors:
            i2c_dev = (d.parent.parent if layout == "hwmon" else d.parent).name  # e.g. 1-0041
            for c in chans:  # two monitors (Xavier: 1-0040, 1-0041) could reuse a label
                name = c.name if c.name not in names else f"{c.name}@{i2c_dev}"
                names.add(name)
                self.channels.append(Ina3221Channel(name, c.power_mw, c.volt_mv, c.curr_ma))

    @classmethod
    def detect(cls, env: DeviceEnv) -> Ina3221PowerSource | None:
        try:
            monitors = find_ina3221(env)
            source = cls(env, monitors) if monitors else None
            return source if source is not None and source.read() is not None else None
        except Exception:  # noqa: BLE001 - detection never raises
            return None

    def read(self) -> PowerReading | None:
        t = self.env.clock()
        rails = {c.name: w for c in self.channels if (w := c.read_watts(self.env)) is not None}
        if not rails:
            return None
        watts, _ = board_total(rails)
        return PowerReading(t, watts, rails)

    def describe(self) -> str:
        where = "; ".join(f"{self.env.display(d)}" for d, _, _ in self.monitors)
        layouts = "/".join(sorted({layout for _, layout, _ in self.monitors}))
        names = [c.name for c in self.channels]
        return f"INA3221 ({layouts}) at {where}, {len(names)} rails, total = {total_rule(names)}"
