"""How far an artifact's outputs are from the original model's, on the same inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class OutputParity:
    name: str
    max_abs_error: float
    rel_l2_error: float
    cosine_similarity: float  # mean over samples (over the whole output when samples are scalars)
    top1_agreement: float | None  # classifier outputs ([N, C], C >= 2) only
    kl_divergence: float | None = None  # language models: mean KL(reference || artifact) per position
    reference_max_abs: float | None = None  # the reference output's scale: errors below ~1e-6 of it are noise
    probabilities: bool = False  # rows are distributions (a softmax output): top-1 agreement is meaningful


@dataclass
class Parity:
    reference: str  # what produced the expected outputs: "torch" or "onnxruntime (source fp32)"
    runtime: str  # what ran the artifact, e.g. "onnxruntime 1.32.0"
    inputs: str  # where the inputs came from: a path or "random"
    synthetic_inputs: bool
    samples: int
    outputs: list[OutputParity] = field(default_factory=list)
    accuracy: float | None = None
    reference_accuracy: float | None = None

    @property
    def primary(self) -> OutputParity:
        return self.outputs[0]

    def to_dict(self) -> dict:
        return asdict(self)


def is_classifier_output(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] >= 2 and np.issubdtype(a.dtype, np.floating)


SILENT_SAMPLE = 1e-4  # a sample whose output norm is below this fraction of the loudest sample's is empty


def compare_output(name: str, got: np.ndarray, ref: np.ndarray) -> OutputParity:
    if got.shape != ref.shape:
        raise ValueError(f"output '{name}' has shape {got.shape}, reference {ref.shape}")
    g = got.astype(np.float64).reshape(got.shape[0] if got.ndim else 1, -1)
    if g.shape[1] == 1:  # one scalar per sample: a per-sample cosine would only compare signs
        g = g.reshape(1, -1)
    r = ref.astype(np.float64).reshape(g.shape)
    diff = g - r
    ref_norm = float(np.linalg.norm(r))
    rel = float(np.linalg.norm(diff) / ref_norm) if ref_norm > 0 else float(np.linalg.norm(diff))
    gn, rn = np.linalg.norm(g, axis=1), np.linalg.norm(r, axis=1)
    dots = np.sum(g * r, axis=1)
    # A sample with nothing in it on both sides (a detector's map on a blank crop: ~1e-8 everywhere) has no
    # direction to compare, so its cosine is rounding noise; it counts as agreeing. Relative to the loudest
    # sample, so an artifact that silences every sample, or makes a silent one loud, still fails.
    loudest = float(np.max(rn)) if rn.size else 0.0
    silent = (rn <= SILENT_SAMPLE * loudest) & (gn <= SILENT_SAMPLE * loudest)
    cos = np.where(silent, 1.0, dots / np.maximum(gn * rn, 1e-300))
    top1 = None
    if is_classifier_output(ref):
        top1 = float(np.mean(np.argmax(got, axis=1) == np.argmax(ref, axis=1)))
    probabilities = bool(top1 is not None and ref.size and np.all(ref >= 0)
                         and np.allclose(ref.astype(np.float64).sum(axis=1), 1.0, atol=1e-3))
    return OutputParity(
        name,
        max_abs_error=float(np.max(np.abs(diff))) if diff.size else 0.0,
        rel_l2_error=rel,
        cosine_similarity=float(np.mean(cos)),
        top1_agreement=top1,
        reference_max_abs=float(np.max(np.abs(r))) if r.size else 0.0,
        probabilities=probabilities,
    )


def accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy of the first classifier output against integer labels."""
    if labels is None:
        return None
    for value in outputs.values():
        if is_classifier_output(value):
            return float(np.mean(np.argmax(value, axis=1) == labels))
    return None


def compare(
    got: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    *,
    labels: np.ndarray | None,
    reference: str,
    runtime: str,
    inputs: str,
    synthetic_inputs: bool,
) -> Parity:
    """Parity of every output; outputs are matched by position (exporters may rename them)."""
    outs = [
        compare_output(name, g, r) for (name, g), r in zip(got.items(), ref.values())
    ]
    samples = next(iter(ref.values())).shape[0] if ref else 0
    return Parity(reference, runtime, inputs, synthetic_inputs, int(samples), outs,
                  accuracy(got, labels), accuracy(ref, labels))


# --- the acceptance gate ---------------------------------------------------------------------------

# Default acceptance per mode: cosine of the primary output, and top-1 agreement where the primary output is a
# classifier's (labels given, or rows that are probabilities: an embedding's argmax means nothing) and the data is
# real (on random inputs a classifier's argmax is a coin toss between near-ties).
MIN_COSINE = {"none": 0.9999, "fp16": 0.999, "int8": 0.99, "int8-dynamic": 0.99, "int4": 0.98,
              "palettize6": 0.99, "palettize4": 0.98}
MIN_TOP1 = {"none": 0.99, "fp16": 0.98, "int8": 0.95, "int8-dynamic": 0.95, "int4": 0.90,
            "palettize6": 0.95, "palettize4": 0.90}
# Where an output is all but zero (a detector's probability map on an empty image) cosine compares rounding noise:
# an artifact whose largest error is below this share of max(|reference|, 1) passes whatever its cosine.
NEGLIGIBLE_ERROR = {"none": 1e-5, "fp16": 1e-3, "int8": 5e-3, "int8-dynamic": 5e-3, "int4": 1e-2,
                    "palettize6": 5e-3, "palettize4": 1e-2}


@dataclass
class Gate:
    """The acceptance test an artifact was held to, and how it came out."""

    min_cosine: float
    max_rel_l2: float | None
    min_top1: float | None
    passed: bool
    failures: list[str] = field(default_factory=list)  # e.g. "cosine 0.1412 < 0.99"
    max_kl: float | None = None  # language models: mean KL divergence of the next-token distributions (nats)

    def to_dict(self) -> dict:
        return asdict(self)


def gate(par: Parity, mode: str, *, min_cosine: float | None = None, max_rel_l2: float | None = None) -> Gate:
    """Hold ``par`` to ``mode``'s thresholds (``min_cosine``/``max_rel_l2`` override them for one run)."""
    cos_floor = MIN_COSINE.get(mode, 0.99) if min_cosine is None else float(min_cosine)
    p = par.primary
    classifier = p.top1_agreement is not None and (p.probabilities or par.accuracy is not None)
    top1_floor = MIN_TOP1.get(mode, 0.95) if (classifier and not par.synthetic_inputs) else None
    failures = []
    negligible = (min_cosine is None and p.reference_max_abs is not None and np.isfinite(p.max_abs_error)
                  and p.max_abs_error <= NEGLIGIBLE_ERROR.get(mode, 5e-3) * max(p.reference_max_abs, 1.0))
    if not p.cosine_similarity >= cos_floor and not negligible:  # NaN fails too
        failures.append(f"cosine {p.cosine_similarity:.4f} < {cos_floor}")
    if max_rel_l2 is not None and not p.rel_l2_error <= max_rel_l2:
        failures.append(f"rel-L2 {p.rel_l2_error:.4g} > {max_rel_l2}")
    if top1_floor is not None and not p.top1_agreement >= top1_floor:
        failures.append(f"top-1 agreement {100 * p.top1_agreement:.1f}% < {100 * top1_floor:.0f}%")
    return Gate(cos_floor, max_rel_l2, top1_floor, not failures, failures)
