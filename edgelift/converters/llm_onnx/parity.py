"""Parity of ONNX language models against transformers on the source checkpoint.

Logits at 64 positions of a fixed text (relative error, top-1 agreement, KL divergence), the perplexity
of that text under both, and 32 greedy tokens from a fixed prompt: what a user of the artifact would
notice first. The artifact runs in edgelift's own ONNX decoder backend (ONNX Runtime, the key-value cache
step by step), the runtime users run it on; the reference is transformers in fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import SourceError, require
from ..gguf.check import kl_divergence
from ..parity import Gate, OutputParity, Parity, compare_output

TEXT = ("Edge devices run small language models: a phone answers questions offline, a Raspberry Pi summarizes "
        "its sensor logs, and a Jetson describes what its camera sees. Each of them has a few gigabytes of memory "
        "at most, so the weights are stored in four or eight bits, and the runtime streams them from flash when "
        "they do not fit. The capital of France is Paris, and the capital of Germany is Berlin.")
GREEDY_PROMPT = "The three most useful things a small language model can do on a phone are"
N_POSITIONS = 64
GREEDY_TOKENS = 32
# top-1 agreement with transformers over the N_POSITIONS positions, per mode; the fp32/fp16 graphs must
# also produce transformers' greedy text token for token
MIN_TOP1 = {"none": 0.99, "fp16": 0.99, "int8-dynamic": 0.95, "int4": 0.95}
GREEDY_EXACT = ("none", "fp16")


@dataclass
class LlmReference:
    label: str
    ids: list[int]  # N_POSITIONS + 1 tokens of TEXT: logits at the first N, their next tokens scored
    logits: np.ndarray  # [N_POSITIONS, vocab]
    greedy_prompt: list[int]
    greedy_ids: list[int]  # transformers' greedy continuation (EOS excluded)
    perplexity: float
    eos: list[int] = field(default_factory=list)


def perplexity(logits: np.ndarray, next_ids: list[int]) -> float:
    """exp(mean negative log-likelihood of each next token), in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(np.exp(-np.mean(logp[np.arange(len(next_ids)), next_ids])))


def reference(ckpt_dir: Path, eos: list[int]) -> LlmReference:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch = require("torch", "convert", "Checking ONNX language models against the source checkpoint")
    transformers = require("transformers", "gguf", "Checking ONNX language models against the source checkpoint")
    tok = transformers.AutoTokenizer.from_pretrained(str(ckpt_dir), trust_remote_code=False)
    ids = tok(TEXT)["input_ids"][: N_POSITIONS + 1]
    if len(ids) < N_POSITIONS + 1:
        raise SourceError(f"the tokenizer in {ckpt_dir} turns the check text into {len(ids)} tokens, fewer than "
                          f"{N_POSITIONS + 1}")
    prompt = tok(GREEDY_PROMPT)["input_ids"]
    with torch.no_grad():
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(ckpt_dir), dtype=torch.float32, use_safetensors=True, trust_remote_code=False).eval()
        logits = model(torch.tensor([ids[:N_POSITIONS]])).logits[0].numpy()
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=GREEDY_TOKENS, do_sample=False, eos_token_id=eos or None,
                             pad_token_id=(eos or [0])[0])[0, len(prompt):].tolist()
    greedy = []
    for t in out:
        if t in eos:
            break
        greedy.append(t)
    return LlmReference(f"transformers {transformers.__version__} (source checkpoint, fp32)", ids, logits, prompt,
                        greedy, perplexity(logits, ids[1:]), eos)


def greedy_tokens(session, prompt: list[int], n: int, eos: list[int]) -> list[int]:
    out: list[int] = []
    logits = session.eval_tokens(prompt, reset=True)
    for _ in range(n):
        t = int(np.argmax(logits))
        if t in eos:
            break
        out.append(t)
        if len(out) < n:
            logits = session.eval_tokens([t])
    return out


def check(session, ref: LlmReference, mode: str, runtime: str) -> tuple[Parity, Gate, dict]:
    """Run the artifact's session on the reference's inputs; (parity, gate, details for the report)."""
    got = session.run({"tokens": np.asarray(ref.ids[:N_POSITIONS])})["logits"]
    base = compare_output("logits", got, ref.logits)
    out = OutputParity(base.name, base.max_abs_error, base.rel_l2_error, base.cosine_similarity, base.top1_agreement,
                       kl_divergence(ref.logits, got), base.reference_max_abs)
    greedy = greedy_tokens(session, ref.greedy_prompt, GREEDY_TOKENS, ref.eos)
    same = next((i for i, (a, b) in enumerate(zip(greedy, ref.greedy_ids)) if a != b), min(len(greedy), len(ref.greedy_ids)))
    identical = greedy == ref.greedy_ids
    details = {"perplexity": perplexity(got, ref.ids[1:]), "reference_perplexity": ref.perplexity,
               "greedy_tokens": len(ref.greedy_ids), "greedy_identical": identical, "greedy_same_prefix": same,
               "positions": N_POSITIONS}
    failures = []
    floor = MIN_TOP1.get(mode, 0.95)
    if not out.top1_agreement >= floor:
        failures.append(f"top-1 agreement {100 * out.top1_agreement:.1f}% < {100 * floor:.0f}% over {N_POSITIONS} positions")
    if mode in GREEDY_EXACT and not identical:
        failures.append(f"greedy text differs from transformers' at token {same + 1} of {len(ref.greedy_ids)}")
    parity = Parity(ref.label, runtime, f"fixed text ({N_POSITIONS} positions) and a {GREEDY_TOKENS}-token greedy "
                    "completion", False, N_POSITIONS, [out])
    return parity, Gate(0.0, None, floor, not failures, failures), details
