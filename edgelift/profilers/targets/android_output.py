"""Parsers for what a phone prints over adb: LiteRT's ``benchmark_model``, ``llama-bench`` (``-o json`` and
the default Markdown table), ``dumpsys battery``, ``getprop``, ``/proc/meminfo`` and ``adb devices``.

Pure functions from text to dataclasses, so the adb target stays a thin transport and every format
is tested on its own against captured output. Units are in the field names (``_us``, ``_mb``,
``_ns``): the tools mix microseconds, milliseconds and MB, and a silent unit slip would corrupt every
figure in a report. Formats follow the tools' own printers (TFLite ``benchmark_model.cc`` and
``stats_calculator.cc``, llama.cpp ``llama-bench.cpp``'s ``json_printer``); the parsers accept the
older ``[start]``-column op tables and ``INFO:``-prefixed or bare log lines alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..perop import NodeTime, OpProfile, OpTypeTime

# ---- benchmark_model ------------------------------------------------------------------------------------

_LOG_PREFIX = re.compile(r"^(?:INFO|WARN|WARNING|ERROR|VERBOSE):\s?")
_RUNNING = re.compile(r"Running benchmark for at least (\d+) iterations")
_STAT = re.compile(r"^count=(\d+)\b(.*)$")
_KV = re.compile(r"(\w+)=([-+0-9.eE]+)")
_TIMINGS = re.compile(r"(?:Average )?[Ii]nference timings in us:\s*(.*)$")
_TIMING_ITEM = re.compile(r"([A-Za-z][A-Za-z ()]*?):\s*([-+0-9.eE]+)")
_MEM_DELTA = re.compile(r"Memory footprint delta from the start of the tool \(MB\):\s*init=([-0-9.eE]+)\s+overall=([-0-9.eE]+)")
_PEAK_MEM = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring:\s*([-0-9.eE]+)")
_MODEL_SIZE = re.compile(r"The input model file size \(MB\):\s*([-0-9.eE]+)")
_INIT_MS = re.compile(r"Initialized session in\s*([-0-9.eE]+)\s*ms")
_REGULAR_PROFILE = "Operator-wise Profiling Info for Regular Benchmark Runs"
_INIT_PROFILE = "Profiling Info for Benchmark Initialization"
_TABLE_TITLE = re.compile(r"^=+\s*(.+?)\s*=+$")
_HEADER_CELL = re.compile(r"\[([^\]]+)\]")


@dataclass(frozen=True)
class RunStats:
    """One ``count=… first=… curr=… min=… max=… avg=… std=…`` line, in microseconds.

    ``std_us`` is benchmark_model's population standard deviation (``Stat::std_deviation``).
    """

    count: int
    first_us: float
    curr_us: float
    min_us: float
    max_us: float
    avg_us: float
    std_us: float


@dataclass
class BenchmarkModelOutput:
    """What one ``benchmark_model`` run printed. ``warmup``/``inference`` are the two "Running benchmark"
    sections (warm-up runs, then the measured runs); figures it did not print are None."""

    warmup: RunStats | None = None
    inference: RunStats | None = None
    min_runs: int | None = None  # the measured section's "for at least N iterations"
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    model_size_mb: float | None = None
    memory_init_delta_mb: float | None = None  # max RSS growth over init (the tool's own caveat: approximate)
    memory_overall_delta_mb: float | None = None
    peak_memory_mb: float | None = None  # absolute, with --report_peak_memory_footprint=true
    ops: OpProfile | None = None
    errors: list[str] = field(default_factory=list)


def _strip_log(line: str) -> str:
    return _LOG_PREFIX.sub("", line.strip())


def parse_run_stats(line: str) -> RunStats | None:
    """A ``Stat`` line (``INFO: `` prefix optional); None for anything else.

    benchmark_model prints ``count=N curr=X(all same)`` when every run took the same time: then
    first, min, max and avg are X and std is 0.
    """
    m = _STAT.match(_strip_log(line))
    if not m:
        return None
    kv = {k: float(v) for k, v in _KV.findall(m.group(2))}
    if "curr" not in kv:
        return None  # "count=0": the section ran nothing
    curr = kv["curr"]
    return RunStats(int(m.group(1)), kv.get("first", curr), curr, kv.get("min", curr), kv.get("max", curr),
                    kv.get("avg", curr), kv.get("std", 0.0))


def _parse_timings(text: str, out: BenchmarkModelOutput) -> None:
    """``Init: 52687, First inference: 19105, Warmup (avg): 14452.5, Inference (avg): 14290.9`` (and the
    older ``Warmup: …, Init: …, Inference: …``)."""
    items = {k.strip(): float(v) for k, v in _TIMING_ITEM.findall(text)}
    out.init_us = items.get("Init", out.init_us)
    out.first_inference_us = items.get("First inference", out.first_inference_us)
    out.warmup_avg_us = items.get("Warmup (avg)", items.get("Warmup", out.warmup_avg_us))
    out.inference_avg_us = items.get("Inference (avg)", items.get("Inference", out.inference_avg_us))


def parse_benchmark_model(text: str, top: int = 10) -> BenchmarkModelOutput:
    """Everything ``benchmark_model`` printed (stdout and stderr together) into one result.

    The first "Running benchmark" section is the warm-up, the last the measured runs. The op tables
    are read from the "Regular Benchmark Runs" block only: the initialization block profiles
    ModifyGraphWithDelegate/AllocateTensors, not the model's ops.
    """
    out = BenchmarkModelOutput()
    sections: list[RunStats] = []
    pending = False
    init_ms = None
    lines = text.splitlines()
    for raw in lines:
        line = _strip_log(raw)
        if m := _RUNNING.search(line):
            pending, out.min_runs = True, int(m.group(1))
        elif pending and (stats := parse_run_stats(line)) is not None:
            sections.append(stats)
            pending = False
        elif m := _TIMINGS.search(line):
            _parse_timings(m.group(1), out)
        elif m := _MEM_DELTA.search(line):
            out.memory_init_delta_mb, out.memory_overall_delta_mb = float(m.group(1)), float(m.group(2))
        elif m := _PEAK_MEM.search(line):
            out.peak_memory_mb = float(m.group(1))
        elif m := _MODEL_SIZE.search(line):
            out.model_size_mb = float(m.group(1))
        elif m := _INIT_MS.search(line):
            init_ms = float(m.group(1))
        elif raw.lstrip().startswith("ERROR:") or line.startswith("Failed"):
            out.errors.append(line)
    if sections:
        out.inference = sections[-1]
        out.warmup = sections[0] if len(sections) > 1 else None
    if out.init_us is None and init_ms is not None:
        out.init_us = init_ms * 1e3
    out.ops = parse_op_profile(text, top=top)
    return out


# ---- op profiling tables --------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    """The columns of one table row: benchmark_model separates them by tabs (each padded with spaces);
    a transcript whose tabs became spaces is split on runs of two or more spaces instead."""
    parts = line.split("\t") if "\t" in line else re.split(r"\s{2,}", line)
    return [p.strip() for p in parts if p.strip()]


def _num(cell: str) -> float:
    return float(cell.rstrip("%"))


def _tables(block: list[str]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Titled tables (``===== Title =====``, a ``[col]`` header, rows up to a blank line) of one block."""
    tables: dict[str, tuple[list[str], list[list[str]]]] = {}
    title, header, rows = None, None, []
    for line in block:
        if m := _TABLE_TITLE.match(line.strip()):
            title, header, rows = m.group(1), None, []
            continue
        if title is None:
            continue
        if header is None:
            cols = _HEADER_CELL.findall(line)
            if cols:
                header = [c.strip().lower() for c in cols]
                tables[title] = (header, rows)
            continue
        if not line.strip():
            title = None
            continue
        rows.append(_cells(line))
    return tables


