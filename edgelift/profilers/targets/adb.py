"""``adb://SERIAL`` (or ``adb://``, the only attached phone): profile on an Android phone over adb.

Phones do not run our Python runtime: the user passes a native benchmark built for Android
(``RemoteOptions.device_binary``): LiteRT's ``benchmark_model`` for ``.tflite`` models, llama.cpp's
``llama-bench`` for ``.gguf``. The binary is pushed to ``/data/local/tmp`` once, the model once per
content (hashed name under ``/data/local/tmp/edgelift/``), and the run's output is streamed back and
parsed (``android_output``) into the same report document a local ``edge profile`` writes.

Power is sampled from the workstation while the binary runs, by reading the phone's sysfs through
``adb shell cat`` (:class:`AdbDeviceEnv`), so the on-device sources (Pixel ODPM, battery fuel gauge)
work unchanged. The measured window is cut from the binary's own progress lines as they arrive
(benchmark_model's measured "Running benchmark" section; llama-bench's first timed run), so model
loading and warm-up do not count as inference energy.

Every adb call goes through :meth:`AdbTarget._adb`: one place finds the ``adb`` program, applies the
timeout and turns adb's own failures (no device, unauthorized, offline) into
:class:`DeviceUnreachableError`; failures of the benchmark itself are :class:`RemoteRunError`.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ...core.formats import ModelFormat, detect_format
from ...errors import EdgeError, InvalidOptionError
from ..power.android import AndroidBatteryPowerSource, PixelOdpmPowerSource
from ..power.base import DeviceEnv, PowerSource
from ..power.sampler import PowerSampler
from ..stats import UNRELIABLE_CV
from .android_output import (
    BatteryState,
    LlamaBenchTest,
    android_identity,
    parse_adb_devices,
    parse_benchmark_model,
    parse_cpu_list,
    parse_dumpsys_battery,
    parse_getprop,
    parse_llama_bench,
    parse_meminfo,
    parse_op_profile,
    parse_run_stats,
    split_pp_tg,
)
from .base import (DeviceTarget, DeviceUnreachableError, OnLine, RemoteOptions, RemoteRunError, file_sha256,
                   register_target, terminate)

_URL = re.compile(r"^adb://(?P<serial>[A-Za-z0-9._:\-]*)/?$")
# adb's own errors (as opposed to the remote command's): the phone is gone, locked out or ambiguous
_ADB_ERROR = re.compile(r"^(?:adb: )?error: (?:.*device .*not found|device offline|device unauthorized|device still "
                        r"authorizing|no devices/emulators found|more than one device|closed|protocol fault|"
                        r"cannot connect).*$", re.M | re.I)
_LLAMA_RUN_1 = re.compile(r"benchmark \d+/\d+: (?:prompt|generation) run 1/")
_LLAMA_START_1 = re.compile(r"benchmark 1/\d+: starting")
_LLAMA_LOADED_1 = re.compile(r"benchmark 1/\d+: (?:warmup|prompt run|generation run|depth run)")
_RUNNING = "Running benchmark for at least"
# The phone's power sources, most accurate first (the others in the registry are host-only or Jetson/Pi).
ANDROID_POWER_SOURCES: tuple[type[PowerSource], ...] = (PixelOdpmPowerSource, AndroidBatteryPowerSource)
NO_POWER_REASON = ("no power source readable over adb: neither a Pixel on-device power monitor "
                   "(/sys/bus/iio/devices/iio:device*/energy_value) nor the battery fuel gauge "
                   "(/sys/class/power_supply/{battery,bms,maxfg}/current_now, voltage_now); some phones need root")


@dataclass(frozen=True)
class _Tool:
    """The native benchmark for one model format, and how a user gets one."""

    name: str
    backend: str
    build_hint: str


TOOLS: dict[ModelFormat, _Tool] = {
    ModelFormat.TFLITE: _Tool("benchmark_model", "litert (benchmark_model)",
                              "bazel build -c opt --config=android_arm64 //tensorflow/lite/tools/benchmark:benchmark_model"),
    ModelFormat.GGUF: _Tool("llama-bench", "llama.cpp (llama-bench)",
                            "llama.cpp's llama-bench built with the Android NDK (docs/android.md)"),
}


@dataclass
class AdbResult:
    """One adb invocation: exit code, stdout, stderr, and for streamed runs every line in the order it
    arrived with its ``time.monotonic`` arrival time (the power window is cut from these)."""

    returncode: int
    stdout: str
    stderr: str
    lines: list[tuple[float, str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        """Both streams as they interleaved (streamed runs), else stdout then stderr."""
        if self.lines:
            return "\n".join(line for _, line in self.lines)
        return self.stdout + "\n" + self.stderr

    def why(self) -> str:
        """The line that best says what went wrong: the first ``ERROR:`` line, else the last line."""
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        return next((ln for ln in lines if ln.startswith("ERROR") or "error:" in ln.lower()),
                    lines[-1] if lines else f"exit code {self.returncode}")


class AdbDeviceEnv(DeviceEnv):
    """A :class:`DeviceEnv` whose files are the phone's: reads go through ``adb shell cat``, globs
    through ``adb shell ls -d``, commands through ``adb shell``. The clock stays the workstation's
    monotonic clock, the one the sampler marks phases with. Never raises from a read (sources rely on it)."""

    def __init__(self, target: "AdbTarget") -> None:
        self.target = target
        super().__init__(root=Path("/"), run=self._run_remote, which=lambda name: None, clock=time.monotonic)

    @property
    def is_host(self) -> bool:
        return False  # the root is "/", but the phone's: no falling back to this machine's platform figures

    def _shell(self, args: list[str]) -> AdbResult | None:
        try:
            return self.target._adb(["shell", *args], self.target.SHELL_TIMEOUT_S)
        except EdgeError:
            return None

    def _run_remote(self, cmd: list[str]) -> str:
        res = self.target._adb(["shell", *cmd], self.target.SHELL_TIMEOUT_S)
        if res.returncode != 0:
            raise RemoteRunError(f"{' '.join(cmd)}: {res.why()}")
        return res.stdout

    def read_text(self, p: str | Path) -> str | None:
        res = self._shell(["cat", str(p)])
        if res is None or res.returncode != 0:
            return None
        text = res.stdout.strip()
        # adb before shell protocol v2 (Android < 7) exits 0 and prints cat's error on stdout
        return None if text.startswith("cat:") else text

    def glob(self, pattern: str, base: Path | None = None) -> list[Path]:
        full = str(base / pattern) if base is not None else pattern
        res = self._shell(["ls", "-d", full])  # unquoted: the phone's shell expands the pattern
        if res is None or res.returncode != 0:
            return []
        return sorted(Path(ln.strip()) for ln in res.stdout.splitlines() if ln.strip().startswith("/"))


def detect_adb_power(env: AdbDeviceEnv) -> PowerSource | None:
    """The first Android power source readable over adb (Pixel ODPM, then the battery gauge), or None."""
    for cls in ANDROID_POWER_SOURCES:
        try:
            source = cls.detect(env)
        except Exception:  # noqa: BLE001 - detection never breaks a profile
            source = None
        if source is not None:
            return source
    return None


def _safe(name: str) -> str:
    """A remote file name that needs no quoting in the phone's shell."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "file"


