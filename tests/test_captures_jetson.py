"""Jetson power parsers against REAL device output (tests/data/captures, see SOURCES.md there).

The capture files are read verbatim and never edited. Every expected number below was read off the
capture text by hand and written as a literal (rails in mW as printed, sums written out), so a
parser bug cannot hide by agreeing with itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgelift.errors import InvalidOptionError
from edgelift.profilers.power import DeviceEnv, Ina3221PowerSource, detect_power_source, find_ina3221
from edgelift.profilers.power.base import board_total
from edgelift.profilers.power.jetson import normalize_rail_name
from edgelift.profilers.power.tegrastats import parse_tegrastats, parse_tegrastats_line

CAPTURES = Path(__file__).parent / "data" / "captures"


def capture_lines(name: str) -> list[str]:
    """The capture's non-empty lines, exactly as stored."""
    return [line for line in (CAPTURES / name).read_text().splitlines() if line.strip()]


def watts(**rails_mw: float) -> dict[str, float]:
    """Rails written in mW as the capture prints them, as the watts the parser returns."""
    return {name: mw / 1000 for name, mw in rails_mw.items()}


# --- tegrastats: AGX Orin 64 GB (no VDD_IN, two NC rails, GR3D_FREQ 0%@[0,0], -256C) ---------------

def test_agx_orin_64gb_rails_total_is_the_sum_and_nc_is_not_a_rail():
    (line,) = capture_lines("tegrastats-agx-orin-64gb.txt")
    s = parse_tegrastats(line)
    # VDD_GPU_SOC 2340mW/2340mW VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW
    # VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW
    assert s.rails == pytest.approx(watts(VDD_GPU_SOC=2340, VDD_CPU_CV=390, VIN_SYS_5V0=4025, VDDQ_VDD2_1V8AO=301))
    assert "NC" not in s.rails  # unconnected channels are not rails (and cannot count twice)
    assert parse_tegrastats_line(line) == s.rails
    total_w = (2340 + 390 + 4025 + 301) / 1000  # = 7.056 W; no VDD_IN on this board
    assert s.board_watts == pytest.approx(total_w)
    assert board_total(s.rails) == (pytest.approx(total_w), "sum of rails")
    assert s.board_watts != pytest.approx(4025 / 1000)  # never VIN_SYS_5V0 alone


def test_agx_orin_64gb_gpu_emc_ram_and_off_sensors():
    (line,) = capture_lines("tegrastats-agx-orin-64gb.txt")
    s = parse_tegrastats(line)
    assert s.gpu_load_pct == 0.0 and s.gpu_freq_mhz == [0, 0]  # GR3D_FREQ 0%@[0,0]: one clock per GPC
    assert s.emc_load_pct == 0.0 and s.emc_freq_mhz == 2133  # EMC_FREQ 0%@2133
    assert (s.ram_used_mb, s.ram_total_mb) == (4321, 62801)  # RAM 4321/62801MB
    assert (s.lfb_blocks, s.lfb_block_mb) == (1759, 4.0)  # (lfb 1759x4MB)
    # CV0@-256C CV1@-256C GPU@-256C CV2@-256C: switched off, so no temperature at all
    assert sorted(s.sensors_off) == ["CV0", "CV1", "CV2", "GPU"]
    assert s.temps_c == pytest.approx({"CPU": 44.562, "Tboard": 32.0, "SOC2": 40.093, "Tdiode": 33.0,
                                       "SOC0": 41.093, "tj": 44.343, "SOC1": 41.25})
    assert all(t > -100 for t in s.temps_c.values())
    # the date prefix (04-11-2025 10:36:27), VIC_FREQ 729 and APE 174 are neither rails nor sensors
    assert not {"VIC_FREQ", "APE"} & set(s.rails) and not {"VIC_FREQ", "APE"} & set(s.temps_c)


# --- tegrastats: Orin Nano Super, JetPack 6.2 (date prefix, lower-case sensors, no EMC_FREQ) --------

