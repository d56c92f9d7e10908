"""``edge profile MODEL --device adb://SERIAL``: the Android flow, replayed.

No phone is attached where these tests run. A fake ``adb`` executable placed first on PATH replays
adb transcripts written here after the formats' sources, HAND-WRITTEN IMITATIONS because no public
capture of them exists in ../shared/reference/captures (the real captures it has, the older
tab-separated ``benchmark_model`` log, ``dumpsys battery`` and llama-bench tables, are read verbatim
by tests/test_captures_tools.py): ``adb devices``, ``getprop``, ``dumpsys battery``, ``/proc`` and sysfs files
(battery ``current_now`` µA / ``voltage_now`` µV, Pixel ODPM ``energy_value``), ``push``, ``stat`` and
``sha256sum`` on a fake device filesystem, and the benchmark binaries printing LiteRT
``benchmark_model`` output (format of ``benchmark_model.cc`` / ``stats_calculator.cc``) or
``llama-bench -o json`` (``llama-bench.cpp``'s json printer, progress lines on stderr). It logs every
invocation so the tests can check what was pushed and run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from edgelift.errors import InvalidOptionError
from edgelift.profilers.targets.adb import AdbTarget, llama_load_ns, tflite_window
from edgelift.profilers.targets.android_output import (
    parse_adb_devices,
    parse_benchmark_model,
    parse_cpu_list,
    parse_dumpsys_battery,
    parse_getprop,
    parse_llama_bench_json,
    parse_meminfo,
    parse_op_profile,
    parse_run_stats,
    split_pp_tg,
    android_identity,
)
from edgelift.profilers.targets.base import DeviceUnreachableError, RemoteOptions, RemoteRunError

SCHEMA = Path(__file__).resolve().parent.parent / "edgelift" / "schemas" / "profile.schema.json"
SERIAL = "2A211FDH2001VM"
IDLE_UA, BUSY_UA, UV = -300000, -900000, 3850000  # battery gauge: idle / benchmark current, voltage
IDLE_W, BUSY_W = 0.3 * 3.85, 0.9 * 3.85

# ---- hand-written output (current INFO:-prefixed benchmark_model layout; no capture) ----------------------------------------------------------------------------------


def _field(value: str, width: int) -> str:
    """One column as stats_calculator's InitField prints it: a tab, then right-aligned to ``width``."""
    return "\t" + value.rjust(width)


def _node_row(kind: str, first: float, avg: float, pct: str, cdf: str, calls: int, name: str) -> str:
    return (_field(kind, 40) + _field(f"{first:.3f}", 9) + _field(f"{avg:.3f}", 9) + _field(pct, 7 + 1)
            + _field(cdf, 7 + 1) + _field("0.000", 10) + _field(str(calls), 9) + "\t" + name)


def _node_header(title: str) -> str:
    return (f"============================== {title} ==============================\n"
            + _field("[node type]", 40) + _field("[first]", 9) + _field("[avg ms]", 9) + _field("[%]", 8)
            + _field("[cdf%]", 8) + _field("[mem KB]", 10) + _field("[times called]", 9) + "\t[Name]")


def _type_row(kind: str, count: int, avg: float, pct: str, cdf: str, calls: int) -> str:
    return (_field(kind, 40) + _field(str(count), 9) + _field(f"{avg:.3f}", 10) + _field(pct, 10 + 1)
            + _field(cdf, 10 + 1) + _field("0.000", 10) + _field(str(calls), 9))


RUN_ORDER = [("CONV_2D", 0.412, 0.398, "31.537%", "31.537%", 1, "[digits/conv1/Relu]:0"),
             ("MAX_POOL_2D", 0.061, 0.057, "4.517%", "36.054%", 1, "[digits/pool1/MaxPool]:1"),
             ("CONV_2D", 0.655, 0.631, "50.000%", "86.054%", 1, "[digits/conv2/Relu]:2"),
             ("MAX_POOL_2D", 0.030, 0.028, "2.219%", "88.273%", 1, "[digits/pool2/MaxPool]:3"),
             ("RESHAPE", 0.004, 0.003, "0.238%", "88.510%", 1, "[digits/flatten/Reshape]:4"),
             ("FULLY_CONNECTED", 0.121, 0.117, "9.271%", "97.781%", 1, "[digits/fc/MatMul]:5"),
             ("SOFTMAX", 0.009, 0.008, "0.634%", "98.415%", 1, "[digits/softmax/Softmax]:6")]
TOP = [("CONV_2D", 0.655, 0.631, "50.000%", "50.000%", 1, "[digits/conv2/Relu]:2"),
       ("CONV_2D", 0.412, 0.398, "31.537%", "81.537%", 1, "[digits/conv1/Relu]:0"),
       ("FULLY_CONNECTED", 0.121, 0.117, "9.271%", "90.808%", 1, "[digits/fc/MatMul]:5"),
       ("MAX_POOL_2D", 0.061, 0.057, "4.517%", "95.325%", 1, "[digits/pool1/MaxPool]:1"),
       ("MAX_POOL_2D", 0.030, 0.028, "2.219%", "97.544%", 1, "[digits/pool2/MaxPool]:3"),
       ("SOFTMAX", 0.009, 0.008, "0.634%", "98.177%", 1, "[digits/softmax/Softmax]:6"),
       ("RESHAPE", 0.004, 0.003, "0.238%", "98.415%", 1, "[digits/flatten/Reshape]:4")]
BY_TYPE = [("CONV_2D", 2, 1.029, "82.850%", "82.850%", 2), ("FULLY_CONNECTED", 1, 0.117, "9.420%", "92.271%", 1),
           ("MAX_POOL_2D", 2, 0.085, "6.844%", "99.114%", 2), ("SOFTMAX", 1, 0.008, "0.644%", "99.758%", 1),
           ("RESHAPE", 1, 0.003, "0.242%", "100.000%", 1)]

