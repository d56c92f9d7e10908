"""Power sources, detection, the sampler and energy integration.

No Jetson, Raspberry Pi 5, phone, RAPL host or NVIDIA GPU is attached where these tests run, so
each source test replays the exact formats recorded in shared/reference/device-power.md: sysfs
trees written under tmp_path (``DeviceEnv.root``), captured command output (``DeviceEnv.run``), a
fake ``tegrastats`` executable and a fake ``pynvml`` module.
"""

from __future__ import annotations

import math
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

from edgelift.errors import InvalidOptionError
from edgelift.profilers.power import (
    POWER_SOURCES,
    AndroidBatteryPowerSource,
    DeviceEnv,
    Ina3221PowerSource,
    NvmlPowerSource,
    PixelOdpmPowerSource,
    PowerReading,
    PowerSampler,
    PowerSource,
    PowerTrace,
    RaplPowerSource,
    Rpi5PmicPowerSource,
    TegrastatsPowerSource,
    detect_power_source,
    integrate_energy,
    parse_tegrastats_line,
    summarize_power,
)

NANO_LINE = ("RAM 2298/3964MB (lfb 1x1MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
             "CPU [12%@1479,4%@1479,off,off] EMC_FREQ 0% GR3D_FREQ 0% PLL@41C CPU@43.5C "
             "POM_5V_IN 4520/4680 POM_5V_GPU 0/0 POM_5V_CPU 1078/1205")
XAVIER_LINE = ("RAM 4120/15692MB (lfb 2656x4MB) CPU [3%@1190,1%@1190] GPU@36C "
               "VDD_IN 14025/14416 VDD_CPU 2209/2538 VDD_GPU 6854/6903 VDD_SOC 1523/1530")
ORIN_NX_LINE = ("RAM 2890/15388MB (lfb 2935x4MB) SWAP 0/7694MB (cached 0MB) CPU [1%@729,0%@729] "
                "VDD_IN 4542mW/4000mW VDD_CPU_GPU_CV 495mW/400mW VDD_SOC 1286mW/1200mW")


def write(root: Path, rel: str, text: str | bytes) -> Path:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


