"""Patch-based inference (MCUNetV2): run a CNN's memory-heavy first stage one spatial patch at a time.

A split tensor cuts the graph into a spatial *head* (convolutions, pools, elementwise ops) and the
rest. For an n x n grid over the split tensor, each output patch's input region is found by walking
the head's receptive field backwards (kernel, stride, padding, dilation); neighbouring regions
overlap by the halo, which is the extra compute. Each patch runs through a head sub-model in ONNX
Runtime whose convolutions pad only where the patch touches the true image border (elsewhere the
halo holds real pixels), and writes its piece of the split tensor; the tail then runs once. The
whole schedule is written as one ONNX graph (a crop and a head copy per patch, sharing weights), so
one ONNX Runtime call runs it and the patched model can be saved and deployed as a plain .onnx.

Memory of the patch schedule = the split tensor (resident) + the worst patch's working set; the
input image is read patch by patch from where it lies (camera buffer, flash), as in MCUNetV2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.onnx_proto import Node, OnnxGraph, int64_initializer, int_attribute
from ..errors import InvalidOptionError
from .base import Session
from .memory import ELEMENTWISE, MemoryPlan, Op, human_bytes, simulate

WINDOW_OPS = {"Conv", "MaxPool", "AveragePool"}
POINTWISE = ELEMENTWISE | {"QuantizeLinear", "DequantizeLinear", "Concat"}
Region = tuple[int, int, int, int]  # rows [r0, r1), cols [c0, c1)


@dataclass
class Window:
    """A node's sliding window along H and W: kernel, stride, dilation, pads (top, left, bottom, right)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]

    def needs(self, out: Region, in_hw: tuple[int, int]) -> tuple[Region, tuple[int, int, int, int]]:
        """Input region for output region ``out`` (the taps that land inside the input, tight even with
        dilation), and the padding that puts the window taps where they were: zeros only where a tap
        falls outside the true input."""
        spans, pads = [], [0, 0, 0, 0]
        for axis in (0, 1):
            o0, o1 = out[2 * axis], out[2 * axis + 1]
            k, s, d, p = self.kernel[axis], self.stride[axis], self.dilation[axis], self.pads[axis]
            taps = (np.arange(o0, o1)[:, None] * s - p + np.arange(k)[None, :] * d).ravel()
            inside = taps[(taps >= 0) & (taps < in_hw[axis])]
            lo, hi = (int(inside.min()), int(inside.max()) + 1) if inside.size else (0, 1)
            first, last = o0 * s - p, (o1 - 1) * s - p + (k - 1) * d
            pads[axis], pads[axis + 2] = lo - first, last + 1 - hi
            spans += [lo, hi]
        return (spans[0], spans[1], spans[2], spans[3]), (pads[0], pads[1], pads[2], pads[3])