def test_orin_nano_super_jp6():
    (line,) = capture_lines("tegrastats-orin-nano-super-jp6.txt")
    s = parse_tegrastats(line)
    # VDD_IN 4556mW/4556mW VDD_CPU_GPU_CV 483mW/483mW VDD_SOC 1451mW/1451mW
    assert s.rails == pytest.approx(watts(VDD_IN=4556, VDD_CPU_GPU_CV=483, VDD_SOC=1451))
    assert s.board_watts == pytest.approx(4556 / 1000)  # VDD_IN is the board input: not 4556+483+1451
    assert board_total(s.rails)[1] == "VDD_IN"
    # cpu@47.687C soc2@46.718C soc0@47.468C gpu@48.625C tj@48.625C soc1@48.25C (lower case as printed)
    assert s.temps_c == pytest.approx({"cpu": 47.687, "soc2": 46.718, "soc0": 47.468, "gpu": 48.625,
                                       "tj": 48.625, "soc1": 48.25})
    assert s.sensors_off == []
    assert s.gpu_load_pct == 0.0 and s.gpu_freq_mhz == []  # GR3D_FREQ 0% (no @freq)
    assert s.emc_load_pct is None and s.emc_freq_mhz is None  # no EMC_FREQ field on this line
    assert (s.ram_used_mb, s.ram_total_mb, s.lfb_blocks, s.lfb_block_mb) == (2147, 7620, 2, 4.0)


# --- tegrastats: AGX Xavier, JetPack 4.2 (rails without VDD_, no VDD_IN) ---------------------------

def test_agx_xavier_jp4_rails_without_vdd_prefix():
    (line,) = capture_lines("tegrastats-agx-xavier-jp4.txt")
    s = parse_tegrastats(line)
    # GPU 463/463 CPU 618/618 SOC 2936/2936 CV 0/0 VDDRQ 309/309 SYS5V 3306/3306
    assert s.rails == pytest.approx(watts(GPU=463, CPU=618, SOC=2936, CV=0, VDDRQ=309, SYS5V=3306))
    assert s.board_watts == pytest.approx((463 + 618 + 2936 + 0 + 309 + 3306) / 1000)  # 7.632 W, no input rail
    # JetPack 4 names are the same parts as the VDD_-prefixed names of later releases
    assert {normalize_rail_name(n) for n in s.rails} == {"GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"}
    # the rail `GPU 463/463` and the sensor `GPU@30.5C` are kept apart
    assert s.temps_c == pytest.approx({"AO": 30.0, "GPU": 30.5, "Tboard": 31.0, "Tdiode": 32.0, "AUX": 30.5,
                                       "CPU": 31.5, "thermal": 30.8, "PMIC": 100.0})
    assert s.sensors_off == []
    assert s.gpu_load_pct == 0.0 and s.gpu_freq_mhz == []  # GR3D_FREQ 0% (not run as root)
    assert s.emc_load_pct == 0.0 and s.emc_freq_mhz is None  # EMC_FREQ 0%
    assert (s.ram_used_mb, s.ram_total_mb, s.lfb_blocks, s.lfb_block_mb) == (14700, 15692, 3, 2.0)


def test_rail_names_normalize_the_same_across_releases():
    """VDD_GPU (TX2, JetPack 5/6), POM_5V_GPU (Nano) and GPU (JetPack 4 Xavier) are one part."""
    assert normalize_rail_name("VDD_GPU") == normalize_rail_name("GPU") == normalize_rail_name("POM_5V_GPU") == "GPU"
    assert normalize_rail_name("VDD_IN") == normalize_rail_name("POM_5V_IN") == "IN"
    assert normalize_rail_name("VDDRQ") == "VDDRQ" and normalize_rail_name("VDDQ_VDD2_1V8AO") == "VDDQ_VDD2_1V8AO"
    tx2 = parse_tegrastats(capture_lines("tegrastats-tx2.txt")[0])
    xavier = parse_tegrastats(capture_lines("tegrastats-agx-xavier-jp4.txt")[0])
    tx2_parts = {normalize_rail_name(n) for n in tx2.rails}
    xavier_parts = {normalize_rail_name(n) for n in xavier.rails}
    assert {"GPU", "CPU", "SOC"} <= tx2_parts & xavier_parts


# --- tegrastats: TX2, L4T R28 (three lines, N/N rails, GR3D_FREQ 0%@140) ----------------------------

