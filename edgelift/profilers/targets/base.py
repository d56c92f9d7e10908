"""Where a profile runs: this machine, a board over SSH, a phone over adb. One class per scheme, in a registry.

A target takes a model file and the ``edge profile`` options, runs the measurement on its device and
returns the same report document as a local run (``schemas/profile.schema.json``), with the device's
identity in it. A run that is cut short (Ctrl-C, a dropped connection) returns what was measured with
``partial: true``; a device that cannot be reached raises :class:`DeviceUnreachableError`.
"""

from __future__ import annotations

import hashlib
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from ...errors import EdgeError, InvalidOptionError


class DeviceUnreachableError(EdgeError):
    """The device cannot be reached or refused us (connection, authentication, unknown host key)."""


class RemoteRunError(EdgeError):
    """The device was reached but the measurement failed there (its message carries the device's error)."""


@dataclass
class RemoteOptions:
    """What ``edge profile`` forwards to a device: its own options as CLI arguments, plus target settings."""

    profile_args: list[str] = field(default_factory=list)  # e.g. ["--runs", "100", "--threads", "2"]
    threads: int | None = None
    runs: int = 100
    warmup: int = 10
    n_prompt: int = 128
    n_gen: int = 64
    device_binary: Path | None = None  # adb: benchmark_model or llama-bench built for Android
    accept_new_host_key: bool = False  # ssh: trust a host key seen for the first time (never silently)
    install: bool = False  # ssh: install this machine's edgelift wheel into a venv on the device
    delegate: str | None = None  # adb: benchmark_model's --use_xnnpack / --use_gpu / --use_nnapi
    n_gpu_layers: int | None = None  # adb: llama-bench -ngl
    lists: dict[str, list[int]] = field(default_factory=dict)  # adb: -t/-p/-n lists, one binary run per setting
    install_extras: tuple[str, ...] = ()  # ...with these extras (the model's backend: "tflite", "llama")
    power_rate_hz: float = 10.0
    idle_s: float | None = None  # seconds of idle power baseline (None: the target's default)
    ssh_config: Path | None = None  # ssh: -F FILE instead of ~/.ssh/config
    remote_python: str = "python3"  # ssh: the device's interpreter (with edgelift installed, or --install)
    remote_cache: str = "~/.cache/edgelift"  # ssh: models (by content hash) and the --install venv


OnLine = Callable[[str], None]  # progress lines streamed from the device


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks: models are cached on devices by their content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def terminate(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop a local client process (ssh, adb): politely, then for good; the device side notices it go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class DeviceTarget(ABC):
    """One device. ``url`` is how the user named it (``ssh://pi@raspberrypi.local``, ``adb://SERIAL``)."""

    scheme: ClassVar[str] = ""

    def __init__(self, url: str) -> None:
        self.url = url

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> "DeviceTarget":
        """Parse ``url`` (InvalidOptionError when malformed)."""

    @abstractmethod
    def identity(self) -> dict:
        """Model, OS, Python, edgelift and backends, free memory (DeviceUnreachableError when not reachable)."""

    @abstractmethod
    def profile(self, model: Path, options: RemoteOptions, on_line: OnLine | None = None) -> dict:
        """Run the profile on the device and return the report document."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


TARGETS: dict[str, type[DeviceTarget]] = {}


def register_target(scheme: str):
    def deco(cls):
        cls.scheme = scheme
        TARGETS[scheme] = cls
        return cls

    return deco


def parse_target(url: str) -> DeviceTarget:
    """``local``, ``ssh://user@host[:port]``, ``adb://SERIAL`` or ``adb://`` (the only attached phone)."""
    from . import adb, local, ssh  # noqa: F401 - registration

    scheme = "local" if url == "local" else url.partition("://")[0] if "://" in url else ""
    if scheme not in TARGETS:
        raise InvalidOptionError(f"device {url!r}: write local, ssh://user@host[:port] or adb://SERIAL")
    return TARGETS[scheme].from_url(url)
