"""One model across several devices (llama.cpp's RPC backend) against one device, at the same memory per device.

A user with boards of C MiB each and a model larger than C can pick: split it over N boards (edge run
--rpc: llama.cpp RPC servers, layers split by memory), stream it on one board with the edge engine's flash
offloading under C, or let llama.cpp mmap it on one board in C (the kernel pages weights in and out). Here
every "device" is a process on this machine in its own memory cgroup of C (page cache counted), so the
network is the loopback interface: real boards add their link's latency per token (the report's bytes per
token say how much crosses it). Model: the 1.1B-parameter random-weight Llama of benchmarks/flash_offload.py
(Q4_0, ~655 MiB), C = 42% of it (the model is 2.4x one device's memory).

Per case: decode tok/s (median of interleaved rounds), the servers' cgroup peaks, network bytes per token.
Two devices cannot hold the model at C each, so the two-device split runs at C2 per device, and its
one-device alternatives are measured at C2 too: every ratio compares equal memory per device.
Threads: 2 everywhere. Run alone: ``python benchmarks/multi_device.py``.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, result, rounds_note
from flash_offload import EDGE_CHILD, LLAMA_CHILD, MARGIN, PROMPT, THREADS, engine_overhead, large_gguf, run_child

from edgelift.core import memlimit

ROUNDS = 2
STEPS = 12
CAP_SHARE = 0.42  # one device's memory as a share of the model file
TWO_DEVICE_SHARE = 0.62  # two devices cannot hold the model at CAP_SHARE each: the cap that lets them
MiB = 2**20

RPC_HOST = f"""
import json, sys, time
import numpy as np
import edgelift
from edgelift.profilers.profile import network_bytes
m = edgelift.load(sys.argv[1], backend="llama.cpp", devices=json.loads(sys.argv[4]), threads={THREADS}, n_ctx=256,
                  logits_all=False)
ids = m.tokenize(sys.argv[2], add_bos=False).tolist()
tok, steps = int(np.argmax(m.eval_tokens(ids, reset=True))), int(sys.argv[3])
net0, t0 = network_bytes(), time.perf_counter()
for _ in range(steps):
    tok = int(np.argmax(m.eval_tokens([tok])))
dt = time.perf_counter() - t0
print(json.dumps({{"tps": steps / dt, "net_per_token": (network_bytes() - net0) / steps,
                   "split": m.session.tensor_split}}))
m.close()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_split(path: Path, n: int, cap: int) -> dict:
    """N RPC servers, each in a cgroup of ``cap``; the host in a fresh process (not limited: it holds the
    token embedding and the sampling, as the user's own machine would)."""
    ports = [_free_port() for _ in range(n)]
    servers = [memlimit.LimitedProcess([sys.executable, "-m", "edgelift.runtimes.rpc", "--port", str(p),
                                        "--threads", str(THREADS)], cap) for p in ports]
    try:
        for p in ports:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        devices = [f"127.0.0.1:{p}={cap}" for p in ports]
        host = subprocess.run([sys.executable, "-c", RPC_HOST, str(path), PROMPT, str(STEPS), json.dumps(devices)],
                              capture_output=True, text=True, timeout=1800, cwd=ROOT)
        peaks = [s.peak_bytes() for s in servers]
        killed = [s.oom_killed() for s in servers]
    finally:
        for s in servers:
            s.stop()
    if host.returncode != 0:
        why = "a server was killed by the OOM killer" if any(killed) else (host.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": why[:200], "peaks": peaks}
    out = json.loads(host.stdout.strip().splitlines()[-1])
    out["peaks"] = peaks
    return out


def main() -> None:
    why = memlimit.unavailable()
    from edgelift.runtimes.rpc import ModelBytes, parse_devices, rpc_unavailable, tensor_split

    why = why or rpc_unavailable()
    if why:
        print(f"# skipped: {why}")
        return
    from edgelift.core.gguf import read_gguf_info

    path = large_gguf()
    size = path.stat().st_size
    cap = int(size * CAP_SHARE)
    unlimited = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.8)
    overhead, minimum_weights = engine_overhead(path, unlimited)
    budget = int(cap * (1 - MARGIN)) - overhead
    model = ModelBytes.of_gguf(read_gguf_info(path))
    try:
        tensor_split(parse_devices([f"a:1={cap}", f"b:2={cap}"]), model)
    except Exception as e:  # noqa: BLE001 - the refusal users would see, printed
        print(f"# two devices of {cap / MiB:.0f} MiB: refused as edge run --rpc refuses it: {e}")
    cap2 = int(size * TWO_DEVICE_SHARE)
    print(f"# model {size / MiB:.0f} MiB ({model.blocks / MiB:.0f} MiB of layers); one device {cap / MiB:.0f} MiB "
          f"(the model is {size / cap:.1f}x it); two-device case at {cap2 / MiB:.0f} MiB each; edge engine weight "
          f"budget {budget / MiB:.0f} MiB (overhead {overhead / MiB:.0f} MiB); load average {os.getloadavg()[0]:.2f}",
          flush=True)
    budget2 = int(cap2 * (1 - MARGIN)) - overhead
    # the one-device alternatives at each split's memory per device: C for three devices, C2 for two
    rounds: dict[str, list[dict]] = {"rpc x3": [], "rpc x2": [], "edge flash": [], "llama.cpp mmap": [],
                                     "edge flash @C2": [], "llama.cpp mmap @C2": []}
    for _ in range(ROUNDS):  # interleaved: machine noise hits every case alike
        rounds["rpc x3"].append(run_split(path, 3, cap))
        rounds["rpc x2"].append(run_split(path, 2, cap2))
        for tag, c, b in (("", cap, budget), (" @C2", cap2, budget2)):
            rounds["edge flash" + tag].append(run_child(EDGE_CHILD, [str(path), PROMPT, str(STEPS),
                                                                     str(max(b, minimum_weights))], c))
            rounds["llama.cpp mmap" + tag].append(run_child(LLAMA_CHILD, [str(path), PROMPT, str(STEPS)], c))
    tps = {k: [r["tps"] for r in rs if "tps" in r] for k, rs in rounds.items()}
    med = {k: statistics.median(v) if v else 0.0 for k, v in tps.items()}
    for k, rs in rounds.items():
        extra = [r.get("failed") for r in rs if "failed" in r]
        peaks = [[round((p or 0) / MiB) for p in r.get("peaks", [r.get("peak") or 0])] for r in rs]
        net = [round(r["net_per_token"] / 1e3, 1) for r in rs if "net_per_token" in r]
        print(f"# {k}: tok/s {tps[k]}; cgroup peaks (MiB) {peaks}" + (f"; network kB/token {net}" if net else "")
              + (f"; failed: {extra}" if extra else ""), flush=True)
    print(rounds_note({k: v for k, v in tps.items() if v}))
    for split, tag, c in (("rpc3", "", cap), ("rpc2", " @C2", cap2)):  # each at its own memory per device
        for base, key in (("edge_flash", "edge flash" + tag), ("llama_mmap", "llama.cpp mmap" + tag)):
            if med[key] > 0:
                result(f"multi_device.{split}_vs_{base}.decode_tps", med[f"rpc x{split[-1]}"], "tok/s", med[key])
            else:
                print(f"# multi_device.{split}_vs_{base}: no ratio, {key} does not run in one device's "
                      f"{c / MiB:.0f} MiB (every round failed)")


if __name__ == "__main__":
    main()
