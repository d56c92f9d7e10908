"""Raspberry Pi parsers against REAL ``vcgencmd`` output (tests/data/captures, see SOURCES.md there).

The captures are read as they are, never edited. Expected values are literals read off each file
by hand, so a parser that drifts from what a real board prints fails here, not on the device.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgelift.profilers.device import decode_throttled, device_identity
from edgelift.profilers.power import DeviceEnv, detect_power_source
from edgelift.profilers.power.rpi import parse_pmic_read_adc

CAPTURES = Path(__file__).parent / "data" / "captures"


def capture(name: str) -> str:
    return (CAPTURES / name).read_text()


def replay(tmp_path: Path, outputs: dict[tuple[str, ...], str]) -> DeviceEnv:
    """A device with an empty tree whose ``vcgencmd`` prints the given outputs (others fail)."""
    def run(cmd: list[str]) -> str:
        if tuple(cmd) not in outputs:
            raise RuntimeError(f"not replayed: {cmd}")
        return outputs[tuple(cmd)]

    return DeviceEnv(root=tmp_path, run=run, which=lambda n: "/usr/bin/vcgencmd" if n == "vcgencmd" else None)


# --- Raspberry Pi 5: vcgencmd pmic_read_adc (jfikar/RPi5-power README) --------------------------

# (current A, voltage V) per rail, read by hand off rpi5-vcgencmd-pmic_read_adc.txt; the `_A` and `_V`
# lines carry different ADC indices (e.g. VDD_CORE current(7) / volt(15)), so only the name pairs them.
PI5_RAILS: dict[str, tuple[float, float]] = {
    "3V7_WL_SW": (0.00000000, 3.79999600),
    "3V3_SYS": (0.06245952, 3.30632200),
    "1V8_SYS": (0.16102850, 1.79828900),
    "DDR_VDD2": (0.00780744, 1.10292900),
    "DDR_VDDQ": (0.00000000, 0.60476130),
    "1V1_SYS": (0.17566740, 1.10439400),
    "0V8_SW": (0.32791250, 0.80256330),
    "VDD_CORE": (10.87674000, 0.89745940),
    "3V3_DAC": (0.00036630, 3.30494200),
    "3V3_ADC": (0.00042735, 3.30219400),
    "0V8_AON": (0.00579975, 0.79736190),
    "HDMI": (0.01367520, 5.07056000),
}
PI5_TOTAL_W = sum(a * v for a, v in PI5_RAILS.values())  # ~10.7999 W, VDD_CORE ~9.7614 W of it


def test_pi5_capture_pairs_all_twelve_rails_by_name():
    rails = parse_pmic_read_adc(capture("rpi5-vcgencmd-pmic_read_adc.txt"))
    assert set(rails) == set(PI5_RAILS)  # every `_A` rail found its `_V`
    assert len(rails) == 12
    assert "EXT5V" not in rails and "BATT" not in rails  # voltage-only lines, no current: no power
    assert rails == pytest.approx({rail: a * v for rail, (a, v) in PI5_RAILS.items()})
    assert math.fsum(rails.values()) == pytest.approx(PI5_TOTAL_W)
    assert PI5_TOTAL_W == pytest.approx(10.7999, abs=1e-4)  # the hand sum itself, as a plain number


def test_pi5_capture_per_rail_values():
    rails = parse_pmic_read_adc(capture("rpi5-vcgencmd-pmic_read_adc.txt"))
    assert rails["VDD_CORE"] == pytest.approx(10.87674000 * 0.89745940)  # 9.7614 W
    assert rails["VDD_CORE"] == pytest.approx(9.76143, abs=1e-5)
    assert rails["3V3_SYS"] == pytest.approx(0.06245952 * 3.30632200)  # 0.2065 W
    assert rails["HDMI"] == pytest.approx(0.01367520 * 5.07056000)  # 0.0693 W; 5 V rail read by the PMIC
    assert rails["3V7_WL_SW"] == 0.0 and rails["DDR_VDDQ"] == 0.0  # 0.00000000A reads as exactly zero


def test_pi5_capture_through_the_power_source(tmp_path):
    env = replay(tmp_path, {("vcgencmd", "pmic_read_adc"): capture("rpi5-vcgencmd-pmic_read_adc.txt")})
    src = detect_power_source(env, "rpi5-pmic")
    r = src.read()
    assert r.watts == pytest.approx(PI5_TOTAL_W)
    assert r.rails["wall_estimate"] == pytest.approx(PI5_TOTAL_W * 1.1451 + 0.5879)
    assert set(r.rails) == set(PI5_RAILS) | {"wall_estimate"}
    assert "12 rails" in src.describe()


# --- Raspberry Pi 3 / 3B+: measure_temp and get_throttled --------------------------------------

UV_NOW, CAPPED_NOW, THROTTLED_NOW, SOFT_TEMP_NOW = (
    "under-voltage detected", "arm frequency capped", "currently throttled", "soft temperature limit active")
UV_OCCURRED, CAPPED_OCCURRED, THROTTLED_OCCURRED, SOFT_TEMP_OCCURRED = (
    "under-voltage has occurred", "arm frequency capping has occurred", "throttling has occurred",
    "soft temperature limit has occurred")


def split_session(text: str) -> tuple[list[str], list[str]]:
    """The ``measure_temp`` and ``get_throttled`` lines of a captured session, each kept verbatim."""
    lines = text.splitlines(keepends=True)
    return [s for s in lines if s.startswith("temp=")], [s for s in lines if s.startswith("throttled=")]


@pytest.mark.parametrize(("name", "temps", "value", "flags"), [
    ("rpi3-vcgencmd-temp-throttled-0x50000.txt", [39.2, 38.6], "0x50000",
     [UV_OCCURRED, THROTTLED_OCCURRED]),  # occurred-only: bits 16 and 18, nothing active now
    ("rpi3-vcgencmd-temp-throttled-0x50005.txt", [38.6, 38.6], "0x50005",
     [UV_NOW, THROTTLED_NOW, UV_OCCURRED, THROTTLED_OCCURRED]),  # bits 0, 2, 16, 18
    ("rpi3bplus-vcgencmd-get_throttled-0x80008.txt", [], "0x80008",
     [SOFT_TEMP_NOW, SOFT_TEMP_OCCURRED]),  # bits 3 and 19
])
def test_rpi3_captures_temperature_and_throttling(tmp_path, name, temps, value, flags):
    temp_lines, throttled_lines = split_session(capture(name))
    assert len(throttled_lines) == 1 and len(temp_lines) == len(temps)
    assert decode_throttled(int(value, 16)) == flags

    outputs = {("vcgencmd", "get_throttled"): throttled_lines[0]}
    ident = device_identity(replay(tmp_path, outputs))
    assert ident.throttling == {"value": value, "flags": flags}
    assert ident.temperatures_c is None  # no thermal zones, measure_temp not replayed

    for line, celsius in zip(temp_lines, temps):  # each measure_temp call of the session in turn
        outputs[("vcgencmd", "measure_temp")] = line
        assert device_identity(replay(tmp_path, outputs)).temperatures_c == {"soc (vcgencmd)": celsius}


@pytest.mark.parametrize("name", ["rpi3-vcgencmd-temp-throttled-0x50000.txt",
                                  "rpi3-vcgencmd-temp-throttled-0x50005.txt",
                                  "rpi3bplus-vcgencmd-get_throttled-0x80008.txt"])
def test_whole_capture_as_command_output(tmp_path, name):
    """The whole file as one command's output: the throttled line is still found among temp lines."""
    text = capture(name)
    ident = device_identity(replay(tmp_path, {("vcgencmd", "get_throttled"): text,
                                              ("vcgencmd", "measure_temp"): text}))
    _, throttled_lines = split_session(text)
    assert ident.throttling["value"] == throttled_lines[0].strip().removeprefix("throttled=")
    if "temp=" in text:  # the first reading is taken
        assert ident.temperatures_c == {"soc (vcgencmd)": float(text.split("temp=")[1].split("'")[0])}


def test_no_unknown_flags_in_captured_values():
    """Every bit set in a captured value is a documented flag (no silent drop of set bits)."""
    for value in (0x50000, 0x50005, 0x80008):
        known = sum(1 << bit for bit in (0, 1, 2, 3, 16, 17, 18, 19))
        assert value & ~known == 0
        assert len(decode_throttled(value)) == bin(value).count("1")