def _regular_block(lines: list[str]) -> list[str]:
    """The lines after the "Regular Benchmark Runs" header, up to the next profiling block, if any."""
    start = next((i for i, ln in enumerate(lines) if _REGULAR_PROFILE in ln), None)
    if start is None:
        return []
    block = []
    for ln in lines[start + 1:]:
        if _INIT_PROFILE in ln or _REGULAR_PROFILE in ln:
            break
        block.append(ln)
    return block


def _by_type(header: list[str], rows: list[list[str]]) -> list[OpTypeTime]:
    col = {name: i for i, name in enumerate(header)}
    out = []
    for r in rows:
        if len(r) < len(header):
            continue
        try:
            out.append(OpTypeTime(r[col["node type"]], _num(r[col["avg ms"]]), _num(r[col["avg %"]]),
                                  _num(r[col["cdf %"]]), _num(r[col["times called"]])))
        except (KeyError, ValueError):
            continue
    return out


def _nodes(header: list[str], rows: list[list[str]], top: int) -> list[NodeTime]:
    col = {name: i for i, name in enumerate(header)}
    out = []
    for r in rows[:top]:
        if len(r) < len(header):
            continue
        try:
            out.append(NodeTime(r[col["name"]], r[col["node type"]], _num(r[col["avg ms"]]), _num(r[col["%"]])))
        except (KeyError, ValueError):
            continue
    return out