class FakeClock:
    """A settable monotonic clock, so cumulative-counter sources give exact watts."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def env_at(root: Path, **kw) -> DeviceEnv:
    """A device env over a replayed tree: no commands, nothing on PATH unless given."""
    kw.setdefault("which", lambda name: None)
    kw.setdefault("run", lambda cmd: (_ for _ in ()).throw(FileNotFoundError(cmd[0])))
    return DeviceEnv(root=root, **kw)


# --- Jetson INA3221 ---------------------------------------------------------------------------

def hwmon_monitor(root: Path, i2c: str, hwmon: str, channels: dict[int, tuple[str, float, float]]) -> Path:
    """An INA3221 hwmon device (JetPack 5/6): in{N}_label, in{N}_input mV, curr{N}_input mA."""
    write(root, f"/sys/bus/i2c/devices/{i2c}/name", "ina3221\n")
    d = root / f"sys/bus/i2c/devices/{i2c}/hwmon/{hwmon}"
    for n, (label, mv, ma) in channels.items():
        write(root, f"{d.relative_to(root)}/in{n}_label", label + "\n")
        write(root, f"{d.relative_to(root)}/in{n}_input", f"{mv:g}\n")
        write(root, f"{d.relative_to(root)}/curr{n}_input", f"{ma:g}\n")
        write(root, f"{d.relative_to(root)}/curr{n}_crit", "10000\n")
    return d


def test_ina3221_hwmon_with_vdd_in_is_the_total(tmp_path):
    """Replays the JetPack 5/6 hwmon layout of device-power.md (Orin NX rails); no Jetson is attached."""
    hwmon_monitor(tmp_path, "1-0040", "hwmon3", {
        1: ("VDD_IN", 5000, 1000),          # 5.0 W
        2: ("VDD_CPU_GPU_CV", 5000, 200),   # 1.0 W
        3: ("VDD_SOC", 5000, 300),          # 1.5 W
    })
    src = detect_power_source(env_at(tmp_path), "jetson-ina3221")
    r = src.read()
    assert r.rails == pytest.approx({"VDD_IN": 5.0, "VDD_CPU_GPU_CV": 1.0, "VDD_SOC": 1.5})
    assert r.watts == pytest.approx(5.0)  # VDD_IN itself, not 7.5 (VDD_IN already contains the others)
    d = src.describe()
    assert "hwmon" in d and "/sys/bus/i2c/devices/1-0040/hwmon/hwmon3" in d and "3 rails" in d and "VDD_IN" in d
    assert str(tmp_path) not in d


def test_ina3221_agx_orin_without_vdd_in_sums_the_rails_and_skips_nc_and_channel_7(tmp_path):
    """Replays the AGX Orin hwmon rail set of device-power.md (two monitors, no VDD_IN, NC + sum channels)."""
    hwmon_monitor(tmp_path, "1-0040", "hwmon1", {
        1: ("VDD_GPU_SOC", 5000, 600),       # 3.0 W
        2: ("VDD_CPU_CV", 5000, 400),        # 2.0 W
        3: ("VIN_SYS_5V0", 5000, 500),       # 2.5 W
        7: ("sum of shunt voltages", 5000, 9999),
    })
    hwmon_monitor(tmp_path, "1-0041", "hwmon2", {
        2: ("VDDQ_VDD2_1V8AO", 1800, 250),   # 0.45 W
        3: ("NC", 5000, 777),
    })
    r = Ina3221PowerSource.detect(env_at(tmp_path)).read()
    assert set(r.rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    assert r.watts == pytest.approx(3.0 + 2.0 + 2.5 + 0.45)
    assert r.watts != pytest.approx(r.rails["VIN_SYS_5V0"])


def test_ina3221_iio_layout_jetpack4_nano_and_fixed_driver_path(tmp_path):
    """Replays the JetPack 4 iio layout of device-power.md at the Nano's fixed ina3221x path (POM_5V_IN)."""
    d = "/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for n, (name, mw) in enumerate([("POM_5V_IN", 4520), ("POM_5V_GPU", 320), ("POM_5V_CPU", 1078)]):
        write(tmp_path, f"{d}/rail_name_{n}", name + "\n")
        write(tmp_path, f"{d}/in_power{n}_input", f"{mw}\n")
        write(tmp_path, f"{d}/in_voltage{n}_input", "5000\n")
        write(tmp_path, f"{d}/in_current{n}_input", f"{mw // 5}\n")
    write(tmp_path, "/sys/bus/i2c/drivers/ina3221x/uevent", "")  # driver files beside the device dirs
    src = Ina3221PowerSource.detect(env_at(tmp_path))
    r = src.read()
    assert r.rails == pytest.approx({"POM_5V_IN": 4.52, "POM_5V_GPU": 0.32, "POM_5V_CPU": 1.078})
    assert r.watts == pytest.approx(4.52)
    assert "(iio)" in src.describe() and "total = POM_5V_IN" in src.describe()


def test_ina3221_xavier_two_iio_monitors_via_i2c_name_are_not_double_counted(tmp_path):
    """Replays the Xavier iio layout (1-0040 GPU/CPU/SOC, 1-0041 CV/VDDRQ/SYS5V) reached by two paths."""
    for dev, rails in (("1-0040", [("GPU", 1000), ("CPU", 2000), ("SOC", 1500)]),
                       ("1-0041", [("CV", 0), ("VDDRQ", 500), ("SYS5V", 1200)])):
        base = f"/sys/bus/i2c/drivers/ina3221x/{dev}"
        write(tmp_path, f"{base}/name", "ina3221x\n")
        for n, (name, mw) in enumerate(rails):
            write(tmp_path, f"{base}/iio:device{dev[-1]}/rail_name_{n}", name + "\n")
            write(tmp_path, f"{base}/iio:device{dev[-1]}/in_power{n}_input", f"{mw}\n")
        link = tmp_path / f"sys/bus/i2c/devices/{dev}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(tmp_path / base.lstrip("/"))  # as in sysfs: both paths are the same device
    r = Ina3221PowerSource.detect(env_at(tmp_path)).read()
    assert len(r.rails) == 6
    assert r.watts == pytest.approx(1.0 + 2.0 + 1.5 + 0.0 + 0.5 + 1.2)


# --- tegrastats --------------------------------------------------------------------------------

