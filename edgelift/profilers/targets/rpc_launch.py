"""``edge serve-rpc --fleet fleet.toml``: llama.cpp RPC servers started on each device over SSH, and what
each server process holds (read on the device, for ``edge profile --rpc``).

Each ``[[device]]`` with ``url = "ssh://user@host"`` and ``rpc = "ADDRESS:PORT"`` gets ``python -m
edgelift.runtimes.rpc`` bound to that address, capped at its ``memory`` (a memory cgroup on the device) with
``threads`` threads. edgelift reaches the device as ``edge profile --device`` does (``--install``: this
machine's wheel, uploaded once by content hash and checked there). The server reads its stdin and stops when
it closes, so it ends when edge exits or the SSH connection drops; nothing is left running on the device.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import InvalidOptionError
from .base import DeviceUnreachableError, RemoteOptions, RemoteRunError
from .ssh import SshTarget, _remote_path

START_TIMEOUT_S = 60.0


@dataclass
class FleetServer:
    url: str
    rpc: str  # address:port the server binds and hosts connect to
    memory: str | None
    threads: int
    process: subprocess.Popen | None = None

    @property
    def device(self) -> str:
        """The entry ``edge run --rpc`` takes for it."""
        return self.rpc + (f"={self.memory}" if self.memory else "")


def read_rpc_fleet(path: Path) -> list[FleetServer]:
    from ...runtimes.rpc import parse_devices, read_fleet_toml

    doc = read_fleet_toml(path)
    out = []
    for i, d in enumerate(doc.get("device") or []):
        if not isinstance(d, dict) or not isinstance(d.get("rpc"), str):
            continue
        url = d.get("url")
        if not isinstance(url, str) or not url.startswith("ssh://"):
            raise InvalidOptionError(f"{path}: [[device]] {i + 1} has rpc = {d['rpc']!r} but no url = \"ssh://user@host\" "
                                     "to start its server over")
        threads = d.get("threads", 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidOptionError(f"{path}: [[device]] {i + 1}: threads must be a positive integer")
        out.append(FleetServer(url, d["rpc"], str(d["memory"]) if d.get("memory") else None, threads))
    if not out:
        raise InvalidOptionError(f"{path} lists no [[device]] with rpc = \"address:port\"")
    parse_devices([s.device for s in out])  # the same checks as the host's
    return out


def start_servers(servers: list[FleetServer], options: RemoteOptions, on_line=None) -> None:
    """Start every server and wait until each says it is serving; on any failure, stop those started."""
    try:
        for s in servers:
            target = SshTarget.from_url(s.url).configure(options)
            target.ensure_edge(target.identity())
            host, port = s.rpc.rsplit(":", 1)
            args = ["-m", "edgelift.runtimes.rpc", "--host", host.strip("[]"), "--port", port, "--threads",
                    str(s.threads), "--exit-with-stdin"] + (["--memory", s.memory] if s.memory else [])
            remote = "exec " + _remote_path(target.python) + " " + " ".join(shlex.quote(a) for a in args)
            s.process = subprocess.Popen(target._ssh(remote), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
            line = _first_line(s)
            if not line.startswith("serving"):
                err = s.process.stderr.read() if s.process.poll() is not None else ""
                why = next((ln for ln in reversed(err.splitlines()) if ln.strip()), line or "no answer")
                raise RemoteRunError(f"{s.url}: the RPC server did not start: {why.removeprefix('error: ')}")
            if on_line:
                on_line(f"{s.url}: {line.strip()}" + (f", memory capped at {s.memory}" if s.memory else ""))
    except BaseException:
        stop_servers(servers)
        raise


def _first_line(s: FleetServer) -> str:
    t0 = time.monotonic()
    assert s.process is not None and s.process.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(s.process.stdout, selectors.EVENT_READ)
    while time.monotonic() - t0 < START_TIMEOUT_S:
        if sel.select(timeout=0.5):
            return s.process.stdout.readline()
        if s.process.poll() is not None:
            return ""
    raise DeviceUnreachableError(f"{s.url}: the RPC server gave no sign of life in {START_TIMEOUT_S:.0f} s")


def stop_servers(servers: list[FleetServer]) -> None:
    """Close each server's stdin (it exits) and its SSH connection."""
    for s in servers:
        p = s.process
        if p is None:
            continue
        try:
            if p.stdin:
                p.stdin.close()
            p.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            p.kill()
            p.wait()
        s.process = None


def is_local_address(host: str) -> bool:
    """Whether ``host`` names this machine (an address one of its interfaces has: a socket can bind to it)."""
    import socket

    try:
        infos = socket.getaddrinfo(host.strip("[]"), 0, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.bind((address[0], 0))
            return True
        except OSError:
            continue
    return False


def measure_server(endpoint: str, url: str | None, options: RemoteOptions) -> tuple[dict | None, str | None]:
    """What the server at ``endpoint`` holds — ``({"pid", "rss_bytes", "peak_rss_bytes"}, None)`` — read from
    ``/proc`` here when its address is this machine's, else on the device over ``url`` (ssh://...) by sending
    it ``server_memory.py``; ``(None, why)`` when it cannot be read."""
    from dataclasses import asdict

    from .. import server_memory

    host, port = endpoint.rsplit(":", 1)
    if is_local_address(host):
        found = server_memory.server_memory(int(port))
        if found is None:
            return None, f"not measured: no process of this user listens on port {port} here"
        return asdict(found), None
    if not url or not url.startswith("ssh://"):
        return None, "not measured: give the device's url = \"ssh://user@host\" in the fleet file"
    return measure_over_ssh(url, int(port), options)


SERVER_FIELDS = ("pid", "rss_bytes", "peak_rss_bytes")


def measure_over_ssh(url: str, port: int, options: RemoteOptions) -> tuple[dict | None, str | None]:
    """:func:`measure_server` on the device at ``url``: its Python runs ``server_memory.py`` sent on stdin."""
    from .. import server_memory

    try:
        target = SshTarget.from_url(url).configure(options)
        with open(server_memory.__file__, "rb") as script:
            out = target._call(f"{_remote_path(target.python)} - {port}", stdin=script, timeout=30)
        found = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    except (DeviceUnreachableError, RemoteRunError, InvalidOptionError, ValueError, OSError) as e:
        return None, f"not measured: {e}"
    if not isinstance(found, dict) or not all(isinstance(found.get(k), int) for k in SERVER_FIELDS):
        return None, f"not measured: no process of the SSH user listens on port {port} on {url}"
    return {k: found[k] for k in SERVER_FIELDS}, None