BENCH_HEAD = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [{runs}]
INFO: Min warmup runs: [{warmup}]
INFO: Graph: [{graph}]
INFO: Signature to run: []
INFO: Loaded model {graph}
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.105068
INFO: Initialized session in 38.467ms.
INFO: Running benchmark for at least {warmup} iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=412 first=2204 curr=1239 min=1187 max=2204 avg=1262.48 std=96
"""

# The timed run: 0.5 s of warm-up (its warmup_min_secs), then a 0.6 s measured section during which the
# battery current is high.
BENCH_TIMED = BENCH_HEAD.replace("INFO: count=412", "@@sleep 0.5\nINFO: count=412") + """\

@@busy on
INFO: Running benchmark for at least {runs} iterations and at least 1 seconds but terminate if exceeding 150 seconds.
@@sleep 0.6
INFO: count=50 first=1288 curr=1241 min=1198 max=1502 avg=1251.36 std=41

INFO: Inference timings in us: Init: 38467, First inference: 2204, Warmup (avg): 1262.48, Inference (avg): 1251.36
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=3.5 overall=12.25
INFO: Overall peak memory footprint (MB) via periodic monitoring: 14.5
INFO: Memory status at the end of exeution:
INFO: - VmRSS              : 15 MB
INFO: + RssAnnon           : 9 MB
INFO: + RssFile + RssShmem : 6 MB
@@sleep 0.3
@@busy off
"""

# The op-profiling pass: slower runs (the profiler's overhead), then the per-op tables.
BENCH_OPS = BENCH_HEAD + "\n" + """\
INFO: Running benchmark for at least {runs} iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=1297 curr=1270 min=1221 max=1544 avg=1281.9 std=44

INFO: Inference timings in us: Init: 38467, First inference: 2204, Warmup (avg): 1262.48, Inference (avg): 1281.9
INFO: Profiling Info for Benchmark Initialization:
""" + _node_header("Run Order") + "\n" + _node_row("ModifyGraphWithDelegate", 9.207, 9.207, "71.502%", "71.502%", 1,
                                                     "ModifyGraphWithDelegate/0") + "\n" + \
    _node_row("AllocateTensors", 3.670, 3.670, "28.498%", "100.000%", 1, "AllocateTensors/0") + "\n\n" + """\
Number of nodes executed: 2
============================== Summary by node type ==============================
""" + _field("[Node type]", 40) + _field("[count]", 9) + _field("[avg ms]", 10) + _field("[avg %]", 11) + \
    _field("[cdf %]", 11) + _field("[mem KB]", 10) + _field("[times called]", 10) + "\n" + \
    _type_row("ModifyGraphWithDelegate", 1, 9.207, "71.502%", "71.502%", 1) + "\n" + \
    _type_row("AllocateTensors", 1, 3.670, "28.498%", "100.000%", 1) + "\n\n" + """\
Timings (microseconds): count=1 curr=12877
Memory (bytes): count=0
2 nodes observed



INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
""" + _node_header("Run Order") + "\n" + "\n".join(_node_row(*r) for r in RUN_ORDER) + "\n\n" + \
    _node_header("Top by Computation Time") + "\n" + "\n".join(_node_row(*r) for r in TOP) + "\n\n" + """\
Number of nodes executed: 7
============================== Summary by node type ==============================
""" + _field("[Node type]", 40) + _field("[count]", 9) + _field("[avg ms]", 10) + _field("[avg %]", 11) + \
    _field("[cdf %]", 11) + _field("[mem KB]", 10) + _field("[times called]", 10) + "\n" + \
    "\n".join(_type_row(*r) for r in BY_TYPE) + "\n\n" + """\
Timings (microseconds): count=50 first=1297 curr=1270 min=1221 max=1544 avg=1281.9 std=44
Memory (bytes): count=0
7 nodes observed


"""

LLAMA_FIELDS = """\
    "build_commit": "4a4e2c8b",
    "build_number": 4879,
    "cpu_info": "CPU",
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": "{model}",
    "model_type": "qwen2 1B Q4_K - Medium",
    "model_size": 491400032,
    "model_n_params": 630167424,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 4,
    "cpu_mask": "0x0",
    "cpu_strict": false,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": 99,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": false,
    "flash_attn": false,
    "tensor_split": "0.00",
    "use_mmap": true,
    "embeddings": false,
"""

LLAMA_BENCH = """\
@@err llama-bench: benchmark 1/2: starting
@@sleep 0.25
@@err llama-bench: benchmark 1/2: warmup prompt run
@@busy on
@@sleep 0.1
@@err llama-bench: benchmark 1/2: prompt run 1/5
@@err llama-bench: benchmark 1/2: prompt run 2/5
@@err llama-bench: benchmark 1/2: prompt run 3/5
@@err llama-bench: benchmark 1/2: prompt run 4/5
@@err llama-bench: benchmark 1/2: prompt run 5/5
[
  {
""" + LLAMA_FIELDS + """\
    "n_prompt": 128,
    "n_gen": 0,
    "n_depth": 0,
    "test_time": "2025-03-14T10:21:07Z",
    "avg_ns": 854067424,
    "stddev_ns": 5086483,
    "avg_ts": 149.875317,
    "stddev_ts": 0.891032,
    "samples_ns": [ 853120416, 861004833, 848772291, 857338125, 850101459 ],
    "samples_ts": [ 150.037, 148.664, 150.806, 149.299, 150.57 ]
  },
@@err llama-bench: benchmark 2/2: starting
@@err llama-bench: benchmark 2/2: warmup generation run
@@err llama-bench: benchmark 2/2: generation run 1/5
@@sleep 0.5
@@err llama-bench: benchmark 2/2: generation run 2/5
@@err llama-bench: benchmark 2/2: generation run 3/5
@@err llama-bench: benchmark 2/2: generation run 4/5
@@err llama-bench: benchmark 2/2: generation run 5/5
  {
""" + LLAMA_FIELDS + """\
    "n_prompt": 0,
    "n_gen": 64,
    "n_depth": 0,
    "test_time": "2025-03-14T10:21:12Z",
    "avg_ns": 2613763800,
    "stddev_ns": 12628349,
    "avg_ts": 24.486220,
    "stddev_ts": 0.118236,
    "samples_ns": [ 2611804166, 2598530084, 2630117500, 2605992209, 2622375041 ],
    "samples_ts": [ 24.5041, 24.6293, 24.3335, 24.5588, 24.4054 ]
  }
]
@@busy off
"""

GETPROP = """\
[dalvik.vm.heapsize]: [576m]
[net.hostname]: [Pixel-7]
[persist.sys.timezone]: [Europe/Berlin]
[ro.board.platform]: [gs201]
[ro.build.fingerprint]: [google/panther/panther:14/UQ1A.240205.004/11269751:user/release-keys]
[ro.build.version.release]: [14]
[ro.build.version.sdk]: [34]
[ro.product.cpu.abi]: [arm64-v8a]
[ro.product.cpu.abilist]: [arm64-v8a,armeabi-v7a,armeabi]
[ro.product.manufacturer]: [Google]
[ro.product.model]: [Pixel 7]
[ro.soc.model]: [GS201]
"""

DUMPSYS_BATTERY = """\
Current Battery Service state:
  AC powered: false
  USB powered: {usb}
  Wireless powered: false
  Dock powered: false
  Max charging current: 500000
  Max charging voltage: 5000000
  Charge counter: 3991656
  status: {status}
  health: 2
  present: true
  level: 87
  scale: 100
  voltage: 4387
  temperature: 300
  technology: Li-ion