def test_tegrastats_parser_nano_xavier_orin_and_third_value():
    """Replays the Nano (`N/N`), Xavier and Orin NX (`NmW/NmW`) lines of device-power.md, plus a third value."""
    nano = parse_tegrastats_line(NANO_LINE)
    assert nano == pytest.approx({"POM_5V_IN": 4.52, "POM_5V_GPU": 0.0, "POM_5V_CPU": 1.078})  # no RAM/SWAP/IRAM
    xavier = parse_tegrastats_line(XAVIER_LINE)
    assert xavier == pytest.approx({"VDD_IN": 14.025, "VDD_CPU": 2.209, "VDD_GPU": 6.854, "VDD_SOC": 1.523})
    orin = parse_tegrastats_line(ORIN_NX_LINE)
    assert orin == pytest.approx({"VDD_IN": 4.542, "VDD_CPU_GPU_CV": 0.495, "VDD_SOC": 1.286})
    three = parse_tegrastats_line("VDD_GPU_SOC 3185mW/3185mW/3300mW VDD_CPU_CV 796/796/900 VIN_SYS_5V0 3726mW/3726mW")
    assert three == pytest.approx({"VDD_GPU_SOC": 3.185, "VDD_CPU_CV": 0.796, "VIN_SYS_5V0": 3.726})
    assert parse_tegrastats_line("RAM 2298/3964MB SWAP 0/1982MB") == {}


def test_tegrastats_source_end_to_end_with_a_fake_tegrastats(tmp_path):
    """Runs a fake `tegrastats` (an executable written to tmp_path) printing the Orin NX line of
    device-power.md every 20 ms, then the Nano line, as no Jetson is attached; read() must give the
    parsed board total of the latest line."""
    fake = tmp_path / "tegrastats"
    switch = tmp_path / "switch"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, sys, time
        assert sys.argv[1:] == ["--interval", "100"], sys.argv
        while True:
            print({NANO_LINE!r} if os.path.exists({str(switch)!r}) else {ORIN_NX_LINE!r}, flush=True)
            time.sleep(0.02)
    """))
    fake.chmod(0o755)
    env = env_at(tmp_path, which=lambda name: str(tmp_path / name) if name == "tegrastats" else None)
    src = detect_power_source(env, "tegrastats")
    assert isinstance(src, TegrastatsPowerSource) and src.command == [str(fake), "--interval", "100"]

    def wait_for(pred):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = src.read()
            if r is not None and pred(r):
                return r
            time.sleep(0.005)
        raise AssertionError(f"no matching reading; last {src.read()}")

    try:
        orin = wait_for(lambda r: True)
        assert orin.watts == pytest.approx(4.542)  # VDD_IN
        assert orin.rails == pytest.approx({"VDD_IN": 4.542, "VDD_CPU_GPU_CV": 0.495, "VDD_SOC": 1.286})
        switch.touch()
        nano = wait_for(lambda r: "POM_5V_IN" in r.rails)
        assert nano.watts == pytest.approx(4.52) and nano.t > orin.t  # Nano: POM_5V_IN is the total
        assert "total = POM_5V_IN" in src.describe()
        proc = src._proc
    finally:
        src.close()
    assert proc.poll() is not None  # close() ended the process


# --- Raspberry Pi 5 ----------------------------------------------------------------------------

PMIC_OUT = """\
   VDD_CORE_A current(7)=10.87674000A
   3V3_SYS_A current(1)=0.05660260A
   VDD_CORE_V volt(15)=0.89745940V
   3V3_SYS_V volt(9)=3.31381200V
     EXT5V_V volt(24)=5.06788000V
      BATT_V volt(25)=3.01110800V
