"""PyTorch -> ONNX with the dynamo exporter: dynamic batch axis, optimized graph, one file."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from ..errors import ConversionError, InvalidOptionError, require
from .onnx_graph import check_model
from .sources import TorchSource

BATCH_DIM = "batch"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, without terminal colour codes."""
    text = _ANSI.sub("", str(e)).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's chatter (``torchvision is not installed`` lines, guard errors it
    recovers from, progress prints): failures reach the user as one ConversionError line."""
    names = ["torch", "onnxscript", "coremltools"] + [
        n for n in logging.root.manager.loggerDict if n.startswith(("torch", "onnxscript", "coremltools"))
    ]
    loggers = [logging.root] + [logging.getLogger(n) for n in names]  # coremltools logs through root
    saved = {lg: lg.level for lg in loggers}
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):  # coremltools' tqdm bars
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in saved.items():
            lg.setLevel(lvl)


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


EXPORTERS = ("auto", "dynamo", "torchscript")


def _export_torchscript(src: TorchSource, dynamic_batch: bool, opset: int):
    import inspect

    import onnx
    import torch

    if src.exported is not None:
        names = list(src.exported.graph_signature.user_inputs)
    else:
        params = [p for p in inspect.signature(src.module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params][: len(src.example_inputs)]
    buf = io.BytesIO()
    try:
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(src.module, src.example_inputs, buf, dynamo=False, opset_version=opset,
                              input_names=names, do_constant_folding=True,
                              dynamic_axes={n: {0: BATCH_DIM} for n in names} if dynamic_batch else None)
    except Exception as e:
        raise ConversionError(f"TorchScript export of '{src.name}' failed: {one_line(e)}; "
                              "try the default exporter (dynamo)") from e
    return onnx.load_from_string(buf.getvalue())


def export_onnx(src: TorchSource, *, dynamic_batch: bool = True, opset: int | None = None,
                exporter: str = "auto", fixed_batch_targets: bool = False):
    """Export ``src`` to an ``onnx.ModelProto``; returns (model, notes).

    ``dynamo`` is PyTorch's supported exporter and the only one that gives a dynamic batch axis
    here. ``torchscript`` is its deprecated predecessor: ~0.4 s instead of ~5 s on MobileNetV2,
    most of the dynamo time being torch's own decomposition pass. ``auto`` (default) takes dynamo
    when the artifact keeps a dynamic batch, else (``--static-batch``, or only targets that fix the
    batch like TFLite) tries the TorchScript tracer first and falls back to dynamo if tracing fails. Either way the
    artifact's parity with the torch model is measured afterwards.
    """
    torch = require("torch", "convert", "Exporting PyTorch models")
    require("onnxscript", "convert", "Exporting PyTorch models to ONNX")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not 18 <= opset <= newest:
        raise InvalidOptionError(f"--opset {opset} unsupported: the exporter writes opsets 18 to {newest}")
    if exporter not in EXPORTERS:
        raise InvalidOptionError(f"exporter '{exporter}' unknown; choose one of: {', '.join(EXPORTERS)}")
    fallback_note: list[str] = []
    # (.pt2 programs are not traceable: their module refuses train(); they go to dynamo directly)
    if exporter == "torchscript" or (exporter == "auto" and src.exported is None
                                     and (fixed_batch_targets or not dynamic_batch)):
        try:
            model_proto = _export_torchscript(src, dynamic_batch, opset or 18)
            check_model(model_proto, f"exported '{src.name}'")
            return model_proto, ["exported with the TorchScript exporter (fast path)"]
        except ConversionError as e:
            if exporter == "torchscript":
                raise
            fallback_note = [f"TorchScript fast path failed ({e}); exported with dynamo"]
    notes: list[str] = fallback_note
    args2 = _with_batch_of_two(src.example_inputs)
    dyn = tuple({0: torch.export.Dim(BATCH_DIM, min=1, max=1 << 16)} if a.dim() else None
                for a in args2 if isinstance(a, torch.Tensor))

    # (label, model, args, dynamic_shapes), tried in order
    attempts = []
    if dynamic_batch and src.exported is not None and _batch_is_symbolic(src.exported):
        attempts.append(("program", src.exported, args2, None))
    elif dynamic_batch and src.exported is None:
        attempts.append(("dynamic", src.module, args2, dyn))
    elif dynamic_batch:
        notes.append("batch axis kept static: the .pt2 program was exported with a fixed batch "
                     "(export it with a torch.export.Dim on axis 0 for a dynamic one)")
    attempts.append(("static", src.exported if src.exported is not None else src.module,
                     src.example_inputs, None))

    last_error: Exception | None = None
    for label, model, args, shapes in attempts:
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
        msg = one_line(last_error) if last_error else "unknown error"
        raise ConversionError(f"PyTorch -> ONNX export of '{src.name}' failed: {msg}") from last_error
    if dynamic_batch and label == "static" and src.exported is None:
        notes.append("batch axis kept static: the model does not export with a dynamic batch")
    model_proto = program.model_proto
    # Give symbolic batch dims one readable name; --static-batch pins them (a .pt2 program exported
    # with a dynamic batch keeps it through dynamo otherwise).
    batch = next((int(t.shape[0]) for t in src.example_inputs if isinstance(t, torch.Tensor) and t.dim()), 1)
    for v in list(model_proto.graph.input) + list(model_proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            if dynamic_batch:
                dims[0].dim_param = BATCH_DIM
            else:
                dims[0].dim_value = batch
    check_model(model_proto, f"exported '{src.name}'")
    return model_proto, notes