def window_of(node: Node, weight_shape: tuple[int, ...] | None) -> Window:
    if node.attr("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        raise InvalidOptionError(f"{node.op_type} {node.name}: auto_pad {node.attr('auto_pad')} is not supported in a patch head")
    if node.op_type == "Conv":
        kernel = tuple(node.attr("kernel_shape", list(weight_shape[2:])))
    else:
        kernel = tuple(node.attr("kernel_shape"))
    pads = tuple(node.attr("pads", [0, 0, 0, 0]))
    return Window(kernel, tuple(node.attr("strides", [1, 1])), tuple(node.attr("dilations", [1, 1])),
                  (pads[0], pads[1], pads[2], pads[3]))


def _union(a: Region | None, b: Region) -> Region:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _area(r: Region) -> int:
    return max(0, r[1] - r[0]) * max(0, r[3] - r[2])


@dataclass
class PatchGeometry:
    """One patch: the region of every head tensor, each window node's pads, and crops on edges."""

    out: Region
    regions: dict[str, Region]
    pads: dict[int, tuple[int, int, int, int]]  # head node index -> pads
    crops: dict[tuple[int, str], Region]  # (node index, input) -> region needed (within the tensor's region)

    def signature(self) -> tuple:
        """Patches with equal signatures run through the same head sub-model."""
        sizes = tuple(sorted((t, (r[1] - r[0], r[3] - r[2])) for t, r in self.regions.items()))
        rel = tuple(sorted((k, (c[0] - self.regions[k[1]][0], c[1] - self.regions[k[1]][0],
                                c[2] - self.regions[k[1]][2], c[3] - self.regions[k[1]][2]))
                           for k, c in self.crops.items()))
        return sizes, tuple(sorted(self.pads.items())), rel


@dataclass
class PatchPlan:
    split: str  # the split tensor (the stage output the head writes patch by patch)
    grid: int
    head_nodes: list[int]
    tail_nodes: list[int]
    patches: list[PatchGeometry]
    plain_peak: int
    peak: int
    head_peak: int
    tail_peak: int
    plain_macs: int
    macs: int
    input_name: str
    notes: list[str] = field(default_factory=list)

    @property
    def extra_compute(self) -> float:
        return self.macs / max(1, self.plain_macs)

    @property
    def reduction(self) -> float:
        return self.plain_peak / max(1, self.peak)

    def describe(self) -> str:
        return (f"split at '{self.split}', {self.grid}x{self.grid} patches: peak {human_bytes(self.peak)} "
                f"(plain {human_bytes(self.plain_peak)}, {self.reduction:.2f}x less), "
                f"compute x{self.extra_compute:.3f}")


class HeadGraph:
    """The graph facts patch planning needs: producers, consumers, the spatial prefix."""

    def __init__(self, graph: OnnxGraph, plan: MemoryPlan) -> None:
        self.graph, self.plan = graph, plan
        self.const = plan.constants  # computed once by the memory planner
        self.producer = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(graph.nodes):
            for t in n.inputs:
                if t and t not in self.const:
                    self.consumers.setdefault(t, []).append(i)
        if len(graph.inputs) != 1:
            raise InvalidOptionError("patch-based inference needs a model with one image input")
        self.input = graph.inputs[0].name
        shape = plan.shapes.get(self.input, ())
        if len(shape) != 4:
            raise InvalidOptionError(f"patch-based inference needs an NCHW image input; '{self.input}' is {shape}")
        self.spatial = self._spatial_nodes()

    def act(self, t: str) -> bool:
        return self.plan.is_activation(t)

    def _spatial_nodes(self) -> set[int]:
        """Nodes computed from the image by spatially local ops only (the possible head)."""
        ok: set[str] = {self.input}
        nodes: set[int] = set()
        for i, n in enumerate(self.graph.nodes):
            ins = [t for t in n.inputs if self.act(t)]
            if not ins or not all(t in ok for t in ins):
                continue
            if n.op_type in WINDOW_OPS or (n.op_type in POINTWISE and
                                           (n.op_type != "Concat" or int(n.attr("axis", 0)) in (1, -3))):
                if all(len(self.plan.shapes.get(o, ())) == 4 for o in n.outputs):
                    nodes.add(i)
                    ok.update(n.outputs)
        return nodes

    def ancestors(self, t: str) -> list[int]:
        seen: set[int] = set()
        stack = [t]
        while stack:
            x = stack.pop()
            i = self.producer.get(x)
            if i is None or i in seen or x in self.const:
                continue
            seen.add(i)
            stack.extend(self.graph.nodes[i].inputs)
        return sorted(seen)

    def with_constants(self, nodes: list[int]) -> list[int]:
        """``nodes`` plus the nodes computing the constants they read (e.g. weights' DequantizeLinear)."""
        need = set(nodes)
        stack = [t for i in nodes for t in self.graph.nodes[i].inputs if t in self.const]
        while stack:
            i = self.producer.get(stack.pop())
            if i is not None and i not in need:
                need.add(i)
                stack.extend(t for t in self.graph.nodes[i].inputs if t in self.const)
        return sorted(need)

    def split_candidates(self) -> list[str]:
        """Logical (QDQ-folded) op outputs that cut the graph: everything after reads only the split."""
        out = []
        for op in self.plan.ops:
            t = op.output
            head = self.ancestors(t)
            if not head or not set(head) <= self.spatial:
                continue
            head_outs = {o for i in head for o in self.graph.nodes[i].outputs}
            crossing = any(self.act(x) and x in head_outs and x != t
                           for j, n in enumerate(self.graph.nodes) if j not in head for x in n.inputs)
            if not crossing:
                out.append(t)
        return out

    def geometry(self, split: str, head: list[int], out: Region) -> PatchGeometry:
        regions: dict[str, Region] = {split: out}
        pads: dict[int, tuple[int, int, int, int]] = {}
        needs: dict[tuple[int, str], Region] = {}
        for i in reversed(head):
            n = self.graph.nodes[i]
            r = regions.get(n.outputs[0])
            if r is None:
                continue
            for t in n.inputs:
                if not self.act(t):
                    continue
                if n.op_type in WINDOW_OPS:
                    w = self.plan.shapes.get(n.inputs[1]) if n.op_type == "Conv" else None
                    win = window_of(n, w)
                    hw = self.plan.shapes[t][2:]
                    need, p = win.needs(r, (hw[0], hw[1]))
                    pads[i] = p
                else:
                    need = r
                needs[(i, t)] = need
                regions[t] = _union(regions.get(t), need)
        crops = {k: v for k, v in needs.items() if v != regions[k[1]]}
        return PatchGeometry(out, regions, pads, crops)

    def plan_patches(self, split: str, grid: int, budget_notes: list[str] | None = None) -> PatchPlan:
        head = self.ancestors(split)
        head_set = set(head)
        tail = self.with_constants([i for i in range(len(self.graph.nodes)) if i not in head_set
                                    and any(self.act(o) for o in self.graph.nodes[i].outputs)])
        H, W = self.plan.shapes[split][2:]
        if grid > min(H, W):
            raise InvalidOptionError(f"a {grid}x{grid} grid does not fit the {H}x{W} split tensor '{split}'")
        rows = [round(k * H / grid) for k in range(grid + 1)]
        cols = [round(k * W / grid) for k in range(grid + 1)]
        patches = [self.geometry(split, head, (rows[a], rows[a + 1], cols[b], cols[b + 1]))
                   for a in range(grid) for b in range(grid)]
        return self._cost(split, grid, head, tail, patches)

    def _cost(self, split, grid, head, tail, patches) -> PatchPlan:
        plan = self.plan
        head_outs = {o for i in head for o in self.graph.nodes[i].outputs}
        head_ops = [op for op in plan.ops if op.output in head_outs or op.output == split]
        tail_ops = [op for op in plan.ops if op not in head_ops]
        full = plan.sizes
        split_bytes = full[split]
        head_peak, macs = 0, 0
        for g in patches:
            sizes = {}
            for t, r in g.regions.items():
                shape = plan.shapes.get(t)
                if shape and t in full:
                    sizes[t] = full[t] * _area(r) // max(1, shape[2] * shape[3])
            ops = [Op(k, op.name, op.op_type, op.inputs, op.output, 0, op.in_place) for k, op in enumerate(head_ops)]
            sizes[split] = 0  # written straight into the resident split tensor
            simulate(ops, sizes, [], resident=split_bytes)
            head_peak = max(head_peak, max((op.live_bytes for op in ops), default=0))
            for op in head_ops:
                shape = plan.shapes[op.output]
                r = g.regions.get(op.output)
                if r is not None and op.macs:
                    macs += op.macs * _area(r) // max(1, shape[2] * shape[3])
        tail_copy = [Op(k, op.name, op.op_type, op.inputs, op.output, op.macs, op.in_place)
                     for k, op in enumerate(tail_ops)]
        simulate(tail_copy, full, plan.graph_outputs)
        tail_peak = max((op.live_bytes for op in tail_copy), default=split_bytes)
        macs += sum(op.macs for op in tail_ops)
        return PatchPlan(split, grid, head, tail, patches, plan.peak_bytes, max(head_peak, tail_peak), head_peak,
                         tail_peak, plan.total_macs, macs, self.input)

    def search(self, budget: int | None, grids=range(2, 9)) -> PatchPlan:
        """The plan with the least extra compute whose peak fits ``budget`` (least peak without one)."""
        plans = []
        for split in self.split_candidates():
            H, W = self.plan.shapes[split][2:]
            for g in grids:
                if g <= min(H, W):
                    plans.append(self.plan_patches(split, g))
        if not plans:
            raise InvalidOptionError("no split point: the model has no spatial first stage that patches can cover")
        if budget is None:
            return min(plans, key=lambda p: (p.peak, p.macs))
        fitting = [p for p in plans if p.peak <= budget]
        if not fitting:
            best = min(plans, key=lambda p: (p.peak, p.macs))
            raise InvalidOptionError(
                f"no patch plan fits {human_bytes(budget)}: the smallest peak is {human_bytes(best.peak)} "
                f"({best.describe()}); raise --memory-budget to at least {best.peak} bytes")
        return min(fitting, key=lambda p: (p.macs, p.peak))


class PatchedSession(Session):
    """Runs a PatchPlan as one ONNX Runtime session over the rewritten graph (``patched_model``):
    one call per inference, weights shared by the patches, tensors freed patch by patch."""

    def __init__(self, graph: OnnxGraph, hg: HeadGraph, plan: PatchPlan, make_session=None) -> None:
        """``make_session(model_bytes)`` opens the patched model; None only builds ``model_bytes``."""
        self.graph, self.hg, self.plan = graph, hg, plan
        self.model_bytes = self.patched_model()
        self.session = None if make_session is None else make_session(self.model_bytes)
        self.inputs = self.session.inputs if self.session else []
        self.outputs = self.session.outputs if self.session else []

    def _head_nodes(self, g: PatchGeometry, suffix: str = "", skip_constants: bool = False):
        """The head's nodes for patch ``g``: pads set for its borders, crops inserted where a tensor's
        region exceeds what a consumer reads; activation tensors renamed with ``suffix``."""
        graph, hg = self.graph, self.hg

        def rn(t: str) -> str:
            return t + suffix if suffix and hg.act(t) else t

        nodes, extra = [], []
        for i in hg.with_constants(self.plan.head_nodes):
            n = graph.nodes[i]
            if not any(hg.act(o) for o in n.outputs):
                if not skip_constants:
                    nodes.append(n)
                continue
            if i in g.pads:
                n = n.with_ints("pads", list(g.pads[i]))
            inputs = [rn(t) for t in n.inputs]
            for k, t in enumerate(n.inputs):
                crop = g.crops.get((i, t))
                if crop is None:
                    continue
                have = g.regions[t]
                name = f"{t}__crop{i}{suffix}"
                starts = int64_initializer(name + "_s", [crop[0] - have[0], crop[2] - have[2]])
                ends = int64_initializer(name + "_e", [crop[1] - have[0], crop[3] - have[2]])
                axes = int64_initializer(name + "_a", [2, 3])
                extra += [starts, ends, axes]
                dq = graph.nodes[hg.producer[t]] if t in hg.producer else None
                if dq is not None and dq.op_type == "DequantizeLinear" and hg.act(dq.inputs[0]):
                    # crop the int8 tensor, then dequantize: ONNX Runtime still fuses DQ -> op -> Q into an int8 kernel
                    nodes.append(Node("Slice", name + "_q", [rn(dq.inputs[0]), starts.name, ends.name, axes.name],
                                      [name + "_q"], "", {}))
                    nodes.append(Node("DequantizeLinear", name, [name + "_q", *dq.inputs[1:]], [name], dq.domain, dq.attrs))
                else:
                    nodes.append(Node("Slice", name, [rn(t), starts.name, ends.name, axes.name], [name], "", {}))
                inputs[k] = name
            nodes.append(Node(n.op_type, n.name + suffix, inputs, [rn(o) for o in n.outputs], n.domain, n.attrs))
        return nodes, extra

    def patched_model(self) -> bytes:
        """The whole patch schedule as one ONNX model: per patch, a crop of the image and a copy of the
        head (weights shared), the pieces concatenated into the split tensor, then the tail. One
        ONNX Runtime session runs it, in this order, freeing each patch's tensors as it goes."""
        graph, hg, plan = self.graph, self.hg, self.plan
        x = plan.input_name
        nodes, extra = [], []
        rows: dict[int, list[str]] = {}
        for k, g in enumerate(plan.patches):
            suffix = f"__p{k}"
            r = g.regions[x]
            starts = int64_initializer(f"{x}{suffix}_s", [r[0], r[2]])
            ends = int64_initializer(f"{x}{suffix}_e", [r[1], r[3]])
            axes = int64_initializer(f"{x}{suffix}_a", [2, 3])
            extra += [starts, ends, axes]
            nodes.append(Node("Slice", f"{x}{suffix}", [x, starts.name, ends.name, axes.name], [x + suffix], "", {}))
            head, more = self._head_nodes(g, suffix, skip_constants=k > 0)
            nodes += head
            extra += more
            rows.setdefault(g.out[0], []).append(plan.split + suffix)
        pieces = []
        for r0, names in sorted(rows.items()):
            row = f"{plan.split}__row{r0}"
            nodes.append(Node("Concat", row, names, [row], "", {"axis": int_attribute("axis", 3)}))
            pieces.append(row)
        nodes.append(Node("Concat", plan.split, pieces, [plan.split], "", {"axis": int_attribute("axis", 2)}))
        nodes += [graph.nodes[i] for i in plan.tail_nodes]
        return graph.submodel(nodes, list(graph.inputs), list(graph.outputs), "patched", extra)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.session.run(feeds)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def open_patched(path, budget, threads: int | None = None, **options) -> tuple[Session, PatchPlan | None]:
    """An ONNX model run under ``budget`` bytes of activation memory: the plain session when its peak
    already fits, else the patched schedule with the least extra compute that fits."""
    from .memory import load_graph, parse_budget, plan_memory
    from .ort import OrtSession

    limit = parse_budget(budget)
    graph, data = load_graph(path)
    plan = plan_memory(graph)
    if plan.peak_bytes <= limit:  # from the path when there is one: ONNX Runtime resolves external data beside it
        return OrtSession(path if isinstance(path, (str, Path)) else data, threads, **options), None
    hg = HeadGraph(graph, plan)
    patches = hg.search(limit)
    return PatchedSession(graph, hg, patches, lambda b: OrtSession(b, threads, **options)), patches