def parse_op_profile(text: str, top: int = 10) -> OpProfile | None:
    """The per-op profile of ``--enable_op_profiling=true``: time per op type (the "Summary by node
    type" table) and the slowest nodes ("Top by Computation Time"), averaged per run, as the
    ``ops`` entry of a report. None when the output has no regular-runs profile."""
    block = _regular_block(text.splitlines())
    tables = _tables(block)
    summary = tables.get("Summary by node type")
    if summary is None:
        return None
    by_type = _by_type(*summary)
    if not by_type:
        return None
    top_table = tables.get("Top by Computation Time")
    nodes = _nodes(*top_table, top=top) if top_table else []
    runs = next((s.count for ln in block if ln.strip().startswith("Timings (microseconds):")
                 and (s := parse_run_stats(ln.split(":", 1)[1])) is not None), 0)
    return OpProfile("benchmark_model", runs, sum(o.avg_ms for o in by_type), by_type, nodes)


# ---- llama-bench ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaBenchTest:
    """One test object of ``llama-bench -o json``: a prompt test (``n_gen == 0``), a generation test
    (``n_prompt == 0``) or both. ``samples_ns`` are whole-test times per repetition."""

    n_prompt: int
    n_gen: int
    n_threads: int | None
    avg_ns: float
    stddev_ns: float
    avg_ts: float
    stddev_ts: float
    samples_ns: list[int]
    samples_ts: list[float]
    n_depth: int = 0
    model_filename: str | None = None
    model_type: str | None = None
    model_size_bytes: int | None = None
    model_n_params: int | None = None
    cpu_info: str | None = None
    gpu_info: str | None = None
    backends: str | None = None
    build_commit: str | None = None
    build_number: int | None = None

    @property
    def kind(self) -> str:
        """``pp``, ``tg`` or ``pp+tg``, as llama-bench's Markdown table names the test."""
        if self.n_gen == 0:
            return "pp"
        return "tg" if self.n_prompt == 0 else "pp+tg"

    @classmethod
    def from_json(cls, obj: dict) -> "LlamaBenchTest":
        def opt_int(key: str) -> int | None:
            return int(obj[key]) if obj.get(key) is not None else None

        return cls(int(obj["n_prompt"]), int(obj["n_gen"]), opt_int("n_threads"), float(obj["avg_ns"]),
                   float(obj.get("stddev_ns", 0.0)), float(obj["avg_ts"]), float(obj.get("stddev_ts", 0.0)),
                   [int(x) for x in obj.get("samples_ns") or []], [float(x) for x in obj.get("samples_ts") or []],
                   int(obj.get("n_depth") or 0), obj.get("model_filename"), obj.get("model_type"),
                   opt_int("model_size"), opt_int("model_n_params"), obj.get("cpu_info"), obj.get("gpu_info"),
                   obj.get("backends"), obj.get("build_commit"), opt_int("build_number"))


