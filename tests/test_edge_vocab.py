"""The edge engine on the vocabularies and architectures users run, against llama.cpp on the same files.

Files are made by our GGUF converter from random-weight checkpoints (tests/conftest.py): a Llama with a
SentencePiece tokenizer.model (Llama 2 / TinyLlama style, byte fallback), and a Qwen2 whose tokenizer
splits with Qwen2's own regex (the ``qwen2`` pre-tokenizer the converter writes). The reference for
tokens and logits is llama.cpp (llama-cpp-python) on the same GGUF.
"""

from __future__ import annotations

import numpy as np
import pytest

import edgelift
from edgelift.errors import ModelFormatError

from tests.conftest import edge_agreement, tiny_causal_lm, tiny_sentencepiece_llama, use_qwen2_pretokenizer

pytest.importorskip("llama_cpp")

TEXTS = ["The capital of France is Paris.", "  two leading spaces,  and   runs of   spaces", "naïve café — déjà vu 😀",
         "Numbers: 12345 and 3.14159, then 2024-11-24!", "line one\nline two\n\n  indented\ttab",
         "def f(x):\n    return x ** 2  # square", "_under_score and CamelCase", "日本語のテキスト"]


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory):
    d = tiny_sentencepiece_llama(tmp_path_factory.mktemp("spm"))
    return edgelift.convert(d, to="gguf", quantize="F32", out=tmp_path_factory.mktemp("spm-out")).artifacts[0].path


def test_sentencepiece_tokens_equal_llama_cpp(spm_gguf):
    with edgelift.load(spm_gguf, backend="llama.cpp") as ref, edgelift.load(spm_gguf, backend="edge") as ours:
        for text in TEXTS:
            for bos in (False, True):
                assert ours.tokenize(text, add_bos=bos).tolist() == ref.tokenize(text, add_bos=bos).tolist(), (text, bos)
        ids = ours.tokenize(TEXTS[2], add_bos=False)
        assert ours.detokenize(ids).lstrip(" ") == TEXTS[2]  # byte-fallback pieces decode back to the emoji
        assert any(ours.session.tokenizer.tokens[i].startswith("<0x") for i in ids)


def test_sentencepiece_model_logits_follow_llama_cpp(spm_gguf):
    top1, rel = edge_agreement(spm_gguf, "The json module encodes and decodes objects. ")
    assert top1 >= 0.97 and rel < 0.01, (top1, rel)


@pytest.fixture(scope="module")
def qwen2_gguf(smollm2_hf_dir, tmp_path_factory):
    d = use_qwen2_pretokenizer(tiny_causal_lm("qwen2", tmp_path_factory.mktemp("qwen2"), smollm2_hf_dir,
                                              num_hidden_layers=2))
    r = edgelift.convert(d, to="gguf", quantize="F32", out=tmp_path_factory.mktemp("qwen2-out"))
    return r.artifacts[0].path


def test_qwen2_pre_tokenizer_equals_llama_cpp(qwen2_gguf):
    from edgelift.core.gguf import read_gguf_info

    assert read_gguf_info(qwen2_gguf).metadata["tokenizer.ggml.pre"] == "qwen2"
    with edgelift.load(qwen2_gguf, backend="llama.cpp") as ref, edgelift.load(qwen2_gguf, backend="edge") as ours:
        for text in TEXTS:
            assert ours.tokenize(text, add_bos=False).tolist() == ref.tokenize(text, add_bos=False).tolist(), text


def test_qwen2_logits_follow_llama_cpp(qwen2_gguf):
    top1, rel = edge_agreement(qwen2_gguf, "Numbers: 12345 and 3.14159, then the lighthouse. ")
    assert top1 >= 0.97 and rel < 0.01, (top1, rel)


def test_unsupported_architecture_is_named_before_the_tokenizer(smollm2_gguf, tmp_path):
    """A Mamba file is refused for being Mamba (with what to use instead), not for its vocabulary."""
    data = bytearray(smollm2_gguf.read_bytes())
    i = data.find(b"general.architecture")
    j = data.find(b"llama", i)
    assert 0 < i < j < i + 64
    data[j:j + 5] = b"mamba"  # same length: the header stays valid
    bad = tmp_path / "mamba.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match=r"is a 'mamba' model; the edge engine runs llama, qwen2, .*gemma3 "
                                               r"\(use backend='llama.cpp'"):
        edgelift.load(bad, backend="edge")