"""

MEMINFO = """\
MemTotal:        7868700 kB
MemFree:          412344 kB
MemAvailable:    3123456 kB
Buffers:            9876 kB
Cached:          2871232 kB
"""

FAKE_ADB = r'''#!@PYTHON@ -S
"""A fake adb: replays the transcripts under $FAKE_ADB_HOME and logs every call (tests only)."""
import glob, hashlib, json, os, shutil, sys, time

H = os.environ["FAKE_ADB_HOME"]
FS = os.path.join(H, "fs")
args = sys.argv[1:]
with open(os.path.join(H, "log.txt"), "a") as f:
    f.write(json.dumps(args) + "\n")


def out(s, stream=sys.stdout):
    stream.write(s)
    stream.flush()


def local(p):
    return os.path.join(FS, p.lstrip("/"))


def read(name):
    with open(os.path.join(H, name)) as f:
        return f.read()


devices = read("devices.txt")
if args == ["devices"]:
    out(devices)
    sys.exit(0)
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
    if f"{serial}\tdevice" not in devices:
        out(f"adb: error: failed to get feature set: device '{serial}' not found\n", sys.stderr)
        sys.exit(1)
if args[0] == "push":
    os.makedirs(os.path.dirname(local(args[2])), exist_ok=True)
    shutil.copyfile(args[1], local(args[2]))
    out(f"{args[1]}: 1 file pushed, 0 skipped. 38.2 MB/s ({os.path.getsize(args[1])} bytes in 0.001s)\n")
    sys.exit(0)
assert args[0] == "shell", args
cmd = args[1:]
prog = cmd[0]
if cmd == ["getprop"]:
    out(read("getprop.txt"))
elif cmd == ["dumpsys", "battery"]:
    out(read("battery.txt"))
elif prog == "cat":
    p = local(cmd[1])
    busy = os.path.exists(os.path.join(H, "busy")) and os.path.exists(p + ".busy")
    if cmd[1].endswith("energy_value") and os.path.exists(os.path.join(H, "odpm.json")):
        spec = json.loads(read("odpm.json"))
        t_ms = int((time.time() - spec["t0"]) * 1000)
        rails = spec["rails"][cmd[1].split("/")[-2]]
        out(f"t={t_ms}\n" + "".join(f"CH{i}(T={t_ms})[{rail}], {rate * t_ms}\n" for i, (rail, rate) in enumerate(rails.items())))
    elif os.path.isfile(p):
        out(open(p + ".busy" if busy else p).read())
    else:
        out(f"cat: {cmd[1]}: No such file or directory\n", sys.stderr)
        sys.exit(1)
elif prog == "ls":
    found = sorted(glob.glob(local(cmd[-1])))
    if not found:
        out(f"ls: {cmd[-1]}: No such file or directory\n", sys.stderr)
        sys.exit(1)
    out("".join("/" + os.path.relpath(f, FS) + "\n" for f in found))
elif prog == "stat":
    if not os.path.exists(local(cmd[-1])):
        out(f"stat: '{cmd[-1]}': No such file or directory\n", sys.stderr)
        sys.exit(1)
    out(f"{os.path.getsize(local(cmd[-1]))}\n")
elif prog == "sha256sum":
    out(hashlib.sha256(open(local(cmd[1]), "rb").read()).hexdigest() + "  " + cmd[1] + "\n")
elif prog in ("mkdir", "chmod"):
    pass
elif prog.startswith("/data/local/tmp/"):
    if not os.path.isfile(local(prog)):
        out(f"/system/bin/sh: {prog}: inaccessible or not found\n", sys.stderr)
        sys.exit(127)
    calls = int(read("bench_calls")) + 1 if os.path.exists(os.path.join(H, "bench_calls")) else 1
    with open(os.path.join(H, "bench_calls"), "w") as f:
        f.write(str(calls))
    if os.path.exists(os.path.join(H, "unplug_at")) and calls >= int(read("unplug_at")):
        with open(os.path.join(H, "devices.txt"), "w") as f:  # the cable is pulled: adb loses the phone
            f.write("List of devices attached\n\n")
        out("error: closed\n", sys.stderr)
        sys.exit(1)
    name = os.path.basename(prog)
    if "--enable_op_profiling=true" in cmd:
        name += ".ops"
    opts = dict(a[2:].split("=", 1) for a in cmd[1:] if a.startswith("--") and "=" in a)
    graph = opts.get("graph", "")
    model = cmd[cmd.index("-m") + 1] if "-m" in cmd else ""
    for line in read(f"{name}.txt").splitlines():
        if line.startswith("@@sleep "):
            time.sleep(float(line.split()[1]))
        elif line == "@@busy on":
            open(os.path.join(H, "busy"), "w").close()
        elif line == "@@busy off":
            os.remove(os.path.join(H, "busy"))
        elif line.startswith("@@exit "):
            sys.exit(int(line.split()[1]))
        elif line.startswith("@@err "):
            out(line[6:] + "\n", sys.stderr)
        else:
            out(line.replace("{graph}", graph).replace("{model}", model).replace("{runs}", opts.get("num_runs", ""))
                .replace("{warmup}", opts.get("warmup_runs", "")) + "\n")
else:
    out(f"/system/bin/sh: {prog}: inaccessible or not found\n", sys.stderr)
    sys.exit(127)
'''

# ---- the fake phone -----------------------------------------------------------------------------------


class Phone:
    """A fake phone behind the fake adb: its files, what adb devices lists, and the call log."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.fs = home / "fs"

    def write(self, device_path: str, text: str) -> None:
        p = self.fs / device_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def devices(self, *lines: str) -> None:
        (self.home / "devices.txt").write_text("List of devices attached\n" + "".join(f"{ln}\n" for ln in lines) + "\n")

    def program(self, name: str, transcript: str) -> None:
        (self.home / f"{name}.txt").write_text(transcript)

    def battery(self, charging: bool) -> None:
        (self.home / "battery.txt").write_text(DUMPSYS_BATTERY.format(usb="true" if charging else "false",
                                                                      status=2 if charging else 3))

    def odpm(self, rails: dict[str, dict[str, int]]) -> None:
        """Pixel ODPM rails per iio device, each a constant rate in µW·s per ms (= mW)."""
        for dev in rails:
            self.write(f"/sys/bus/iio/devices/{dev}/energy_value", "")
        (self.home / "odpm.json").write_text(json.dumps({"t0": time.time() - 10, "rails": rails}))

    def calls(self) -> list[list[str]]:
        log = self.home / "log.txt"
        out = []
        for line in log.read_text().splitlines() if log.exists() else []:
            args = json.loads(line)
            out.append(args[2:] if args[:1] == ["-s"] else args)
        return out

    def pushes(self) -> list[str]:
        return [Path(c[1]).name for c in self.calls() if c[0] == "push"]

    def runs(self, binary: str) -> list[list[str]]:
        return [c[2:] for c in self.calls() if c[:2] == ["shell", f"/data/local/tmp/{binary}"]]