def _json_objects(text: str) -> list[dict]:
    """The test objects in llama-bench's stdout: one JSON array (``-o json``), or one object per line
    (``-o jsonl``); text around them (a log line that reached stdout) is skipped."""
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except ValueError:
        pass
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        try:
            data = json.loads(text[start:end + 1])
            if isinstance(data, list):
                return data
        except ValueError:
            pass
    out = []
    for line in text.splitlines():
        if line.strip().startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def parse_llama_bench_json(text: str) -> list[LlamaBenchTest]:
    """llama-bench's JSON output as tests, in the order it ran them; a ValueError names what is wrong
    when there is no usable test (the caller turns it into the device's error)."""
    objs = [o for o in _json_objects(text) if isinstance(o, dict)]
    tests = []
    for o in objs:
        try:
            tests.append(LlamaBenchTest.from_json(o))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"llama-bench JSON test without {e}: is this llama-bench -o json output?") from None
    if not tests:
        raise ValueError("no llama-bench JSON results in the output (run with -o json)")
    return tests


@dataclass(frozen=True)
class LlamaBenchRow:
    """One row of llama-bench's default Markdown table (``-o md``), as printed: the model type, size
    (``MiB``/``GiB``, converted to MiB), params (``M``/``B``, converted to billions), backend, threads
    and the test name (``pp512``, ``tg128``, ``pp4096+tg128``, ``pp512 @ d4096``), and ``t/s`` as
    ``mean ± stddev``. Columns llama-bench adds only when asked for (``ngl``, ``fa``, ``n_ubatch`` …)
    are kept as text in ``extra``. Phones and boards run the default printer unless ``-o json`` was
    given, so a pasted or logged table must read as well as the JSON."""

    model: str
    size_mib: float | None
    params_b: float | None
    backend: str | None
    threads: int | None
    test: str
    n_prompt: int
    n_gen: int
    n_depth: int
    avg_ts: float
    stddev_ts: float
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``pp``, ``tg`` or ``pp+tg``, as for :class:`LlamaBenchTest`."""
        if self.n_gen == 0:
            return "pp"
        return "tg" if self.n_prompt == 0 else "pp+tg"

    def to_test(self) -> LlamaBenchTest:
        """The row as a :class:`LlamaBenchTest`: the test's time from its rate (tokens / t/s) and the
        time's spread to first order (relative spread of t/s); the table has no per-repetition samples."""
        tokens = self.n_prompt + self.n_gen
        avg_ns = tokens / self.avg_ts * 1e9 if self.avg_ts > 0 else 0.0
        std_ns = avg_ns * self.stddev_ts / self.avg_ts if self.avg_ts > 0 else 0.0
        size = None if self.size_mib is None else int(round(self.size_mib * 2**20))
        params = None if self.params_b is None else int(round(self.params_b * 1e9))
        return LlamaBenchTest(self.n_prompt, self.n_gen, self.threads, avg_ns, std_ns, self.avg_ts, self.stddev_ts,
                              [], [], self.n_depth, None, self.model, size, params, None, None, self.backend)


_MD_TEST = re.compile(r"^(?:pp(\d+))?\+?(?:tg(\d+))?(?:\s*@\s*d(\d+))?$")
_MD_TS = re.compile(r"^([-+0-9.eE]+)\s*(?:±|\+/-)\s*([-+0-9.eE]+)$")
_MD_SIZE = {"B": 1.0 / 2**20, "KiB": 1.0 / 1024, "MiB": 1.0, "GiB": 1024.0, "TiB": 1024.0**2}
_MD_PARAMS = {"K": 1e-6, "M": 1e-3, "B": 1.0, "T": 1e3}


def _md_scaled(cell: str, units: dict[str, float]) -> float | None:
    """``636.18 MiB`` -> 636.18 (MiB), ``1.10 B`` -> 1.1 (billions); None for an unknown unit."""
    number, _, unit = cell.partition(" ")
    try:
        return float(number) * units[unit.strip()]
    except (KeyError, ValueError):
        return None