"""


def test_rpi5_pmic_pairs_currents_with_voltages_by_rail_name():
    """Replays `vcgencmd pmic_read_adc` lines from device-power.md (Raspberry Pi 5); no Pi is attached."""
    calls = []

    def run(cmd):
        calls.append(cmd)
        return PMIC_OUT

    env = DeviceEnv(root=Path("/nonexistent"), run=run, which=lambda n: "/usr/bin/vcgencmd")
    src = detect_power_source(env, "rpi5-pmic")
    r = src.read()
    core = 10.87674000 * 0.89745940  # 9.7614... W
    sys3v3 = 0.05660260 * 3.31381200  # 0.18757... W
    assert calls[-1] == ["vcgencmd", "pmic_read_adc"]
    assert r.watts == pytest.approx(core + sys3v3)
    assert r.rails["VDD_CORE"] == pytest.approx(core) and r.rails["3V3_SYS"] == pytest.approx(sys3v3)
    assert "EXT5V" not in r.rails and "BATT" not in r.rails  # voltage only, no current
    assert r.rails["wall_estimate"] == pytest.approx((core + sys3v3) * 1.1451 + 0.5879)
    assert r.watts != pytest.approx(r.rails["wall_estimate"])  # the total stays the PMIC sum


def test_rpi4_without_pmic_is_not_detected():
    """Replays a Pi 4, whose vcgencmd has no PMIC command (it fails), per device-power.md."""
    def run(cmd):
        raise RuntimeError("error=2 error_msg=\"Command not registered\"")

    env = DeviceEnv(root=Path("/nonexistent"), run=run, which=lambda n: "/usr/bin/vcgencmd")
    assert Rpi5PmicPowerSource.detect(env) is None
    with pytest.raises(InvalidOptionError, match="rpi5-pmic.*pmic_read_adc"):
        detect_power_source(env, "rpi5-pmic")


# --- Android -----------------------------------------------------------------------------------

def test_android_battery_sysfs_negative_current(tmp_path):
    """Replays the battery sysfs of device-power.md (current_now µA, negative = discharging, voltage_now µV)."""
    write(tmp_path, "/sys/class/power_supply/battery/current_now", "-1234567\n")
    write(tmp_path, "/sys/class/power_supply/battery/voltage_now", "3987654\n")
    r = detect_power_source(env_at(tmp_path), "android-battery").read()
    assert r.watts == pytest.approx(1.234567 * 3.987654)  # |I| x V = 4.9229... W
    assert r.watts > 0


def test_android_battery_vendor_bms_directory(tmp_path):
    """Replays the vendor alternative …/bms/ of device-power.md (no …/battery/ readings)."""
    write(tmp_path, "/sys/class/power_supply/bms/current_now", "500000\n")
    write(tmp_path, "/sys/class/power_supply/bms/voltage_now", "4000000\n")
    src = AndroidBatteryPowerSource.detect(env_at(tmp_path))
    assert src.read().watts == pytest.approx(2.0)
    assert "/sys/class/power_supply/bms" in src.describe()


def odpm(t_ms: int, rails: dict[str, int]) -> str:
    lines = [f"t={t_ms}"] + [f"CH{i}(T={t_ms})[{name}], {e}" for i, (name, e) in enumerate(rails.items())]
    return "\n".join(lines) + "\n"


def test_pixel_odpm_power_from_energy_deltas(tmp_path):
    """Replays the Pixel ODPM energy_value format of device-power.md (t= ms, cumulative µW·s per rail)."""
    f0 = write(tmp_path, "/sys/bus/iio/devices/iio:device0/energy_value",
               odpm(16086645, {"S10M_VDD_TPU": 3004249, "S2M_VDD_CPUCL2": 124265856}))
    f1 = write(tmp_path, "/sys/bus/iio/devices/iio:device1/energy_value",
               odpm(16086000, {"VSYS_PWR_DISPLAY": 1000000}))
    clock = FakeClock()
    env = env_at(tmp_path, clock=clock)
    src = detect_power_source(env)  # auto: ODPM is preferred over the battery gauge
    assert isinstance(src, PixelOdpmPowerSource)
    assert src.read() is None  # first read of a cumulative counter: no interval yet
    f0.write_text(odpm(16087645, {"S10M_VDD_TPU": 3104249, "S2M_VDD_CPUCL2": 124765856}))  # +1 s
    f1.write_text(odpm(16088000, {"VSYS_PWR_DISPLAY": 3000000}))  # +2 s
    clock.t += 1
    r = src.read()
    assert r.rails == pytest.approx({"S10M_VDD_TPU": 0.1, "S2M_VDD_CPUCL2": 0.5, "VSYS_PWR_DISPLAY": 1.0})
    assert r.watts == pytest.approx(1.6)
    # monitor not refreshed since: rails keep their last power instead of dropping to 0 W
    clock.t += 0.1
    assert src.read().watts == pytest.approx(1.6)


def test_odpm_preferred_over_battery(tmp_path):
    """Replays a Pixel tree holding both the battery gauge and the ODPM (device-power.md formats)."""
    write(tmp_path, "/sys/class/power_supply/battery/current_now", "-1000000\n")
    write(tmp_path, "/sys/class/power_supply/battery/voltage_now", "4000000\n")
    write(tmp_path, "/sys/bus/iio/devices/iio:device0/energy_value", odpm(1000, {"S2M_VDD_CPUCL2": 5}))
    assert isinstance(detect_power_source(env_at(tmp_path)), PixelOdpmPowerSource)
    names = list(POWER_SOURCES)
    assert names.index("android-odpm") < names.index("android-battery")


# --- RAPL --------------------------------------------------------------------------------------

MAX_UJ = 262143328850


def rapl_domain(root: Path, key: str, name: str, energy: int) -> Path:
    d = f"/sys/class/powercap/{key}"
    write(root, f"{d}/name", name + "\n")
    write(root, f"{d}/max_energy_range_uj", f"{MAX_UJ}\n")
    return write(root, f"{d}/energy_uj", f"{energy}\n")


def test_rapl_deltas_with_wraparound(tmp_path):
    """Replays the powercap RAPL tree of device-power.md (cumulative µJ, wrapping at max_energy_range_uj)."""
    pkg0 = rapl_domain(tmp_path, "intel-rapl:0", "package-0", MAX_UJ - 1_000_000)
    core = rapl_domain(tmp_path, "intel-rapl:0:0", "core", 5_000_000)
    pkg1 = rapl_domain(tmp_path, "intel-rapl:1", "package-1", 10_000_000)
    write(tmp_path, "/sys/class/powercap/intel-rapl/enabled", "1\n")  # the control type dir, not a domain
    clock = FakeClock()
    src = detect_power_source(env_at(tmp_path, clock=clock), "rapl")
    src.start()
    pkg0.write_text("3000000\n")      # wrapped: 1e6 to the top + 3e6 = 4e6 µJ
    core.write_text("7000000\n")      # +2e6 µJ
    pkg1.write_text("16000000\n")     # +6e6 µJ
    clock.t += 2.0
    r = src.read()
    assert r.rails == pytest.approx({"package-0": 2.0, "package-0/core": 1.0, "package-1": 3.0})
    assert r.watts == pytest.approx(5.0)  # packages only: the core sub-domain is inside package-0
    assert isinstance(src, RaplPowerSource) and "package-0 + package-1" in src.describe()


def test_rapl_unreadable_counters_are_not_detected(tmp_path, monkeypatch):
    """Replays RAPL on Linux >= 5.10 as a user (device-power.md tree): energy_uj raises PermissionError."""
    rapl_domain(tmp_path, "intel-rapl:0", "package-0", 1)
    real = Path.read_text

    def read_text(self, *a, **kw):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert RaplPowerSource.detect(env_at(tmp_path)) is None
    with pytest.raises(InvalidOptionError, match="root-only"):
        detect_power_source(env_at(tmp_path), "rapl")


# --- NVML --------------------------------------------------------------------------------------

def fake_pynvml(mw: list[int]) -> types.ModuleType:
    """A stand-in for nvidia-ml-py's `pynvml` with the documented calls (power in mW)."""
    m = types.ModuleType("pynvml")
    m.state = {"init": 0, "shutdown": 0}
    m.nvmlInit = lambda: m.state.__setitem__("init", m.state["init"] + 1)
    m.nvmlShutdown = lambda: m.state.__setitem__("shutdown", m.state["shutdown"] + 1)
    m.nvmlDeviceGetCount = lambda: len(mw)
    m.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    m.nvmlDeviceGetPowerUsage = lambda h: mw[h[1]]
    return m


