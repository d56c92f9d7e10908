"""`python -c "import edgelift"` in a clean base-install venv (numpy + onnxruntime + typer + rich),
against a bare interpreter start in the same venv. Median of interleaved runs.

    python benchmarks/import_time.py [--runs N]
"""

from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np
from _common import result

from tests.venvs import base_venv


def wall_s(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    python = str(base_venv())
    cases = {"import": [python, "-c", "import edgelift"], "bare": [python, "-c", "pass"],
             "numpy": [python, "-c", "import numpy"]}
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for k, cmd in cases.items():
        wall_s(cmd)  # warm the page cache
    for _ in range(args.runs):
        for k, cmd in cases.items():
            samples[k].append(wall_s(cmd))
    med = {k: float(np.median(v)) for k, v in samples.items()}
    result("import_time.edgelift_vs_bare_python", med["import"], "s", med["bare"])
    result("import_time.edgelift_vs_import_numpy", med["import"], "s", med["numpy"])


if __name__ == "__main__":
    main()
