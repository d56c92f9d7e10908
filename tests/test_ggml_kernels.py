"""llama.cpp's ggml CPU kernels, called by the edge engine on GGUF bytes in place (runtimes.ggml_kernels).

The reference is independent of ggml: the weights are quantized by our converter (qtypes.encode) and
dequantized by it (qtypes.decode), and the float product of those weights is what ggml must compute,
up to its int8 quantization of the activations (llama.cpp's Q8 blocks). Where the engine's numpy
kernels exist (they replay llama.cpp's activation quantization), ggml must agree with them to float
rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgelift.converters.gguf import qtypes
from edgelift.runtimes import ggml_kernels
from edgelift.runtimes.gguf_kernels import KERNELS, matvec

if ggml_kernels.available() is not None:  # None: usable; else the reason it is not
    pytest.skip(ggml_kernels.available(), allow_module_level=True)

TYPES = ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("kind", TYPES)
def test_ggml_matches_the_dequantized_product(kind):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 512)).astype(np.float32)
    raw = np.ascontiguousarray(qtypes.encode(w, kind)).view(np.uint8).reshape(-1)
    deq = {"F32": w, "F16": w.astype(np.float16).astype(np.float32)}.get(kind)
    if deq is None:
        deq = qtypes.decode(raw, kind, (48, 512)).astype(np.float32)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    (got,) = ggml_kernels.mul_mats([(raw, kind, (48, 512))], x, threads=2)
    want = x @ deq.T
    assert got.shape == (3, 48)
    tol = 1e-5 if kind == "F32" else 2e-3 if kind == "F16" else 2e-2  # activations quantized to 8 bits
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < tol, kind
    if kind in KERNELS:  # the numpy kernels replay llama.cpp's activation blocks, except that llama.cpp
        # stores an affine type's activation block sum (Q8_1's s) in fp16 and numpy keeps it in fp32
        ours = matvec(raw, kind, (48, 512), x)
        tight = 2e-3 if kind in ("Q4_1", "Q5_1", "Q4_K") else 1e-5
        assert np.linalg.norm(got - ours) / np.linalg.norm(ours) < tight, kind


def test_one_graph_for_several_matrices_and_threads_agree():
    """q/k/v in one graph gives what three separate products give; 1 and 2 threads give the same bits."""
    rng = np.random.default_rng(2)
    mats = []
    for rows in (64, 32, 32):
        w = rng.standard_normal((rows, 256)).astype(np.float32)
        mats.append((np.ascontiguousarray(qtypes.encode(w, "Q4_K")).view(np.uint8).reshape(-1), "Q4_K", (rows, 256)))
    x = rng.standard_normal((1, 256)).astype(np.float32)
    together = ggml_kernels.mul_mats(mats, x, threads=1)
    for m, y in zip(mats, together):
        np.testing.assert_array_equal(ggml_kernels.mul_mats([m], x, threads=2)[0], y)


def test_threads_reach_the_engine(smollm2_gguf):
    import edgelift

    with edgelift.load(smollm2_gguf, backend="edge", threads=3) as m:
        assert m.session.kernels == "ggml" and m.session.store.threads == 3
    with pytest.raises(edgelift.errors.InvalidOptionError, match="kernels must be one of"):
        edgelift.load(smollm2_gguf, backend="edge", kernels="cuda")


def test_fused_block_graphs_match_the_float_reference():
    """GgmlBlock's two graphs (RMSNorm + q/k/v; output projection + residual + RMSNorm + SwiGLU FFN +
    residual) against the same steps in float64 numpy on the converter's dequantized weights."""
    rng = np.random.default_rng(3)
    d, ff, kv = 256, 512, 64
    shapes = {"attn_q": (d, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, d),
              "ffn_gate": (ff, d), "ffn_up": (ff, d), "ffn_down": (d, ff)}
    mats, deq = {}, {}
    for name, shape in shapes.items():
        w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        raw = np.ascontiguousarray(qtypes.encode(w, "Q8_0")).view(np.uint8).reshape(-1)
        mats[name], deq[name] = (raw, "Q8_0", shape), qtypes.decode(raw, "Q8_0", shape).astype(np.float64)
    norms = {n: (1 + 0.1 * rng.standard_normal(d)).astype(np.float32) for n in ("attn_norm", "ffn_norm")}
    block = ggml_kernels.GgmlBlock(mats, norms, 1e-5, threads=2)
    x = rng.standard_normal((3, d)).astype(np.float32)
    att = rng.standard_normal((3, d)).astype(np.float32)

    def norm(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + 1e-5) * w

    def close(got, want):
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2  # activations quantized to 8 bits, as above

    h = norm(x.astype(np.float64), norms["attn_norm"])
    for got, m in zip(block.head(x), ("attn_q", "attn_k", "attn_v")):
        close(got, h @ deq[m].T)
    x1 = x + att.astype(np.float64) @ deq["attn_output"].T
    h2 = norm(x1, norms["ffn_norm"])
    gate, up = h2 @ deq["ffn_gate"].T, h2 @ deq["ffn_up"].T
    act_want = gate / (1 + np.exp(-gate)) * up
    act = np.empty((3, ff), np.float32)
    close(block.tail(x, att, act), x1 + act_want @ deq["ffn_down"].T)
    close(act, act_want)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_K", "Q6_K"])
def test_repacked_weights_give_the_same_product(kind):
    """Weights moved into ggml's repack buffer (llama.cpp's interleaved layout) multiply to the raw layout's
    product, up to summation order; ggml decides which types it repacks on this CPU (AVX2: Q4_0 and Q4_K,
    not Q6_K), and a refused one stays None rather than being forced."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((256, 512)).astype(np.float32)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    raw = qtypes.encode(w, kind).reshape(-1)
    packed = ggml_kernels.repack(raw, kind, (256, 512))
    if packed is None:
        assert kind == "Q6_K" or not ggml_kernels._load()[0].repack_buft, f"{kind} not repacked"
        return
    assert packed.nbytes >= raw.nbytes
    (want,) = ggml_kernels.mul_mats([(raw, kind, (256, 512))], x, 2)
    (got,) = ggml_kernels.mul_mats([(packed, kind, (256, 512))], x, 2)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
    odd = qtypes.encode(w[:255], kind).reshape(-1)  # 255 rows: not a multiple of the 8-row interleave
    assert ggml_kernels.repack(odd, kind, (255, 512)) is None