def test_nvml_reads_milliwatts_per_gpu(monkeypatch):
    """Replays NVML's nvmlDeviceGetPowerUsage (mW, device-power.md) through a fake pynvml module."""
    mod = fake_pynvml([71234, 35000])
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    src = detect_power_source(DeviceEnv(root=Path("/nonexistent")), "nvml")
    r = src.read()
    assert isinstance(src, NvmlPowerSource)
    assert r.rails == pytest.approx({"gpu0": 71.234, "gpu1": 35.0}) and r.watts == pytest.approx(106.234)
    src.close()
    assert mod.state == {"init": 1, "shutdown": 1}


def test_nvml_absent_or_no_gpu_is_not_detected(monkeypatch):
    """Replays hosts without nvidia-ml-py (import fails) and with the driver but no GPU (count 0)."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert NvmlPowerSource.detect(DeviceEnv()) is None
    mod = fake_pynvml([])
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    assert NvmlPowerSource.detect(DeviceEnv()) is None
    assert mod.state["shutdown"] == 1  # initialised, so shut down again


# --- detection ---------------------------------------------------------------------------------

def test_auto_detection_priority_and_errors(tmp_path, monkeypatch):
    """Replays a tree holding both RAPL and an INA3221 (device-power.md formats): the INA3221 wins."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # a GPU on the test host must not win over RAPL
    assert list(POWER_SOURCES) == ["jetson-ina3221", "tegrastats", "rpi5-pmic", "android-odpm",
                                   "android-battery", "nvml", "rapl"]
    rapl_domain(tmp_path, "intel-rapl:0", "package-0", 1000)
    assert isinstance(detect_power_source(env_at(tmp_path)), RaplPowerSource)
    hwmon_monitor(tmp_path, "1-0040", "hwmon0", {1: ("VDD_IN", 5000, 1000)})
    assert isinstance(detect_power_source(env_at(tmp_path)), Ina3221PowerSource)
    assert detect_power_source(env_at(tmp_path), "none") is None


