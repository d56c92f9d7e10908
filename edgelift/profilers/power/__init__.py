"""Power measurement on edge devices: sources (one module each), detection and a background sampler.

The source modules are imported here in auto-detection priority order, which is the order they
register in :data:`POWER_SOURCES`: the most direct, most complete sensor first (Jetson INA3221
sysfs, then tegrastats; Pi 5 PMIC; Pixel ODPM, then the battery gauge), host-only counters last
(NVML is GPUs only, RAPL CPU packages only). Only the standard library is needed.
"""

from __future__ import annotations

from .base import (
    POWER_SOURCES,
    DeviceEnv,
    PowerReading,
    PowerSource,
    absence_hints,
    board_total,
    detect_power_source,
    register_power_source,
)
from .jetson import Ina3221PowerSource, find_ina3221
from .tegrastats import TegrastatsPowerSource, parse_tegrastats_line
from .rpi import Rpi5PmicPowerSource, parse_pmic_read_adc, wall_estimate
from .android import AndroidBatteryPowerSource, PixelOdpmPowerSource, parse_energy_value
from .nvml import NvmlPowerSource
from .rapl import RaplPowerSource, energy_delta_uj, find_rapl_domains
from .sampler import (
    DEFAULT_RATE_HZ,
    PowerSampler,
    PowerSummary,
    PowerTrace,
    average_power,
    integrate_energy,
    summarize_power,
)

__all__ = [
    "DEFAULT_RATE_HZ",
    "POWER_SOURCES",
    "AndroidBatteryPowerSource",
    "DeviceEnv",
    "Ina3221PowerSource",
    "NvmlPowerSource",
    "PixelOdpmPowerSource",
    "PowerReading",
    "PowerSampler",
    "PowerSource",
    "PowerSummary",
    "PowerTrace",
    "RaplPowerSource",
    "Rpi5PmicPowerSource",
    "TegrastatsPowerSource",
    "absence_hints",
    "average_power",
    "board_total",
    "detect_power_source",
    "energy_delta_uj",
    "find_ina3221",
    "find_rapl_domains",
    "integrate_energy",
    "parse_energy_value",
    "parse_pmic_read_adc",
    "parse_tegrastats_line",
    "register_power_source",
    "summarize_power",
    "wall_estimate",
]
