"""What this CPU's integer kernels can do, where it changes how a model must be quantized.

x86-64 CPUs without VNNI (AVX2 only: AMD Zen 1-3, Intel before Cascade Lake / Alder Lake) run ONNX Runtime's
uint8 x int8 kernels with VPMADDUBSW, which adds two byte products into a *saturating* int16: a large uint8
activation against two full-range int8 weights (255 x 127 x 2 = 64,770 > 32,767) is clipped, and the layer's
output is wrong by as much (measured here: a MobileNetV2's int8 cosine 0.950 against 0.972 with 7-bit weights).
VNNI's VPDPBUSD accumulates in int32 and ARM's kernels widen first; neither saturates. ONNX Runtime's own advice
is to quantize weights to 7 bits (``reduce_range``) for such CPUs.
"""

from __future__ import annotations

import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags Linux lists for this CPU (empty where there is no /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def int8_kernels_saturate(machine: str | None = None, flags: set[str] | None = None) -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels on this CPU saturate full-range (8-bit) weights: x86-64 with
    AVX2 and no VNNI (see the module docstring)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags() if flags is None else flags
    return "avx2" in flags and not any(f in flags for f in VNNI_FLAGS)
