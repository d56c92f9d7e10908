"""Parity of GGUF files, measured by llama.cpp itself (llama-cpp-python, the ``[llama]`` extra).

Language models: logits at every position of a fixed prompt, against the transformers model on the
same checkpoint (or, when re-quantizing a GGUF, against llama.cpp on the source file): relative
error, top-1 agreement and the KL divergence of the next-token distributions. Encoders (BERT):
mean-pooled sentence embeddings against transformers. The tokenizations are compared too: the same
ids from llama.cpp's tokenizer and the Hugging Face one mean the vocabulary metadata is right.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import require
from ..parity import OutputParity, Parity, compare_output

PROMPT = ("Edge devices run small language models: a phone answers questions offline, a Raspberry Pi "
          "summarizes its sensor logs, and a Jetson describes what its camera sees. The capital of France is")
SENTENCES = ["edge devices run small models", "a cat sat on the mat", "the quick brown fox jumps over the lazy dog",
             "Quantized weights trade a little accuracy for a lot of memory."]


@dataclass
class Reference:
    """What an artifact is compared with: computed once per conversion."""

    name: str
    kind: str  # causal | encoder
    token_ids: list[int] = field(default_factory=list)
    outputs: np.ndarray | None = None  # logits (T, vocab) or embeddings (S, dim)
    hf_tokens: dict[str, list[int]] = field(default_factory=dict)


def _llama_version() -> str:
    import llama_cpp

    return f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"


def reference_from_checkpoint(ckpt, arch: str) -> Reference:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch = require("torch", "convert", "Checking GGUF files against the source checkpoint")
    transformers = require("transformers", "convert", "Checking GGUF files against the source checkpoint")
    # safetensors only, no remote code: a checkpoint's pytorch_model.bin or custom Python must never be loaded
    safe = {"use_safetensors": True, "trust_remote_code": False}
    tok = transformers.AutoTokenizer.from_pretrained(str(ckpt.path), trust_remote_code=False)
    label = f"transformers {transformers.__version__} (source checkpoint, fp32)"
    with torch.no_grad():
        if arch == "bert":
            model = transformers.AutoModel.from_pretrained(str(ckpt.path), dtype=torch.float32, **safe).eval()
            enc = tok(SENTENCES, padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)  # sentence-transformers' mean pooling
            ids = {s: tok(s)["input_ids"] for s in SENTENCES}
            return Reference(label, "encoder", outputs=pooled.numpy(), hf_tokens=ids)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt.path), dtype=torch.float32, **safe).eval()
        ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
        if getattr(tok, "bos_token_id", None) is not None and _adds_bos(ckpt):
            ids = [tok.bos_token_id] + ids
        if not ids:
            from ...errors import SourceError

            raise SourceError(f"the tokenizer in {ckpt.path} turns the check prompt into no tokens")
        logits = model(torch.tensor([ids])).logits[0].numpy()
    return Reference(label, "causal", ids, logits, {PROMPT: tok(PROMPT, add_special_tokens=False)["input_ids"]})


def _adds_bos(ckpt) -> bool:
    cfg = ckpt.json("tokenizer_config.json") or {}
    return bool(cfg.get("add_bos_token", False))


def reference_from_gguf(path: Path, arch: str, token_ids: list[int] | None = None) -> Reference:
    """llama.cpp on the source GGUF (re-quantizing: the source is the reference)."""
    session = _open(path, arch)
    try:
        if arch == "bert":
            out = np.stack([session.embed(s) for s in SENTENCES])
            return Reference(f"{_llama_version()} on the source GGUF", "encoder", outputs=out)
        ids = token_ids or session.tokenize(PROMPT).tolist()
        return Reference(f"{_llama_version()} on the source GGUF", "causal", ids,
                         session.run({"tokens": np.asarray(ids)})["logits"])
    finally:
        session.close()


def _open(path: Path, arch: str):
    require("llama_cpp", "llama", "Checking GGUF files with llama.cpp")
    from ...runtimes.llama import LlamaSession

    return LlamaSession(Path(path), threads=None, n_ctx=512, embedding=arch == "bert", logits_all=arch != "bert")


def kl_divergence(ref_logits: np.ndarray, got_logits: np.ndarray) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(got)), in nats."""
    def log_softmax(x):
        x = x.astype(np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref_logits), log_softmax(got_logits)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


