"""Writing a PatchPlan: the patched ONNX graph, and the planning child that fills the plan cache.

The whole schedule is written as one ONNX model (per stage and patch: crops of the resident inputs and a
copy of the stage's nodes sharing their weights; the pieces concatenated into the stage outputs), so one
ONNX Runtime call runs it and the patched model can be saved and deployed as a plain ``.onnx``. The plan
rides in the model's metadata (``edgelift.patch_plan``), so loading a saved or cached patched model
knows the planned and the measured peaks without planning again.

Planning is done once per model and budget, **in a child process**: reading the graph, running it once
with every tensor as an output to learn shapes, and the search together hold far more memory than the
activations the budget saves, and a process never gives all of it back. The child writes the patched
model into the plan cache (``$EDGELIFT_CACHE/plans``, default ``~/.cache/edgelift/plans``), measures
the plain and the patched run each in a fresh process (activation memory: peak RSS during inference
minus RSS after load), and refuses a plan whose process peak is above the plain run's. ``budget`` is
the load side, kept light.
"""

from __future__ import annotations

import heapq
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..core.onnx_proto import (Node, OnnxGraph, encode, int64_initializer, int_attribute, parse,
                               tensor_initializer)
from ..errors import EdgeError, InvalidOptionError
from .base import Session
from .budget import PLAN_FORMAT, PatchedGraphError, budget_session  # noqa: F401  (re-exported)
from .patch import PatchPlan, Stage, StagePlanner

PLAN_KEY = "edgelift.patch_plan"
# Two fresh processes loading the same model differ by up to ~5% of peak RSS (allocator state after ONNX
# Runtime's graph transforms), so a process peak within this of the plain run's cannot be told from it.
RSS_NOISE = 0.05
MODEL_METADATA = 14  # ModelProto.metadata_props


def patched_model(graph: OnnxGraph, planner: StagePlanner, plan: PatchPlan, metadata: dict | None = None) -> bytes:
    """The plan's schedule as one ONNX model: constants first, then the graph's nodes in order with every
    stage replaced by its patches and the concatenation of their pieces."""
    nodes, extra = [n for n in graph.nodes if not any(planner.act(o) for o in n.outputs if o)], []
    starts, dropped = {}, set()
    for si, s in enumerate(plan.stages):
        starts[min(s.nodes)] = si
        inside = set(s.nodes)
        for i in s.nodes:
            n = graph.nodes[i]
            shared = n.op_type == "DequantizeLinear" and (n.outputs[0] in planner.graph_outputs or any(
                c not in inside for c in planner.consumers.get(n.outputs[0], [])))
            if not shared:
                dropped.add(i)
    for i, n in enumerate(graph.nodes):
        if i in starts:
            more, inits = _stage_nodes(graph, planner, plan.stages[starts[i]], starts[i])
            nodes += more
            extra += inits
        if i not in dropped and any(planner.act(o) for o in n.outputs if o):
            nodes.append(n)
    nodes = _toposort(nodes, {v.name for v in graph.inputs} | set(graph.initializers) | {t.name for t in extra})
    _check_names(nodes)
    body = graph.submodel(nodes, list(graph.inputs), list(graph.outputs), "patched", extra)
    return body if metadata is None else patched_model_with_metadata(body, metadata)


def _stage_nodes(graph: OnnxGraph, planner: StagePlanner, stage: Stage, si: int):
    made = {o for i in stage.nodes for o in graph.nodes[i].outputs if o}
    nodes: list[Node] = []
    extra = []
    scales = {}
    for i in stage.nodes:
        rule = planner.rules[i]
        if rule.kind == "upsample":
            name = f"{graph.nodes[i].outputs[0]}__scales{si}"
            scales[i] = name
            extra.append(tensor_initializer(name, np.array([1, 1, *rule.stride], np.float32)))
    pieces: dict[str, dict[int, list[str]]] = {o: {} for o in stage.outputs}
    for k, g in enumerate(stage.patches):
        suffix = f"__s{si}p{k}"
        names: dict[str, str] = {t: t + suffix for t in made}
        for t in stage.inputs:
            if t in g.regions:
                names[t] = t + suffix
                nodes.append(_slice(t, t + suffix, g.regions[t], None, extra))
        for i in stage.nodes:
            n = graph.nodes[i]
            rule = planner.rules[i]
            if i in g.pads:
                n = n.with_ints("pads", list(g.pads[i]))
            elif rule.kind == "transpose":
                n = n.with_ints("pads", [0, 0, 0, 0])
            inputs = [names.get(t, t) for t in n.inputs]
            if rule.kind == "upsample":
                inputs = [inputs[0], "", scales[i]]
            for j, t in enumerate(n.inputs):
                crop = g.crops.get((i, t))
                if crop is None:
                    continue
                cut = f"{t}__c{i}{suffix}"
                dq = graph.nodes[planner.producer[t]] if t in planner.producer else None
                if dq is not None and dq.op_type == "DequantizeLinear" and planner.act(dq.inputs[0]) \
                        and dq.inputs[0] in g.regions and g.regions[dq.inputs[0]] == g.regions[t]:
                    # crop the int8 tensor, then dequantize: ONNX Runtime still fuses DQ -> op -> Q into an int8 kernel
                    nodes.append(_slice(names.get(dq.inputs[0], dq.inputs[0]), cut + "_q", crop, g.regions[t], extra))
                    nodes.append(Node("DequantizeLinear", cut, [cut + "_q", *dq.inputs[1:]], [cut], dq.domain, dq.attrs))
                else:
                    nodes.append(_slice(names.get(t, t), cut, crop, g.regions[t], extra))
                inputs[j] = cut
            nodes.append(Node(n.op_type, f"{n.name or n.op_type + str(i)}{suffix}", inputs,
                              [names.get(o, o) if o else o for o in n.outputs], n.domain, n.attrs))
        for o, cell in g.outputs.items():
            piece = names[o]
            if cell != g.regions[o]:
                piece = f"{o}__piece{suffix}"
                nodes.append(_slice(names[o], piece, cell, g.regions[o], extra))
            pieces[o].setdefault(g.cell[0], []).append(piece)
    for o, rows in pieces.items():
        row_names = []
        for a, parts in sorted(rows.items()):
            row = f"{o}__s{si}row{a}"
            nodes.append(Node("Concat", row, parts, [row], "", {"axis": int_attribute("axis", 3)}))
            row_names.append(row)
        nodes.append(Node("Concat", f"{o}__s{si}", row_names, [o], "", {"axis": int_attribute("axis", 2)}))
    return nodes, extra


