"""Raspberry Pi 5: the PMIC's ADCs through ``vcgencmd pmic_read_adc``.

The PMIC reports a current (``X_A``) and a voltage (``X_V``) per rail, under different ADC
indices, so they are paired by rail name. It misses the 5 V loads (USB, HATs), so the total is a
lower bound; the jfikar/RPi5-power fit to a wall meter is given as the ``wall_estimate`` rail.
Pi 4 and older have no such sensor: ``vcgencmd`` fails or prints nothing parseable -> not detected.
"""

from __future__ import annotations

import re

from .base import DeviceEnv, PowerReading, PowerSource, register_power_source

COMMAND = ["vcgencmd", "pmic_read_adc"]

# real_W = pmic_W * 1.1451 + 0.5879 (jfikar/RPi5-power, fit against a wall meter)
WALL_FIT_SLOPE = 1.1451
WALL_FIT_OFFSET_W = 0.5879
WALL_ESTIMATE_RAIL = "wall_estimate"

# `   VDD_CORE_A current(7)=10.87674000A` / `     EXT5V_V volt(24)=5.06788000V`
_LINE = re.compile(r"^\s*([A-Za-z0-9_]+)_([AV])\s+(?:current|volt)\(\d+\)=([-+0-9.eE]+)[AV]\s*$")


def parse_pmic_read_adc(text: str) -> dict[str, float]:
    """Per-rail watts (current x voltage, paired by name) from ``vcgencmd pmic_read_adc`` output.

    Rails with only a voltage (``EXT5V_V``, ``BATT_V``) carry no power and are left out.
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    return {rail: amps[rail] * volts[rail] for rail in amps if rail in volts}


def wall_estimate(pmic_watts: float) -> float:
    """Wall-socket watts estimated from the PMIC sum (jfikar/RPi5-power linear fit)."""
    return pmic_watts * WALL_FIT_SLOPE + WALL_FIT_OFFSET_W


@register_power_source("rpi5-pmic")
class Rpi5PmicPowerSource(PowerSource):
    """Pi 5 power: ``watts`` = PMIC sum of I x V; ``rails`` adds ``wall_estimate`` (not part of the sum)."""

    looked_for = "a Raspberry Pi 5 PMIC ('vcgencmd pmic_read_adc' printing rail currents and voltages)"

    def __init__(self, env: DeviceEnv) -> None:
        self.env = env
        self._rail_count = 0

    @classmethod
    def detect(cls, env: DeviceEnv) -> Rpi5PmicPowerSource | None:
        try:
            if not env.which(COMMAND[0]):
                return None
            source = cls(env)
            return source if source.read() is not None else None
        except Exception:  # noqa: BLE001 - detection never raises
            return None

    def read(self) -> PowerReading | None:
        t = self.env.clock()
        out = self.env.try_run(COMMAND)
        rails = parse_pmic_read_adc(out or "")
        if not rails:
            return None
        self._rail_count = len(rails)
        pmic = sum(rails.values())
        return PowerReading(t, pmic, {**rails, WALL_ESTIMATE_RAIL: wall_estimate(pmic)})

    def describe(self) -> str:
        return (f"Raspberry Pi 5 PMIC ({' '.join(COMMAND)}), {self._rail_count} rails, total = PMIC sum of I x V "
                f"(misses 5 V loads; '{WALL_ESTIMATE_RAIL}' = {WALL_FIT_SLOPE} x total + {WALL_FIT_OFFSET_W} W)")
