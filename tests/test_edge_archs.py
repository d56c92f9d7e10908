"""Qwen3, Phi-3 and Gemma 1/2/3: our GGUF converter against transformers, the edge engine against llama.cpp.

Each family's checkpoint is random-weight and small (tests/conftest.py), shaped so its differences from
Llama act within 64 positions: Gemma heads wider than hidden/heads, a 16-token sliding window on the
local layers, soft-caps that bite (Gemma 2), one global layer among local ones with its own rope base
(Gemma 3), fused q/k/v and gate/up (Phi-3), per-head q/k norms (Qwen3, Gemma 3). Two independent
references: the conversion's own parity check runs the GGUF in llama.cpp against transformers on the
checkpoint; the engine is then compared with llama.cpp on the same file (tokens and logits).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgelift
from edgelift.errors import ModelFormatError, SourceError

from tests.conftest import edge_agreement, tiny_causal_lm, tiny_family_lm, use_qwen2_pretokenizer

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

FAMILIES = ("qwen3", "phi3", "gemma", "gemma2", "gemma3")
TEXTS = ["The capital of France is Paris.", "  two leading spaces,  and   runs of   spaces", "naïve café — déjà vu 😀",
         "line one\nline two\n\n  indented\ttab", "def f(x):\n    return x ** 2  # square"]
PROMPT = "The json module encodes and decodes objects. Numbers: 12345 and 3.14159, then the lighthouse. "


def _checkpoint(family: str, out, smollm2_hf_dir):
    if family == "qwen3":  # SmolLM2's byte-level BPE with Qwen2's split regex, heads wider than hidden/heads
        return use_qwen2_pretokenizer(tiny_causal_lm("qwen3", out, smollm2_hf_dir, num_hidden_layers=2, head_dim=96))
    return tiny_family_lm(family, out)


@pytest.fixture(scope="module")
def converted(smollm2_hf_dir, tmp_path_factory):
    """family -> (family, checkpoint dir, F32 GGUF artifact), each converted once."""
    done = {}

    def get(family: str):
        if family not in done:
            d = _checkpoint(family, tmp_path_factory.mktemp(family), smollm2_hf_dir)
            result = edgelift.convert(d, to="gguf", quantize="F32", out=tmp_path_factory.mktemp(f"{family}-out"))
            done[family] = (family, d, result.artifacts[0])
        return done[family]

    return get


@pytest.fixture(params=FAMILIES)
def family_gguf(request, converted):
    return converted(request.param)


def test_converted_file_runs_in_llama_cpp_like_transformers(family_gguf):
    """The converter's parity: llama.cpp on our file against transformers on the checkpoint."""
    family, d, art = family_gguf
    from edgelift.core.gguf import read_gguf_info

    assert read_gguf_info(art.path).metadata["general.architecture"] == family
    out = art.parity.outputs[0]
    assert out.top1_agreement >= 0.99 and out.rel_l2_error < 0.01, (family, out)


def test_tokens_equal_llama_cpp(family_gguf):
    family, _, art = family_gguf
    with edgelift.load(art.path, backend="llama.cpp") as ref, edgelift.load(art.path, backend="edge") as ours:
        for text in TEXTS:
            for bos in (False, True):
                assert ours.tokenize(text, add_bos=bos).tolist() == ref.tokenize(text, add_bos=bos).tolist(), \
                    (family, text, bos)


@pytest.mark.parametrize("kernels", ["ggml", "numpy"])
def test_logits_follow_llama_cpp(family_gguf, kernels):
    family, _, art = family_gguf
    top1, rel = edge_agreement(art.path, PROMPT, kernels=kernels)
    assert top1 >= 0.97 and rel < 0.01, (family, kernels, top1, rel)


