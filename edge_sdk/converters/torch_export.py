"""PyTorch -> ONNX with the dynamo exporter: dynamic batch axis, optimized graph, one file."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from ..errors import ConversionError, require
from .onnx_graph import check_model
from .sources import TorchSource

BATCH_DIM = "batch"


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's chatter (``torchvision is not installed`` lines, progress prints)."""
    names = ["torch.onnx", "torch.export", "torch._export", "onnxscript", "torch._dynamo"]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)


def _with_batch_of_two(example_inputs: tuple) -> tuple:
    """torch.export specializes sizes 0 and 1, so a dynamic batch needs an example of >= 2."""
    import torch

    out = []
    for t in example_inputs:
        if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == 1:
            t = t.expand(2, *t.shape[1:]).contiguous()
        out.append(t)
    return tuple(out)


def _batch_is_symbolic(ep) -> bool:
    import torch

    user = set(ep.graph_signature.user_inputs)
    dims = [
        n.meta["val"].shape[0]
        for n in ep.graph.nodes
        if n.op == "placeholder" and n.name in user and n.meta["val"].dim() > 0
    ]
    return bool(dims) and all(isinstance(d, torch.SymInt) for d in dims)


def export_onnx(src: TorchSource, *, dynamic_batch: bool = True, opset: int | None = None):
    """Export ``src`` to an ``onnx.ModelProto``; returns (model, notes)."""
    torch = require("torch", "convert", "Exporting PyTorch models")
    require("onnxscript", "convert", "Exporting PyTorch models to ONNX")
    notes: list[str] = []
    args = _with_batch_of_two(src.example_inputs) if dynamic_batch else src.example_inputs
    tensor_args = [a for a in args if isinstance(a, torch.Tensor)]

    def dyn_shapes():
        return tuple({0: torch.export.Dim(BATCH_DIM, min=1, max=1 << 16)} if a.dim() else None for a in tensor_args)

    attempts = []
    if src.exported is not None and (not dynamic_batch or _batch_is_symbolic(src.exported)):
        attempts.append(("program", src.exported, None))
    if dynamic_batch:
        attempts.append(("dynamic", src.module, dyn_shapes()))
    attempts.append(("static", src.module, None))

    last_error: Exception | None = None
    for label, model, shapes in attempts:
        try:
            with quiet_exporter(), torch.no_grad():
                program = torch.onnx.export(
                    model, args, dynamo=True, dynamic_shapes=shapes, external_data=False,
                    optimize=True, opset_version=opset, verbose=False,
                )
            break
        except Exception as e:  # exporter errors come in many types
            last_error = e
            continue
    else:
        msg = str(last_error).strip().splitlines()[0][:200] if last_error else "unknown error"
        raise ConversionError(f"PyTorch -> ONNX export of '{src.name}' failed: {msg}") from last_error
    if dynamic_batch and label == "static":
        notes.append("batch axis kept static: the model does not export with a dynamic batch")
    model_proto = program.model_proto
    # Give symbolic batch dims one readable name.
    for v in list(model_proto.graph.input) + list(model_proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            dims[0].dim_param = BATCH_DIM
    check_model(model_proto, f"exported '{src.name}'")
    return model_proto, notes