def _visible(on_line: OnLine | None) -> Callable[[str], None]:
    """The user's progress callback without blank lines (the parsers need those, a console does not)."""
    if on_line is None:
        return lambda s: None
    return lambda s: on_line(s) if s.strip() else None


def _kill(proc: subprocess.Popen) -> None:
    """Stop our adb client; adbd then hangs up the remote process (it loses its session)."""
    terminate(proc)


# ---- the report ---------------------------------------------------------------------------------------


def summary_latency(n: int, avg_ns: float, std_ns: float, min_ns: float, max_ns: float) -> dict:
    """A latency entry (the local report's layout) from summary statistics alone: the phone tools print
    mean, spread and extremes but not every run, so the percentiles are null and there are no samples."""
    cv = std_ns / avg_ns if avg_ns > 0 else 0.0
    rate = 1e9 / avg_ns if avg_ns > 0 else 0.0
    return {"n_samples": int(n), "avg_ns": float(avg_ns), "stddev_ns": float(std_ns), "min_ns": int(round(min_ns)),
            "median_ns": None, "p90_ns": None, "p95_ns": None, "p99_ns": None, "max_ns": int(round(max_ns)),
            "cv": cv, "unreliable": bool(cv > UNRELIABLE_CV and n > 1), "throughput_per_s": rate, "avg_ts": rate,
            "samples_ns": [], "t_offsets_s": []}


