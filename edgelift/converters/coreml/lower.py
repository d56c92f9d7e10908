"""ONNX -> Core ML MIL lowering: one function per ONNX op in a registry, over the prepared graph the
TFLite lowering uses too (``converters.graph.prepare_graph``: static shapes, folded constants).

MIL keeps ONNX's NCHW layout for convolutions, so unlike TFLite there is no layout bookkeeping:
each lowering maps one node to one or a few MIL ops. Core ML has no int64 tensors; integer
tensors (token ids, indices) are int32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...errors import UnsupportedOperatorError
from ..graph import Graph, Node, describe_nodes

MIN_TARGETS = {"iOS16": 16, "iOS17": 17, "iOS18": 18}


class Unsupported(Exception):
    """Raised by a lowering for attribute combinations it cannot express (the op type is known)."""


MIL_LOWERINGS: dict[str, Callable[["MILContext", Node], None]] = {}


def mil_lowering(*op_types: str):
    def deco(fn):
        for op in op_types:
            if op in MIL_LOWERINGS:
                raise ValueError(f"a MIL lowering for '{op}' is already registered")
            MIL_LOWERINGS[op] = fn
        return fn

    return deco


def mil_name(onnx_name: str) -> str:
    """MIL variable names are identifiers; ONNX names like '/bert/Add_output_0' are not."""
    s = re.sub(r"[^0-9A-Za-z_]", "_", onnx_name).strip("_") or "t"
    return s if not s[0].isdigit() else f"t_{s}"


@dataclass
class MILContext:
    graph: Graph
    values: dict[str, object] = field(default_factory=dict)  # onnx name -> MIL Var or numpy constant
    used_names: set[str] = field(default_factory=set)

    def get(self, name: str):
        if name in self.values:
            return self.values[name]
        c = self.graph.const(name)
        if c is None:
            raise Unsupported(f"tensor '{name}' has no value")
        return _mil_const(c)

    def const(self, name: str) -> np.ndarray | None:
        v = self.values.get(name)
        if isinstance(v, np.ndarray):
            return v
        c = self.graph.const(name)
        return None if c is None else _mil_const(c)

    def name(self, onnx_name: str) -> str:
        base = n = mil_name(onnx_name)
        i = 1
        while n in self.used_names:
            n, i = f"{base}_{i}", i + 1
        self.used_names.add(n)
        return n

    def set(self, node: Node, var, index: int = 0) -> None:
        self.values[node.outputs[index]] = var

    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.shape(name)


def _mil_const(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.float64:
        return a.astype(np.float32)
    if a.dtype in (np.int64, np.uint64, np.int16, np.uint16, np.uint32):
        return a.astype(np.int32)
    return a


def unsupported_nodes(graph: Graph) -> list[tuple[str, str]]:
    return [(n.name, n.op_type) for n in graph.nodes
            if n.op_type not in MIL_LOWERINGS or n.domain not in ("", "ai.onnx")]


def check_supported(graph: Graph) -> None:
    """Every node without a Core ML lowering, listed in one error, before anything is built or run."""
    from . import ops  # noqa: F401  (registers the lowerings)

    missing = unsupported_nodes(graph)
    if missing:
        raise UnsupportedOperatorError(describe_nodes(missing, "has no Core ML lowering"), nodes=missing)




def lower_to_mil(graph: Graph, target: str = "iOS16", node_ops: dict[str, list[str]] | None = None,
                 symbolic: dict[str, tuple[int, ...]] | None = None):
    """A MIL ``Program`` computing ``graph``; every node without a lowering is listed in one error.
    ``node_ops`` (when given) is filled with the MIL op names each ONNX node became, so a precision pass can
    keep chosen nodes in fp32. ``symbolic`` names input dims that become MIL symbols (flexible shapes; the
    lowerings still read the graph's static sizes, which ``coreml/dynamic.py`` has shown not to matter)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, get_new_symbol, types

    import coremltools as ct

    from . import ops  # noqa: F401  (registers the lowerings)

    check_supported(graph)
    ctx = MILContext(graph)
    # Core ML has no int64: integer inputs (token ids) become int32
    input_types = {np.dtype("float32"): types.fp32, np.dtype("float16"): types.fp16, np.dtype("bool"): types.bool}
    specs = {}
    for name in graph.inputs:
        shape = [get_new_symbol() if i in (symbolic or {}).get(name, ()) else d for i, d in enumerate(graph.shape(name))]
        specs[mil_name(name)] = mb.placeholder(shape=shape, dtype=input_types.get(graph.dtypes[name], types.int32))
        ctx.used_names.add(mil_name(name))
    prog = Program()
    failed = []
    with Function(specs, opset_version=getattr(ct.target, target)) as fn:
        for name in graph.inputs:
            ctx.values[name] = fn.inputs[mil_name(name)]
        poisoned: set[str] = set()  # outputs of failed nodes: their consumers are not reported again
        for node in graph.nodes:
            if poisoned.intersection(node.inputs):
                poisoned.update(node.outputs)
                continue
            mark = len(fn.operations)
            try:
                MIL_LOWERINGS[node.op_type](ctx, node)
                if node_ops is not None:
                    node_ops[node.name] = [op.name for op in list(fn.operations)[mark:]]
                continue
            except Unsupported as e:
                failed.append((node.name, f"{node.op_type} ({e})"))
            except (ValueError, TypeError, NotImplementedError) as e:  # the builder's type checks
                failed.append((node.name, f"{node.op_type} ({' '.join(str(e).split())[:120]})"))
            poisoned.update(node.outputs)
        if failed:
            raise UnsupportedOperatorError(describe_nodes(failed, "cannot be lowered to Core ML"), nodes=failed)
        outs = []
        for name in graph.outputs:
            v = ctx.get(name)
            outs.append(mb.identity(x=v, name=ctx.name(name)))
        fn.set_outputs(outs)
        prog.add_function("main", fn)
    return prog
