"""What every language-model backend of ours shares: sampling, the token loop, and its statistics.

The edge engine (GGUF) and the ONNX decoder backend differ only in how one step is computed; the loop
that turns steps into streamed text, and the figures it records (TTFT, prefill and decode tok/s), are
one piece of code so the two report the same things the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..errors import InvalidOptionError


@dataclass
class RunStats:
    """Per generate/run call: time to first token, prefill and decode rates, storage and memory."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float = 0.0
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    bytes_read: int = 0
    peak_resident_weight_bytes: int = 0
    io_wait_s: float = 0.0
    compute_s: float = 0.0
    extra: dict = field(default_factory=dict)


def sample(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng) -> int:
    """Greedy at temperature 0, else temperature / top-k / top-p (nucleus) sampling."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    order = np.argsort(-z)
    if top_k > 0:
        order = order[:top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if top_p < 1.0:
        keep = np.searchsorted(np.cumsum(p), top_p) + 1
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(rng.choice(order, p=p))


def check_request(prompt: str, max_tokens: int, n_prompt: int, n_ctx: int) -> None:
    if not prompt:
        raise InvalidOptionError("the prompt is empty")
    if max_tokens < 1:
        raise InvalidOptionError(f"max_tokens must be >= 1, got {max_tokens}")
    if n_prompt + max_tokens > n_ctx:
        raise InvalidOptionError(f"the prompt is {n_prompt} tokens and {max_tokens} more were asked for, but "
                                 f"the context holds {n_ctx}: shorten it or load with n_ctx={n_prompt + max_tokens}")


def stream_tokens(prefill: Callable[[], np.ndarray], step: Callable[[int], np.ndarray],
                  decode: Callable[[list[int]], str], eos: set[int], n_prompt: int, max_tokens: int,
                  pick: Callable[[np.ndarray], int], stats: RunStats) -> Iterator[str]:
    """Text pieces of a completion: ``prefill()`` gives the prompt's last logits, ``step(token)`` the next
    logits, ``pick`` chooses a token. ``stats`` is filled in when the loop ends (EOS or ``max_tokens``)."""
    stats.prompt_tokens = n_prompt
    t0 = time.perf_counter()
    logits = prefill()
    stats.ttft_s = time.perf_counter() - t0
    stats.prefill_tokens_per_s = n_prompt / stats.ttft_s if stats.ttft_s > 0 else 0.0
    out: list[int] = []
    text = ""
    t1 = time.perf_counter()
    for _ in range(max_tokens):
        tok = pick(logits)
        if tok in eos:
            break
        out.append(tok)
        full = decode(out)
        yield full[len(text):]
        text = full
        if len(out) == max_tokens:
            break
        logits = step(tok)
    decode_s = time.perf_counter() - t1
    stats.generated_tokens = len(out)
    stats.decode_tokens_per_s = (len(out) - 1) / decode_s if decode_s > 0 and len(out) > 1 else 0.0
    stats.compute_s = stats.ttft_s + decode_s
    stats.extra["token_ids"] = out