def tflite_window(lines: list[tuple[float, str]]) -> tuple[float, float] | None:
    """(start, end) arrival times of benchmark_model's measured runs: from its second "Running benchmark"
    line (the first is the warm-up) to the ``count=`` line that closes that section."""
    seen, start = 0, None
    for t, line in lines:
        if _RUNNING in line:
            seen += 1
            if seen == 2:
                start = t
        elif start is not None and parse_run_stats(line) is not None:
            return start, t
    return None


def llama_window(lines: list[tuple[float, str]], end: float) -> tuple[float, float] | None:
    """(start, end) of llama-bench's timed runs: from its first "prompt/generation run 1/N" progress line
    (after model load and warm-up) to the end of the process."""
    return next(((t, end) for t, line in lines if _LLAMA_RUN_1.search(line)), None)


def llama_load_ns(lines: list[tuple[float, str]]) -> int | None:
    """Model load and context set-up, from the arrival of "benchmark 1/N: starting" to the next progress
    line of that benchmark (llama-bench does not time it; adb adds a few ms of jitter)."""
    start = next((t for t, line in lines if _LLAMA_START_1.search(line)), None)
    if start is None:
        return None
    loaded = next((t for t, line in lines if t >= start and _LLAMA_LOADED_1.search(line)), None)
    return None if loaded is None else int((loaded - start) * 1e9)


def _tflite_run(out, ops, ops_reason: str | None, threads: int | None) -> dict:
    s = out.inference
    mib = 2 ** 20  # benchmark_model's "MB" are KiB / 1024
    to_ns = lambda us: None if us is None else int(round(us * 1e3))  # noqa: E731
    return {
        "label": "default", "params": {"threads": threads, "batch": None},
        "backend": TOOLS[ModelFormat.TFLITE].backend, "load_ns": to_ns(out.init_us),
        "first_ns": to_ns(out.first_inference_us),
        "latency": summary_latency(s.count, s.avg_us * 1e3, s.std_us * 1e3, s.min_us * 1e3, s.max_us * 1e3),
        "latency_unit": "inference",
        "latency_source": "benchmark_model summary (count, mean, population std, min, max): no per-run samples",
        "end_to_end": None,
        "memory": {"rss_before_load_bytes": None, "peak_rss_load_bytes": None,
                   "peak_rss_inference_bytes": None if out.peak_memory_mb is None else int(out.peak_memory_mb * mib),
                   "footprint_delta_init_bytes": None if out.memory_init_delta_mb is None
                   else int(out.memory_init_delta_mb * mib),
                   "footprint_delta_overall_bytes": None if out.memory_overall_delta_mb is None
                   else int(out.memory_overall_delta_mb * mib)},
        "ops": None if ops is None else ops.to_dict(), "ops_unavailable": ops_reason, "llm": None}


def _gguf_run(pp: LlamaBenchTest, tg: LlamaBenchTest, load_ns: int | None) -> dict:
    """Per-token latency from the generation test (each repetition's time / n_gen), the llm entry as the
    local profiler writes it: TTFT = prompt processing (its logits give the first token), TPOT = mean tg time / n_gen."""
    per_tok = [s / tg.n_gen for s in tg.samples_ns] or [tg.avg_ns / tg.n_gen]
    tpot_ns = tg.avg_ns / tg.n_gen
    llm = {"n_prompt": pp.n_prompt, "n_gen": tg.n_gen, "repetitions": len(tg.samples_ns) or None,  # None: a table
           "ttft_ms": pp.avg_ns / 1e6, "pp_avg_ts": pp.avg_ts, "pp_stddev_ts": pp.stddev_ts,
           "tg_avg_ts": tg.avg_ts, "tg_stddev_ts": tg.stddev_ts, "tpot_ms": tpot_ns / 1e6,
           "pp_samples_ns": list(pp.samples_ns), "tg_samples_ns": list(tg.samples_ns)}
    return {
        "label": "default", "params": {"threads": tg.n_threads, "batch": None},
        "backend": TOOLS[ModelFormat.GGUF].backend, "load_ns": load_ns, "first_ns": None,
        "latency": summary_latency(len(per_tok), tpot_ns, tg.stddev_ns / tg.n_gen, min(per_tok), max(per_tok)),
        "latency_unit": "token",
        "latency_source": "llama-bench tg test: each repetition's time / n_gen (per-token means, no per-token samples)",
        "end_to_end": None,
        "memory": {"rss_before_load_bytes": None, "peak_rss_load_bytes": None, "peak_rss_inference_bytes": None},
        "ops": None, "ops_unavailable": "llama-bench reports no per-op time", "llm": llm}


