"""One GGUF model across several devices: llama.cpp's RPC backend, driven from Python.

Each device runs an RPC server (``python -m edgelift.runtimes.rpc --port 50052``: llama.cpp's
``ggml_backend_rpc_start_server`` on its CPU, from the ``[llama]`` extra's own library, so a device needs
nothing beyond edgelift and its llama extra). The host registers the servers as llama.cpp devices and
loads the model with every layer offloaded to them, split in proportion to each device's memory
(``tensor_split``); tokens stream like any GGUF backend. The library is reached through ctypes without
importing ``llama_cpp``, so a server's own footprint is the interpreter and ggml, not numpy.

A device is ``HOST:PORT`` or ``HOST:PORT=MEMORY`` ("2GiB", "512MB"): the memory it may give the model.
llama.cpp would read a server's free memory itself, but a server inside a memory cgroup or on a board
running other programs reports the whole machine's, so the split uses what the fleet says.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InvalidOptionError, MissingDependencyError, install_hint

_ENDPOINT = re.compile(r"^(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})(?:=(?P<memory>.+))?$")
DEVICE_TYPE_CPU = 0
# what a device needs beside its share of the weights: compute buffers and the key-value cache slice
OVERHEAD_SHARE = 0.10


@dataclass(frozen=True)
class RpcDevice:
    endpoint: str  # host:port
    memory_bytes: int | None  # what the device may give the model; None: split evenly
    url: str | None = None  # the fleet file's ssh://user@host for it: how a profile reads the server's memory

    def describe(self) -> str:
        return self.endpoint + ("" if self.memory_bytes is None else f" ({self.memory_bytes / 2**20:.0f} MiB)")


def parse_devices(devices) -> list[RpcDevice]:
    """``["host:port=512MB", ...]``, one comma list, or a fleet file (TOML: ``[[device]]`` tables with
    ``rpc = "host:port"`` and optional ``memory = "512MB"``)."""
    from .memory import parse_budget

    if isinstance(devices, (str, Path)) and Path(str(devices)).suffix == ".toml":
        return _fleet_devices(Path(str(devices)))
    items = [devices] if isinstance(devices, str) else list(devices)
    out = []
    for item in (p.strip() for it in items for p in str(it).split(",") if p.strip()):
        m = _ENDPOINT.match(item)
        if not m or not 0 < int(m["port"]) < 65536:
            raise InvalidOptionError(f"device '{item}' is not HOST:PORT or HOST:PORT=MEMORY (e.g. 192.168.1.7:50052=2GiB)")
        out.append(RpcDevice(f"{m['host']}:{m['port']}", parse_budget(m["memory"]) if m["memory"] else None))
    if not out:
        raise InvalidOptionError("no devices given: pass HOST:PORT[=MEMORY] entries or a fleet .toml file")
    if len({d.endpoint for d in out}) != len(out):
        raise InvalidOptionError("a device is listed twice: each RPC server serves one share of the model")
    return out


def read_fleet_toml(path: Path) -> dict:
    """A fleet file's TOML, or one line saying why it cannot be read."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InvalidOptionError(f"fleet file {path} cannot be read: {e}") from e


def _fleet_devices(path: Path) -> list[RpcDevice]:
    doc = read_fleet_toml(path)
    entries = doc.get("device") or []
    specs, urls = [], []
    for i, d in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(d, dict) or not isinstance(d.get("rpc"), str):
            raise InvalidOptionError(f"{path}: [[device]] entry {i + 1} has no rpc = \"host:port\"")
        specs.append(d["rpc"] + (f"={d['memory']}" if d.get("memory") else ""))
        urls.append(d["url"] if isinstance(d.get("url"), str) else None)
    if not specs:
        raise InvalidOptionError(f"{path} lists no [[device]] with an rpc endpoint")
    return [replace(device, url=url) for device, url in zip(parse_devices(specs), urls)]


@dataclass(frozen=True)
class ModelBytes:
    """Where a GGUF's bytes go when its layers are offloaded: the blocks (split across the devices), the
    output matrix (on the last device, as llama.cpp places it) and the input embedding (on the host)."""

    blocks: int
    output: int
    host: int

    @classmethod
    def of_gguf(cls, info) -> "ModelBytes":
        by_name = {t.name: t.nbytes for t in info.tensors}
        embd = by_name.get("token_embd.weight", 0)
        output = by_name.get("output.weight", embd)  # a tied output reads the embedding: llama.cpp copies it
        blocks = sum(n for name, n in by_name.items() if name.startswith("blk."))
        return cls(blocks, output + sum(n for name, n in by_name.items() if name.startswith("output_norm")), embd)


