"""Device identity: board, SoC, OS, memory, governor, temperatures, throttling.

No Jetson, Raspberry Pi or x86 reference box is attached where these tests run, so each test
replays the identity files and command outputs of shared/reference/device-power.md under tmp_path.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from edgelift.profilers.device import DeviceIdentity, decode_throttled, device_identity
from edgelift.profilers.power import DeviceEnv


def write(root: Path, rel: str, text: str | bytes) -> Path:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


def no_commands(cmd: list[str]) -> str:
    raise FileNotFoundError(cmd[0])


def test_jetson_agx_orin_identity(tmp_path):
    """Replays an AGX Orin's /proc/device-tree/model and /etc/nv_tegra_release (device-power.md)."""
    write(tmp_path, "/proc/device-tree/model", b"NVIDIA Jetson AGX Orin Developer Kit\0")
    write(tmp_path, "/proc/device-tree/compatible",
          b"nvidia,p3737-0000+p3701-0000\0nvidia,p3701-0000\0nvidia,tegra234\0")
    write(tmp_path, "/etc/nv_tegra_release",
          "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
          "DATE: Tue Aug  1 19:57:35 UTC 2023\n"
          "# KERNEL_VARIANT: oot\n")
    write(tmp_path, "/etc/os-release", 'NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 20.04.6 LTS"\nID=ubuntu\n')
    write(tmp_path, "/proc/sys/kernel/hostname", "orin\n")
    write(tmp_path, "/proc/sys/kernel/osrelease", "5.10.120-tegra\n")
    write(tmp_path, "/proc/meminfo", "MemTotal:       32210180 kB\nMemFree:        29000000 kB\n")
    write(tmp_path, "/sys/devices/system/cpu/online", "0-11\n")
    write(tmp_path, "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "schedutil\n")
    write(tmp_path, "/sys/class/thermal/thermal_zone0/type", "CPU-therm\n")
    write(tmp_path, "/sys/class/thermal/thermal_zone0/temp", "48312\n")
    write(tmp_path, "/sys/class/thermal/thermal_zone1/type", "GPU-therm\n")
    write(tmp_path, "/sys/class/thermal/thermal_zone1/temp", "46500\n")
    write(tmp_path, "/sys/class/thermal/thermal_zone2/type", "PMIC-Die\n")  # temp unreadable: left out
    ident = device_identity(DeviceEnv(root=tmp_path, run=no_commands, which=lambda n: None))
    assert ident.model == "NVIDIA Jetson AGX Orin Developer Kit"  # NUL stripped
    assert ident.soc == "nvidia,tegra234"
    assert ident.jetson_release.startswith("# R35 (release), REVISION: 4.1")
    assert "KERNEL_VARIANT" not in ident.jetson_release  # first line only
    assert ident.os == "Ubuntu 20.04.6 LTS"
    assert (ident.hostname, ident.kernel) == ("orin", "5.10.120-tegra")
    assert ident.memory_total_bytes == 32210180 * 1024
    assert ident.cpu_count == 12
    assert ident.cpu_governor == "schedutil"
    assert ident.temperatures_c == pytest.approx({"CPU-therm": 48.312, "GPU-therm": 46.5})
    assert ident.throttling is None  # not a Raspberry Pi
    assert ident.machine == platform.machine() and ident.python == platform.python_version()
    d = ident.to_dict()
    assert d["soc"] == "nvidia,tegra234" and json.loads(json.dumps(d)) == d


def test_raspberry_pi5_identity_with_vcgencmd(tmp_path):
    """Replays a Pi 5's device-tree model and `vcgencmd get_throttled` / `measure_temp` output (device-power.md)."""
    write(tmp_path, "/proc/device-tree/model", b"Raspberry Pi 5 Model B Rev 1.0\0")
    write(tmp_path, "/proc/device-tree/compatible", b"raspberrypi,5-model-b\0brcm,bcm2712\0")
    write(tmp_path, "/sys/devices/system/cpu/online", "0-3\n")
    outputs = {("vcgencmd", "get_throttled"): "throttled=0x0\n", ("vcgencmd", "measure_temp"): "temp=48.3'C\n"}
    env = DeviceEnv(root=tmp_path, run=lambda cmd: outputs[tuple(cmd)], which=lambda n: f"/usr/bin/{n}")
    ident = device_identity(env)
    assert ident.model == "Raspberry Pi 5 Model B Rev 1.0" and ident.soc == "brcm,bcm2712"
    assert ident.throttling == {"value": "0x0", "flags": []}
    assert ident.temperatures_c == {"soc (vcgencmd)": pytest.approx(48.3)}
    assert ident.cpu_count == 4
    assert ident.jetson_release is None

    outputs[("vcgencmd", "get_throttled")] = "throttled=0x50005\n"  # under-voltage now and throttled, both sticky
    assert device_identity(env).throttling == {
        "value": "0x50005",
        "flags": ["under-voltage detected", "currently throttled", "under-voltage has occurred",
                  "throttling has occurred"],
    }


def test_decode_throttled_every_bit():
    """Decodes the documented `vcgencmd get_throttled` bits (device-power.md's `throttled=0x0` format)."""
    assert decode_throttled(0) == []
    assert decode_throttled(0x2) == ["arm frequency capped"]
    assert decode_throttled(0x80008) == ["soft temperature limit active", "soft temperature limit has occurred"]
    assert len(decode_throttled(0xF000F)) == 8


def test_x86_host_falls_back_to_dmi_and_cpuinfo(tmp_path):
    """Replays a desktop host (device-power.md's RAPL/NVML hosts): no device tree, DMI product name, cpuinfo."""
    write(tmp_path, "/sys/class/dmi/id/product_name", "OptiPlex 7090\n")
    write(tmp_path, "/proc/cpuinfo", "processor\t: 0\nvendor_id\t: GenuineIntel\n"
                                     "model name\t: 11th Gen Intel(R) Core(TM) i7-11700 @ 2.50GHz\n")
    write(tmp_path, "/sys/devices/system/cpu/online", "0-5,8,10-11\n")
    ident = device_identity(DeviceEnv(root=tmp_path, run=no_commands, which=lambda n: None))
    assert ident.model == "OptiPlex 7090"
    assert ident.soc == "11th Gen Intel(R) Core(TM) i7-11700 @ 2.50GHz"
    assert ident.cpu_count == 9


def test_pi3_cpuinfo_hardware_line(tmp_path):
    """Replays an older Pi's /proc/cpuinfo `Hardware` line (no compatible file) and a failing vcgencmd."""
    write(tmp_path, "/proc/cpuinfo", "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\n"
                                     "Hardware\t: BCM2835\nRevision\t: a02082\n")
    env = DeviceEnv(root=tmp_path, run=no_commands, which=lambda n: f"/usr/bin/{n}")
    ident = device_identity(env)
    assert ident.soc == "BCM2835"  # Hardware wins over the generic ARM model name
    assert ident.throttling is None and ident.temperatures_c is None  # the command failed: None, no crash


def test_empty_tree_gives_none_everywhere_without_crashing(tmp_path):
    """Replays a device where none of device-power.md's identity files can be read (e.g. Android, no root)."""
    write(tmp_path, "/proc/meminfo", "garbage\n")
    write(tmp_path, "/sys/devices/system/cpu/online", "not-a-range\n")
    ident = device_identity(DeviceEnv(root=tmp_path, run=no_commands, which=lambda n: None))
    file_fields = ["hostname", "model", "soc", "os", "kernel", "cpu_count", "memory_total_bytes", "cpu_governor",
                   "temperatures_c", "throttling", "jetson_release"]
    assert {f: getattr(ident, f) for f in file_fields} == dict.fromkeys(file_fields)
    assert isinstance(ident, DeviceIdentity)
