"""Patch-based inference (MCUNetV2), planned over the whole graph: which stages run patch by patch.

A *stage* is a run of consecutive, spatially local ops of the schedule (convolutions, pools,
elementwise ops, channel concats, nearest upsampling, transposed convolutions). It reads some tensors
that are resident in full (the image, or features stored by earlier ops) and writes the tensors that
leave it (its outputs: the next stage's input, and every skip connection an FPN or U-Net takes out
of it), each assembled from patches and stored at its full size. For an n x n grid every stage output
is cut into n x n cells; a patch computes cell (a, b) of every output. Walking the stage backwards
gives each tensor's region for that patch (kernel, stride, padding, dilation of windows; the aligned
source rows of an upsampling), so neighbouring patches overlap by the halo: the extra compute.

Memory of a stage (MCUNetV2's accounting, ops as in ``memory``): what is resident when it starts
(tensors still needed later, its inputs), the pieces of its outputs written so far, and the worst
patch's working set; then, when the pieces are concatenated, the outputs twice. Graph inputs are the
caller's memory (the image is read patch by patch from where it lies), as in the plain plan's peak.
Ops outside stages keep their plain live bytes. The planner picks, per run of spatial ops that holds
ops over the budget, the stage and grid with the least extra compute that fits. Rows and columns are
planned separately (regions are rectangles), which keeps the search to about a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.onnx_proto import OnnxGraph
from ..errors import InvalidOptionError
from .memory import ELEMENTWISE, MemoryPlan, Op, human_bytes, simulate

WINDOW_OPS = {"Conv", "MaxPool", "AveragePool"}
POINTWISE = ELEMENTWISE | {"QuantizeLinear", "DequantizeLinear", "Concat"}
GRIDS = range(2, 9)
Interval = tuple[int, int]
Region = tuple[int, int, int, int]  # rows [r0, r1), cols [c0, c1)
_NEAREST_MODES = {(b"half_pixel", b"round_prefer_floor"), (b"half_pixel", b"round_prefer_ceil"),
                  (b"pytorch_half_pixel", b"round_prefer_floor"), (b"pytorch_half_pixel", b"round_prefer_ceil"),
                  (b"asymmetric", b"floor")}  # the modes where output pixel o reads input o // f


def window_needs(out: Interval, n_in: int, k: int, s: int, d: int, p: int) -> tuple[Interval, int, int]:
    """Input interval a sliding window (kernel k, stride s, dilation d, leading pad p) reads for output
    interval ``out`` (the taps inside the input, tight even with dilation), and the pads that put the
    taps where they were: zeros only where a tap falls outside the true input."""
    o0, o1 = out
    lo = hi = None
    for j in range(k):
        off = j * d - p
        first = max(o0, -(off // s))  # first output whose tap j lands at >= 0
        if first < o1:
            lo = first * s + off if lo is None else min(lo, first * s + off)
        last = min(o1 - 1, (n_in - 1 - off) // s)  # last output whose tap j lands inside
        if last >= o0:
            hi = last * s + off if hi is None else max(hi, last * s + off)
    if lo is None or hi is None:
        lo, hi = 0, 0
    first_tap, last_tap = o0 * s - p, (o1 - 1) * s - p + (k - 1) * d
    return (lo, hi + 1), lo - first_tap, last_tap - hi


def transpose_needs(out: Interval, n_in: int, k: int, s: int, d: int, p: int) -> tuple[Interval, Interval]:
    """Input interval a transposed convolution needs for output interval ``out``, and the output interval
    it computes from that input with no padding (the caller crops ``out`` from it)."""
    o0, o1 = out
    lo, hi = n_in, -1
    for j in range(k):
        off = j * d - p  # output = i * s + off
        i0, i1 = -((off - o0) // s), (o1 - 1 - off) // s  # ceil((o0 - off) / s), floor((o1 - 1 - off) / s)
        i0, i1 = max(i0, 0), min(i1, n_in - 1)
        if i0 <= i1:
            lo, hi = min(lo, i0), max(hi, i1)
    if hi < lo:
        lo, hi = 0, 0
    return (lo, hi + 1), (lo * s - p, hi * s - p + (k - 1) * d + 1)


def cells(length: int, grid: int) -> list[Interval]:
    edges = [round(k * length / grid) for k in range(grid + 1)]
    return [(edges[k], edges[k + 1]) for k in range(grid)]


@dataclass
class AxisRule:
    """How one node maps an output interval to input intervals along H (axis 0) or W (axis 1)."""

    kind: str  # "window" | "transpose" | "upsample" | "pointwise"
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class PatchGeometry:
    """One patch: the region of every stage tensor, window pads, input crops and output crops."""

    cell: tuple[int, int]  # (row, col) of the grid
    regions: dict[str, Region]
    pads: dict[int, tuple[int, int, int, int]]  # graph node index -> pads for this patch
    crops: dict[tuple[int, str], Region]  # (node index, input) -> region the node reads, within regions[input]
    outputs: dict[str, Region]  # stage output -> its cell (within regions[output])
    sizes_key: tuple = ()  # patches with equal keys have equal tensor sizes (same working set)


@dataclass
class Stage:
    """Ops [first, stop) of the logical schedule, run patch by patch on a grid x grid grid."""

    first: int
    stop: int
    grid: int
    nodes: list[int]  # graph nodes copied into each patch (the ops' nodes, with the activation DQs they read)
    inputs: list[str]  # resident tensors the patches crop
    outputs: list[str]  # tensors assembled from the patches, stored in full
    patches: list[PatchGeometry]
    peak: int
    macs: int
    plain_macs: int
    output_bytes: int

    def describe(self, ops: list[Op]) -> str:
        return (f"ops {self.first}-{self.stop - 1} ({ops[self.first].op_type} .. {ops[self.stop - 1].op_type}) "
                f"in {self.grid}x{self.grid} patches, {len(self.outputs)} output(s) stored "
                f"({human_bytes(self.output_bytes)}), peak {human_bytes(self.peak)}, "
                f"compute x{self.macs / max(1, self.plain_macs):.3f} of the stage")


@dataclass
class PatchPlan:
    stages: list[Stage]
    plain_peak: int
    peak: int
    plain_macs: int
    macs: int
    notes: list[str] = field(default_factory=list)

    @property
    def extra_compute(self) -> float:
        return self.macs / max(1, self.plain_macs)

    @property
    def reduction(self) -> float:
        return self.plain_peak / max(1, self.peak)

    @property
    def grid(self) -> int:
        return self.stages[0].grid

    def describe(self) -> str:
        return (f"{len(self.stages)} patched stage(s), grid {'/'.join(str(s.grid) for s in self.stages)}: "
                f"peak {human_bytes(self.peak)} (plain {human_bytes(self.plain_peak)}, {self.reduction:.2f}x less), "
                f"compute x{self.extra_compute:.3f}")

    def summary(self) -> dict:
        """What a report or a cached plan records."""
        return {"planned_peak_bytes": self.peak, "plain_peak_bytes": self.plain_peak,
                "planned_reduction": round(self.reduction, 4), "extra_compute": round(self.extra_compute, 4),
                "stages": [{"ops": [s.first, s.stop - 1], "grid": s.grid, "outputs": s.outputs, "peak_bytes": s.peak}
                           for s in self.stages]}


class StagePlanner:
    """The graph facts stage planning needs: per-node rules, producers, consumers, live bytes at boundaries."""

    def __init__(self, graph: OnnxGraph, plan: MemoryPlan) -> None:
        self.graph, self.plan = graph, plan
        self.const = plan.constants
        self._hw = {t: (s[2], s[3]) for t, s in plan.shapes.items() if len(s) == 4}
        self.producer = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(graph.nodes):
            for t in n.inputs:
                if self.act(t):
                    self.consumers.setdefault(t, []).append(i)
        self.graph_inputs = set(plan.graph_inputs)
        self.graph_outputs = {v.name for v in graph.outputs}
        self.rules = {i: r for i in range(len(graph.nodes)) if (r := self._rule(i)) is not None}
        self.op_nodes = [self._op_nodes(op) for op in plan.ops]
        self.spatial = [all(i in self.rules for i in nodes) and len(plan.shapes.get(op.output, ())) == 4
                        for op, nodes in zip(plan.ops, self.op_nodes)]
        produced = {op.output: op.index for op in plan.ops}
        last_use: dict[str, int] = {}
        for op in plan.ops:
            for t in op.inputs:
                last_use[t] = op.index
        for t in plan.graph_outputs:
            last_use[t] = len(plan.ops)
        change = [0] * (len(plan.ops) + 2)  # a tensor made by op m and last read by op l lives across m < k <= l
        for t, last in last_use.items():
            if t in produced and t not in self.graph_inputs:
                change[produced[t] + 1] += plan.sizes.get(t, 0)
                change[last + 1] -= plan.sizes.get(t, 0)
        self._live, running = [], 0
        for delta in change[:-1]:
            running += delta
            self._live.append(running)

    def act(self, t: str) -> bool:
        return self.plan.is_activation(t)

    def hw(self, t: str) -> tuple[int, int] | None:
        return self._hw.get(t)

    # ---- which nodes are spatially local, and how -------------------------------------------------
    def _rule(self, i: int) -> AxisRule | None:
        n = self.graph.nodes[i]
        outs = [o for o in n.outputs if o]
        if not outs or not self.act(outs[0]) or self.hw(outs[0]) is None:
            return None
        if n.op_type == "MaxPool" and len(outs) > 1 and outs[1] in self.consumers:
            return None
        acts = [t for t in n.inputs if self.act(t)]
        if n.op_type in WINDOW_OPS | {"ConvTranspose"}:
            if n.attr("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") or acts != [n.inputs[0]]:
                return None
            if n.op_type == "ConvTranspose" and (any(n.attr("output_padding", [0])) or n.attr("output_shape")):
                return None
            w = self.plan.shapes.get(n.inputs[1]) if n.op_type in ("Conv", "ConvTranspose") else None
            kernel = n.attr("kernel_shape") or (list(w[2:]) if w else None)
            if not kernel or len(kernel) != 2:
                return None
            pads = n.attr("pads", [0, 0, 0, 0])
            return AxisRule("window" if n.op_type != "ConvTranspose" else "transpose", tuple(kernel),
                            tuple(n.attr("strides", [1, 1])), tuple(n.attr("dilations", [1, 1])), tuple(pads))
        if n.op_type == "Resize":
            hw_in, hw_out = self.hw(n.inputs[0]), self.hw(outs[0])
            modes = (n.attr("coordinate_transformation_mode", b"half_pixel"), n.attr("nearest_mode", b"round_prefer_floor"))
            if (acts != [n.inputs[0]] or n.attr("mode", b"nearest") != b"nearest" or modes not in _NEAREST_MODES
                    or hw_in is None or any(o % k for o, k in zip(hw_out, hw_in))):
                return None
            return AxisRule("upsample", stride=(hw_out[0] // hw_in[0], hw_out[1] // hw_in[1]))
        if n.op_type in POINTWISE:
            if n.op_type == "Concat" and int(n.attr("axis", 0)) not in (1, -3):
                return None
            hw = self.hw(outs[0])
            if all(self.hw(t) == hw or self.hw(t) == (1, 1) for t in acts):
                return AxisRule("pointwise")
        return None

    def _op_nodes(self, op: Op) -> list[int]:
        """The graph nodes of a logical op: its node (and folded QuantizeLinear), plus the activation
        DequantizeLinear nodes it reads through."""
        nodes = set(self.plan.nodes_of.get(op.output, []))
        stack = [t for i in list(nodes) for t in self.graph.nodes[i].inputs]
        while stack:
            t = stack.pop()
            i = self.producer.get(t)
            if i is not None and i not in nodes and self.graph.nodes[i].op_type == "DequantizeLinear" and self.act(t) \
                    and self.act(self.graph.nodes[i].inputs[0]):
                nodes.add(i)
                stack.extend(self.graph.nodes[i].inputs)
        return sorted(nodes)

    def live_across(self, boundary: int) -> int:
        """Bytes of tensors made before op ``boundary`` and still needed at or after it (graph inputs excluded)."""
        return self._live[boundary]

    def runs(self) -> list[tuple[int, int]]:
        """Maximal runs [first, stop) of consecutive spatial ops."""
        out, start = [], None
        for k, ok in enumerate(self.spatial + [False]):
            if ok and start is None:
                start = k
            elif not ok and start is not None:
                out.append((start, k))
                start = None
        return out

    # ---- one stage ----------------------------------------------------------------------------------
    def stage_io(self, first: int, stop: int) -> tuple[list[int], list[str], list[str]]:
        nodes = sorted({i for k in range(first, stop) for i in self.op_nodes[k]})
        inside = set(nodes)
        main = {i for k in range(first, stop) for i in self.plan.nodes_of.get(self.plan.ops[k].output, [])}
        made = {o for i in nodes for o in self.graph.nodes[i].outputs}
        inputs = list(dict.fromkeys(t for i in nodes for t in self.graph.nodes[i].inputs
                                    if self.act(t) and t not in made))
        outputs = []
        for i in sorted(main):
            for o in self.graph.nodes[i].outputs:
                if o and self.act(o) and (o in self.graph_outputs or any(c not in inside for c in self.consumers.get(o, []))):
                    outputs.append(o)
        return nodes, inputs, outputs

    def _walk(self, nodes: list[int], seeds: dict[str, Interval], axis: int):
        """Regions along one axis of every tensor the stage computes for one patch (reverse order)."""
        regions = dict(seeds)
        pads: dict[int, tuple[int, int]] = {}
        needs: dict[tuple[int, str], Interval] = {}
        for i in reversed(nodes):
            n = self.graph.nodes[i]
            out = n.outputs[0]
            r = regions.get(out)
            if r is None:
                continue
            rule = self.rules[i]
            for t in n.inputs:
                if not self.act(t) or t in (n.inputs[1:] if rule.kind != "pointwise" else ()):
                    continue
                hw = self.hw(t)
                if hw is None or (hw != self.hw(out) and hw == (1, 1)):
                    continue  # broadcast (per-channel) input: read whole
                k, s, d = rule.kernel[axis], rule.stride[axis], rule.dilation[axis]
                if rule.kind == "window":
                    need, lo, hi = window_needs(r, hw[axis], k, s, d, rule.pads[axis])
                    pads[i] = (lo, hi)
                elif rule.kind == "transpose":
                    need, natural = transpose_needs(r, hw[axis], k, s, d, rule.pads[axis])
                    regions[out] = natural
                elif rule.kind == "upsample":
                    need = (r[0] // s, min(hw[axis], -(-r[1] // s)))
                    regions[out] = (need[0] * s, need[1] * s)
                else:
                    need = r
                needs[(i, t)] = need
                prev = regions.get(t)
                regions[t] = need if prev is None else (min(prev[0], need[0]), max(prev[1], need[1]))
        return regions, pads, needs

    def regions_for(self, nodes: list[int], seeds: dict[str, Region]) -> dict[str, Region]:
        """The region of every tensor ``nodes`` compute when each tensor in ``seeds`` is wanted over its region."""
        rows = self._walk(nodes, {t: (r[0], r[1]) for t, r in seeds.items()}, 0)[0]
        cols = self._walk(nodes, {t: (r[2], r[3]) for t, r in seeds.items()}, 1)[0]
        return {t: (*rows[t], *cols[t]) for t in rows if t in cols}

    def geometry(self, nodes: list[int], outputs: list[str], grid: int) -> list[PatchGeometry]:
        walks = []
        for axis in (0, 1):
            per_cell = []
            for c in range(grid):
                seeds = {o: cells(self.hw(o)[axis], grid)[c] for o in outputs}
                per_cell.append((seeds, *self._walk(nodes, seeds, axis)))
            walks.append(per_cell)
        patches = []
        for a in range(grid):
            rs, rr, rp, rn = walks[0][a]
            for b in range(grid):
                cs, cr, cp, cn = walks[1][b]
                regions = {t: (rr[t][0], rr[t][1], cr[t][0], cr[t][1]) for t in rr if t in cr}
                pads = {i: (rp[i][0], cp[i][0], rp[i][1], cp[i][1]) for i in rp}
                crops = {}
                for key, need in rn.items():
                    full = (need[0], need[1], cn[key][0], cn[key][1])
                    if full != regions[key[1]]:
                        crops[key] = full
                outs = {o: (rs[o][0], rs[o][1], cs[o][0], cs[o][1]) for o in outputs}
                shape = (tuple(r[1] - r[0] for r in rr.values()), tuple(r[1] - r[0] for r in cr.values()))
                patches.append(PatchGeometry((a, b), regions, pads, crops, outs, shape))
        return patches

    def stage(self, first: int, stop: int, grid: int) -> Stage | None:
        """The stage over ops [first, stop) on a grid x grid grid, costed; None if it cannot be cut so."""
        nodes, inputs, outputs = self.stage_io(first, stop)
        if not outputs or any(min(self.hw(t) or (0, 0)) < grid for t in outputs) \
                or any(self.hw(t) is None for t in inputs):
            return None
        plan = self.plan
        patches = self.geometry(nodes, outputs, grid)
        ops = plan.ops[first:stop]
        out_bytes = sum(plan.sizes.get(o, 0) for o in outputs)
        resident = self.live_across(first)
        pieces, patch_peak, macs = 0, 0, 0
        working: dict[tuple, int] = {}  # interior patches share their sizes: simulate each shape once
        for g in patches:
            if g.sizes_key not in working:
                sizes = {t: self._part(t, r) for t, r in g.regions.items()}
                local = [Op(k, op.name, op.op_type, op.inputs, op.output, 0, op.in_place) for k, op in enumerate(ops)]
                simulate(local, sizes, outputs)
                working[g.sizes_key] = max(op.live_bytes for op in local)
            patch_peak = max(patch_peak, resident + pieces + working[g.sizes_key])
            pieces += sum(self._part(o, r) for o, r in g.outputs.items())
            for op in ops:
                r, hw = g.regions.get(op.output), self.hw(op.output)
                if r is not None and op.macs and hw:
                    macs += op.macs * _area(r) // max(1, hw[0] * hw[1])
        assembly = self.live_across(stop) + out_bytes
        return Stage(first, stop, grid, nodes, inputs, outputs, patches, max(patch_peak, assembly), macs,
                     sum(op.macs for op in ops), out_bytes)

    def _part(self, t: str, r: Region) -> int:
        """Bytes of region ``r`` of tensor ``t``."""
        hw = self.hw(t)
        return self.plan.sizes.get(t, 0) * _area(r) // max(1, hw[0] * hw[1]) if hw else 0

    # ---- the search -----------------------------------------------------------------------------------
    def _candidates(self, run: tuple[int, int], lo: int, hi: int, budget: int | None):
        """Stages inside ``run`` covering ops [lo, hi], cut where little is resident (block boundaries:
        local minima of what lives across), shortest first."""
        def narrow(k: int) -> bool:
            here = self.live_across(k)
            return (budget is None or 2 * here <= budget) and all(
                here <= self.live_across(j) for j in (k - 1, k + 1) if run[0] <= j <= run[1])

        starts = [a for a in range(run[0], lo + 1) if a == run[0] or narrow(a)]
        starts = sorted(starts, key=lambda a: (self.live_across(a), -a))[:3]
        ends = [b for b in range(hi + 1, run[1] + 1) if b == run[1] or narrow(b)]
        ends = sorted(set(ends[:8]) | set(sorted(ends, key=self.live_across)[:2]))  # near ones, and the narrowest
        return [(a, b) for a in starts for b in ends]

    def best_stage(self, run, lo: int, hi: int, budget: int | None) -> Stage | None:
        """The fitting stage with the least compute (``budget``), or the least peak (None)."""
        best = None
        for a, b in self._candidates(run, lo, hi, budget):
            for g in GRIDS:
                s = self.stage(a, b, g)
                if s is None:
                    continue
                if budget is None:
                    if best is None or (s.peak, s.macs) < (best.peak, best.macs):
                        best = s
                elif s.peak <= budget:
                    if best is None or (s.macs, s.peak) < (best.macs, best.peak):
                        best = s
                    break  # more patches only add compute
        return best

    def search(self, budget: int | None) -> PatchPlan:
        """The plan with the least extra compute whose peak fits ``budget``; the least peak without one."""
        ops = self.plan.ops
        if budget is None:
            return self._least_peak()
        hot = [op.index for op in ops if op.live_bytes > budget]
        stages = []
        for run in self.runs():
            inside = [k for k in hot if run[0] <= k < run[1]]
            if not inside:
                continue
            s = self.best_stage(run, inside[0], inside[-1], budget)
            if s is None:
                break
            stages.append(s)
        plan = self._plan(stages)
        if plan.peak > budget or not stages:
            least = self._least_peak()
            raise InvalidOptionError(
                f"no patch plan fits {human_bytes(budget)}: the smallest peak is {human_bytes(least.peak)} "
                f"({least.describe()}); raise --memory-budget to at least {least.peak} bytes")
        return plan

    def _least_peak(self) -> PatchPlan:
        stages: list[Stage] = []
        for _ in range(4):
            plan = self._plan(stages)
            covered = {k for s in stages for k in range(s.first, s.stop)}
            worst = max((op for op in self.plan.ops if op.index not in covered), key=lambda op: op.live_bytes,
                        default=None)
            if worst is None or worst.live_bytes < plan.peak and stages:
                break
            run = next((r for r in self.runs() if r[0] <= worst.index < r[1]
                        and not any(r[0] <= s.first < r[1] for s in stages)), None)
            s = None if run is None else self.best_stage(run, worst.index, worst.index, None)
            if s is None or s.peak >= worst.live_bytes:
                break
            stages.append(s)
        if not stages:
            raise InvalidOptionError("no stage to patch: the ops that hold the most memory are not spatially local "
                                     f"(peak at op {self.plan.peak_op.index} {self.plan.peak_op.op_type})")
        return self._plan(stages)

    def _plan(self, stages: list[Stage]) -> PatchPlan:
        stages = sorted(stages, key=lambda s: s.first)
        covered = {k for s in stages for k in range(s.first, s.stop)}
        outside = [op.live_bytes for op in self.plan.ops if op.index not in covered]
        peak = max([*outside, *(s.peak for s in stages)], default=0)
        macs = self.plan.total_macs + sum(s.macs - s.plain_macs for s in stages)
        return PatchPlan(stages, self.plan.peak_bytes, peak, self.plan.total_macs, macs)


def _area(r: Region) -> int:
    return max(0, r[1] - r[0]) * max(0, r[3] - r[2])
