"""Per-operator time, as TFLite's benchmark_model prints it: by op type and the slowest nodes.

The source here is ONNX Runtime's profiler (a Chrome-trace JSON with one ``Node`` event per kernel
run). It is recorded in a separate pass from the latency runs, because tracing every kernel adds
overhead that would distort the latency figures. LiteRT's Python API exposes no op profiler; for
.tflite files the per-op table comes from the ``benchmark_model`` binary (``--enable_op_profiling``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class OpTypeTime:
    op_type: str
    avg_ms: float  # per model run
    percent: float
    cumulative_percent: float
    calls: float  # per model run


@dataclass
class NodeTime:
    name: str
    op_type: str
    avg_ms: float
    percent: float
    provider: str | None = None  # the execution provider that ran it (ONNX Runtime traces)


@dataclass
class ProviderShare:
    """Where nodes ran: with a GPU provider, the nodes left on the CPU are the ones that fell back."""

    provider: str
    nodes: int
    avg_ms: float
    percent: float


@dataclass
class OpProfile:
    source: str
    runs: int
    total_ms: float  # per run, summed over kernels (excludes the executor's own overhead)
    by_type: list[OpTypeTime] = field(default_factory=list)
    top_nodes: list[NodeTime] = field(default_factory=list)
    providers: list[ProviderShare] = field(default_factory=list)
    partitions: int | None = None  # runs of consecutive nodes on one provider (each boundary copies tensors)

    def to_dict(self) -> dict:
        return asdict(self)


def from_ort_trace(events: list[dict], top: int = 10) -> OpProfile:
    """Aggregate an ONNX Runtime trace: kernel time per op type and per node, averaged per run. The first
    run of a session (allocations, kernel set-up: several times a warm run on small models) is left out
    when there are others."""
    model_runs = sorted((float(e.get("ts", 0)), float(e.get("dur", 0))) for e in events
                        if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs = len(model_runs)
    if runs > 1:
        warm_from = model_runs[0][0] + model_runs[0][1]
        events = [e for e in events if e.get("cat") != "Node" or float(e.get("ts", 0)) >= warm_from]
        runs -= 1
    node_us: dict[str, float] = defaultdict(float)
    node_type: dict[str, str] = {}
    node_provider: dict[str, str] = {}
    node_index: dict[str, int] = {}
    type_us: dict[str, float] = defaultdict(float)
    type_calls: dict[str, int] = defaultdict(int)
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        node = name[: -len("_kernel_time")]
        node_us[node] += float(e.get("dur", 0))
        node_type[node] = op
        args = e.get("args", {})
        if isinstance(args.get("provider"), str):
            node_provider[node] = args["provider"]
        try:
            node_index.setdefault(node, int(args.get("node_index")))
        except (TypeError, ValueError):
            pass
        type_us[op] += float(e.get("dur", 0))
        type_calls[op] += 1
    runs = max(runs, 1)
    total_us = sum(type_us.values())
    pct = lambda us: 100.0 * us / total_us if total_us else 0.0  # noqa: E731
    by_type, cum = [], 0.0
    for op, us in sorted(type_us.items(), key=lambda kv: -kv[1]):
        cum += pct(us)
        by_type.append(OpTypeTime(op, us / runs / 1e3, pct(us), cum, type_calls[op] / runs))
    nodes = [NodeTime(n, node_type[n], us / runs / 1e3, pct(us), node_provider.get(n))
             for n, us in sorted(node_us.items(), key=lambda kv: -kv[1])[:top]]
    prov_us: dict[str, float] = defaultdict(float)
    prov_nodes: dict[str, int] = defaultdict(int)
    for n, us in node_us.items():
        if n in node_provider:
            prov_us[node_provider[n]] += us
            prov_nodes[node_provider[n]] += 1
    providers = [ProviderShare(p, prov_nodes[p], us / runs / 1e3, pct(us))
                 for p, us in sorted(prov_us.items(), key=lambda kv: -kv[1])]
    order = [node_provider[n] for n in sorted(node_index, key=node_index.get) if n in node_provider]
    partitions = (1 + sum(a != b for a, b in zip(order, order[1:]))) if order else None
    return OpProfile("onnxruntime", runs, total_us / runs / 1e3, by_type, nodes, providers, partitions)


def read_ort_trace(path: str | Path) -> list[dict]:
    data = json.loads(Path(path).read_text())
    return data if isinstance(data, list) else data.get("traceEvents", [])