def _slice(src: str, dst: str, region, within, extra: list) -> Node:
    """A Slice of ``region`` (rows, cols) out of ``src``, whose own region is ``within`` (None: the whole tensor)."""
    r0, c0 = (within[0], within[2]) if within else (0, 0)
    starts = int64_initializer(dst + "__st", [region[0] - r0, region[2] - c0])
    ends = int64_initializer(dst + "__en", [region[1] - r0, region[3] - c0])
    axes = int64_initializer(dst + "__ax", [2, 3])
    extra += [starts, ends, axes]
    return Node("Slice", dst, [src, starts.name, ends.name, axes.name], [dst], "", {})


def _toposort(nodes: list[Node], available: set[str]) -> list[Node]:
    """``nodes`` in an order where every input is made before it is read, keeping the given order wherever
    it already is one (ONNX Runtime runs nodes in this order: the patches run one after another)."""
    made_by = {o: k for k, n in enumerate(nodes) for o in n.outputs if o}
    waiting = [sum(1 for t in set(n.inputs) if t and t not in available and t in made_by) for n in nodes]
    users: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        for t in set(n.inputs):
            if t and t not in available and t in made_by:
                users.setdefault(made_by[t], []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(nodes[k])
        for u in users.get(k, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise PatchedGraphError("the patched graph has a cycle; this is a bug in the patch planner")
    return order


def _check_names(nodes: list[Node]) -> None:
    seen_nodes, seen_values = set(), set()
    for n in nodes:
        if n.name in seen_nodes:
            raise PatchedGraphError(f"the patched graph has two nodes named '{n.name}'; this is a bug in the planner")
        seen_nodes.add(n.name)
        for o in n.outputs:
            if o and o in seen_values:
                raise PatchedGraphError(f"the patched graph writes '{o}' twice; this is a bug in the planner")
            seen_values.add(o)


def plan_metadata(model_bytes_: bytes) -> dict | None:
    """The plan recorded in a patched model's metadata, if it is one."""
    for n, wt, v in parse(model_bytes_):
        if n == MODEL_METADATA and wt == 2:
            entry = parse(v)
            key = next((x for k, w, x in entry if k == 1 and w == 2), b"")
            if key == PLAN_KEY.encode():
                try:
                    return json.loads(next((x for k, w, x in entry if k == 2 and w == 2), b"{}"))
                except ValueError:
                    return None
    return None


class PatchedSession(Session):
    """A patch plan run as one ONNX Runtime session over the rewritten graph (``model_bytes``)."""

    def __init__(self, graph: OnnxGraph, planner: StagePlanner, plan: PatchPlan, make_session=None,
                 metadata: dict | None = None) -> None:
        """``make_session(model_bytes)`` opens the patched model; None only builds ``model_bytes``."""
        self.plan = plan
        self.model_bytes = patched_model(graph, planner, plan, metadata)
        self.session = None if make_session is None else make_session(self.model_bytes)
        self.inputs = self.session.inputs if self.session else []
        self.outputs = self.session.outputs if self.session else []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.session.run(feeds)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


# ---- the default path: plan once in a child, cache, open with the runtime set to hold the plan ---------
_MEASURE = r"""
import json, re, sys
import numpy as np
def rss(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
from edgelift.runtimes.budget import budget_session
from edgelift.runtimes.ort import OrtSession
sess = budget_session(sys.argv[1], 1) if sys.argv[2] == "budget" else OrtSession(sys.argv[1], 1)
feeds = {s.name: np.zeros([d if isinstance(d, int) else 1 for d in s.shape], s.dtype) for s in sess.inputs}
load_peak = rss("VmHWM")
try:  # the high-water mark restarts at the RSS after load: the runs' peak, not load's transients
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
loaded = rss("VmRSS")
for _ in range(3):
    sess.run(feeds)
print(json.dumps({"activation_bytes": rss("VmHWM") - loaded, "process_peak_bytes": max(load_peak, rss("VmHWM"))}))
"""


def measure(model: Path, mode: str) -> dict | None:
    """One model's activation memory (peak RSS over three runs minus RSS after load: what the process
    grows by to run it, kernels' one-time buffers included; the peak is reset after load where
    ``/proc/self/clear_refs`` allows, so reading the graph and building the session do not count) and its
    process peak, in a fresh process: ``mode`` "budget" (budget_session) or "plain" (load's default);
    None where /proc is not there."""
    if not Path("/proc/self/status").exists():
        return None
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(model), mode], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan_to_file(path: Path, limit: int, out: Path) -> dict:
    """Plan ``path`` for ``limit`` bytes, write the patched model (plan in its metadata) to ``out``."""
    from ..core.atomic import atomic_write_bytes
    from .memory import human_bytes, load_graph, plan_memory

    graph, _ = load_graph(path)
    dynamic = [f"{v.name} {list(v.shape)}" for v in graph.inputs if any(not isinstance(d, int) for d in v.shape[1:])]
    if dynamic:
        raise InvalidOptionError(f"a memory plan needs fixed input sizes; {path.name} has dynamic dims "
                                 f"({', '.join(dynamic)}): pin them first, e.g. edge convert {path.name} --to onnx "
                                 "--input-shape NAME=1x3x960x960")
    mp = plan_memory(graph)
    out.parent.mkdir(parents=True, exist_ok=True)
    if mp.peak_bytes <= limit:
        meta = {"format": PLAN_FORMAT, "budget_bytes": limit, "plain_fits": True, "planned_peak_bytes": mp.peak_bytes,
                "plain_peak_bytes": mp.peak_bytes}
        atomic_write_bytes(out.with_suffix(".json"), json.dumps(meta).encode())
        return meta
    planner = StagePlanner(graph, mp)
    plan = planner.search(limit)
    meta = {"format": PLAN_FORMAT, "budget_bytes": limit, "plain_fits": False, **plan.summary()}
    body = patched_model(graph, planner, plan)  # the plan's metadata goes on once the measurements are in it
    del graph, mp, planner
    tmp = out.with_name(out.name + ".measure.onnx")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(body)
    try:
        patched, plain, plain_budget = measure(tmp, "budget"), measure(path, "plain"), measure(path, "budget")
    finally:
        tmp.unlink(missing_ok=True)
    if patched and plain and plain_budget:
        meta.update(measured_peak_bytes=patched["activation_bytes"], plain_measured_bytes=plain_budget["activation_bytes"],
                    process_peak_bytes=patched["process_peak_bytes"], plain_process_peak_bytes=plain["process_peak_bytes"])
        if patched["process_peak_bytes"] > plain["process_peak_bytes"] * (1 + RSS_NOISE):
            raise InvalidOptionError(
                f"the patched schedule for {human_bytes(limit)} peaked at {human_bytes(patched['process_peak_bytes'])} "
                f"of process memory, above the plain run's {human_bytes(plain['process_peak_bytes'])} (its activations "
                f"measured {human_bytes(patched['activation_bytes'])} against {human_bytes(plain_budget['activation_bytes'])}): "
                "a budget this model cannot use; run without --memory-budget")
    atomic_write_bytes(out, patched_model_with_metadata(body, meta))
    _save_optimized(out, out.with_suffix(".opt.onnx"))
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(meta).encode())  # last: it marks the entry complete
    return meta


def _save_optimized(model: Path, out: Path) -> None:
    """ONNX Runtime's graph after its optimizations (fusions, this CPU's blocked layouts), saved once so a
    later load skips them: a patched graph has a copy of its stages per patch, and optimizing it again on
    every load would make loading slower than the plain model's. Machine-specific, like the cache."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    tmp = out.with_name(out.name + ".part")
    so.optimized_model_filepath = str(tmp)
    try:
        ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        tmp.replace(out)
    except Exception:  # noqa: BLE001 - the plain patched model still serves; only the faster load is lost
        tmp.unlink(missing_ok=True)


def patched_model_with_metadata(body: bytes, meta: dict) -> bytes:
    fields = [f for f in parse(body) if f[0] != MODEL_METADATA]
    entry = encode([(1, 2, PLAN_KEY.encode()), (2, 2, json.dumps(meta).encode())])
    return encode(fields + [(MODEL_METADATA, 2, entry)])


def main(argv: list[str]) -> int:
    try:
        plan_to_file(Path(argv[0]), int(argv[1]), Path(argv[2]))
    except EdgeError as e:
        print(f"{type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