def tensor_split(devices: list[RpcDevice], size: ModelBytes, order: list[str] | None = None) -> list[float]:
    """Each device's share of the layers, in proportion to the memory it has left for them (the last one
    also holds the output matrix), in llama.cpp's device ``order`` (every RPC server registered in this
    process; those not in ``devices`` get none); refused when the devices together cannot hold the model
    (with the overhead each needs beside its weights)."""
    order = order or [d.endpoint for d in devices]
    if any(d.memory_bytes is None for d in devices):
        share = {d.endpoint: 1.0 / len(devices) for d in devices}
        return [share.get(e, 0.0) for e in order]
    room = [d.memory_bytes / (1 + OVERHEAD_SHARE) for d in devices]
    room[-1] -= size.output
    if room[-1] < 0 or sum(room) < size.blocks:
        need = (size.blocks + size.output) * (1 + OVERHEAD_SHARE)
        raise InvalidOptionError(
            f"the model needs about {need / 2**20:.0f} MiB across the devices ({size.blocks / 2**20:.0f} MiB of layers, "
            f"{size.output / 2**20:.0f} MiB of output matrix on the last device, + {OVERHEAD_SHARE:.0%}), but "
            f"{', '.join(d.describe() for d in devices)} give {sum(d.memory_bytes for d in devices) / 2**20:.0f} MiB: "
            "add a device or give each more memory")
    share = {d.endpoint: r / sum(room) for d, r in zip(devices, room)}
    return [share.get(e, 0.0) for e in order]


CONNECT_TIMEOUT_S = 3.0


def check_reachable(devices: list[RpcDevice], hint: str = "start them with edge serve-rpc --host ADDRESS --port PORT "
                                                          "on each device") -> None:
    """Every server accepts a connection, else one line naming those that do not (llama.cpp itself aborts the
    process on an unreachable server)."""
    import socket

    down = []
    for d in devices:
        host, port = d.endpoint.rsplit(":", 1)
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as e:
            down.append(f"{d.endpoint} ({e.strerror or e})")
    if down:
        raise InvalidOptionError(f"RPC server(s) not reachable: {', '.join(down)}; {hint}")


def check_registered_reachable() -> None:
    """llama.cpp keeps every RPC server registered in a process and queries each one on every model load,
    aborting the process when one is gone: refuse the load with one line instead."""
    if _GGML is not None and _GGML.registered:
        check_reachable([RpcDevice(e, None) for e in _GGML.registered],
                        "llama.cpp keeps every RPC server a process was given and cannot load a model while one of "
                        "them is gone: restart the server, or load in a new process")


def _library_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"llama.cpp's RPC backend needs the llama extra: {install_hint('llama')}")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


