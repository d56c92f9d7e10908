"""Small models built in code for the tests, shared between test modules (tests never import each other)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def dynamic_range_fc(path: Path) -> Path:
    """A FULLY_CONNECTED with int8 weights and float activations (what `int8-dynamic` gives)."""
    from edgelift.converters.tflite.builder import TFLiteBuilder

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 8)).astype(np.int8)
    b = TFLiteBuilder()
    x = b.tensor("x", (1, 8))
    y = b.tensor("y", (1, 4))
    wt = b.constant("w", w, scales=[0.02] * 4, zero_points=[0] * 4, quantized_dimension=0)
    b.op("FULLY_CONNECTED", [x, wt, -1], [y], "FullyConnectedOptions", AsymmetricQuantizeInputs=True)
    b.inputs, b.outputs = [x], [y]
    path.write_bytes(b.finish())
    return path
