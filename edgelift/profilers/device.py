"""Which device a profile was taken on, and in what state (governor, temperatures, throttling).

Latency and power numbers mean little without the board, OS, CPU governor and thermal state
beside them. Everything is read through :class:`~edgelift.profilers.power.base.DeviceEnv`, so tests
replay device trees; every field is None when it cannot be read, and nothing here raises.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from dataclasses import asdict, dataclass
from typing import Any

from .power.base import DeviceEnv

# `vcgencmd get_throttled` bits (Raspberry Pi documentation).
THROTTLE_FLAGS = {
    0: "under-voltage detected",
    1: "arm frequency capped",
    2: "currently throttled",
    3: "soft temperature limit active",
    16: "under-voltage has occurred",
    17: "arm frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}


@dataclass
class DeviceIdentity:
    """The device and its state at profiling time; None marks what could not be read."""

    hostname: str | None = None
    model: str | None = None
    soc: str | None = None
    os: str | None = None
    kernel: str | None = None
    machine: str | None = None
    python: str | None = None
    cpu_count: int | None = None
    memory_total_bytes: int | None = None
    cpu_governor: str | None = None
    temperatures_c: dict[str, float] | None = None
    throttling: dict[str, Any] | None = None
    jetson_release: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_tree(env: DeviceEnv, name: str) -> list[str]:
    """A device-tree string property: NUL-separated entries, trailing NUL dropped."""
    try:
        raw = env.path(f"/proc/device-tree/{name}").read_bytes()
    except OSError:
        return []
    return [s for s in raw.decode("utf-8", "replace").split("\0") if s.strip()]


def _cpuinfo_field(env: DeviceEnv, key: str) -> str | None:
    for line in (env.read_text("/proc/cpuinfo") or "").splitlines():
        k, sep, v = line.partition(":")
        if sep and k.strip() == key and v.strip():
            return v.strip()
    return None


def _model(env: DeviceEnv) -> str | None:
    dt = _device_tree(env, "model")
    if dt:
        return dt[0].strip()
    host = f"{platform.node()} ({platform.machine()})" if env.is_host else None  # a PC without DMI: name it
    return env.read_text("/sys/class/dmi/id/product_name") or host


def _soc(env: DeviceEnv) -> str | None:
    compatible = _device_tree(env, "compatible")
    if compatible:  # most specific board first, the SoC last: `nvidia,tegra234`, `brcm,bcm2712`
        return compatible[-1].strip()
    return _cpuinfo_field(env, "Hardware") or _cpuinfo_field(env, "model name")


def _os_name(env: DeviceEnv) -> str | None:
    for line in (env.read_text("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip("\"'") or None
    return None


def _cpu_count(env: DeviceEnv) -> int | None:
    """CPUs online from ``/sys/devices/system/cpu/online`` (e.g. ``0-3,6``)."""
    text = env.read_text("/sys/devices/system/cpu/online")
    if text:
        try:
            n = 0
            for part in text.split(","):
                lo, _, hi = part.partition("-")
                n += int(hi or lo) - int(lo) + 1
            return n
        except ValueError:
            pass
    return os.cpu_count() if env.is_host else None


def _memory_total(env: DeviceEnv) -> int | None:
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", env.read_text("/proc/meminfo") or "", re.M)
    return int(m.group(1)) * 1024 if m else None


def _temperatures(env: DeviceEnv) -> dict[str, float] | None:
    temps: dict[str, float] = {}
    for zone in env.glob("/sys/class/thermal/thermal_zone*"):
        kind, milli = env.read_text(zone / "type"), env.read_float(zone / "temp")
        if kind and milli is not None:  # disabled zones fail to read `temp`
            temps[kind if kind not in temps else f"{kind} ({zone.name})"] = milli / 1e3
    out = env.try_run(["vcgencmd", "measure_temp"]) if env.which("vcgencmd") else None
    if out and (m := re.search(r"temp=([-0-9.]+)'C", out)):
        temps["soc (vcgencmd)"] = float(m.group(1))
    return temps or None


def decode_throttled(value: int) -> list[str]:
    """The flags set in a ``get_throttled`` value, in bit order."""
    return [name for bit, name in THROTTLE_FLAGS.items() if value >> bit & 1]


def _throttling(env: DeviceEnv) -> dict[str, Any] | None:
    if not env.which("vcgencmd"):
        return None
    out = env.try_run(["vcgencmd", "get_throttled"]) or ""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", out)
    return {"value": m.group(1), "flags": decode_throttled(int(m.group(1), 16))} if m else None


def _jetson_release(env: DeviceEnv) -> str | None:
    """First line of ``/etc/nv_tegra_release``, e.g. ``# R35 (release), REVISION: 4.1, …``."""
    lines = (env.read_text("/etc/nv_tegra_release") or "").splitlines()
    return lines[0].strip() or None if lines else None


def _safe(fn: Any, env: DeviceEnv) -> Any:
    try:
        return fn(env)
    except Exception:  # noqa: BLE001 - an odd file must cost one field, not the profile
        return None


def device_identity(env: DeviceEnv | None = None) -> DeviceIdentity:
    """Read the device's identity and state (see :class:`DeviceIdentity`). Never raises."""
    env = env or DeviceEnv()
    host = env.is_host
    return DeviceIdentity(
        hostname=_safe(lambda e: e.read_text("/proc/sys/kernel/hostname") or (socket.gethostname() if host else None),
                       env),
        model=_safe(_model, env),
        soc=_safe(_soc, env),
        os=_safe(_os_name, env),
        kernel=_safe(lambda e: e.read_text("/proc/sys/kernel/osrelease") or (platform.release() if host else None),
                     env),
        machine=platform.machine() or None,
        python=platform.python_version(),
        cpu_count=_safe(_cpu_count, env),
        memory_total_bytes=_safe(_memory_total, env),
        cpu_governor=_safe(lambda e: e.read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or None, env),
        temperatures_c=_safe(_temperatures, env),
        throttling=_safe(_throttling, env),
        jetson_release=_safe(_jetson_release, env),
    )