@pytest.fixture
def phone(tmp_path, monkeypatch) -> Phone:
    """A Pixel 7 on USB with a battery gauge and the two benchmarks' transcripts; fake adb first on PATH."""
    bin_dir, home = tmp_path / "bin", tmp_path / "phone"
    bin_dir.mkdir()
    home.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB.replace("@PYTHON@", sys.executable))
    adb.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_ADB_HOME", str(home))
    p = Phone(home)
    p.devices(f"{SERIAL}\tdevice")
    (home / "getprop.txt").write_text(GETPROP)
    p.battery(charging=True)
    p.write("/proc/meminfo", MEMINFO)
    p.write("/proc/sys/kernel/osrelease", "5.10.198-android13-4-00050-g12f3388846c3-ab11169838\n")
    p.write("/sys/devices/system/cpu/online", "0-7\n")
    p.write("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "sched_pixel\n")
    bat = "/sys/class/power_supply/battery"
    p.write(f"{bat}/current_now", f"{IDLE_UA}\n")
    p.write(f"{bat}/current_now.busy", f"{BUSY_UA}\n")
    p.write(f"{bat}/voltage_now", f"{UV}\n")
    p.program("benchmark_model", BENCH_TIMED)
    p.program("benchmark_model.ops", BENCH_OPS)
    p.program("llama-bench", LLAMA_BENCH)
    return p


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """The workstation side: a .tflite and a .gguf model (just their magic bytes), and the two binaries."""
    d = tmp_path / "host"
    d.mkdir()
    out = {"tflite": d / "digits.tflite", "gguf": d / "qwen2.5-0.5b-instruct-q4_k_m.gguf",
           "benchmark_model": d / "benchmark_model", "llama-bench": d / "llama-bench"}
    out["tflite"].write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(200))
    out["gguf"].write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(300))
    out["benchmark_model"].write_bytes(b"\x7fELF\x02\x01\x01" + b"benchmark_model" * 40)
    out["llama-bench"].write_bytes(b"\x7fELF\x02\x01\x01" + b"llama-bench" * 50)
    return out


def target(**kw) -> AdbTarget:
    t = AdbTarget.from_url(f"adb://{SERIAL}")
    t.idle_s = kw.get("idle_s", 0.4)
    return t