def test_tx2_three_lines():
    lines = capture_lines("tegrastats-tx2.txt")
    assert len(lines) == 3
    first, second, third = (parse_tegrastats(line) for line in lines)
    # VDD_IN 1931/1931 VDD_CPU 231/231 VDD_GPU 154/154 VDD_SOC 385/385 VDD_WIFI 38/38 VDD_DDR 326/326
    assert first.rails == pytest.approx(watts(VDD_IN=1931, VDD_CPU=231, VDD_GPU=154, VDD_SOC=385, VDD_WIFI=38,
                                              VDD_DDR=326))
    # the instantaneous (first) value of `cur/avg`: VDD_IN 1776/1853, VDD_DDR 250/288; VDD_IN 1738/1815
    assert second.rails == pytest.approx(watts(VDD_IN=1776, VDD_CPU=231, VDD_GPU=154, VDD_SOC=386, VDD_WIFI=38,
                                               VDD_DDR=250))
    assert [s.board_watts for s in (first, second, third)] == pytest.approx([1.931, 1.776, 1.738])
    assert [(s.emc_load_pct, s.emc_freq_mhz) for s in (first, second, third)] == [(0.0, 1866), (16.0, 102),
                                                                                  (16.0, 102)]
    assert all(s.gpu_load_pct == 0.0 and s.gpu_freq_mhz == [140] for s in (first, second, third))
    assert first.temps_c == pytest.approx({"BCPU": 41.0, "MCPU": 41.0, "GPU": 39.0, "PLL": 41.0, "Tboard": 37.0,
                                           "Tdiode": 37.25, "PMIC": 100.0, "thermal": 39.9})
    assert third.temps_c["BCPU"] == 40.5 and third.temps_c["thermal"] == 40.2
    assert (first.ram_used_mb, first.ram_total_mb, first.lfb_blocks, first.lfb_block_mb) == (1685, 7854, 1044, 4.0)
    # `MTS fg 1% bg 8%` and `APE 150` are not rails
    assert not {"MTS", "APE"} & set(first.rails)


# --- INA3221 hwmon sysfs, AGX Orin (partial listing) ----------------------------------------------

def listing_to_tree(text: str, root: Path) -> dict[str, str]:
    """Rebuild the files of a ``find … -exec sh -c 'echo ---; echo $f; echo ---; cat $f'`` listing
    under ``root``. A value printed as ``cat: …: Input/output error`` becomes a directory at that
    path, so reading it fails with an OSError as the real file did. Returns {path: value}."""
    parts = re.split(r"^---$\n?", text, flags=re.M)
    assert parts[0] == ""
    files = {}
    for path_part, value in zip(parts[1::2], parts[2::2]):
        path = path_part.strip()
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if value.startswith("cat: ") and value.rstrip().endswith("Input/output error"):
            target.mkdir()
        else:
            target.write_text(value)
        files[path] = value
    return files


def test_agx_orin_ina3221_partial_listing_has_no_readable_rails(tmp_path):
    """The sysfs tree is rebuilt in tmp_path from the capture's listing (file names and values as
    listed; the unreadable ``autosuspend_delay_ms`` as an unreadable path). The stored copy stops
    before any ``in*_label``/``in*_input``/``curr*_input``: the detector must find the ``ina3221``
    device and its ``hwmon/hwmon2`` directory by the fixed driver path, take the ``curr*_alarm``
    files for no rails, and so report no INA3221 source rather than a zero-watt board."""
    files = listing_to_tree((CAPTURES / "jetson-agx-orin-ina3221-hwmon-sysfs-partial.txt").read_text(), tmp_path)
    dev = "/sys/bus/i2c/drivers/ina3221/1-0041"
    assert set(files) == {f"{dev}/uevent", f"{dev}/power/runtime_active_time", f"{dev}/power/runtime_status",
                          f"{dev}/power/autosuspend_delay_ms", f"{dev}/power/runtime_suspended_time",
                          f"{dev}/power/control", f"{dev}/name", f"{dev}/hwmon/hwmon2/curr2_max_alarm",
                          f"{dev}/hwmon/hwmon2/uevent", f"{dev}/hwmon/hwmon2/curr1_crit_alarm"}
    env = DeviceEnv(root=tmp_path, which=lambda name: None,
                    run=lambda cmd: (_ for _ in ()).throw(FileNotFoundError(cmd[0])))
    assert env.read_text(f"{dev}/name") == "ina3221"  # the driver is ina3221 (JetPack 5/6), not ina3221x
    assert env.read_text(f"{dev}/power/autosuspend_delay_ms") is None  # the Input/output error
    assert env.glob("/sys/bus/i2c/drivers/ina3221/*-*") == [env.path(dev)]
    assert env.glob("hwmon/hwmon*", env.path(dev)) == [env.path(f"{dev}/hwmon/hwmon2")]

    assert find_ina3221(env) == []  # no in*_label in the listing: no channel, no monitor
    assert Ina3221PowerSource.detect(env) is None
    with pytest.raises(InvalidOptionError, match="'jetson-ina3221' not found"):
        detect_power_source(env, "jetson-ina3221")
    # auto skips it (NVML, which reads the host's GPU and not the tree, may still answer on a GPU host)
    assert not isinstance(detect_power_source(env, "auto"), Ina3221PowerSource)


