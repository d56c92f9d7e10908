"""ONNX Runtime backend: sessions with typed signatures and batched execution."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.tensors import InputSet, TensorSpec
from ..errors import ModelFormatError

# ONNX Runtime's type strings -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


class OrtSession:
    """An ``onnxruntime.InferenceSession`` with edge-sdk signatures and clear load errors."""

    def __init__(self, model: str | Path | bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        try:
            src = model if isinstance(model, bytes) else str(model)
            self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            where = "model" if isinstance(model, bytes) else str(model)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFormatError(f"ONNX Runtime cannot load {where}: {msg}") from e
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]

    @property
    def batch_is_dynamic(self) -> bool:
        return all(s.shape and not isinstance(s.shape[0], int) for s in self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(None, feeds)
        return {s.name: v for s, v in zip(self.outputs, values)}

    def run_all(self, data: InputSet, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Run every sample of ``data`` (in batches when the batch axis is dynamic, else one by one)."""
        bs = batch_size if self.batch_is_dynamic else 1
        chunks: dict[str, list[np.ndarray]] = {s.name: [] for s in self.outputs}
        for feeds in data.batches(bs):
            for name, value in self.run(feeds).items():
                chunks[name].append(value)
        return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}
