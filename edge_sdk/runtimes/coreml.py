"""Core ML backend: ``.mlpackage`` / ``.mlmodel`` through coremltools — on Apple platforms only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.formats import ModelFormat
from ..core.tensors import TensorSpec
from .base import Session, register_backend


class CoreMLSession(Session):
    def __init__(self, path: Path, compute_units: str) -> None:
        import coremltools as ct

        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = self.model.get_spec()
        self.inputs = [self._spec(f) for f in spec.description.input]
        self.outputs = [self._spec(f) for f in spec.description.output]

    @staticmethod
    def _spec(feature) -> TensorSpec:
        arr = feature.type.multiArrayType
        dtype = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}.get(arr.dataType, "float32")
        return TensorSpec(feature.name, tuple(int(d) for d in arr.shape), dtype)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.model.predict(feeds)
        return {s.name: np.asarray(out[s.name]) for s in self.outputs}


@register_backend("coreml", formats=(ModelFormat.COREML,), package="coremltools", extra="coreml",
                  platforms=("Darwin",))
def open_coreml(path: Path, threads: int | None, *, compute_units: str = "ALL") -> CoreMLSession:
    return CoreMLSession(path, compute_units)