# --- the report's timeline: GPU, EMC and RAM beside power -------------------------------------------

def test_profile_timeline_carries_gpu_emc_ram_and_rails_from_tegrastats(tmp_path):
    """A stand-in ``tegrastats`` (no Jetson here) prints the three REAL TX2 lines in turn, as the board
    would every interval; a real ``profile()`` of a one-node ONNX model samples it. The report's timeline
    holds per-rail watts and tegrastats' own fields beside the total, JSON-clean (no NaN), and the
    measured-phase summary, the Markdown and the HTML show them. Values come from the capture:
    EMC_FREQ is 0% on the first line and 16% on the other two, GR3D_FREQ 0%@140, RAM 1685 MB."""
    import json
    import sys

    import onnx
    from onnx import TensorProto, helper

    from edgelift.profilers.power import DeviceEnv
    from edgelift.profilers.profile import ProfileOptions, profile

    lines = capture_lines("tegrastats-tx2.txt")
    fake = tmp_path / "tegrastats"
    fake.write_text(f"#!{sys.executable}\nimport itertools, time\n"
                    f"for line in itertools.cycle({lines!r}):\n    print(line, flush=True)\n    time.sleep(0.02)\n")
    fake.chmod(0o755)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    model = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    env = DeviceEnv(root=tmp_path, which=lambda name: str(fake) if name == "tegrastats" else None)
    rep = profile(model, ProfileOptions(runs=20, warmup=2, idle_s=0.5, power="tegrastats", per_op=False,
                                        min_time_s=1.0, min_sample_ns=0), power_env=env)
    p = rep.runs[0]["power"]
    assert p["available"] and p["source"] == "tegrastats"
    tl = p["timeline"]
    n = len(tl["t_s"])
    assert n >= 5 and set(tl["rails"]) == {"VDD_IN", "VDD_CPU", "VDD_GPU", "VDD_SOC", "VDD_WIFI", "VDD_DDR"}
    assert set(tl["rails"]["VDD_IN"]) <= {1.931, 1.776, 1.738} and tl["w"] == tl["rails"]["VDD_IN"]  # VDD_IN is the total
    assert set(tl["metrics"]) == {"gpu_load_pct", "gpu_freq_mhz", "emc_load_pct", "emc_freq_mhz", "ram_used_mb", "lfb_mb"}
    assert all(len(v) == n for v in [*tl["rails"].values(), *tl["metrics"].values()])
    assert set(tl["metrics"]["emc_load_pct"]) <= {0.0, 16.0} and set(tl["metrics"]["emc_freq_mhz"]) <= {1866.0, 102.0}
    assert set(tl["metrics"]["gpu_freq_mhz"]) == {140.0} and set(tl["metrics"]["ram_used_mb"]) == {1685.0}
    assert set(tl["metrics"]["lfb_mb"]) == {1044 * 4.0}
    m = p["metrics"]
    assert m["gpu_load_pct"] == {"mean": 0.0, "max": 0.0} and m["ram_used_mb"]["max"] == 1685.0
    assert 0.0 <= m["emc_load_pct"]["mean"] <= 16.0 and m["emc_load_pct"]["max"] in (0.0, 16.0)
    json.dumps(rep.doc, allow_nan=False)  # no NaN leaks into the JSON
    assert "ram_used_mb mean 1685.0, max 1685.0" in rep.to_markdown()
    html = rep.write_html(tmp_path / "r.html").read_text()
    assert "power per rail" in html and "GPU and memory-controller load" in html and ">RAM<" in html
