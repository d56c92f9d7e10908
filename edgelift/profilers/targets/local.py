"""``local``: this machine, through the same runner as a remote device (one code path for all targets)."""

from __future__ import annotations

import sys
from pathlib import Path

from .base import DeviceTarget, OnLine, RemoteOptions, register_target
from .stream import run_streaming


@register_target("local")
class LocalTarget(DeviceTarget):
    @classmethod
    def from_url(cls, url: str) -> "LocalTarget":
        return cls("local")

    def identity(self) -> dict:
        from ..device import device_identity
        from ..profile import backend_versions
        from ... import __version__

        out = device_identity().to_dict()
        out.update(edgelift=__version__, backends=backend_versions())
        return out

    def profile(self, model: Path, options: RemoteOptions, on_line: OnLine | None = None) -> dict:
        cmd = [sys.executable, "-m", "edgelift.profilers.targets.runner", str(model), *options.profile_args,
               "--stream-results"]
        return run_streaming(cmd, self.url, model, self.identity(), on_line)