# ---- the target ---------------------------------------------------------------------------------------


# edge's --delegate -> benchmark_model's flags (LiteRT's own names for the same choice)
BENCHMARK_MODEL_DELEGATES = {
    "xnnpack": ["--use_xnnpack=true"], "none": ["--use_xnnpack=false"], "gpu": ["--use_gpu=true"],
    "nnapi": ["--use_nnapi=true"], "hexagon": ["--use_hexagon=true"],
}


def benchmark_model_delegate_flags(delegate: str | None) -> list[str]:
    """The benchmark_model flags for ``--delegate`` on a phone (none given: its defaults)."""
    if delegate is None:
        return []
    if delegate not in BENCHMARK_MODEL_DELEGATES:
        raise InvalidOptionError(f"--delegate {delegate} on a phone: benchmark_model takes "
                                 f"{', '.join(BENCHMARK_MODEL_DELEGATES)}")
    return list(BENCHMARK_MODEL_DELEGATES[delegate])


@register_target("adb")
class AdbTarget(DeviceTarget):
    """An Android phone reached through the ``adb`` found on PATH."""

    REMOTE_DIR = "/data/local/tmp"
    MODEL_DIR = "/data/local/tmp/edgelift"
    SHELL_TIMEOUT_S = 20.0
    PUSH_TIMEOUT_S = 1800.0  # a multi-GB GGUF over USB 2
    RUN_TIMEOUT_S = 3600.0
    OP_PASS_RUNS = 50  # runs of the separate op-profiling pass (profiling would distort the timed runs)
    TFLITE_FLAGS = ("--report_peak_memory_footprint=true",)  # the only absolute memory figure it prints

    def __init__(self, url: str, serial: str | None = None, idle_s: float = 2.0) -> None:
        super().__init__(url)
        self.requested_serial = serial or None
        self.idle_s = idle_s  # the idle power baseline before the binary starts
        self._serial: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "AdbTarget":
        m = _URL.match(url)
        if not m:
            raise InvalidOptionError(f"device {url!r}: write adb://SERIAL (see adb devices) or adb:// for the only phone")
        return cls(url, m.group("serial"))

    # -- adb --------------------------------------------------------------------------------------------

    def _adb(self, args: list[str], timeout: float, *, on_line: Callable[[str], None] | None = None,
             device: bool = True) -> AdbResult:
        """Run ``adb [-s SERIAL] ARGS``; with ``on_line`` stream every output line to it as it arrives.
        adb's own failures raise DeviceUnreachableError; the remote command's exit code is returned."""
        exe = shutil.which("adb")
        if exe is None:
            raise DeviceUnreachableError("adb is not installed or not on PATH: install Android platform-tools "
                                         "(https://developer.android.com/tools/releases/platform-tools, or apt install adb)")
        cmd = [exe, *(["-s", self.serial] if device else []), *args]
        if on_line is not None:
            res = self._stream(cmd, timeout, on_line)
        else:
            try:
                done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                                      timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DeviceUnreachableError(f"{self.url}: adb did not answer within {timeout:.0f} s "
                                             "(is the phone still connected and unlocked?)") from None
            res = AdbResult(done.returncode, done.stdout, done.stderr)
        if res.returncode != 0 and (m := _ADB_ERROR.search(res.stderr)):
            raise DeviceUnreachableError(f"{self.url}: {m.group(0).strip()}")
        return res

    def _stream(self, cmd: list[str], timeout: float, on_line: Callable[[str], None]) -> AdbResult:
        """Both output streams, line by line in arrival order, each passed to ``on_line`` (blank lines
        too: the op tables end at one). Ctrl-C or the timeout stop the adb client."""
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", bufsize=1)
        lines: queue.Queue = queue.Queue()

        def pump(pipe, name: str) -> None:
            for line in pipe:
                lines.put((name, line))
            lines.put((name, None))

        for pipe, name in ((proc.stdout, "out"), (proc.stderr, "err")):
            threading.Thread(target=pump, args=(pipe, name), daemon=True).start()
        out: dict[str, list[str]] = {"out": [], "err": []}
        arrived: list[tuple[float, str]] = []
        deadline, open_streams = time.monotonic() + timeout, 2
        try:
            while open_streams:
                try:
                    name, line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    what = Path(cmd[cmd.index("shell") + 1]).name if "shell" in cmd[:-1] else "adb"
                    raise RemoteRunError(f"{self.url}: {what} did not finish within {timeout:.0f} s") from None
                if line is None:
                    open_streams -= 1
                    continue
                out[name].append(line)
                text = line.rstrip("\r\n")
                arrived.append((time.monotonic(), text))
                on_line(text)
            code = proc.wait(max(1.0, deadline - time.monotonic()))
        except BaseException:
            _kill(proc)
            raise
        return AdbResult(code, "".join(out["out"]), "".join(out["err"]), arrived)

    @property
    def serial(self) -> str:
        """The phone's serial: the one named in the URL (checked to be attached and ready) or, for
        ``adb://``, the only phone ``adb devices`` lists. Resolved on first use, then kept."""
        if self._serial is None:
            self._serial = self._resolve_serial()
        return self._serial

    def _resolve_serial(self) -> str:
        devices = parse_adb_devices(self._adb(["devices"], self.SHELL_TIMEOUT_S, device=False).stdout)
        listed = ", ".join(f"{d.serial} ({d.state})" for d in devices) or "none"
        if self.requested_serial:
            match = next((d for d in devices if d.serial == self.requested_serial), None)
            if match is None:
                hint = f"; for a phone over Wi-Fi run adb connect {self.requested_serial} first" \
                    if ":" in self.requested_serial else ""
                raise DeviceUnreachableError(f"no phone {self.requested_serial} attached (adb devices lists: {listed}){hint}")
        elif not devices:
            raise DeviceUnreachableError("no phone attached: connect one with USB debugging on (adb devices lists none)")
        elif len(devices) > 1:
            raise InvalidOptionError(f"{len(devices)} phones attached ({listed}): name one with adb://SERIAL")
        else:
            match = devices[0]
        self._check_state(match.serial, match.state)
        return match.serial

    @staticmethod
    def _check_state(serial: str, state: str) -> None:
        if state == "device":
            return
        if state == "unauthorized":
            raise DeviceUnreachableError(f"phone {serial} has not authorized this computer: unlock it and accept "
                                         "the USB debugging prompt")
        if state == "offline":
            raise DeviceUnreachableError(f"phone {serial} is offline: reconnect the cable or run adb reconnect")
        if state.startswith("no permissions"):
            raise DeviceUnreachableError(f"phone {serial}: {state}")
        raise DeviceUnreachableError(f"phone {serial} is in {state} mode, not booted into Android")

    def _shell_text(self, args: list[str]) -> str:
        res = self._adb(["shell", *args], self.SHELL_TIMEOUT_S)
        return res.stdout if res.returncode == 0 else ""

    # -- identity -------------------------------------------------------------------------------------

    def identity(self) -> dict:
        """The report's device fields from getprop, /proc and ``dumpsys battery`` (battery temperature
        and charging state matter to every figure measured on a phone)."""
        props = parse_getprop(self._shell_text(["getprop"]))
        if not props:
            raise RemoteRunError(f"{self.url}: getprop printed no properties; is this an Android device?")
        ident = android_identity(props)
        env = AdbDeviceEnv(self)
        mem = parse_meminfo(env.read_text("/proc/meminfo") or "")
        battery = parse_dumpsys_battery(self._shell_text(["dumpsys", "battery"]))
        return {"hostname": ident.hostname, "model": ident.model, "soc": ident.soc, "os": ident.os,
                "kernel": env.read_text("/proc/sys/kernel/osrelease"), "machine": ident.abi, "python": None,
                "cpu_count": parse_cpu_list(env.read_text("/sys/devices/system/cpu/online") or ""),
                "memory_total_bytes": mem.get("MemTotal"), "memory_free_bytes": mem.get("MemAvailable"),
                "cpu_governor": env.read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
                "temperatures_c": {"battery": battery.temperature_c} if battery.temperature_c is not None else None,
                "throttling": None, "edgelift": None, "serial": self.serial, "manufacturer": ident.manufacturer,
                "soc_model": ident.soc_model, "android_sdk": ident.sdk, "battery": battery.to_dict()}

    # -- pushing ---------------------------------------------------------------------------------------

    def _remote_size(self, remote: str) -> int | None:
        text = self._shell_text(["stat", "-c", "%s", remote]).strip()
        return int(text) if text.isdigit() else None

    def _remote_sha_matches(self, remote: str, sha: str) -> bool:
        """Same content on the phone? Without a ``sha256sum`` there (old toybox) the size match stands."""
        parts = self._shell_text(["sha256sum", remote]).split()
        if not parts or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            return True
        return parts[0] == sha

    def _push(self, local: Path, remote: str) -> None:
        res = self._adb(["push", str(local), remote], self.PUSH_TIMEOUT_S)
        if res.returncode != 0:
            raise RemoteRunError(f"{self.url}: adb push {local.name} failed: {res.why()}")

    def ensure_binary(self, binary: Path) -> tuple[str, bool]:
        """(remote path, pushed?): the benchmark binary in /data/local/tmp, pushed only when missing or different."""
        remote = f"{self.REMOTE_DIR}/{_safe(binary.name)}"
        if self._remote_size(remote) == binary.stat().st_size and self._remote_sha_matches(remote, file_sha256(binary)):
            return remote, False
        self._push(binary, remote)
        self._shell_text(["chmod", "755", remote])
        return remote, True

    def ensure_model(self, model: Path) -> tuple[str, bool]:
        """(remote path, pushed?): the model under a content-hashed name, so a changed file is pushed anew
        and an unchanged one never twice (a file of the wrong size, an interrupted push, is replaced)."""
        remote = f"{self.MODEL_DIR}/{_safe(model.stem)}-{file_sha256(model)[:16]}{_safe(model.suffix)}"
        if self._remote_size(remote) == model.stat().st_size:
            return remote, False
        self._shell_text(["mkdir", "-p", self.MODEL_DIR])
        self._push(model, remote)
        return remote, True

    # -- measuring -------------------------------------------------------------------------------------

    @staticmethod
    def _check_binary(binary: Path | None, fmt: ModelFormat) -> Path:
        tool = TOOLS[fmt]
        if binary is None:
            raise InvalidOptionError(f"profiling a {fmt.value} model on a phone needs {tool.name} built for Android: "
                                     f"pass --device-binary PATH ({tool.build_hint})")
        path = Path(binary).expanduser()
        if not path.is_file():
            raise InvalidOptionError(f"--device-binary {path}: no such file")
        other = "llama" if fmt is ModelFormat.TFLITE else "benchmark_model"
        if other in path.name.lower():
            raise InvalidOptionError(f"--device-binary {path.name} does not run {fmt.value} models: pass {tool.name}")
        return path

    def _measured_run(self, args: list[str], source: PowerSource | None, rate_hz: float,
                      on_line: OnLine | None) -> tuple[AdbResult, PowerSampler | None, float, float]:
        """Run the binary with the power sampler on: an idle baseline first, then the run. Returns the
        result, the sampler (stopped) and the run's start and end times; the caller marks the window."""
        say = _visible(on_line)
        sampler = PowerSampler(source, rate_hz=rate_hz).start() if source is not None else None
        try:
            if sampler is not None:
                with sampler.phase("idle"):
                    time.sleep(self.idle_s)
            t0 = time.monotonic()
            res = self._adb(["shell", *args], self.RUN_TIMEOUT_S, on_line=say)
            t1 = time.monotonic()
        finally:
            if sampler is not None:
                sampler.stop()
        return res, sampler, t0, t1

    def _fail(self, tool: str, res: AdbResult) -> RemoteRunError:
        return RemoteRunError(f"{self.url}: {tool} failed (exit {res.returncode}): {res.why()}")

    @staticmethod
    def _mark(sampler: PowerSampler | None, window: tuple[float, float] | None, t0: float, t1: float) -> bool:
        """Mark the measured phase from the binary's progress lines; False when they were not found and
        the whole run (load and warm-up included) stands in for it."""
        if sampler is None:
            return True
        start, end = window or (t0, t1)
        sampler.mark("measured.start", start)
        sampler.mark("measured.end", end)
        return window is not None

    def _profile_tflite(self, remote_bin: str, remote_model: str, options: RemoteOptions, source, on_line):
        threads = [f"--num_threads={options.threads}"] if options.threads else []
        base = [remote_bin, f"--graph={remote_model}", *threads, *benchmark_model_delegate_flags(options.delegate)]
        res, sampler, t0, t1 = self._measured_run(
            [*base, f"--num_runs={options.runs}", f"--warmup_runs={options.warmup}", *self.TFLITE_FLAGS],
            source, options.power_rate_hz, on_line)
        out = parse_benchmark_model(res.text)
        if res.returncode != 0 or out.inference is None:
            raise self._fail("benchmark_model", res)
        exact = self._mark(sampler, tflite_window(res.lines), t0, t1)
        say = _visible(on_line)
        say(f"op profiling pass ({min(options.runs, self.OP_PASS_RUNS)} runs)")
        prof = self._adb(["shell", *base, f"--num_runs={min(options.runs, self.OP_PASS_RUNS)}", "--warmup_runs=1",
                          "--enable_op_profiling=true"], self.RUN_TIMEOUT_S, on_line=say)
        ops = parse_op_profile(prof.text) if prof.returncode == 0 else None
        reason = None if ops is not None else \
            f"benchmark_model --enable_op_profiling=true printed no per-op table ({prof.why()})"
        run = _tflite_run(out, ops, reason, options.threads)
        return run, sampler, exact, out.inference.count, None, None

    def _profile_gguf(self, remote_bin: str, remote_model: str, options: RemoteOptions, source, on_line):
        args = [remote_bin, "-m", remote_model, "-p", str(options.n_prompt), "-n", str(options.n_gen), "-o", "json",
                *(["-t", str(options.threads)] if options.threads else []),
                *(["-ngl", str(options.n_gpu_layers)] if options.n_gpu_layers is not None else []), "--progress"]
        res, sampler, t0, t1 = self._measured_run(args, source, options.power_rate_hz, on_line)
        if res.returncode != 0 and "--progress" in res.text:  # a build older than --progress: run without it
            res, sampler, t0, t1 = self._measured_run(args[:-1], source, options.power_rate_hz, on_line)
        if res.returncode != 0:
            raise self._fail("llama-bench", res)
        try:
            pp, tg = split_pp_tg(parse_llama_bench(res.stdout))
        except ValueError as e:
            raise RemoteRunError(f"{self.url}: {e} ({res.why()})") from None
        if pp is None or tg is None or tg.n_gen < 1:
            raise RemoteRunError(f"{self.url}: llama-bench did not report both a prompt and a generation test "
                                 f"(-p {options.n_prompt} -n {options.n_gen})")
        exact = self._mark(sampler, llama_window(res.lines, t1), t0, t1)
        run = _gguf_run(pp, tg, llama_load_ns(res.lines))
        reps = max(len(tg.samples_ns), 1)
        build = f"{tg.build_commit} ({tg.build_number})" if tg.build_commit else None
        return run, sampler, exact, reps, reps * tg.n_gen, build

    def profile(self, model: Path, options: RemoteOptions, on_line: OnLine | None = None) -> dict:
        """Push what is missing, then run the benchmark under the power sampler once per setting (the
        -t/-p/-n lists, as locally and over SSH), each setting's result announced as it is measured.
        Ctrl-C or a lost adb connection after the first setting give a report of the settings done,
        marked partial with the reason; before it, they raise as usual."""
        from ..profile import accuracy_from_conversion, report_doc, sweep_settings

        path = Path(model)
        if options.idle_s is not None:
            self.idle_s = options.idle_s
        fmt = detect_format(path)
        if fmt not in TOOLS:
            raise InvalidOptionError(f"{path.name} is a {fmt.value} model: on Android, edge profile runs .tflite "
                                     "(LiteRT benchmark_model) and .gguf (llama-bench) models")
        settings = sweep_settings(options.lists, fmt)  # the -t/-p/-n lists, checked as for a local run
        tool = TOOLS[fmt]
        binary = self._check_binary(options.device_binary, fmt)
        say = on_line or (lambda s: None)
        device = self.identity()
        remote_bin, pushed_bin = self.ensure_binary(binary)
        say(f"{'pushed' if pushed_bin else 'already on the phone:'} {binary.name}")
        remote_model, pushed_model = self.ensure_model(path)
        say(f"{'pushed' if pushed_model else 'already on the phone:'} {path.name}")
        source = detect_adb_power(AdbDeviceEnv(self))
        runs, warnings, version, partial_why = [], [], None, None
        try:
            for params in settings:
                try:
                    run, exact, version = self._profile_setting(fmt, remote_bin, remote_model, options, params,
                                                                source, on_line)
                except KeyboardInterrupt:
                    if not runs:
                        raise
                    partial_why = "interrupted (Ctrl-C); the adb client running the benchmark was stopped"
                except (DeviceUnreachableError, RemoteRunError) as e:
                    if not runs:
                        raise
                    partial_why = f"the run on {self.url} ended early ({e})"
                if partial_why is not None:
                    break
                runs.append(run)
                warnings += self._warnings(run, source, exact, tool, BatteryState(**_battery_args(device)))
                say(f"measured {run['label']}")
        finally:
            if source is not None:
                source.close()
        if partial_why is not None:
            warnings.insert(0, f"partial results: {partial_why}")
        # benchmark_model has no version flag: its hash identifies the build
        device["backends"] = {tool.name: version or f"sha256:{file_sha256(binary)[:12]}"}
        options_used = {"runs": options.runs, "warmup": options.warmup, "duration_s": None, "power": "auto",
                        "power_rate_hz": options.power_rate_hz, "idle_s": self.idle_s,
                        "n_prompt": options.n_prompt if fmt is ModelFormat.GGUF else None,
                        "n_gen": options.n_gen if fmt is ModelFormat.GGUF else None, "sweep": dict(options.lists),
                        "threads": options.threads, "device_binary": binary.name}
        doc = report_doc(path, fmt, tool.backend, {**device, "url": self.url}, runs, list(dict.fromkeys(warnings)),
                         options_used, accuracy=accuracy_from_conversion(path), inputs=[],
                         partial=partial_why is not None)
        doc["remote"] = {"serial": self.serial, "binary": remote_bin, "model": remote_model,
                         "pushed_binary": pushed_bin, "pushed_model": pushed_model}
        return doc

    def _profile_setting(self, fmt: ModelFormat, remote_bin: str, remote_model: str, options: RemoteOptions,
                         params: dict[str, int], source, on_line) -> tuple[dict, bool, str | None]:
        """One setting (e.g. ``{"threads": 2}``) measured: (run entry labelled as locally, whether the
        measured window came from the binary's progress lines, llama-bench's build or None)."""
        from ..profile import power_section, setting_label

        opts = dataclasses.replace(options, **params)
        measure = self._profile_tflite if fmt is ModelFormat.TFLITE else self._profile_gguf
        run, sampler, exact, units, tokens, version = measure(remote_bin, remote_model, opts, source, on_line)
        run["power"] = power_section(source, options.power_rate_hz, sampler, NO_POWER_REASON, units, tokens)
        run["label"] = setting_label(params)
        run["params"] = {**run["params"], **params}
        return run, exact, version

    @staticmethod
    def _warnings(run: dict, source: PowerSource | None, exact: bool, tool: _Tool, battery: BatteryState) -> list[str]:
        out = []
        lat = run["latency"]
        if lat["unreliable"]:
            out.append(f"{run['label']}: latency spread is high (cv {lat['cv']:.0%} > 10%): the mean is unreliable; "
                       "close other apps, let the phone cool down, or run longer")
        if not run["power"].get("available"):
            out.append(f"power: {run['power'].get('reason')}")
        elif not exact:
            out.append(f"power: {tool.name}'s progress lines were not recognised, so the measured window covers "
                       "its whole run (model load and warm-up included)")
        if source is not None and source.name == "android-battery" and battery.charging:
            out.append("the phone is charging (" + (", ".join(battery.plugged) or "status charging") + "): the battery "
                       "gauge then reads the charge current, not the phone's draw; unplug, use adb over Wi-Fi, or "
                       "suspend charging (root: /sys/class/power_supply/battery/input_suspend)")
        return out


def _battery_args(device: dict) -> dict:
    b = dict(device.get("battery") or {})
    b["plugged"] = tuple(b.get("plugged") or ())
    return b
