"""One GGUF model across several llama.cpp RPC servers (``edge serve-rpc``), each in a memory cgroup smaller
than the model: the text equals single-process llama.cpp's, token for token."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import edgelift
from edgelift.cli import app
from edgelift.core import memlimit
from edgelift.errors import InferenceError, InvalidOptionError
from edgelift.runtimes.rpc import ModelBytes, RpcDevice, parse_devices, rpc_unavailable, tensor_split

PROMPT = "The capital of France is"
# the host, in its own process: the split run's text, then, once told the servers are gone, what a plain load
# in the same process says (the split ran in a worker process, so no dead registration is left behind)
HOST_SCRIPT = """
import json, sys
import edgelift
from edgelift.errors import EdgeError
path, devices, prompt = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
with edgelift.load(path, backend="llama.cpp", devices=devices, n_ctx=256, logits_all=False) as m:
    text = m.generate(prompt, max_tokens=32)
print(json.dumps(text), flush=True)  # after the model (and its remote buffers) is freed
sys.stdin.readline()
try:
    edgelift.load(path, backend="llama.cpp", n_ctx=256)
    print(json.dumps("loaded"), flush=True)
except EdgeError as e:
    print(json.dumps(str(e)), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc, timeout_s: float = 30.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the RPC server exited: {proc.stderr.read()[-400:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no RPC server on port {port} after {timeout_s} s")


def test_devices_parse_from_lists_and_fleet_files(tmp_path):
    assert parse_devices("10.0.0.2:50052=512MB, 10.0.0.3:50052") == [
        RpcDevice("10.0.0.2:50052", 512 * 10**6), RpcDevice("10.0.0.3:50052", None)]
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[device]]\nurl = "ssh://pi@a"\nrpc = "10.0.0.2:50052"\nmemory = "1GiB"\n'
                     '[[device]]\nrpc = "10.0.0.3:50053"\n')
    assert parse_devices(fleet) == [RpcDevice("10.0.0.2:50052", 2**30, "ssh://pi@a"), RpcDevice("10.0.0.3:50053", None)]
    for bad in ("10.0.0.2", "10.0.0.2:0", "a:1,a:1"):
        with pytest.raises(InvalidOptionError):
            parse_devices(bad)


# a listening server holding a known amount of touched memory, as an RPC server holds its share of the weights
HOLDER = """
import socket, sys
held = bytearray(int(sys.argv[2]) * 2**20)
for i in range(0, len(held), 4096):
    held[i] = 1
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family)
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_server_memory_is_the_listening_process_own(address):
    """The profile's per-server memory: the process found by its listening socket (IPv4 and IPv6 tables), its
    resident memory holding what it touched; checked against ps(1)'s own reading of that process."""
    from edgelift.profilers.targets.base import RemoteOptions
    from edgelift.profilers.targets.rpc_launch import measure_server

    held_mib = 96
    try:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, address, str(held_mib)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    except OSError as e:
        pytest.skip(f"cannot start a listener: {e}")
    try:
        line = proc.stdout.readline()
        if not line.strip():
            pytest.skip(f"no {address} on this machine")
        endpoint = f"[{address}]:{int(line)}" if ":" in address else f"{address}:{int(line)}"
        found, why = measure_server(endpoint, None, RemoteOptions())
        assert why is None and found["pid"] == proc.pid
        ps_rss = int(subprocess.run(["ps", "-o", "rss=", "-p", str(proc.pid)], capture_output=True,
                                    text=True).stdout) * 1024
        assert held_mib * 2**20 <= found["rss_bytes"] <= found["peak_rss_bytes"]
        assert abs(found["rss_bytes"] - ps_rss) < 4 * 2**20  # the same process, read a moment apart
    finally:
        proc.communicate("\n", timeout=10)
    gone, why = measure_server(endpoint, None, RemoteOptions())
    assert gone is None and "listens on port" in why
    # another machine's server is read over the fleet's ssh:// url; without one the report says so
    far, why = measure_server("192.0.2.7:50052", None, RemoteOptions())
    assert far is None and 'url = "ssh://' in why


def test_layers_split_by_memory_and_refused_when_they_cannot_fit():
    mib = 2**20
    size = ModelBytes(blocks=200 * mib, output=0, host=10 * mib)
    devs = parse_devices("a:1=330MiB,b:2=110MiB")
    assert tensor_split(devs, size) == pytest.approx([0.75, 0.25])
    # a server registered earlier in this process but not asked for gets no layers
    assert tensor_split(devs, size, ["old:9", "a:1", "b:2"]) == pytest.approx([0.0, 0.75, 0.25])
    # the output matrix lives on the last device: its room for layers shrinks by it
    with_output = ModelBytes(blocks=200 * mib, output=50 * mib, host=10 * mib)
    assert tensor_split(parse_devices("a:1=165MiB,b:2=165MiB"), with_output) == pytest.approx([150 / 250, 100 / 250])
    with pytest.raises(InvalidOptionError, match="add a device or give each more memory"):
        tensor_split(devs, ModelBytes(blocks=420 * mib, output=0, host=0))


def test_unreachable_server_is_one_line_not_an_abort(smollm2_gguf):
    if rpc_unavailable():
        pytest.skip(rpc_unavailable())
    port = _free_port()  # nothing listens there
    res = CliRunner().invoke(app, ["run", str(smollm2_gguf), "-p", "hi", "--devices", f"127.0.0.1:{port}=1GiB"])
    assert res.exit_code == 2 and "not reachable" in res.output and "Traceback" not in res.output


def test_a_server_lost_mid_generation_is_one_typed_line_and_the_host_lives(smollm2_gguf):
    """llama.cpp aborts the process whose RPC server dies mid-call (ggml-rpc: "Remote RPC server crashed"): the
    split model runs in a worker, so the user's process gets an InferenceError naming the lost server, and the
    same process loads and runs models afterwards."""
    if rpc_unavailable():
        pytest.skip(rpc_unavailable())
    ports = [_free_port() for _ in range(2)]
    servers = [subprocess.Popen([sys.executable, "-m", "edgelift.runtimes.rpc", "--port", str(p)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    try:
        for p, s in zip(ports, servers):
            _wait_listening(p, s)
        devices = [f"127.0.0.1:{p}=1GiB" for p in ports]
        with edgelift.load(smollm2_gguf, backend="llama.cpp", devices=devices, n_ctx=256, logits_all=False) as m:
            assert m.session.worker_pid != os.getpid() and sum(m.session.tensor_split) == pytest.approx(1.0)
            assert len(m.generate(PROMPT, max_tokens=8)) > 0
            pieces = []
            with pytest.raises(InferenceError) as lost:
                for piece in m.generate("Once upon a time", max_tokens=64, stream=True):
                    pieces.append(piece)
                    if len(pieces) == 4:
                        servers[1].kill()
            assert 4 <= len(pieces) < 64
            message = str(lost.value)
            assert f"127.0.0.1:{ports[1]}" in message and f"127.0.0.1:{ports[0]}" not in message
            assert "\n" not in message
            with pytest.raises(edgelift.errors.ModelClosedError):
                m.generate(PROMPT, max_tokens=4)
    finally:
        for s in servers:
            s.kill()
            s.wait()
    with edgelift.load(smollm2_gguf, backend="llama.cpp", n_ctx=256, logits_all=False) as m:
        assert len(m.generate(PROMPT, max_tokens=4)) > 0


@pytest.mark.slow
def test_model_larger_than_each_server_generates_the_single_process_text(smollm2_gguf):
    why = memlimit.unavailable() or rpc_unavailable()
    if why:
        pytest.skip(why)
    with edgelift.load(smollm2_gguf, backend="llama.cpp", n_ctx=256, logits_all=False) as m:
        alone = m.generate(PROMPT, max_tokens=32)
    size = Path(smollm2_gguf).stat().st_size
    limit = int(size * 0.85)  # each server's cgroup: below the model (the last also holds the output matrix)
    ports = [_free_port() for _ in range(3)]
    servers = [memlimit.LimitedProcess([sys.executable, "-m", "edgelift.runtimes.rpc", "--port", str(p)], limit)
               for p in ports]
    try:
        for p, s in zip(ports, servers):
            _wait_listening(p, s.process)
        devices = [f"127.0.0.1:{p}={limit}" for p in ports]
        # llama-bench figures for the split (a server serves one client at a time: the profile runs first)
        prof = subprocess.run([sys.executable, "-c", "from edgelift.cli import main; main()", "profile", str(smollm2_gguf),
                               "--rpc", ",".join(devices), "-p", "16", "-n", "8", "-r", "1", "--power", "none",
                               "--idle", "0", "-o", "json"], capture_output=True, text=True, timeout=300)
        assert prof.returncode == 0, prof.stderr[-2000:]
        assert prof.stdout.lstrip().startswith("{"), prof.stdout[:400]
        rpc = json.loads(prof.stdout)["runs"][0]["llm"]["rpc"]
        assert [d["endpoint"] for d in rpc["devices"]] == [d.split("=")[0] for d in devices]
        assert sum(rpc["tensor_split"]) == pytest.approx(1.0) and rpc["network_bytes_per_token"] > 0
        # what each server holds: its share of the repeating blocks (by the GGUF's own tensor sizes), within
        # 2 MiB of llama.cpp's aligned buffers; the servers' cgroup peaks are checked against it below
        from edgelift.core.gguf import read_gguf_info

        blocks = sum(t.nbytes for t in read_gguf_info(smollm2_gguf).tensors if t.name.startswith("blk."))
        weights = [d["buffers"]["model"] for d in rpc["devices"]]
        assert all(w > 0 for w in weights) and sum(weights) >= blocks - 2**21
        assert all(d["allocated_bytes"] == sum(d["buffers"].values()) for d in rpc["devices"])
        # each server process holds its weights in its own heap, read from /proc while the model was loaded
        assert all(d["buffers"]["model"] <= d["server_rss_bytes"] <= d["server_peak_rss_bytes"]
                   for d in rpc["devices"]), rpc["devices"]
        host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, str(smollm2_gguf), json.dumps(devices), PROMPT],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = host.stdout.readline()
        if not line.startswith('"'):  # the host died: say what each server did
            host.kill()
            pytest.fail(f"host output {line!r}; servers (exit, OOM-killed, peak): "
                        f"{[(s.process.poll(), s.oom_killed(), s.peak_bytes()) for s in servers]}; {host.stderr.read()[-800:]}")
        split = json.loads(line)
        peaks = [s.peak_bytes() for s in servers]
        assert not any(s.oom_killed() for s in servers)
        assert all(p is None or d["buffers"]["model"] <= p for d, p in zip(rpc["devices"], peaks)), (rpc, peaks)
    finally:
        for s in servers:
            s.stop()
    out, err = host.communicate("gone\n", timeout=120)
    assert host.returncode == 0, err[-2000:]
    refused = json.loads(out.strip().splitlines()[-1])
    # the servers are gone: they were registered in the split model's worker only, so a plain load still works
    assert refused == "loaded"
    assert split == alone and len(split) > 20
    assert all(p is not None and size / 4 < p < size for p in peaks), (peaks, size)  # each held its share, not all


def test_cli_refuses_devices_for_other_formats(digits_onnx):
    res = CliRunner().invoke(app, ["run", str(digits_onnx), "--random", "--devices", "127.0.0.1:50052"])
    assert res.exit_code == 2 and "--devices splits a GGUF model" in res.output
