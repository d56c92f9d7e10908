"""The Android / tool-output / RAPL parsers against REAL captures, read verbatim.

Every file under ``tests/data/captures`` was copied from the public source named in its
``SOURCES.md`` (device, version and quirks there); the captures are never edited, and the expected
values below are literals read off the files. The older hand-written imitations stay in
test_remote_adb.py and test_power.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgelift.errors import InvalidOptionError
from edgelift.profilers.power import DeviceEnv, RaplPowerSource, absence_hints, detect_power_source, find_rapl_domains
from edgelift.profilers.targets.android_output import (
    parse_benchmark_model,
    parse_dumpsys_battery,
    parse_llama_bench_json,
    parse_llama_bench_markdown,
    parse_op_profile,
    split_pp_tg,
)

CAPTURES = Path(__file__).parent / "data" / "captures"


def capture(name: str) -> str:
    return (CAPTURES / name).read_text(encoding="utf-8")


# --- dumpsys battery -----------------------------------------------------------------------------

def test_dumpsys_battery_dragon_plain_aosp():
    """Pixel C ("dragon", 2016): plain AOSP layout, AC powered, charging, no ``current now`` line."""
    b = parse_dumpsys_battery(capture("android-dumpsys-battery-dragon.txt"))
    assert b.level_percent == 19.0  # level: 19, scale: 100
    assert b.voltage_v == pytest.approx(3.764)  # voltage: 3764 (mV)
    assert b.temperature_c == pytest.approx(27.5)  # temperature: 275 (0.1 °C)
    assert b.charge_counter_uah == 0
    assert b.status == "charging"  # status: 2
    assert b.plugged == ("ac",) and b.charging
    assert b.current_now_raw is None


def test_dumpsys_battery_samsung_vendor_extras():
    """Samsung One UI (2023): vendor lines after the AOSP fields, some not indented, a second lower-case
    ``charge counter:``, ``LLB MAN:`` with no value, a bare ``BatteryInfoBackUp`` line. None of them may
    change the AOSP fields."""
    b = parse_dumpsys_battery(capture("android-dumpsys-battery-samsung.txt"))
    assert b.level_percent == 100.0
    assert b.voltage_v == pytest.approx(4.312)  # voltage: 4312
    assert b.temperature_c == pytest.approx(30.9)  # temperature: 309, not mSavedBatteryMaxTemp: 534
    assert b.charge_counter_uah == 2967000
    assert b.status == "full"  # status: 5
    assert b.plugged == ("usb",) and b.charging
    assert b.current_now_raw == 0.0  # current now: 0
    assert b.to_dict()["current_now_raw"] == 0.0


# --- benchmark_model (older TAB-separated layout with a [start] column) ----------------------------

BM = "benchmark_model-op-profiling-linux-riscv64-qemu.txt"


def test_benchmark_model_riscv64_run_stats():
    """Yocto qemuriscv64, mobilenet_v1, 4 threads: bare log lines (no ``INFO:``), ``avg=2.95034e+06``."""
    out = parse_benchmark_model(capture(BM))
    assert out.warmup is not None and out.warmup.count == 1 and out.warmup.curr_us == 3512391
    inf = out.inference
    assert inf is not None
    assert (inf.count, inf.first_us, inf.curr_us, inf.min_us, inf.max_us, inf.std_us) == \
        (50, 2990275, 2913402, 2727568, 3189954, 109798)
    assert inf.avg_us == pytest.approx(2.95034e6)
    assert out.min_runs == 50
    assert out.init_us == 17187 and out.first_inference_us == 3512391
    assert out.warmup_avg_us == pytest.approx(3.51239e6) and out.inference_avg_us == pytest.approx(2.95034e6)
    assert out.model_size_mb == pytest.approx(16.9008)
    assert (out.memory_init_delta_mb, out.memory_overall_delta_mb) == pytest.approx((4.21094, 46.0859))
    assert out.errors == []


def test_benchmark_model_riscv64_op_profile():
    """The regular-runs block only (the initialization block's AllocateTensors must not appear)."""
    ops = parse_op_profile(capture(BM), top=10)
    assert ops is not None and ops.source == "benchmark_model"
    assert ops.runs == 50  # Timings (microseconds): count=50 ...
    by_type = [(o.op_type, o.avg_ms, o.percent, o.cumulative_percent, o.calls) for o in ops.by_type]
    assert by_type == [
        ("CONV_2D", 2651.853, 89.897, 89.897, 15),
        ("DEPTHWISE_CONV_2D", 296.919, 10.065, 99.962, 13),
        ("AVERAGE_POOL_2D", 0.869, 0.029, 99.992, 1),
        ("SOFTMAX", 0.232, 0.008, 99.999, 1),
        ("SQUEEZE", 0.016, 0.001, 100.0, 1),
    ]
    assert ops.total_ms == pytest.approx(2651.853 + 296.919 + 0.869 + 0.232 + 0.016)
    nodes = [(n.name, n.op_type, n.avg_ms, n.percent) for n in ops.top_nodes]
    assert len(nodes) == 10
    assert nodes[0] == ("[MobilenetV1/MobilenetV1/Conv2d_5_pointwise/Relu6]:10", "CONV_2D", 277.374, 9.403)
    assert nodes[1] == ("[MobilenetV1/MobilenetV1/Conv2d_8_pointwise/Relu6]:16", "CONV_2D", 249.023, 8.442)
    assert nodes[9] == ("[MobilenetV1/MobilenetV1/Conv2d_6_pointwise/Relu6]:12", "CONV_2D", 137.816, 4.672)
    assert all(n[1] != "AllocateTensors" for n in nodes)
    assert [n.op_type for n in parse_op_profile(capture(BM), top=3).top_nodes] == ["CONV_2D"] * 3


# --- llama-bench -----------------------------------------------------------------------------------

def test_llama_bench_markdown_arm64_cix():
    """Cix CP8180 arm64, CPU, 12 threads: newer test names (pp4096+tg128), ``±`` is U+00B1."""
    rows = parse_llama_bench_markdown(capture("llama-bench-cpu-arm64-cix.md"))
    got = [(r.model, r.size_mib, r.params_b, r.backend, r.threads, r.test, r.avg_ts, r.stddev_ts) for r in rows]
    assert got == [
        ("llama 1B Q4_K - Medium", 636.18, 1.10, "CPU", 12, "pp512", 194.05, 0.65),
        ("llama 1B Q4_K - Medium", 636.18, 1.10, "CPU", 12, "pp4096", 115.50, 0.00),
        ("llama 1B Q4_K - Medium", 636.18, 1.10, "CPU", 12, "tg128", 40.39, 0.15),
        ("llama 1B Q4_K - Medium", 636.18, 1.10, "CPU", 12, "pp4096+tg128", 99.85, 0.06),
    ]
    assert [(r.kind, r.n_prompt, r.n_gen, r.n_depth) for r in rows] == [
        ("pp", 512, 0, 0), ("pp", 4096, 0, 0), ("tg", 0, 128, 0), ("pp+tg", 4096, 128, 0)]
    assert all(r.extra == {} for r in rows)


def test_llama_bench_markdown_macos_thread_sweep():
    """macOS, ``-t 1,2,4,6,8,10 -n 64``: narrower columns, blank line and ``build:`` footer after the table."""
    rows = parse_llama_bench_markdown(capture("llama-bench-cpu-macos-threads.md"))
    assert {(r.model, r.size_mib, r.params_b, r.backend, r.test, r.kind, r.n_gen) for r in rows} == \
        {("llama 1B Q4_0", 727.75, 1.24, "CPU", "tg64", "tg", 64)}
    assert [(r.threads, r.avg_ts, r.stddev_ts) for r in rows] == [
        (1, 47.84, 0.08), (2, 87.31, 0.16), (4, 157.63, 1.01), (6, 188.15, 9.39), (8, 237.40, 0.71),
        (10, 243.65, 0.14)]


def test_llama_bench_markdown_without_a_table_is_an_error():
    with pytest.raises(ValueError, match="no llama-bench Markdown table"):
        parse_llama_bench_markdown(capture("llama-bench-json-upstream-doc-cuda.json"))


def test_llama_bench_json_upstream_doc_shape():
    """llama.cpp's README sample (doc-edited, shape only): top-level array, one-line sample arrays."""
    tests = parse_llama_bench_json(capture("llama-bench-json-upstream-doc-cuda.json"))
    assert len(tests) == 2
    pp, tg = split_pp_tg(tests)
    assert pp is tests[0] and tg is tests[1]
    assert (pp.n_prompt, pp.n_gen, pp.n_depth, pp.n_threads) == (512, 0, 0, 8)
    assert (pp.avg_ns, pp.stddev_ns) == (72135640, 1453752)
    assert pp.avg_ts == pytest.approx(7100.002165) and pp.stddev_ts == pytest.approx(140.341520)
    assert pp.samples_ns == [74601900, 71632900, 71745200, 71952700, 70745500]
    assert pp.samples_ts == [6863.1, 7147.55, 7136.37, 7115.79, 7237.21]
    assert (tg.n_prompt, tg.n_gen, tg.kind) == (0, 128, "tg")
    assert (tg.avg_ns, tg.stddev_ns) == (1076767880, 9449585)
    assert tg.avg_ts == pytest.approx(118.881588) and tg.stddev_ts == pytest.approx(1.041811)
    assert tg.samples_ns == [1075361300, 1065089400, 1071761200, 1081934900, 1089692600]
    assert tg.samples_ts == [119.03, 120.178, 119.43, 118.307, 117.464]
    assert (pp.model_type, pp.model_size_bytes, pp.model_n_params) == \
        ("qwen2 7B Q4_K - Medium", 4677120000, 7615616512)
    assert (pp.backends, pp.build_commit, pp.build_number) == ("CUDA", "8cf427ff", 5163)
    assert pp.model_filename == "models/Qwen2.5-7B-Instruct-Q4_K_M.gguf"
    assert pp.cpu_info == "AMD Ryzen 7 7800X3D 8-Core Processor" and pp.gpu_info == "NVIDIA GeForce RTX 4080"


# --- RAPL sysfs listings ---------------------------------------------------------------------------

_GREP_LINE = re.compile(r"^(/sys/\S*/[^/:]+):([^/]*)$")  # path:value; the file name and value hold no "/"
_DOMAIN = re.compile(r"^intel-rapl:\d+(?::\d+)?$")


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def listing_entries(text: str) -> dict[str, str | None]:
    """A listing as ``{path: value}``; None for a file that printed an error instead of a value.

    Two layouts: ``path:value`` per line (grep style), and ``find -print -exec cat`` (the path on one
    line, its value on the next; nothing for an empty file; ``cat: …`` for an unreadable one)."""
    entries: dict[str, str | None] = {}
    last: str | None = None
    for line in text.splitlines():
        if m := _GREP_LINE.match(line):
            entries[m.group(1)] = m.group(2)
            last = None
        elif line.startswith("/sys/"):
            entries[line] = ""
            last = line
        elif last is not None:
            entries[last] = None if line.startswith("cat: ") else line
            last = None
    return entries


def powercap_tree(root: Path, listing: str) -> dict[str, str | None]:
    """A fake powercap tree under ``root`` built from a capture's paths and values: each listed file is
    written with its listed value (an unreadable one, printed as a ``cat:`` error, is left out: nothing
    here reads it), and, as the kernel does, every ``intel-rapl:N[:M]`` zone directory also appears
    flat in ``/sys/class/powercap`` (a symlink to the nested one), which is where the source looks."""
    entries = listing_entries(listing)
    for path, value in entries.items():
        if value is None:
            continue
        f = root / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(value + "\n" if value else "")
        for d in [f.parent, *f.parent.parents]:
            link = root / "sys/class/powercap" / d.name
            if _DOMAIN.match(d.name) and d != link and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(d, target_is_directory=True)
    return entries


def test_rapl_find_cat_listing_top_level_zone(tmp_path):
    """Multi-socket server (intel/powertelemetry#3): zone ``intel-rapl:1`` under /sys/devices/virtual,
    ``energy_uj`` 60293987000000, ``enabled`` 0 (limits off; the counter still counts), no ``name`` line
    in the partial copy, so the rail is named after its directory."""
    entries = powercap_tree(tmp_path, capture("intel-rapl-sysfs-find-cat-partial.txt"))
    assert entries["/sys/devices/virtual/powercap/intel-rapl/intel-rapl:1/constraint_1_max_power_uw"] is None
    clock = FakeClock()
    env = DeviceEnv(root=tmp_path, clock=clock)
    src = RaplPowerSource.detect(env)
    assert isinstance(src, RaplPowerSource)
    assert [(d.rail, d.top_level, d.max_energy_uj) for d in src.domains] == [("intel-rapl:1", True, None)]
    assert env.read_float(src.domains[0].path / "energy_uj") == 60293987000000
    src.start()
    (tmp_path / "sys/class/powercap/intel-rapl:1/energy_uj").write_text(f"{60293987000000 + 5_000_000}\n")
    clock.t += 2.0
    r = src.read()
    assert r is not None and r.rails == pytest.approx({"intel-rapl:1": 2.5}) and r.watts == pytest.approx(2.5)
    assert RaplPowerSource.why_not(env) is None  # readable: no hint


def test_rapl_haswell_listing_dram_subzone(tmp_path):
    """i7-4770S (intel/thermal_daemon#45), partial: the DRAM sub-zone ``intel-rapl:0:2`` (``name:dram``,
    ``energy_uj:2469474853``, ``max_energy_range_uj:262143999938``) and only ``max_energy_range_uj`` of
    ``intel-rapl:0:1``. The package's own ``energy_uj`` is not in the stored part, so there is no
    package total and auto-detection declines; the DRAM counter is still found and read (with the wrap)."""
    powercap_tree(tmp_path, capture("intel-rapl-sysfs-haswell-partial.txt"))
    clock = FakeClock()
    env = DeviceEnv(root=tmp_path, clock=clock)
    domains = find_rapl_domains(env)
    assert [(d.rail, d.top_level, d.max_energy_uj) for d in domains] == \
        [("intel-rapl:0/dram", False, 262143999938)]
    assert RaplPowerSource.detect(env) is None  # sub-zones alone make no package total
    src = RaplPowerSource(env, domains)
    src.start()
    counter = tmp_path / "sys/class/powercap/intel-rapl:0:2/energy_uj"
    assert counter.read_text() == "2469474853\n"
    counter.write_text("1000000\n")  # wrapped at max_energy_range_uj
    clock.t += 1.0
    r = src.read()
    assert r is not None
    assert r.rails["intel-rapl:0/dram"] == pytest.approx((262143999938 - 2469474853 + 1000000) / 1e6)
    assert r.watts == 0.0  # only top-level (package) zones make the total


def test_rapl_root_only_counter_is_explained(tmp_path, monkeypatch):
    """The find-cat tree as a non-root user on Linux >= 5.10: ``energy_uj`` exists but reading it raises
    PermissionError (simulated by monkeypatching Path.read_text: the tests run as root, whom chmod
    does not stop). Detection declines, and the hint the profile adds to "no power source found" says
    the counter is root-only and how to grant it."""
    powercap_tree(tmp_path, capture("intel-rapl-sysfs-find-cat-partial.txt"))
    real = Path.read_text

    def read_text(self: Path, *a, **kw) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", read_text)
    env = DeviceEnv(root=tmp_path)
    assert RaplPowerSource.detect(env) is None
    why = RaplPowerSource.why_not(env)
    assert why is not None and "root-only" in why
    assert "sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj" in why and "run as root" in why
    assert f"rapl: {why}" in absence_hints(env)
    with pytest.raises(InvalidOptionError) as err:  # --power rapl, asked for by name: the same reason
        detect_power_source(env, "rapl")
    assert "root-only" in str(err.value) and "sudo chmod o+r" in str(err.value)


def test_no_rapl_no_hint(tmp_path):
    """An empty tree (no powercap at all): no source explains itself."""
    env = DeviceEnv(root=tmp_path)
    assert RaplPowerSource.why_not(env) is None
    assert not any(h.startswith("rapl:") for h in absence_hints(env))
