"""The digits CNN's ONNX export (from `edge convert`) written as a float .tflite by hand, with a
dynamic batch axis.

`edge convert --to tflite` writes batch-1 models so far; the runtime tests need a .tflite whose
batch can be resized (LiteRT and tflite-runtime, batch 1 and 360), so this lowers exactly this
network's ops (Conv+ReLU, MaxPool, Flatten, Gemm) with a -1 batch dimension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digits_onnx_to_tflite(onnx_path: str | Path) -> bytes:
    import onnx
    from onnx import numpy_helper

    from edgelift.converters.tflite.builder import TFLiteBuilder

    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    b = TFLiteBuilder("digits CNN (edgelift example)")
    x = b.tensor("x", (-1, 1, 8, 8))
    perm_nhwc = b.constant("perm_nhwc", np.array([0, 2, 3, 1], np.int32))
    h = b.tensor("x_nhwc", (-1, 8, 8, 1))
    b.op("TRANSPOSE", [x, perm_nhwc], [h])

    size, cin = 8, 1
    for i, (cout, pool) in enumerate([(16, False), (32, True), (64, True)], start=1):
        k = b.constant(f"conv{i}.weight", w[f"conv{i}.weight"].transpose(0, 2, 3, 1))  # OIHW -> OHWI
        bias = b.constant(f"conv{i}.bias", w[f"conv{i}.bias"])
        y = b.tensor(f"conv{i}", (-1, size, size, cout))
        b.op("CONV_2D", [h, k, bias], [y], "Conv2DOptions", Padding=b.tfl.Padding.SAME, StrideW=1, StrideH=1,
             FusedActivationFunction=b.tfl.ActivationFunctionType.RELU, DilationWFactor=1, DilationHFactor=1)
        h = y
        if pool:
            size //= 2
            y = b.tensor(f"pool{i}", (-1, size, size, cout))
            b.op("MAX_POOL_2D", [h], [y], "Pool2DOptions", Padding=b.tfl.Padding.VALID, StrideW=2, StrideH=2,
                 FilterWidth=2, FilterHeight=2)
            h = y
        cin = cout

    # ONNX flattens NCHW: go back to channel-first before the reshape so FC weights apply unchanged
    perm_nchw = b.constant("perm_nchw", np.array([0, 3, 1, 2], np.int32))
    nchw = b.tensor("features_nchw", (-1, cin, size, size))
    b.op("TRANSPOSE", [h, perm_nchw], [nchw])
    flat = b.tensor("flatten", (-1, cin * size * size))
    b.op("RESHAPE", [nchw, b.constant("flat_shape", np.array([-1, cin * size * size], np.int32))], [flat])
    fc1 = b.tensor("fc1", (-1, 64))
    b.op("FULLY_CONNECTED", [flat, b.constant("fc1.weight", w["fc1.weight"]), b.constant("fc1.bias", w["fc1.bias"])],
         [fc1], "FullyConnectedOptions", FusedActivationFunction=b.tfl.ActivationFunctionType.RELU)
    logits = b.tensor("logits", (-1, 10))
    b.op("FULLY_CONNECTED", [fc1, b.constant("fc2.weight", w["fc2.weight"]), b.constant("fc2.bias", w["fc2.bias"])],
         [logits], "FullyConnectedOptions")
    b.inputs, b.outputs = [x], [logits]
    return b.finish()
