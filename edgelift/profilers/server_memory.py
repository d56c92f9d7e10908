"""What a server process holds: the resident memory of the process listening on a TCP port (Linux /proc).

llama.cpp's load log says what it allocated on each RPC server (weights, KV cache, compute buffers); the
server process holds more than that (the interpreter, ggml, the allocator's slack), and only the process's
own figures say what a board must have free. This module finds the process that listens on a port — through
the socket's inode in ``/proc/net/tcp{,6}`` and the process's ``/proc/PID/fd`` — and reads its resident
(VmRSS) and peak resident (VmHWM) memory.

It uses the standard library only and runs as a script too, so a device reached over SSH is measured by
sending this file to its Python (``python3 - PORT``): the device need not have edgelift installed, and any
RPC server counts, llama.cpp's own ``rpc-server`` included. It prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

TCP_LISTEN = "0A"  # the socket state column of /proc/net/tcp


@dataclass(frozen=True)
class ServerMemory:
    pid: int
    rss_bytes: int  # resident now (VmRSS)
    peak_rss_bytes: int  # the most it has been resident since it started (VmHWM)


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[str]:
    """Socket inodes listening on ``port`` (any address, IPv4 or IPv6)."""
    inodes = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listening_pid(port: int, proc: Path = Path("/proc")) -> int | None:
    """The process whose open files include a socket listening on ``port``; None when none is visible (no
    such server, or it belongs to another user)."""
    wanted = {f"socket:[{i}]" for i in listening_inodes(port, proc)}
    if not wanted:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(entry.name)
        except OSError:  # gone, or not ours to read
            continue
    return None


def process_memory(pid: int, proc: Path = Path("/proc")) -> ServerMemory | None:
    try:
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return None
    kib = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            kib[key] = int(value.split()[0])
    if len(kib) < 2:
        return None
    return ServerMemory(pid, kib["VmRSS"] * 1024, kib["VmHWM"] * 1024)


def server_memory(port: int, proc: Path = Path("/proc")) -> ServerMemory | None:
    """The resident memory of the process listening on ``port`` on this machine, or None."""
    pid = listening_pid(port, proc)
    return None if pid is None else process_memory(pid, proc)


def main(argv: list[str]) -> None:
    found = server_memory(int(argv[0])) if argv and argv[0].isdigit() else None
    print(json.dumps(asdict(found) if found else None))


if __name__ == "__main__":
    main(sys.argv[1:])