def parse_llama_bench_markdown(text: str) -> list[LlamaBenchRow]:
    """The rows of llama-bench's Markdown table, in printed order. Columns are found by their header
    names (widths follow the content, and optional columns come and go between builds); the
    ``|---|---:|`` rule, blank lines, the ``build: <hash> (<number>)`` footer and any log lines around
    the table are skipped. A ValueError says so when there is no table with ``test`` and ``t/s``."""
    header: list[str] | None = None
    rows: list[LlamaBenchRow] = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [c.strip() for c in line[1:-1].split("|")]
        if header is None:
            if "test" in cells and "t/s" in cells:
                header = cells
            continue
        if all(set(c) <= set("-: ") for c in cells) or len(cells) != len(header):
            continue  # the alignment rule, or a row of another table
        row = dict(zip(header, cells))
        test, ts = _MD_TEST.match(row["test"]), _MD_TS.match(row["t/s"])
        if test is None or ts is None or not (test.group(1) or test.group(2)):
            continue
        threads = row.get("threads")
        known = {"model", "size", "params", "backend", "threads", "test", "t/s"}
        rows.append(LlamaBenchRow(
            row.get("model", ""), _md_scaled(row.get("size", ""), _MD_SIZE),
            _md_scaled(row.get("params", ""), _MD_PARAMS), row.get("backend"),
            int(threads) if threads and threads.isdigit() else None, row["test"],
            int(test.group(1) or 0), int(test.group(2) or 0), int(test.group(3) or 0),
            float(ts.group(1)), float(ts.group(2)), {k: v for k, v in row.items() if k not in known}))
    if not rows:
        raise ValueError("no llama-bench Markdown table with 'test' and 't/s' columns in the output")
    return rows


def parse_llama_bench(text: str) -> list[LlamaBenchTest]:
    """llama-bench's tests from ``-o json`` output or, failing that, its default Markdown table (a
    wrapper script or a vendor build that ignores ``-o json``): the same tests either way, without
    per-repetition samples from the table."""
    try:
        return parse_llama_bench_json(text)
    except ValueError as json_error:
        try:
            return [row.to_test() for row in parse_llama_bench_markdown(text)]
        except ValueError:
            raise json_error from None


def split_pp_tg(tests: list[LlamaBenchTest]) -> tuple[LlamaBenchTest | None, LlamaBenchTest | None]:
    """The prompt-processing and the text-generation test of one ``-p P -n N`` run (either may be absent)."""
    pp = next((t for t in tests if t.kind == "pp"), None)
    tg = next((t for t in tests if t.kind == "tg"), None)
    return pp, tg


# ---- dumpsys battery, getprop, meminfo, adb devices ------------------------------------------------------

# BatteryManager.BATTERY_STATUS_* values
BATTERY_STATUS = {1: "unknown", 2: "charging", 3: "discharging", 4: "not charging", 5: "full"}
_PLUGGED = (("AC powered", "ac"), ("USB powered", "usb"), ("Wireless powered", "wireless"), ("Dock powered", "dock"))


@dataclass(frozen=True)
class BatteryState:
    """``dumpsys battery``: ``voltage`` is mV and ``temperature`` tenths of a °C in its output.

    ``current_now_raw`` comes from a vendor extra (Samsung One UI prints ``current now:`` after the
    AOSP fields; AOSP prints no current): its unit and sign are the vendor's (Samsung's battery driver
    uses mA), so it is kept as printed, with no unit suffix, and None where the line is absent.
    """

    level_percent: float | None = None
    voltage_v: float | None = None
    temperature_c: float | None = None
    charge_counter_uah: int | None = None
    status: str | None = None
    plugged: tuple[str, ...] = ()
    current_now_raw: float | None = None  # vendor extra line (Samsung ``current now:``), unit as printed


    @property
    def charging(self) -> bool:
        """Plugged in or charging: the fuel gauge then reads the charge current, not the phone's draw."""
        return bool(self.plugged) or self.status == "charging"

    def to_dict(self) -> dict:
        return {"level_percent": self.level_percent, "voltage_v": self.voltage_v, "temperature_c": self.temperature_c,
                "charge_counter_uah": self.charge_counter_uah, "status": self.status, "plugged": list(self.plugged),
                "current_now_raw": self.current_now_raw}


