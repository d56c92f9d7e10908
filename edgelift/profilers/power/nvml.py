"""NVIDIA discrete GPUs through NVML (``pynvml`` from the ``nvidia-ml-py`` package).

``pynvml`` is imported only when detection runs, so edgelift neither needs it nor loads it on
devices; without it, or without a GPU whose power can be read, the source is not detected.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .base import DeviceEnv, PowerReading, PowerSource, register_power_source


@register_power_source("nvml")
class NvmlPowerSource(PowerSource):
    """GPU board power per GPU (``nvmlDeviceGetPowerUsage``, mW); total = sum of the GPUs.

    This is the GPUs only, not the host CPU or the rest of the machine.
    """

    looked_for = "an NVIDIA GPU through NVML (the nvidia-ml-py package, module 'pynvml')"

    def __init__(self, env: DeviceEnv, nvml: ModuleType, handles: list[Any]) -> None:
        self.env = env
        self.nvml = nvml
        self.handles = handles
        self._closed = False

    @classmethod
    def detect(cls, env: DeviceEnv) -> NvmlPowerSource | None:
        try:
            nvml = importlib.import_module("pynvml")
        except Exception:  # noqa: BLE001 - ImportError, or a broken install
            return None
        try:
            nvml.nvmlInit()
        except Exception:  # noqa: BLE001 - no driver
            return None
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            source = cls(env, nvml, handles)
            if handles and source.read() is not None:
                return source
        except Exception:  # noqa: BLE001 - detection never raises
            pass
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
        return None

    def read(self) -> PowerReading | None:
        t = self.env.clock()
        rails = {}
        for i, h in enumerate(self.handles):
            try:
                rails[f"gpu{i}"] = self.nvml.nvmlDeviceGetPowerUsage(h) / 1e3
            except Exception:  # noqa: BLE001 - GPUs without power readout (NVML_ERROR_NOT_SUPPORTED)
                continue
        return PowerReading(t, sum(rails.values()), rails) if rails else None

    def describe(self) -> str:
        return f"NVML nvmlDeviceGetPowerUsage, {len(self.handles)} GPU(s), total = sum of GPUs (GPU boards only)"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
