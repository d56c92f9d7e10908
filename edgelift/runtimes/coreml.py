"""Core ML backend: ``.mlpackage`` / ``.mlmodel`` through coremltools — on Apple platforms only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.formats import ModelFormat
from ..core.tensors import TensorSpec
from ..errors import InvalidOptionError, ModelFormatError
from .base import Session, register_backend


class CoreMLSession(Session):
    def __init__(self, path: Path, compute_units: str) -> None:
        import coremltools as ct

        units = [u.name for u in ct.ComputeUnit]
        if compute_units not in units:
            raise InvalidOptionError(f"compute_units '{compute_units}' unknown; choose one of: {', '.join(units)}")
        try:
            self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
            spec = self.model.get_spec()
        except Exception as e:
            raise ModelFormatError(f"Core ML cannot load {path}: {' '.join(str(e).split())[:200]}") from e
        self.inputs = [self._spec(f) for f in spec.description.input]
        self.outputs = [self._spec(f) for f in spec.description.output]

    @staticmethod
    def _spec(feature) -> TensorSpec:
        """Multi-array features only; flexible (range/enumerated) dims are reported as unknown.
        Untested off macOS: image and dictionary features are not described yet."""
        kind = feature.type.WhichOneof("Type")
        if kind != "multiArrayType":
            return TensorSpec(feature.name, (), f"coreml-{kind}")  # dtype unknown to numpy: unchecked
        arr = feature.type.multiArrayType
        dtype = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}.get(arr.dataType,
                                                                                           f"coreml-{arr.dataType}")
        flexible = arr.WhichOneof("ShapeFlexibility") is not None
        shape = tuple(None if flexible else int(d) for d in arr.shape)
        return TensorSpec(feature.name, shape, dtype)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.model.predict(feeds)
        return {s.name: np.asarray(out[s.name]) for s in self.outputs}


@register_backend("coreml", formats=(ModelFormat.COREML,), package="coremltools", extra="coreml",
                  platforms=("Darwin",))
def open_coreml(path: Path, threads: int | None, *, compute_units: str = "ALL") -> CoreMLSession:
    return CoreMLSession(path, compute_units)
