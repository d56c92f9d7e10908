"""``ssh://user@host[:port]``: a Raspberry Pi, a Jetson, any Linux board with Python, through OpenSSH.

The system ``ssh`` client does the connecting, so ssh-agent, ``~/.ssh/config`` (or ``--ssh-config``) and
known_hosts work as the user has set them up. Host keys are checked strictly: an unknown key is refused
unless the user passes ``--accept-new-host-key`` (OpenSSH's ``accept-new``: recorded, then enforced).
Models are uploaded once per content hash into the device's cache; the profile runs there through the
runner (``runner.py``), which stops the measurement if the connection goes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

from ...errors import InvalidOptionError
from .base import (DeviceTarget, DeviceUnreachableError, OnLine, RemoteOptions, RemoteRunError, file_sha256,
                   register_target)
from .stream import run_streaming

CONNECT_TIMEOUT_S = 10
_URL = re.compile(r"^ssh://(?:(?P<user>[^@/:\s-][^@/:\s]*)@)?(?P<host>[^@/:\s-][^@/:\s]*)(?::(?P<port>\d+))?/?$")

IDENTITY_SCRIPT = r"""
import json, sys
out = {"python": sys.version.split()[0], "edgelift": None}
try:
    import edgelift
    from edgelift.profilers.device import device_identity
    from edgelift.profilers.profile import backend_versions
    out.update(device_identity().to_dict())
    out.update(edgelift=edgelift.__version__, backends=backend_versions())
except ImportError:
    pass
try:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            out["memory_free_bytes"] = int(line.split()[1]) * 1024
except OSError:
    pass