class Ggml:
    """The few ggml registry calls the RPC backend needs, bound once per process."""

    def __init__(self) -> None:
        lib_dir = _library_dir()
        # the file libllama links by its soname: a wheel stores libggml.so and libggml.so.0 as two copies, and
        # devices registered in the wrong copy's registry are invisible to llama.cpp
        lib = next((lib_dir / n for n in ("libggml.so.0", "libggml.so", "libggml.dylib") if (lib_dir / n).exists()), None)
        if lib is None:
            raise MissingDependencyError(f"no ggml library in {lib_dir}: reinstall the llama extra ({install_hint('llama')})")
        self.lib = ctypes.CDLL(str(lib))  # RTLD_LOCAL: global symbols would interpose on llama_cpp's other copy
        for name, res, args in (("ggml_backend_reg_by_name", ctypes.c_void_p, [ctypes.c_char_p]),
                                ("ggml_backend_reg_get_proc_address", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
                                ("ggml_backend_register", None, [ctypes.c_void_p]),
                                ("ggml_backend_dev_by_type", ctypes.c_void_p, [ctypes.c_int])):
            fn = getattr(self.lib, name)
            fn.restype, fn.argtypes = res, args
        for name, res, args in (("ggml_backend_dev_count", ctypes.c_size_t, []),
                                ("ggml_backend_dev_get", ctypes.c_void_p, [ctypes.c_size_t]),
                                ("ggml_backend_dev_type", ctypes.c_int, [ctypes.c_void_p]),
                                ("ggml_backend_dev_backend_reg", ctypes.c_void_p, [ctypes.c_void_p]),
                                ("ggml_backend_reg_name", ctypes.c_char_p, [ctypes.c_void_p])):
            fn = getattr(self.lib, name)
            fn.restype, fn.argtypes = res, args
        self.rpc = self.lib.ggml_backend_reg_by_name(b"RPC")
        if not self.rpc:
            raise MissingDependencyError(
                "this llama.cpp build has no RPC backend: rebuild the llama extra's wheel with "
                "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_RPC=ON' (make llama-wheel does)")
        self.registered: list[str] = []  # in registration order: llama.cpp's device order

    def proc(self, name: str, restype, *argtypes):
        addr = self.lib.ggml_backend_reg_get_proc_address(self.rpc, name.encode())
        if not addr:
            raise MissingDependencyError(f"llama.cpp's RPC backend lacks {name}: rebuild the llama extra")
        return ctypes.CFUNCTYPE(restype, *argtypes)(addr)

    def add_server(self, endpoint: str) -> None:
        """Register ``endpoint`` as a llama.cpp device (once per process: devices cannot be removed)."""
        if endpoint in self.registered:
            return
        add = self.proc("ggml_backend_rpc_add_server", ctypes.c_void_p, ctypes.c_char_p)
        reg = add(endpoint.encode())
        if not reg:
            raise InvalidOptionError(f"llama.cpp could not add the RPC server {endpoint}")
        self.lib.ggml_backend_register(reg)
        self.registered.append(endpoint)

    def serve(self, endpoint: str, threads: int) -> None:
        """Serve this machine's CPU at ``endpoint`` until the process ends (llama.cpp's loop never returns)."""
        start = self.proc("ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                          ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))
        _return_freed_memory()
        cpu = self.lib.ggml_backend_dev_by_type(DEVICE_TYPE_CPU)
        devices = (ctypes.c_void_p * 1)(cpu)
        start(endpoint.encode(), None, threads, 1, devices)


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 16


def _return_freed_memory() -> None:
    """Large buffers straight from mmap, at a fixed threshold: glibc otherwise raises its threshold after the
    first freed buffer, and a server keeps one client's weights in its heap while the next client allocates
    its own (measured: a server capped at 84 MB killed on the second client of a 98 MB model split in three)."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc
        pass


_GGML: Ggml | None = None


def ggml() -> Ggml:
    global _GGML
    if _GGML is None:
        _GGML = Ggml()
    return _GGML


DEVICE_TYPE_GPU = 1


def local_gpu_count() -> int:
    """GPU devices of this llama.cpp build that are not RPC servers: ``llama_supports_gpu_offload`` counts
    the RPC backend too, so it cannot tell whether ``-ngl`` would reach a GPU."""
    lib = ggml().lib
    devices = (lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count()))
    return sum(1 for d in devices if lib.ggml_backend_dev_type(d) == DEVICE_TYPE_GPU
               and not lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(d)).startswith(b"RPC"))


def rpc_unavailable() -> str | None:
    """None when this llama.cpp build has the RPC backend, else why not (one line, for skip messages)."""
    try:
        ggml()
    except (MissingDependencyError, OSError) as e:
        return str(e)
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edgelift.runtimes.rpc",
                                 description="Serve this device's CPU to llama.cpp hosts (the RPC backend).")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface; the protocol has "
                                                         "no authentication, so bind to a trusted network only)")
    ap.add_argument("--port", type=int, default=50052)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory", help="cap this server's memory (a memory cgroup, page cache counted), e.g. 512MiB")
    ap.add_argument("--exit-with-stdin", action="store_true",
                    help="stop when stdin closes: a server started over SSH ends with its connection")
    args = ap.parse_args(argv)
    try:
        g = ggml()
        if args.memory:
            from ..core.memlimit import limit_self
            from .memory import parse_budget

            try:
                limit_self(parse_budget(args.memory))
            except OSError as e:
                raise InvalidOptionError(f"cannot cap this server's memory at {args.memory}: {e}") from e
    except (MissingDependencyError, InvalidOptionError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.exit_with_stdin:
        import os
        import threading

        def watch() -> None:
            while sys.stdin.buffer.read(4096):
                pass
            os._exit(0)  # llama.cpp's server loop never returns: end the process itself

        threading.Thread(target=watch, daemon=True).start()
    print(f"serving {args.host}:{args.port} ({args.threads} thread(s))", flush=True)
    g.serve(f"{args.host}:{args.port}", args.threads)


if __name__ == "__main__":
    main()
