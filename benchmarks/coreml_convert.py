"""Core ML conversion of MobileNetV2-224 (plain torch, seed 0, BatchNorm statistics from random images): time and package size per mode.

Each mode is converted in its own edgelift.convert call (torch export, coremltools, compression, save and
the numpy MIL executor's parity run all included); sizes are compared with the fp16 package, the usual
Core ML baseline, and times with the fp16 conversion. The fp16 package's relative L2 error on six
images is compared with PyTorch's own fp16 arithmetic (``model.half()``) on the same images.

    python benchmarks/coreml_convert.py
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

import torch
from _common import result

import edgelift
from examples.models.mobilenet_v2 import build_model, with_batch_statistics

MODES = ["fp16", "none", "int8", "int4", "palettize4", "palettize6"]


def main() -> None:
    model = with_batch_statistics(build_model())  # O(1) logits: fp16 errors are measurable
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    images = torch.randn(6, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(images).double()
        torch_fp16 = float((model.half()(images.half()).double() - ref).norm() / ref.norm())
    model.float()
    times, sizes, rel = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/val.npz", x=images.numpy())
        # warm-up: imports (torch.onnx, coremltools) would otherwise be charged to the first mode
        edgelift.convert(model, example_inputs=(x,), to="coreml", out=f"{tmp}/warm", name="m")
        for mode in MODES:
            t0 = time.perf_counter()
            r = edgelift.convert(model, example_inputs=(x,), to="coreml", quantize=mode, coreml_target="iOS18",
                                 validation=f"{tmp}/val.npz", out=f"{tmp}/{mode}", name="mobilenet_v2")
            times[mode] = time.perf_counter() - t0
            a = r.artifacts[0]
            sizes[mode], rel[mode] = a.size_bytes, a.parity.primary.rel_l2_error
    for mode in MODES:
        result(f"coreml_convert.mobilenet_v2.{mode}.size", sizes[mode], "bytes", sizes["fp16"])
    for mode in MODES:
        result(f"coreml_convert.mobilenet_v2.{mode}.convert_wall", times[mode], "s", times["fp16"])
    result("coreml_convert.mobilenet_v2.fp16.rel_l2_vs_torch_fp16", rel["fp16"], "ratio", torch_fp16)
    for mode in MODES:
        print(f"# {mode}: relative L2 error vs torch {rel[mode]:.3g} (numpy MIL executor)")


if __name__ == "__main__":
    main()
