"""GGML tensor types: sizes and encoders, one table.

Block types are encoded by llama.cpp's own quantizer (``ggml_quantize_chunk``, through the ggml library the
``llama`` extra installs) where it is present: the bytes ``llama-quantize`` writes, at its speed. Without
it, legacy block types (Q4_0 ... Q8_0) and BF16 use gguf's numpy port of llama.cpp's reference quantizers
and K-quants use ours (``kquants``, byte-identical too, tested against ggml). Tensors are encoded in slices
of rows so that the temporaries of the encoders stay small whatever the tensor's size.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .kquants import K_QUANTIZERS

ROWS_PER_SLICE_ELEMENTS = 1 << 20  # encode ~1M values at a time (a few MB of temporaries)
USE_GGML = True  # llama.cpp's quantizer where installed; False: the numpy ports (tests compare the two)


def ggml_type(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name]


def block_size(name: str) -> tuple[int, int]:
    """(values per block, bytes per block)."""
    import gguf

    return gguf.GGML_QUANT_SIZES[ggml_type(name)]


def fits(name: str, row: int) -> bool:
    return row % block_size(name)[0] == 0


def nbytes(name: str, shape: tuple[int, ...]) -> int:
    per, size = block_size(name)
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // per) * size


def encode(data: np.ndarray, name: str) -> np.ndarray:
    """``data`` (float32, rows along the last axis) in GGML type ``name``: float arrays for F32/F16,
    uint8 byte rows for block types."""
    if name == "F32":
        return np.ascontiguousarray(data, np.float32)
    if name == "F16":
        return np.ascontiguousarray(data, np.float32).astype(np.float16)
    rows = data.reshape(-1, data.shape[-1])
    step = max(1, ROWS_PER_SLICE_ELEMENTS // rows.shape[1])
    slices = [np.ascontiguousarray(rows[i:i + step], np.float32) for i in range(0, rows.shape[0], step)]
    if len(slices) > 1:  # a large tensor's slices on all cores, as llama-quantize splits rows among its threads
        parts = list(_slice_pool().map(lambda r: _encode_rows(r, name), slices))
    else:
        parts = [_encode_rows(slices[0], name)]
    return np.concatenate(parts).reshape(*data.shape[:-1], -1)


@lru_cache(maxsize=1)
def _slice_pool():
    import os
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="gguf-slices")


def _encode_rows(rows: np.ndarray, name: str) -> np.ndarray:
    if USE_GGML:
        from ...runtimes.ggml_kernels import quantize_rows

        out = quantize_rows(rows, name)
        if out is not None:
            return out
    if name in K_QUANTIZERS:
        return K_QUANTIZERS[name](rows)
    import gguf

    return gguf.quants.quantize(rows, ggml_type(name))


def decode(raw: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 values of a stored tensor (element shape ``shape``), for re-quantizing GGUF sources."""
    import gguf

    raw = np.asarray(raw)
    if name == "F32":  # raw file bytes (uint8) or already-typed values
        return (raw.view(np.float32) if raw.dtype == np.uint8 else raw.astype(np.float32, copy=False)).reshape(shape)
    if name == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    return gguf.quants.dequantize(np.asarray(raw, np.uint8).reshape(*shape[:-1], -1), ggml_type(name)) \
        .astype(np.float32).reshape(shape)