def test_detection_on_an_empty_tree_and_bad_names(tmp_path, monkeypatch):
    """Replays a machine with none of the device-power.md sources (empty tree, no pynvml)."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    env = env_at(tmp_path)
    assert detect_power_source(env) is None
    with pytest.raises(InvalidOptionError, match=r"'jetson-ina3221' not found: looked for an INA3221"):
        detect_power_source(env, "jetson-ina3221")
    with pytest.raises(InvalidOptionError, match=r"unknown power source 'ina'.*auto, none, jetson-ina3221.*rapl"):
        detect_power_source(env, "ina")


# --- sampler, energy, summary ------------------------------------------------------------------

class RampSource(PowerSource):
    """Synthetic source: P(t) = 5 W + 2 W/s x (t - t0), rails split 40/60."""

    name = "ramp"

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.reads = 0
        self.started = False

    @classmethod
    def detect(cls, env):  # pragma: no cover - not registered
        return cls()

    def start(self) -> None:
        self.started = True

    def power(self, t: float) -> float:
        return 5.0 + 2.0 * (t - self.t0)

    def read(self) -> PowerReading:
        self.reads += 1
        t = time.monotonic()
        w = self.power(t)
        rails = {"a": 0.4 * w, "b": 0.6 * w} if self.reads % 2 else {"a": 0.4 * w}
        return PowerReading(t, w, rails)

    def describe(self) -> str:
        return "ramp"


def test_power_sampler_rate_values_and_phases():
    """Samples a synthetic source with a known power function (no device power sensor is attached)."""
    src = RampSource()
    sampler = PowerSampler(src, rate_hz=50)
    sampler.start()
    with sampler.phase("idle"):
        time.sleep(0.2)
    with sampler.phase("run"):
        time.sleep(0.4)
    trace = sampler.stop()
    assert src.started
    n = len(trace)
    assert 0.7 * 50 * 0.6 <= n <= 1.3 * 50 * 0.6 + 2, n  # ~30 samples in 0.6 s at 50 Hz
    gaps = sorted(b - a for a, b in zip(trace.t_s, trace.t_s[1:]))
    assert gaps[len(gaps) // 2] == pytest.approx(0.02, abs=0.006)  # median period = 1 / rate
    assert trace.watts == pytest.approx([src.power(t) for t in trace.t_s])
    assert trace.rails["a"] == pytest.approx([0.4 * w for w in trace.watts])
    assert sum(math.isnan(b) for b in trace.rails["b"]) in (n // 2, n - n // 2)  # missing rail -> NaN, aligned
    m = sampler.marks
    idle, run = sampler.phase_trace("idle"), sampler.phase_trace("run")
    assert all(m["idle.start"] <= t <= m["idle.end"] for t in idle.t_s)
    assert all(m["run.start"] <= t <= m["run.end"] for t in run.t_s)
    assert 6 <= len(idle) <= 13 and 14 <= len(run) <= 25
    assert sampler.phase_duration("run") == pytest.approx(0.4, abs=0.05)
    assert integrate_energy(run.t_s, run.watts) == pytest.approx(
        (src.power(run.t_s[0]) + src.power(run.t_s[-1])) / 2 * run.duration_s)  # exact for a linear ramp
    assert len(sampler.trace()) == n and not sampler._thread


def test_power_sampler_counts_read_errors_and_skips_none():
    """A synthetic flaky source (no device attached): errors and None readings must not end sampling."""
    class Flaky(RampSource):
        calls = 0

        def read(self):
            self.calls += 1
            if self.calls % 3 == 0:
                raise OSError("sensor busy")
            return None if self.calls % 3 == 1 else super().read()

    sampler = PowerSampler(Flaky(), rate_hz=100).start()
    time.sleep(0.15)
    trace = sampler.stop()
    assert sampler.errors >= 3 and len(trace) >= 3
    assert abs(sampler.errors - len(trace)) <= 2  # one of three reads each


def test_integrate_energy_against_analytic_integrals():
    """Synthetic traces with known integrals (no device attached)."""
    assert integrate_energy([0, 0.5, 1.0, 1.5, 2.0], [5.0] * 5) == pytest.approx(10.0)  # 5 W x 2 s
    ts = [0.0, 0.3, 1.1, 1.15, 2.0, 3.0]  # irregular; P = 2t -> t^2 over [0, 3] = 9 J (exact for linear)
    assert integrate_energy(ts, [2 * t for t in ts]) == pytest.approx(9.0)
    shuffled = [3, 0, 4, 1, 5, 2]
    assert integrate_energy([ts[i] for i in shuffled], [2 * ts[i] for i in shuffled]) == pytest.approx(9.0)
    grid = [i / 1000 for i in range(2001)]  # P = t^2 over [0, 2] = 8/3 J; trapezoid error ~ T h^2 / 6
    assert integrate_energy(grid, [t * t for t in grid]) == pytest.approx(8 / 3, abs=1e-5)
    assert integrate_energy([], []) == 0.0
    assert integrate_energy([1.0], [7.0]) == 0.0
    assert integrate_energy([0.0, 1.0, 2.0], [4.0, math.nan, 4.0]) == pytest.approx(8.0)
    with pytest.raises(ValueError):
        integrate_energy([0.0, 1.0], [1.0])


def test_summary_idle_and_energy_above_idle():
    """Synthetic idle and measured traces with hand-computed energy (no device attached)."""
    idle = PowerTrace([0.0, 0.5, 1.0], [2.0, 2.0, 2.0])
    run = PowerTrace([10.0, 11.0, 12.0, 13.0, 14.0], [5.0, 5.0, 9.0, 5.0, 5.0])
    s = summarize_power(run, idle)
    # trapezoids: (5+5)/2 + (5+9)/2 + (9+5)/2 + (5+5)/2 = 24 J over 4 s
    assert s.energy_j == pytest.approx(24.0)
    assert s.avg_w == pytest.approx(6.0) and s.peak_w == 9.0 and s.idle_w == pytest.approx(2.0)
    assert s.energy_above_idle_j == pytest.approx(24.0 - 2.0 * 4.0)
    assert s.samples == 5 and s.duration_s == pytest.approx(4.0)
    assert s.std_w == pytest.approx(math.sqrt((4 * 0.8 ** 2 + 3.2 ** 2) / 5))  # mean 5.8
    # the phase's real length (samples start a period late) scales the energy from the average
    s2 = summarize_power(run, idle, duration_s=5.0)
    assert s2.energy_j == pytest.approx(30.0) and s2.energy_above_idle_j == pytest.approx(20.0)
    bare = summarize_power(run)
    assert bare.idle_w is None and bare.energy_above_idle_j is None
    empty = summarize_power(PowerTrace())
    assert empty.avg_w is None and empty.energy_j is None and empty.samples == 0
    assert s.to_dict()["energy_above_idle_j"] == pytest.approx(16.0)


def test_threads_do_not_leak():
    """The sampler's thread ends with stop() (synthetic source)."""
    before = {t.name for t in threading.enumerate()}
    PowerSampler(RampSource(), rate_hz=20).start().stop()
    assert "power-sampler" not in {t.name for t in threading.enumerate()} - before
