"""Remote profiling over SSH against a real OpenSSH server started on 127.0.0.1 by the tests (Debian's
openssh-server, installed by `make test`), with a throwaway host key and user key in a temp dir. The "device"
is this machine: the remote side runs this checkout's Python, so the whole flow is real — key auth,
known_hosts checking, upload into the device cache, the device-side runner, streamed results."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgelift.profilers.targets.base import DeviceUnreachableError, RemoteOptions, parse_target

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
pytestmark = pytest.mark.skipif(SSHD is None or shutil.which("ssh-keygen") is None or os.geteuid() != 0,
                                reason="needs openssh-server (make test installs it) and root for sshd's privilege separation")
PROFILE_ARGS = ["--runs", "20", "--min-secs", "0", "--min-sample-ms", "0", "--warmup", "2", "--idle", "0", "--power", "none", "--no-per-op"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """A throwaway sshd: host key, user key, known_hosts and a client config, all under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "id_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
        os.chmod(root / "authorized_keys", 0o600)
        host_pub = (root / "host_key.pub").read_text().split()
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin yes\nStrictModes no\nUsePAM no\n")
        self.config = self.client_config(root / "known_hosts", "ssh_config")
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start")

    def client_config(self, known_hosts: Path, name: str) -> Path:
        path = self.root / name
        path.write_text(f"Host edge-test\n  HostName 127.0.0.1\n  Port {self.port}\n  User root\n"
                        f"Host *\n  IdentityFile {self.root / 'id_ed25519'}\n  IdentitiesOnly yes\n"
                        f"  UserKnownHostsFile {known_hosts}\n  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n")
        return path

    def options(self, config: Path | None = None, **kw) -> RemoteOptions:
        return RemoteOptions(profile_args=PROFILE_ARGS, ssh_config=config or self.config, remote_python=sys.executable,
                             remote_cache=str(self.root / "device-cache"), **kw)

    def kill(self) -> None:
        """Kill the server and every session process under it, as a crash or a pulled cable would."""
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            if any(s in _cmdline(pid) for s in ("sshd",)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(5)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _remote_processes(marker: str) -> list[str]:
    return [c for d in Path("/proc").iterdir() if d.name.isdigit() and marker in (c := _cmdline(int(d.name)))
            and "pytest" not in c]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.kill()


@pytest.fixture(scope="module")
def int8_onnx(digits_result) -> Path:
    return Path(digits_result.artifact("int8").path)


def test_profile_over_ssh_end_to_end_and_cache_hit(sshd, int8_onnx, tmp_path):
    from edgelift.cli import app

    runner = CliRunner()
    args = ["profile", str(int8_onnx), "--device", "ssh://edge-test", "--ssh-config", str(sshd.config),
            "--remote-python", sys.executable, "--remote-cache", str(sshd.root / "device-cache"),
            "--runs", "15", "--min-secs", "0", "--min-sample-ms", "0", "--warmup", "1", "--idle", "0", "--power", "none", "--json", str(tmp_path / "r.json")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["partial"] is False and doc["device"]["url"] == "ssh://edge-test"
    assert doc["remote"]["uploaded"] is True
    assert doc["model"]["name"] == int8_onnx.name and doc["runs"][0]["latency"]["n_samples"] == 15
    assert doc["device"]["edgelift"] and doc["device"]["hostname"]
    cached = list((sshd.root / "device-cache" / "models").glob(f"*/{int8_onnx.name}"))
    assert len(cached) == 1 and cached[0].read_bytes() == int8_onnx.read_bytes()
    mtime = cached[0].stat().st_mtime_ns
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["remote"]["uploaded"] is False and cached[0].stat().st_mtime_ns == mtime  # cache hit: no re-upload


def test_unknown_host_key_is_refused_unless_accepted_explicitly(sshd):
    empty = sshd.root / "empty_known_hosts"
    empty.write_text("")
    target = parse_target("ssh://edge-test")
    with pytest.raises(DeviceUnreachableError, match="host key"):
        target.configure(sshd.options(sshd.client_config(empty, "cfg_unknown"))).identity()
    assert empty.read_text() == ""  # nothing was recorded
    ident = target.configure(sshd.options(sshd.root / "cfg_unknown", accept_new_host_key=True)).identity()
    assert ident["edgelift"] and str(sshd.port) in empty.read_text()  # trusted on first use, now recorded


def test_dropped_connection_gives_a_partial_marked_report_and_no_stray_process(int8_onnx, tmp_path):
    server = Sshd(tmp_path / "sshd")
    target = parse_target("ssh://edge-test")
    opts = server.options()
    opts.profile_args = ["--duration", "2", "--sweep", "threads=1,2,1,2", "--warmup", "1", "--idle", "0",
                         "--power", "none", "--no-per-op"]
    lines, out = [], {}
    thread = threading.Thread(target=lambda: out.update(doc=target.profile(int8_onnx, opts, lines.append)))
    thread.start()
    deadline = time.time() + 60
    while not any(ln.startswith("measured") for ln in lines) and time.time() < deadline:
        time.sleep(0.05)
    assert any(ln.startswith("measured") for ln in lines), lines
    server.kill()
    thread.join(30)
    doc = out["doc"]
    assert doc["partial"] is True and 1 <= len(doc["runs"]) < 4
    assert "partial results" in doc["warnings"][0]
    marker = str(server.root / "device-cache")
    deadline = time.time() + 10
    while _remote_processes(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert _remote_processes(marker) == []


def test_fleet_with_an_unreachable_device(sshd, int8_onnx, tmp_path):
    from edgelift.cli import app

    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[[device]]\nname = "pi-a"\nurl = "ssh://edge-test"\n\n[[device]]\nname = "pi-b"\n'
                     f'url = "ssh://root@127.0.0.1:{sshd.port}"\n\n[[device]]\nname = "gone"\nurl = "ssh://root@127.0.0.1:{_free_port()}"\n')
    res = CliRunner().invoke(app, [
        "profile", str(int8_onnx), "--devices", str(fleet), "--ssh-config", str(sshd.config), "--remote-python",
        sys.executable, "--remote-cache", str(sshd.root / "device-cache"), "--runs", "10", "--min-secs", "0", "--warmup", "1", "--idle", "0",
        "--power", "none", "--no-per-op", "--json", str(tmp_path / "f.json"), "--markdown", str(tmp_path / "cmp.md"),
        "--html", str(tmp_path / "cmp.html")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "cmp.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith(f"| {int8_onnx.name}")]
    assert len(table) == 2
    assert "## Failed devices" in md and "**gone**" in md and "pi-a" not in md.split("## Failed devices")[1]
    assert sorted(p.name for p in tmp_path.glob("f.*.json")) == ["f.pi-a.json", "f.pi-b.json"]
    assert "1 device failed" in (tmp_path / "cmp.html").read_text()


def test_ctrl_c_stops_the_device_run_and_keeps_the_partial_report(sshd, int8_onnx):
    import _thread

    target = parse_target("ssh://edge-test")
    opts = sshd.options()
    opts.profile_args = ["--duration", "2", "--sweep", "threads=1,2,1", "--warmup", "1", "--idle", "0",
                         "--power", "none", "--no-per-op"]

    def on_line(line: str) -> None:
        if line.startswith("measured"):
            _thread.interrupt_main()  # the user presses Ctrl-C after the first setting

    # a shell's background job starts with SIGINT ignored, and interrupt_main() then does nothing
    from edgelift.profilers.targets.fleet import profile_fleet

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # through profile_fleet, as the CLI calls it: one device runs in the main thread, where Ctrl-C lands
        [result] = profile_fleet([("pi", "ssh://edge-test")], int8_onnx, opts, on_line=on_line)
    finally:
        signal.signal(signal.SIGINT, previous)
    doc = result.doc
    assert doc["partial"] is True and len(doc["runs"]) == 1 and "Ctrl-C" in doc["warnings"][0]
    marker = str(sshd.root / "device-cache")
    deadline = time.time() + 10
    while _remote_processes(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert _remote_processes(marker) == []


def test_edge_devices_lists_identity_and_unreachable(sshd):
    from edgelift.cli import app

    res = CliRunner().invoke(app, ["devices", "--device", "ssh://edge-test", "--device", f"ssh://root@127.0.0.1:{_free_port()}",
                                   "--ssh-config", str(sshd.config), "--remote-python", sys.executable])
    assert res.exit_code == 2  # one device could not be reached
    ok = next(ln for ln in res.output.splitlines() if "ssh://edge-test" in ln)
    assert "ok" in ok and sys.version.split()[0] in ok
    assert "unreachable" in next(ln for ln in res.output.splitlines() if "127.0.0.1" in ln)


def test_device_without_edgelift_is_refused_with_the_way_out(sshd, int8_onnx):
    """The device's system Python has no edgelift: without --install the run stops before uploading, with
    a one-line error that names --install and --remote-python."""
    from edgelift.profilers.targets.base import RemoteRunError

    system = "/usr/bin/python3"
    if subprocess.run([system, "-c", "import edgelift"], capture_output=True, cwd="/").returncode == 0:
        pytest.skip("the system Python has edgelift")
    opts = sshd.options()
    opts.remote_python = system
    with pytest.raises(RemoteRunError, match="--install") as e:
        parse_target("ssh://edge-test").profile(int8_onnx, opts)
    assert "\n" not in str(e.value)
    assert not list((sshd.root / "device-cache" / "models").glob(f"*/{int8_onnx.name}.part*"))


def _python_without_edgelift() -> str | None:
    """The interpreter this venv was made from: no edgelift there (a device's system Python)."""
    base = Path(sys.base_prefix) / "bin" / "python3"
    if not base.exists() or subprocess.run([str(base), "-c", "import edgelift"], capture_output=True, cwd="/").returncode == 0:
        return None
    return str(base)


@pytest.mark.slow
def test_install_sends_this_machines_wheel_checked_by_hash(sshd, int8_onnx):
    """--install on a device without edgelift: the wheel packed from this installation is uploaded once,
    its SHA-256 checked there, pip-installed from the file into the device cache's venv (our package never
    resolved by name), and the profile runs on that code. A damaged upload is refused and sent again."""
    import hashlib
    import zipfile

    from edgelift.profilers.targets.base import RemoteRunError
    from edgelift.profilers.targets.wheel import pack_wheel

    system = _python_without_edgelift()
    if system is None:
        pytest.skip("no Python without edgelift to stand in for a device's system Python")
    opts = sshd.options(install=True)
    opts.remote_python = system
    doc = parse_target("ssh://edge-test").profile(int8_onnx, opts)
    assert doc["runs"][0]["latency"]["n_samples"] >= 1
    venv = sshd.root / "device-cache" / "venv"
    assert opts.remote_python == str(venv / "bin" / "python")
    wheels = list((sshd.root / "device-cache" / "wheels").glob("*/edgelift-*.whl"))
    assert len(wheels) == 1
    packed = pack_wheel()
    assert hashlib.sha256(wheels[0].read_bytes()).hexdigest() == hashlib.sha256(packed).hexdigest()
    info = next(venv.glob("lib/python*/site-packages/edgelift-*.dist-info"))
    assert json.loads((info / "direct_url.json").read_text())["url"] == wheels[0].as_uri()  # from the file
    with zipfile.ZipFile(wheels[0]) as z:  # the same code as here
        import edgelift.cli

        assert z.read("edgelift/cli.py") == Path(edgelift.cli.__file__).read_bytes()
    # damaged in the device cache: refused by its hash, removed, and the next run uploads it again
    wheels[0].write_bytes(b"not a wheel")
    (venv / ".edgelift-wheel").unlink()
    opts2 = sshd.options(install=True)
    opts2.remote_python = system
    with pytest.raises(RemoteRunError, match="SHA-256"):
        parse_target("ssh://edge-test").profile(int8_onnx, opts2)
    assert not wheels[0].exists()
    opts3 = sshd.options(install=True)
    opts3.remote_python = system
    assert parse_target("ssh://edge-test").profile(int8_onnx, opts3)["runs"]


def test_rpc_servers_started_over_ssh_serve_a_split_model_and_stop_with_edge(sshd, smollm2_gguf, tmp_path):
    """edge serve-rpc --fleet: a server per [[device]] started over SSH (memory-capped in a cgroup on the
    device), a model split over them gives llama.cpp's single-process text, and closing edge's side ends them."""
    from edgelift.core import memlimit
    from edgelift.profilers.targets.rpc_launch import read_rpc_fleet, start_servers, stop_servers
    from edgelift.runtimes.rpc import rpc_unavailable

    why = rpc_unavailable() or memlimit.unavailable()
    if why:
        pytest.skip(why)
    ports = [_free_port(), _free_port()]
    fleet = tmp_path / "fleet.toml"
    fleet.write_text("".join(f'[[device]]\nurl = "ssh://edge-test"\nrpc = "127.0.0.1:{p}"\nmemory = "200MiB"\n'
                             for p in ports))
    servers = read_rpc_fleet(fleet)
    assert [s.device for s in servers] == [f"127.0.0.1:{p}=200MiB" for p in ports]
    start_servers(servers, sshd.options())
    try:
        running = _remote_processes("edgelift.runtimes.rpc")
        assert len(running) == 2 and all("--memory 200MiB" in c for c in running)
        pids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
                and "edgelift.runtimes.rpc" in _cmdline(int(d.name)) and "pytest" not in _cmdline(int(d.name))]
        assert all("edgelift-" in Path(f"/proc/{pid}/cgroup").read_text() for pid in pids)  # capped on the device
        script = ("import sys, edgelift\nwith edgelift.load(sys.argv[1], backend='llama.cpp', devices=sys.argv[2], "
                  "n_ctx=128, logits_all=False) as m:\n    print(repr(m.generate('The capital of France is', max_tokens=16)))")
        host = subprocess.run([sys.executable, "-c", script, str(smollm2_gguf), ",".join(s.device for s in servers)],
                              capture_output=True, text=True, timeout=300)
        assert host.returncode == 0, host.stderr[-1500:]
        # what each server process holds, read on the device over SSH: the very process started there
        from edgelift.profilers.targets.rpc_launch import measure_over_ssh

        read = [measure_over_ssh("ssh://edge-test", p, sshd.options()) for p in ports]
        assert sorted(found["pid"] for found, _ in read) == sorted(pids), read
        assert all(0 < found["rss_bytes"] <= found["peak_rss_bytes"] for found, _ in read)
    finally:
        stop_servers(servers)
    import edgelift

    with edgelift.load(smollm2_gguf, backend="llama.cpp", n_ctx=128, logits_all=False) as m:
        alone = m.generate("The capital of France is", max_tokens=16)
    assert host.stdout.strip().splitlines()[-1] == repr(alone)
    deadline = time.time() + 10
    while _remote_processes("edgelift.runtimes.rpc") and time.time() < deadline:
        time.sleep(0.2)
    assert not _remote_processes("edgelift.runtimes.rpc")  # nothing left running on the device
    for p in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", p), timeout=1).close()