def test_gemma_family_features_are_read_from_the_header(family_gguf):
    """What the engine took from each file: a sliding window only where the family has one, caps only for
    Gemma 2, Gemma 3's one global layer (the pattern written from layer_types), wide heads."""
    family, d, art = family_gguf
    cfg = json.loads((d / "config.json").read_text())
    with edgelift.load(art.path, backend="edge") as m:
        hp = m.session.hp
    assert hp.head_dim == cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    if family in ("gemma2", "gemma3"):
        assert hp.n_swa == cfg["sliding_window"] == 16
        assert list(hp.swa_layers) == [t == "sliding_attention" for t in cfg["layer_types"]]
    else:
        assert hp.n_swa == 0 and not any(hp.swa_layers)
    assert (hp.attn_softcap, hp.final_softcap) == ((5.0, 8.0) if family == "gemma2" else (0.0, 0.0))


@pytest.fixture(scope="module")
def phi3_q4k(tmp_path_factory):
    d = tiny_family_lm("phi3", tmp_path_factory.mktemp("phi3q"))
    return edgelift.convert(d, to="gguf", quantize="Q4_K_M", out=tmp_path_factory.mktemp("phi3q-out")).artifacts[0].path


def test_phi3_fused_matrices_split_on_quantized_rows(phi3_q4k):
    """Phi-3's attn_qkv / double-height ffn_up are read as row ranges of the K-quant bytes: the engine on
    llama.cpp's kernels follows llama.cpp, resident (rows repacked into ggml's interleaved layout) and
    streamed under a budget (rows as read) alike."""
    top1, rel = edge_agreement(phi3_q4k, PROMPT, kernels="ggml")
    assert top1 >= 0.9 and rel < 0.05, (top1, rel)
    ids = np.arange(5, 69, dtype=np.int32)
    with edgelift.load(phi3_q4k, backend="edge", kernels="ggml") as a, \
            edgelift.load(phi3_q4k, backend="edge", kernels="ggml", memory_budget="1.5MB") as b:
        np.testing.assert_allclose(a.run(ids)["logits"], b.run(ids)["logits"], rtol=1e-4, atol=1e-4)
        assert b.session.store.stats.peak_resident_bytes <= 1.5e6
        assert a.generate("hello", max_tokens=8) == b.generate("hello", max_tokens=8)


def test_gemma_attention_scale_llama_cpp_cannot_express_is_refused(tmp_path):
    """llama.cpp fixes Gemma 2's attention scale at 1/sqrt(head_dim): a checkpoint that scales otherwise would
    convert into a different model, so it is refused, naming the setting."""
    d = tiny_family_lm("gemma2", tmp_path / "g2", query_pre_attn_scalar=64)
    with pytest.raises(SourceError, match="query_pre_attn_scalar is 64"):
        edgelift.convert(d, to="gguf", quantize="F32", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_phi3_longrope_is_refused_by_name(tmp_path):
    d = tiny_family_lm("phi3", tmp_path / "p3", num_hidden_layers=1)
    cfg = json.loads((d / "config.json").read_text())
    half = cfg["hidden_size"] // cfg["num_attention_heads"] // 2
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": [1.0] * half,
                              "short_factor": [1.0] * half, "original_max_position_embeddings": 64}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match="rope scaling 'longrope' is not supported"):
        edgelift.convert(d, to="gguf", quantize="F32", out=tmp_path / "out")


def test_sliding_window_header_is_checked(converted):
    """The pattern decides which layers see only the window: a per-layer array of the wrong length, or a
    count that is not a layer count, is a corrupted header, refused in one line, not guessed at."""
    _, _, art = converted("gemma3")  # its header carries the per-layer pattern (written from layer_types)
    from edgelift.core.gguf import read_gguf_info
    from edgelift.runtimes.edge_llm import HParams

    meta = dict(read_gguf_info(art.path, arrays=("gemma3.attention.sliding_window_pattern",)).metadata)
    assert HParams.from_gguf(meta, 512, 256).swa_layers == (True, False, True)
    meta["gemma3.attention.sliding_window_pattern"] = 6  # the family default: layer 5 of every 6 global
    assert HParams.from_gguf(meta, 512, 256).swa_layers == (True, True, True)
    for bad in ({"array": 7, "length": 2, "values": [True, False]}, -1, "6", True):
        meta["gemma3.attention.sliding_window_pattern"] = bad
        with pytest.raises(ModelFormatError, match="sliding_window_pattern"):
            HParams.from_gguf(meta, 512, 256)