def validate(doc: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(doc)


# ---- parsers --------------------------------------------------------------------------------------------


def _fill(transcript: str) -> str:
    lines = [ln for ln in transcript.splitlines() if not ln.startswith("@@")]
    return "\n".join(lines).replace("{runs}", "50").replace("{warmup}", "5").replace("{graph}", "/data/local/tmp/m.tflite")


def test_parse_benchmark_model_summary():
    """Replays captured adb transcripts, no phone attached: benchmark_model's timed run, exact figures."""
    out = parse_benchmark_model(_fill(BENCH_TIMED))
    assert out.warmup.count == 412 and out.warmup.avg_us == 1262.48
    s = out.inference
    assert (s.count, s.first_us, s.curr_us, s.min_us, s.max_us, s.avg_us, s.std_us) == (50, 1288, 1241, 1198, 1502, 1251.36, 41)
    assert out.min_runs == 50
    assert (out.init_us, out.first_inference_us, out.warmup_avg_us, out.inference_avg_us) == (38467, 2204, 1262.48, 1251.36)
    assert (out.memory_init_delta_mb, out.memory_overall_delta_mb, out.peak_memory_mb) == (3.5, 12.25, 14.5)
    assert out.model_size_mb == 0.105068
    assert out.ops is None and out.errors == []


def test_parse_op_profile_regular_runs_only():
    """Replays captured adb transcripts, no phone attached: the per-op tables of the regular runs, not
    the initialization block (ModifyGraphWithDelegate/AllocateTensors)."""
    out = parse_benchmark_model(_fill(BENCH_OPS))
    assert out.inference.avg_us == 1281.9
    ops = out.ops.to_dict()
    assert ops["source"] == "benchmark_model" and ops["runs"] == 50
    assert [(o["op_type"], o["avg_ms"], o["percent"], o["cumulative_percent"], o["calls"]) for o in ops["by_type"]] == \
        [("CONV_2D", 1.029, 82.85, 82.85, 2), ("FULLY_CONNECTED", 0.117, 9.42, 92.271, 1),
         ("MAX_POOL_2D", 0.085, 6.844, 99.114, 2), ("SOFTMAX", 0.008, 0.644, 99.758, 1),
         ("RESHAPE", 0.003, 0.242, 100.0, 1)]
    assert ops["total_ms"] == pytest.approx(1.242)
    assert [(n["name"], n["op_type"], n["avg_ms"], n["percent"]) for n in ops["top_nodes"][:3]] == \
        [("[digits/conv2/Relu]:2", "CONV_2D", 0.631, 50.0), ("[digits/conv1/Relu]:0", "CONV_2D", 0.398, 31.537),
         ("[digits/fc/MatMul]:5", "FULLY_CONNECTED", 0.117, 9.271)]
    assert len(parse_op_profile(_fill(BENCH_OPS), top=2).top_nodes) == 2


def test_parse_older_benchmark_model_output():
    """Replays captured adb transcripts, no phone attached: the older layout (a ``[start]`` column,
    24-wide type column, ``Average inference timings`` line, no INFO prefix) and ``(all same)`` stats."""
    text = ("Operator-wise Profiling Info for Regular Benchmark Runs:\n"
            "============================== Top by Computation Time ==============================\n"
            "\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]\n"
            "\t                 CONV_2D\t           19.352\t    6.652\t    6.652\t  8.343%\t  8.343%\t     0.000\t        1\t[MobilenetV1/Conv2d_3_pointwise/Relu6]\n"
            "\n"
            "Number of nodes executed: 31\n"
            "============================== Summary by node type ==============================\n"
            "\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]\n"
            "\t                 CONV_2D\t       15\t    71.178\t    89.270%\t    89.270%\t     0.000\t       15\n"
            "\t       DEPTHWISE_CONV_2D\t       13\t     8.555\t    10.730%\t   100.000%\t     0.000\t       13\n"
            "\n"
            "Timings (microseconds): count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929\n"
            "\n"
            "Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9\n")
    out = parse_benchmark_model(text)
    assert (out.init_us, out.warmup_avg_us, out.inference_avg_us, out.first_inference_us) == (38467, 83235, 79760.9, None)
    assert [(o.op_type, o.avg_ms, o.calls) for o in out.ops.by_type] == [("CONV_2D", 71.178, 15), ("DEPTHWISE_CONV_2D", 8.555, 13)]
    assert out.ops.top_nodes[0].name == "[MobilenetV1/Conv2d_3_pointwise/Relu6]" and out.ops.top_nodes[0].percent == 8.343
    same = parse_run_stats("INFO: count=5 curr=4000(all same)")
    assert (same.count, same.min_us, same.max_us, same.avg_us, same.std_us) == (5, 4000, 4000, 4000, 0)
    assert parse_run_stats("count=0") is None and parse_run_stats("Timings (microseconds): count=1 curr=5") is None


def test_parse_llama_bench_json():
    """Replays captured adb transcripts, no phone attached: llama-bench -o json, exact fields."""
    stdout = "\n".join(ln for ln in LLAMA_BENCH.splitlines() if not ln.startswith("@@")).replace("{model}", "/m.gguf")
    tests = parse_llama_bench_json(stdout)
    pp, tg = split_pp_tg(tests)
    assert (pp.kind, pp.n_prompt, pp.n_gen, pp.avg_ns, pp.avg_ts, pp.stddev_ts) == ("pp", 128, 0, 854067424, 149.875317, 0.891032)
    assert (tg.kind, tg.n_gen, tg.n_threads, tg.avg_ns, tg.stddev_ns, tg.avg_ts) == ("tg", 64, 4, 2613763800, 12628349, 24.48622)
    assert tg.samples_ns == [2611804166, 2598530084, 2630117500, 2605992209, 2622375041]
    assert tg.samples_ts[0] == 24.5041
    assert (tg.model_filename, tg.model_type, tg.model_size_bytes, tg.build_commit, tg.build_number) == \
        ("/m.gguf", "qwen2 1B Q4_K - Medium", 491400032, "4a4e2c8b", 4879)
    with pytest.raises(ValueError, match="no llama-bench JSON"):
        parse_llama_bench_json("error: failed to load model\n")


def test_parse_battery_getprop_meminfo_devices():
    """Replays captured adb transcripts, no phone attached: dumpsys battery, getprop, meminfo, adb devices."""
    b = parse_dumpsys_battery(DUMPSYS_BATTERY.format(usb="true", status=2))
    assert (b.level_percent, b.voltage_v, b.temperature_c, b.charge_counter_uah, b.status, b.plugged) == \
        (87.0, 4.387, 30.0, 3991656, "charging", ("usb",))
    assert b.charging and not parse_dumpsys_battery(DUMPSYS_BATTERY.format(usb="false", status=3)).charging
    ident = android_identity(parse_getprop(GETPROP))
    assert (ident.model, ident.soc, ident.os, ident.abi, ident.sdk, ident.soc_model) == \
        ("Pixel 7", "gs201", "Android 14", "arm64-v8a", 34, "GS201")
    assert parse_meminfo(MEMINFO)["MemAvailable"] == 3123456 * 1024
    assert parse_cpu_list("0-3,6\n") == 5 and parse_cpu_list("") is None
    devs = parse_adb_devices("* daemon not running; starting now at tcp:5037\n* daemon started successfully\n"
                             "List of devices attached\nemulator-5554\tdevice\n192.168.1.20:5555\toffline\n"
                             "R58M123ABC\tno permissions (missing udev rules? user is in the plugdev group); see "
                             "[http://developer.android.com/tools/device.html]\n\n")
    assert [(d.serial, d.state) for d in devs][:2] == [("emulator-5554", "device"), ("192.168.1.20:5555", "offline")]
    assert devs[2].state.startswith("no permissions")


# ---- the target -----------------------------------------------------------------------------------------


def test_identity(phone):
    """Replays captured adb transcripts, no phone attached: identity from getprop, /proc and dumpsys."""
    ident = target().identity()
    assert (ident["model"], ident["soc"], ident["os"], ident["machine"]) == ("Pixel 7", "gs201", "Android 14", "arm64-v8a")
    assert ident["memory_total_bytes"] == 7868700 * 1024 and ident["memory_free_bytes"] == 3123456 * 1024
    assert ident["cpu_count"] == 8 and ident["cpu_governor"] == "sched_pixel"
    assert ident["temperatures_c"] == {"battery": 30.0} and ident["battery"]["status"] == "charging"
    assert ident["serial"] == SERIAL and ident["kernel"].startswith("5.10.198")


def test_tflite_profile(phone, files):
    """Replays captured adb transcripts, no phone attached: a full .tflite profile. Latency comes from the
    timed run (not the op-profiling pass), ops from the profiled pass, power from the replayed battery
    gauge: |I| x V is 1.155 W idle and 3.465 W while the measured section runs."""
    lines: list[str] = []
    doc = target().profile(files["tflite"], RemoteOptions(runs=50, warmup=5, threads=4, delegate="gpu",
                                                          device_binary=files["benchmark_model"]), lines.append)
    validate(doc)
    run = doc["runs"][0]
    lat = run["latency"]
    assert lat["avg_ns"] == pytest.approx(1251.36e3) and lat["n_samples"] == 50
    assert (lat["min_ns"], lat["max_ns"], lat["stddev_ns"]) == (1198000, 1502000, 41000)
    assert lat["median_ns"] is None and lat["samples_ns"] == []
    assert (run["load_ns"], run["first_ns"]) == (38467000, 2204000)
    assert run["memory"]["peak_rss_inference_bytes"] == int(14.5 * 2**20)
    assert run["params"]["threads"] == 4 and run["backend"] == "litert (benchmark_model)"
    assert run["ops"]["by_type"][0]["op_type"] == "CONV_2D" and run["ops"]["by_type"][0]["percent"] == 82.85
    assert run["ops"]["top_nodes"][0]["name"] == "[digits/conv2/Relu]:2"
    p = run["power"]
    assert p["available"] and p["source"] == "android-battery"
    assert p["idle_w"] == pytest.approx(IDLE_W) and p["avg_w"] == pytest.approx(BUSY_W)
    assert p["peak_w"] == pytest.approx(BUSY_W)
    assert 0.45 < p["measured_s"] < 1.2  # the measured section (0.6 s), not the whole binary run
    assert p["energy_j"] == pytest.approx(BUSY_W * p["measured_s"])
    assert p["energy_per_inference_j"] == pytest.approx(p["energy_j"] / 50)
    assert p["energy_above_idle_j"] == pytest.approx((BUSY_W - IDLE_W) * p["measured_s"])
    assert doc["device"]["model"] == "Pixel 7" and doc["device"]["backends"]["benchmark_model"].startswith("sha256:")
    assert any("charging" in w for w in doc["warnings"])
    timed, profiled = phone.runs("benchmark_model")
    assert "--num_threads=4" in timed and "--num_runs=50" in timed and "--warmup_runs=5" in timed
    assert "--use_gpu=true" in timed and "--use_gpu=true" in profiled  # --delegate gpu, in benchmark_model's words
    assert "--enable_op_profiling=true" not in timed and "--enable_op_profiling=true" in profiled
    assert any(a.startswith("--graph=/data/local/tmp/edgelift/digits-") for a in timed)
    assert any("count=50 first=1288" in ln for ln in lines) and "" not in lines
    from edgelift.profilers.html import render_profile_html
    from edgelift.profilers.report import ProfileReport

    assert "| default | 50 | n/a | 1.251 |" in ProfileReport(doc).to_markdown()
    assert "Pixel 7" in render_profile_html(doc)


def test_gguf_profile_with_pixel_odpm(phone, files):
    """Replays captured adb transcripts, no phone attached: llama-bench on a .gguf, power from the Pixel
    on-device power monitor (two rails, 1.25 W + 0.5 W), preferred over the battery gauge."""
    phone.odpm({"iio:device0": {"S2M_VDD_CPUCL2": 1250}, "iio:device1": {"VSYS_PWR_DISPLAY": 500}})
    phone.battery(charging=False)
    doc = target().profile(files["gguf"], RemoteOptions(n_prompt=128, n_gen=64, device_binary=files["llama-bench"]))
    validate(doc)
    run = doc["runs"][0]
    llm = run["llm"]
    assert (llm["n_prompt"], llm["n_gen"], llm["repetitions"]) == (128, 64, 5)
    assert (llm["pp_avg_ts"], llm["pp_stddev_ts"], llm["tg_avg_ts"], llm["tg_stddev_ts"]) == (149.875317, 0.891032, 24.48622, 0.118236)
    assert llm["tpot_ms"] == pytest.approx(2613763800 / 64 / 1e6)
    assert llm["ttft_ms"] == pytest.approx(854067424 / 1e6)  # the prompt's logits give the first token
    assert run["latency_unit"] == "token" and run["latency"]["avg_ns"] == pytest.approx(2613763800 / 64)
    assert run["latency"]["min_ns"] == round(2598530084 / 64) and run["params"]["threads"] == 4
    assert 0.2e9 < run["load_ns"] < 1.0e9 and run["first_ns"] is None  # "starting" -> "warmup prompt run": 0.25 s
    p = run["power"]
    assert p["source"] == "android-odpm" and p["avg_w"] == pytest.approx(1.75) and p["idle_w"] == pytest.approx(1.75)
    assert p["energy_per_token_j"] == pytest.approx(p["energy_j"] / (5 * 64))
    assert doc["device"]["backends"] == {"llama-bench": "4a4e2c8b (4879)"}
    assert not any("charging" in w for w in doc["warnings"])
    (args,) = phone.runs("llama-bench")
    assert args[:8] == ["-m", args[1], "-p", "128", "-n", "64", "-o", "json"] and "--progress" in args
    assert args[1].startswith("/data/local/tmp/edgelift/qwen2.5-0.5b-instruct-q4_k_m-") and args[1].endswith(".gguf")
    from edgelift.profilers.html import render_profile_html
    from edgelift.profilers.report import ProfileReport

    assert "149.9 ± 0.9" in ProfileReport(doc).to_markdown() and render_profile_html(doc)


def test_thread_list_runs_one_setting_after_another_and_streams_each(phone, files):
    """-t 1,2 on a phone, as over SSH: benchmark_model runs once per thread count (timed run, then its
    op pass), each run labelled like a local sweep, and "measured threads=1" is announced before the
    second setting starts."""
    phone.program("benchmark_model", "\n".join(ln for ln in BENCH_TIMED.splitlines() if not ln.startswith("@@sleep")))
    lines: list[str] = []
    doc = target(idle_s=0.1).profile(files["tflite"], RemoteOptions(
        runs=50, warmup=5, lists={"threads": [1, 2]}, device_binary=files["benchmark_model"]), lines.append)
    validate(doc)
    assert [r["label"] for r in doc["runs"]] == ["threads=1", "threads=2"] and doc["partial"] is False
    assert [r["params"]["threads"] for r in doc["runs"]] == [1, 2]
    timed = [a for a in phone.runs("benchmark_model") if "--enable_op_profiling=true" not in a]
    assert [next(x for x in a if x.startswith("--num_threads=")) for a in timed] == ["--num_threads=1", "--num_threads=2"]
    measured = lines.index("measured threads=1")
    second_start = [i for i, ln in enumerate(lines) if ln.startswith("INFO: STARTING!")][2]  # timed, ops, timed
    assert measured < second_start and lines[-1] == "measured threads=2"
    assert doc["options"]["sweep"] == {"threads": [1, 2]}


def test_prompt_lists_are_refused_for_tflite_on_a_phone(phone, files):
    with pytest.raises(InvalidOptionError, match=r"language models \(GGUF, ONNX decoders\) only"):
        target().profile(files["tflite"], RemoteOptions(lists={"n_prompt": [128, 512]},
                                                        device_binary=files["benchmark_model"]))


def test_lost_adb_connection_keeps_the_settings_done(phone, files):
    """The cable is pulled when the third benchmark_model starts (threads=2's timed run, after threads=1's
    timed run and op pass): the report holds threads=1, marked partial with adb's error; a phone lost
    before any setting finished is an error, not an empty report."""
    phone.program("benchmark_model", "\n".join(ln for ln in BENCH_TIMED.splitlines() if not ln.startswith("@@sleep")))
    (phone.home / "unplug_at").write_text("3")
    opts = RemoteOptions(runs=50, warmup=5, lists={"threads": [1, 2]}, device_binary=files["benchmark_model"])
    doc = target(idle_s=0.1).profile(files["tflite"], opts)
    validate(doc)
    assert doc["partial"] is True and [r["label"] for r in doc["runs"]] == ["threads=1"]
    assert doc["warnings"][0].startswith("partial results: the run on adb://") and "error: closed" in doc["warnings"][0]
    phone.devices(f"{SERIAL}\tdevice")
    (phone.home / "bench_calls").unlink()
    (phone.home / "unplug_at").write_text("1")
    with pytest.raises(DeviceUnreachableError, match="error: closed"):
        target(idle_s=0.1).profile(files["tflite"], opts)


def test_ctrl_c_on_a_phone_keeps_the_settings_done(phone, files):
    """Ctrl-C (KeyboardInterrupt raised while the second setting's output streams in) stops the adb
    client and returns the first setting, marked partial; Ctrl-C during the first setting raises."""
    phone.program("benchmark_model", "\n".join(ln for ln in BENCH_TIMED.splitlines() if not ln.startswith("@@sleep")))
    opts = RemoteOptions(runs=50, warmup=5, lists={"threads": [1, 2]}, device_binary=files["benchmark_model"])
    seen = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line.startswith("INFO: STARTING!") and sum(ln.startswith("INFO: STARTING!") for ln in seen) == 3:
            raise KeyboardInterrupt

    doc = target(idle_s=0.1).profile(files["tflite"], opts, on_line)
    validate(doc)
    assert doc["partial"] is True and [r["label"] for r in doc["runs"]] == ["threads=1"]
    assert "Ctrl-C" in doc["warnings"][0]

    def interrupt_at_once(line: str) -> None:
        if line.startswith("INFO: STARTING!"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        target(idle_s=0.1).profile(files["tflite"], opts, interrupt_at_once)


def test_gguf_profile_reads_llama_bench_markdown_when_json_is_not_printed(phone, files):
    """A llama-bench that prints its Markdown table despite ``-o json`` (a wrapper, a vendor build): the
    REAL arm64 capture (tests/data/captures/llama-bench-cpu-arm64-cix.md) is replayed as its stdout, and
    the report takes pp512 and tg128 from it (194.05 ± 0.65 and 40.39 ± 0.15 t/s, 12 threads)."""
    table = (Path(__file__).parent / "data" / "captures" / "llama-bench-cpu-arm64-cix.md").read_text()
    phone.program("llama-bench", table)
    phone.battery(charging=False)
    doc = target(idle_s=0.1).profile(files["gguf"], RemoteOptions(n_prompt=512, n_gen=128,
                                                                 device_binary=files["llama-bench"]))
    validate(doc)
    llm = doc["runs"][0]["llm"]
    assert (llm["n_prompt"], llm["n_gen"]) == (512, 128) and llm["repetitions"] is None
    assert (llm["pp_avg_ts"], llm["pp_stddev_ts"], llm["tg_avg_ts"], llm["tg_stddev_ts"]) == (194.05, 0.65, 40.39, 0.15)
    assert llm["ttft_ms"] == pytest.approx(512 / 194.05 * 1e3) and llm["tpot_ms"] == pytest.approx(1e3 / 40.39)
    assert doc["runs"][0]["params"]["threads"] == 12
    from edgelift.profilers.report import ProfileReport

    assert "repetitions not reported" in ProfileReport(doc).to_markdown()


def test_push_caching(phone, files):
    """Replays captured adb transcripts, no phone attached: the binary and the model are pushed once; a
    second run pushes nothing; a rebuilt binary (same name) is pushed again."""
    phone.program("benchmark_model", "\n".join(ln for ln in BENCH_TIMED.splitlines() if not ln.startswith("@@sleep")))
    opts = RemoteOptions(runs=50, warmup=5, device_binary=files["benchmark_model"])
    first = target(idle_s=0.1).profile(files["tflite"], opts)
    assert sorted(phone.pushes()) == ["benchmark_model", "digits.tflite"]
    assert first["remote"]["pushed_binary"] and first["remote"]["pushed_model"]
    second = target(idle_s=0.1).profile(files["tflite"], opts)
    assert sorted(phone.pushes()) == ["benchmark_model", "digits.tflite"]
    assert not second["remote"]["pushed_binary"] and not second["remote"]["pushed_model"]
    files["benchmark_model"].write_bytes(files["benchmark_model"].read_bytes().replace(b"benchmark", b"BENCHMARK"))
    target(idle_s=0.1).profile(files["tflite"], opts)
    assert sorted(phone.pushes()) == ["benchmark_model", "benchmark_model", "digits.tflite"]


def test_no_device_several_devices_unauthorized(phone):
    """Replays captured adb transcripts, no phone attached: adb:// needs exactly one ready phone."""
    phone.devices()
    with pytest.raises(DeviceUnreachableError, match="no phone attached"):
        AdbTarget.from_url("adb://").identity()
    with pytest.raises(DeviceUnreachableError, match=f"no phone {SERIAL} attached"):
        AdbTarget.from_url(f"adb://{SERIAL}").identity()
    phone.devices(f"{SERIAL}\tdevice", "emulator-5554\tdevice")
    with pytest.raises(InvalidOptionError, match="2 phones attached.*adb://SERIAL"):
        AdbTarget.from_url("adb://").identity()
    assert AdbTarget.from_url("adb://emulator-5554").serial == "emulator-5554"
    phone.devices(f"{SERIAL}\tunauthorized")
    with pytest.raises(DeviceUnreachableError, match="accept the USB debugging prompt"):
        AdbTarget.from_url("adb://").identity()
    with pytest.raises(InvalidOptionError, match="adb://SERIAL"):
        AdbTarget.from_url("adb://two words")


def test_adb_missing(tmp_path, monkeypatch):
    """Replays captured adb transcripts, no phone attached: without adb on PATH the message says to
    install platform-tools."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DeviceUnreachableError, match="platform-tools"):
        AdbTarget.from_url("adb://").identity()


def test_binary_errors(phone, files):
    """Replays captured adb transcripts, no phone attached: a missing --device-binary, a binary for the
    other format, a model format phones cannot run, and a benchmark that fails on the phone."""
    t = target(idle_s=0.1)
    with pytest.raises(InvalidOptionError, match="--device-binary"):
        t.profile(files["tflite"], RemoteOptions())
    with pytest.raises(InvalidOptionError, match="does not run tflite"):
        t.profile(files["tflite"], RemoteOptions(device_binary=files["llama-bench"]))
    onnx = files["tflite"].with_suffix(".onnx")
    onnx.write_bytes(b"\x08\x07\x12\x04test")
    with pytest.raises(InvalidOptionError, match="onnx model"):
        t.profile(onnx, RemoteOptions(device_binary=files["benchmark_model"]))
    phone.program("benchmark_model", "INFO: STARTING!\nERROR: Could not open '{graph}'.\n"
                                     "ERROR: Benchmarking failed.\n@@exit 1\n")
    with pytest.raises(RemoteRunError, match="benchmark_model failed .exit 1.: ERROR: Could not open"):
        t.profile(files["tflite"], RemoteOptions(device_binary=files["benchmark_model"]))


def test_windows_from_progress_lines():
    """Replays captured adb transcripts, no phone attached: the measured window and llama-bench's load
    time are cut from the arrival times of the tools' own progress lines."""
    lines = [(float(i), ln) for i, ln in enumerate(_fill(BENCH_TIMED).splitlines())]
    start, end = tflite_window(lines)
    assert "at least 50 iterations" in lines[int(start)][1] and lines[int(end)][1].startswith("INFO: count=50")
    assert tflite_window(lines[:5]) is None
    assert llama_load_ns([(1.0, "llama-bench: benchmark 1/2: starting"),
                          (1.5, "llama-bench: benchmark 1/2: warmup prompt run")]) == 500_000_000
    assert llama_load_ns([(1.0, "x")]) is None


def test_cli_profile_on_a_phone(phone, files, tmp_path):
    """Replays captured adb transcripts, no phone attached: `edge profile --device adb://SERIAL` end to end
    through the CLI — the table prints "n/a" for the percentiles benchmark_model does not report, and the
    JSON written is the phone's report (idle baseline from --idle)."""
    from typer.testing import CliRunner

    from edgelift.cli import app

    out = tmp_path / "phone.json"
    res = CliRunner().invoke(app, ["profile", str(files["tflite"]), "--device", f"adb://{SERIAL}", "--device-binary",
                                   str(files["benchmark_model"]), "--runs", "50", "--warmup", "5", "--idle", "0.3",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    validate(doc)
    assert doc["device"]["model"] == "Pixel 7" and doc["options"]["idle_s"] == 0.3
    assert "1.251" in res.output and "n/a" in res.output
    res = CliRunner().invoke(app, ["profile", str(files["tflite"]), "--device", "adb://NOPE", "--device-binary",
                                   str(files["benchmark_model"])])
    assert res.exit_code == 2 and "NOPE" in res.output