def check_artifact(path: Path, arch: str, ref: Reference) -> tuple[Parity, dict]:
    """Load ``path`` in llama.cpp and compare it with ``ref``; returns (parity, extra details)."""
    session = _open(path, arch)
    details: dict = {}
    try:
        if ref.kind == "encoder":
            got = np.stack([session.embed(s) for s in SENTENCES])
            out = compare_output("embedding", got, ref.outputs)
            out.top1_agreement = None  # embeddings are not class scores
            samples, inputs = len(SENTENCES), f"{len(SENTENCES)} fixed sentences"
        else:
            got = session.run({"tokens": np.asarray(ref.token_ids)})["logits"]
            out = compare_output("logits", got, ref.outputs)
            out = OutputParity(out.name, out.max_abs_error, out.rel_l2_error, out.cosine_similarity,
                               out.top1_agreement, kl_divergence(ref.outputs, got))
            samples, inputs = len(ref.token_ids), f"fixed prompt ({len(ref.token_ids)} tokens)"
        if ref.hf_tokens:
            same = [session.tokenize(t, add_bos=False).tolist() == ids if ref.kind == "causal"
                    else session.tokenize(t, add_bos=True).tolist() == ids for t, ids in ref.hf_tokens.items()]
            details["tokenizer_agreement"] = float(np.mean(same))
    finally:
        session.close()
    return Parity(ref.name, _llama_version(), inputs, False, samples, [out]), details


# The acceptance gate of a GGUF file, by the precision of its weights: the mean KL divergence of the next-token
# distributions for language models, the cosine of the embeddings for encoders. Set from llama.cpp's own
# quantizations of real checkpoints, with room: SmolLM2-135M (the small models lose the most) reaches KL 0.0003
# (BF16), 0.009 (Q8_0), 0.02-0.25 (Q6_K, Q5_*), 0.005-0.60 (4-bit types, Q4_0 the worst); all-MiniLM-L6-v2
# reaches cosine 0.9996 (Q8_0) and 0.97-0.99 (4-bit). A wrong conversion (a missing q/k row permutation, a
# misread norm) gives KL of several nats: that is what the gate is for.
PRECISION = {"F32": "float", "F16": "float", "BF16": "float", "Q8_0": "8-bit", "Q6_K": "5-6-bit", "Q5_0": "5-6-bit",
             "Q5_1": "5-6-bit", "Q5_K_S": "5-6-bit", "Q5_K_M": "5-6-bit", "Q5_K": "5-6-bit"}
MAX_KL = {"float": 0.01, "8-bit": 0.1, "5-6-bit": 0.5, "4-bit": 1.0}
MIN_EMBEDDING_COSINE = {"float": 0.999, "8-bit": 0.99, "5-6-bit": 0.97, "4-bit": 0.95}


def gate(parity: Parity, file_type: str):
    """Hold a checked file to its type's threshold (``parity.Gate``; failures name the figure and the floor)."""
    from ..parity import Gate

    level = PRECISION.get(file_type, "4-bit")
    out = parity.primary
    failures = []
    if out.kl_divergence is not None:
        max_kl = MAX_KL[level]
        if not out.kl_divergence <= max_kl:  # NaN fails too
            failures.append(f"KL divergence {out.kl_divergence:.4f} nats > {max_kl} ({level} weights)")
        return Gate(0.0, None, None, not failures, failures, max_kl=max_kl)
    floor = MIN_EMBEDDING_COSINE[level]
    if not out.cosine_similarity >= floor:
        failures.append(f"cosine {out.cosine_similarity:.4f} < {floor} ({level} weights)")
    return Gate(floor, None, None, not failures, failures)

