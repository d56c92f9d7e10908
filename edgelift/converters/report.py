"""Conversion results: dataclasses returned by the API and ``conversion.json`` written beside artifacts.

The JSON schema is ``edgelift/schemas/conversion.schema.json`` (documented in docs/conversion-report.md).
Bump ``SCHEMA_VERSION`` on any incompatible change.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .._version import __version__
from ..core.atomic import atomic_write_text
from .parity import Parity

SCHEMA_ID = "edgelift/conversion"
SCHEMA_VERSION = 1
REPORT_NAME = "conversion.json"


@dataclass
class TensorInfo:
    name: str
    shape: list
    dtype: str


@dataclass
class SourceInfo:
    kind: str  # module | pt2 | factory | onnx
    name: str
    path: str | None
    parameters: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    notes: list[str] = field(default_factory=list)
    input_shapes: dict[str, list] = field(default_factory=dict)  # as settled (converters/signature.py)


@dataclass
class Quantization:
    mode: str
    weights: str
    activations: str
    details: dict = field(default_factory=dict)


@dataclass
class Artifact:
    path: str
    format: str
    quantization: Quantization
    size_bytes: int
    parameters: int
    conversion_time_s: float
    parity: Parity
    weight_storage: dict[str, int] = field(default_factory=dict)  # dtype -> bytes
    warnings: list[str] = field(default_factory=list)
    status: str = "passed"  # "failed": below its parity gate (written only with --keep-failed)
    gate: dict = field(default_factory=dict)  # parity.Gate: thresholds and what failed
    float_nodes: list[str] = field(default_factory=list)  # nodes kept fp32 (fp16 overflow, mixed precision)
    built_shapes: dict[str, list] = field(default_factory=dict)  # input shapes the artifact was built for
    layer_errors: list[dict] = field(default_factory=list)  # failed artifacts: first layers where error jumps

    @property
    def mode(self) -> str:
        return self.quantization.mode


@dataclass
class ConversionResult:
    """What ``edgelift.convert`` produced: the source, each artifact with its parity, the report path."""

    source: SourceInfo
    artifacts: list[Artifact]
    report_path: str | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def artifact(self, mode: str, format: str = "onnx") -> Artifact:
        for a in self.artifacts:
            if a.mode == mode and a.format == format:
                return a
        raise KeyError(f"no {format} artifact for mode '{mode}'; have {[a.mode for a in self.artifacts]}")

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "edgelift_version": __version__,
            "created": self.created,
            "host": {"machine": platform.machine(), "system": platform.system(),
                     "python": platform.python_version()},
            "source": asdict(self.source),
            "artifacts": [_artifact_dict(a) for a in self.artifacts],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, out_dir: str | Path) -> Path:
        """Write ``conversion.json`` into ``out_dir`` on its own (conversions stage it with their artifacts)."""
        path = Path(out_dir) / REPORT_NAME
        atomic_write_text(path, self.to_json())
        self.report_path = str(path)
        return path

    def stage(self, staging) -> None:
        """Add ``conversion.json`` to a :class:`~edgelift.core.atomic.StagingDir`: published with the artifacts."""
        self.report_path = str(staging.write_text(REPORT_NAME, self.to_json()))


def _artifact_dict(a: Artifact) -> dict:
    d = asdict(a)
    d["parity"] = a.parity.to_dict()
    return d


def schema_path() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas" / "conversion.schema.json"
