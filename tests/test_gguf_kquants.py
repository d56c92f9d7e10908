"""Our numpy Q4_K / Q5_K / Q6_K encoders against llama.cpp's own quantizer, byte for byte.

The reference is ``ggml_quantize_chunk`` in the libggml-base that llama-cpp-python ships (the code
``llama-quantize`` runs without an importance matrix), called through ctypes on the same floats."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from edgelift.converters.gguf.kquants import BLOCK_BYTES, K_QUANTIZERS

GGML_TYPES = {"Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


@pytest.fixture(scope="module")
def ggml():
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(str(next((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.so*"))))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]

    def quantize(x: np.ndarray, qtype: str) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        out = np.zeros(x.size // 256 * BLOCK_BYTES[qtype], np.uint8)
        lib.ggml_quantize_init(GGML_TYPES[qtype])
        n = lib.ggml_quantize_chunk(GGML_TYPES[qtype], x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
        assert n == out.size
        return out.reshape(x.shape[0], -1)

    return quantize


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "gaussian": rng.standard_normal((48, 512)) * 0.02,
        "heavy_tailed": rng.standard_t(2, (24, 768)) * 0.05,
        "sparse": rng.standard_normal((16, 1024)) * (rng.random((16, 1024)) < 0.05),
        # all-zero, constant negative, all-positive and tiny blocks: the early exits of the C code
        "edge_blocks": np.concatenate([np.zeros((2, 256)), np.full((2, 256), -0.3), np.abs(rng.standard_normal((2, 256))),
                                       rng.standard_normal((2, 256)) * 1e-20, rng.standard_normal((2, 256)) * 300]),
    }


@pytest.mark.parametrize("qtype", sorted(K_QUANTIZERS))
@pytest.mark.parametrize("case", sorted(_tensors()))
def test_k_quant_bytes_equal_llama_cpp(ggml, qtype, case):
    x = _tensors()[case].astype(np.float32)
    ours = K_QUANTIZERS[qtype](x)
    theirs = ggml(x, qtype)
    assert ours.shape == theirs.shape == (x.shape[0], x.shape[1] // 256 * BLOCK_BYTES[qtype])
    bad_rows = np.flatnonzero((ours != theirs).any(axis=1))
    assert bad_rows.size == 0, f"{qtype} differs from llama.cpp in rows {bad_rows[:10]}"


def test_k_quants_dequantize_close_to_input():
    """The gguf package's dequantizers (llama.cpp's Python reference) read our blocks back."""
    gguf = pytest.importorskip("gguf")
    x = np.random.default_rng(1).standard_normal((8, 512)).astype(np.float32)
    for qtype, bound in (("Q4_K", 0.12), ("Q5_K", 0.06), ("Q6_K", 0.03)):
        back = gguf.quants.dequantize(K_QUANTIZERS[qtype](x), gguf.GGMLQuantizationType[qtype])
        assert back.shape == x.shape
        assert np.linalg.norm(back - x) / np.linalg.norm(x) < bound