def _fields(text: str) -> dict[str, str]:
    """``key: value`` lines, indented or not (Samsung prints vendor lines at column 0), first one
    wins: the AOSP block comes first, so a vendor's later duplicate (Samsung's second, lower-case
    ``charge counter:``) cannot override it. Keys are case-sensitive for the same reason."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in out:
            out[key.strip()] = value.strip()
    return out


def parse_dumpsys_battery(text: str) -> BatteryState:
    """``adb shell dumpsys battery``: level, voltage (mV), temperature (0.1 °C), charge counter (µAh)."""
    f = _fields(text)

    def number(key: str) -> float | None:
        try:
            return float(f[key])
        except (KeyError, ValueError):
            return None

    level, scale = number("level"), number("scale") or 100.0
    mv, tenths, counter, status = number("voltage"), number("temperature"), number("Charge counter"), number("status")
    return BatteryState(
        level_percent=None if level is None else 100.0 * level / scale,
        voltage_v=None if mv is None else mv / 1e3,
        temperature_c=None if tenths is None else tenths / 10.0,
        charge_counter_uah=None if counter is None else int(counter),
        status=None if status is None else BATTERY_STATUS.get(int(status), f"status {int(status)}"),
        plugged=tuple(name for key, name in _PLUGGED if f.get(key) == "true"),
        current_now_raw=number("current now"))


_PROP = re.compile(r"^\[([^\]]+)\]:\s*\[(.*)\]\s*$")


def parse_getprop(text: str) -> dict[str, str]:
    """``adb shell getprop`` (every property, ``[key]: [value]`` per line) as a dict."""
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := _PROP.match(line.strip()))}


@dataclass(frozen=True)
class AndroidIdentity:
    """Who the phone is, from its properties: the product, the SoC platform, Android release and ABI."""

    model: str | None
    manufacturer: str | None
    soc: str | None  # ro.board.platform, e.g. gs201, taro, mt6893
    soc_model: str | None  # ro.soc.model (Android 12+), e.g. SM8450
    android_release: str | None
    sdk: int | None
    abi: str | None
    hostname: str | None

    @property
    def os(self) -> str | None:
        return f"Android {self.android_release}" if self.android_release else None


def android_identity(props: dict[str, str]) -> AndroidIdentity:
    def get(key: str) -> str | None:
        return props.get(key) or None

    sdk = get("ro.build.version.sdk")
    return AndroidIdentity(get("ro.product.model"), get("ro.product.manufacturer"), get("ro.board.platform"),
                           get("ro.soc.model"), get("ro.build.version.release"),
                           int(sdk) if sdk and sdk.isdigit() else None, get("ro.product.cpu.abi"),
                           get("net.hostname"))


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` in bytes (its ``kB`` are KiB): ``{"MemTotal": …, "MemAvailable": …}``."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s+(\d+)\s*kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def parse_cpu_list(text: str) -> int | None:
    """CPUs in a sysfs list like ``0-3,6`` (``/sys/devices/system/cpu/online``); None when unreadable."""
    n = 0
    try:
        for part in text.strip().split(","):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
    except ValueError:
        return None
    return n or None


@dataclass(frozen=True)
class AdbDevice:
    serial: str
    state: str  # device, unauthorized, offline, no permissions (...), recovery, sideload, bootloader


def parse_adb_devices(text: str) -> list[AdbDevice]:
    """``adb devices``: one ``SERIAL<TAB>STATE`` line per phone after the ``List of devices attached``
    header (daemon start-up chatter such as ``* daemon started successfully`` is skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("*") or line.startswith("List of devices"):
            continue
        serial, _, state = line.partition("\t") if "\t" in line else line.partition(" ")
        if serial and state:
            out.append(AdbDevice(serial.strip(), state.strip()))
    return out