print(json.dumps(out))
"""


_SHA256_SCRIPT = "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())"


@register_target("ssh")
class SshTarget(DeviceTarget):
    def __init__(self, url: str, user: str | None, host: str, port: int | None) -> None:
        super().__init__(url)
        self.user, self.host, self.port = user, host, port
        self.options = RemoteOptions()

    @classmethod
    def from_url(cls, url: str) -> "SshTarget":
        m = _URL.match(url)
        if not m:
            raise InvalidOptionError(f"device {url!r}: write ssh://user@host or ssh://user@host:port "
                                     "(user and host may not start with '-')")
        return cls(url, m.group("user"), m.group("host"), int(m.group("port")) if m.group("port") else None)

    def configure(self, options: RemoteOptions) -> "SshTarget":
        self.options = options
        return self

    def _ssh(self, remote: str | None = None) -> list[str]:
        o = self.options
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
               "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3",
               "-o", f"StrictHostKeyChecking={'accept-new' if o.accept_new_host_key else 'yes'}"]
        if o.ssh_config is not None:
            cmd += ["-F", str(o.ssh_config)]
        if self.port:
            cmd += ["-p", str(self.port)]
        cmd.append(f"{self.user}@{self.host}" if self.user else self.host)
        return cmd + ([remote] if remote is not None else [])

    def _call(self, remote: str, stdin=None, timeout: float = 120) -> str:
        try:
            done = subprocess.run(self._ssh(remote), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise DeviceUnreachableError("the ssh client is not installed: install OpenSSH (apt install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise DeviceUnreachableError(f"{self.url}: no answer within {timeout:.0f} s") from None
        if done.returncode == 255:
            raise DeviceUnreachableError(f"{self.url}: {self._why(done.stderr)}")
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise RemoteRunError(f"{self.url}: {last}")
        return done.stdout

    def _why(self, stderr: str) -> str:
        text = stderr.strip()
        if "Host key verification failed" in text or "No ED25519 host key is known" in text or "host key" in text.lower() \
                and "known" in text.lower():
            return ("the host key is not in known_hosts and was refused: check it (ssh-keyscan) and add it, "
                    "or pass --accept-new-host-key to trust it on first use")
        if "Permission denied" in text:
            return "authentication failed (permission denied): load a key into ssh-agent or set IdentityFile"
        return (text.splitlines() or ["connection failed"])[-1]

    @property
    def python(self) -> str:
        return self.options.remote_python

    def identity(self) -> dict:
        out = self._call(f"{_remote_path(self.python)} -c {shlex.quote(IDENTITY_SCRIPT)}")
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteRunError(f"{self.url}: {self.python} did not answer the identity probe") from None

    def ensure_edge(self, identity: dict) -> dict:
        """edgelift on the device. With ``--install`` it is this installation's own wheel (``wheel.py``),
        uploaded by content hash, checked against that hash on the device and pip-installed from the file
        into a venv in the device cache: our package is never looked up by name on a registry there."""
        if not self.options.install:
            if identity.get("edgelift"):
                return identity
            raise RemoteRunError(f"{self.url}: edgelift is not installed for {self.python}; pass --install to "
                                 "install this machine's edgelift wheel into a venv on the device, or --remote-python PATH")
        from ...core.cache import cache_root
        from .wheel import local_wheel

        wheel = local_wheel(cache_root() / "wheels")
        venv = f"{self.options.remote_cache}/venv"
        py, stamp = _remote_path(f"{venv}/bin/python"), _remote_path(f"{venv}/.edgelift-wheel")
        extras = ",".join(sorted(self.options.install_extras))
        wanted = f"{wheel.sha256} {extras}"
        if self._call(f"cat {stamp} 2>/dev/null || true").strip() != wanted:
            remote, _ = self.upload(wheel.path, kind="wheels", digest=wheel.sha256)
            q = _remote_path(remote)
            seen = self._call(f"{_remote_path(self.python)} -c {shlex.quote(_SHA256_SCRIPT)} {q}").strip()
            if seen != wheel.sha256:
                self._call(f"rm -f {q}")
                raise RemoteRunError(f"{self.url}: the uploaded wheel's SHA-256 is {seen[:16]}..., not "
                                     f"{wheel.sha256[:16]}...: the copy was damaged; run again")
            spec = _remote_path(remote) + (shlex.quote(f"[{extras}]") if extras else "")
            self._call(f"test -x {py} || {_remote_path(self.python)} -m venv {_remote_path(venv)}; "
                       f"{py} -m pip install -q --disable-pip-version-check {spec} && "
                       f"{py} -m pip install -q --disable-pip-version-check --force-reinstall --no-deps {q} && "
                       f"echo {shlex.quote(wanted)} > {stamp}", timeout=1800)
        self.options.remote_python = f"{venv}/bin/python"
        return self.identity()

    def upload(self, model: Path, kind: str = "models", digest: str | None = None) -> tuple[str, bool]:
        """(remote path, uploaded?): a file goes into the device cache once per content."""
        if model.is_dir():
            raise InvalidOptionError(f"{model.name} is a directory: remote profiling takes single-file models")
        remote = f"{self.options.remote_cache}/{kind}/{(digest or file_sha256(model))[:16]}/{model.name}"
        q = _remote_path(remote)
        if self._call(f"test -f {q} && echo cached || true").strip() == "cached":
            return remote, False
        parent = _remote_path(remote.rsplit("/", 1)[0])
        with open(model, "rb") as f:  # a part file per upload: two fleet entries on one host must not mix
            self._call(f"mkdir -p {parent} && cat > {q}.part.$$ && mv -f {q}.part.$$ {q}", stdin=f, timeout=3600)
        return remote, True

    def profile(self, model: Path, options: RemoteOptions, on_line: OnLine | None = None) -> dict:
        self.configure(options)
        ident = self.ensure_edge(self.identity())
        remote, uploaded = self.upload(model)
        if on_line is not None:
            on_line(f"{'uploaded' if uploaded else 'cached on the device:'} {model.name}")
        args = [self.python, "-m", "edgelift.profilers.targets.runner", remote, *options.profile_args, "--stream-results"]
        cmd = " ".join(_remote_path(a) if a in (remote, self.python) else shlex.quote(a) for a in args)
        doc = run_streaming(self._ssh(cmd), self.url, model, ident, on_line)
        doc["model"].update(path=str(model), name=model.name, label=model.name if doc["model"].get("label") in
                            (None, Path(remote).name) else doc["model"]["label"])
        doc.setdefault("remote", {})["uploaded"] = uploaded
        if doc["model"].get("accuracy") is None:  # the conversion report lives beside the model, here
            from ..profile import accuracy_from_conversion

            doc["model"]["accuracy"] = accuracy_from_conversion(model)
        return doc


def _remote_path(p: str) -> str:
    """Quote for the remote shell but let a leading ``~/`` expand there."""
    return "~/" + shlex.quote(p[2:]) if p.startswith("~/") else shlex.quote(p)
