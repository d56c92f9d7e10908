""".mlpackage reading without Core ML: the package manifest, the ``model.mlmodel`` spec (protobuf,
parsed with coremltools' generated classes only) and the MIL weight blob file, with bounds checks so a
corrupt or hostile package gives a ModelFormatError, never a crash or an unbounded allocation.

Weight blob file (MILBlob storage v2): a 64-byte header (uint32 count, uint32 version = 2, ...),
then per blob a 64-byte metadata record at the offset the spec names — uint32 sentinel 0xDEADBEEF,
uint32 blob dtype, uint64 size in bytes, uint64 data offset — and the data, 64-byte aligned.
Sub-byte types (int4, uint1..uint6) are packed least-significant bits first.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ModelFormatError, require

BLOB_SENTINEL = 0xDEADBEEF
MAX_SPEC_BYTES = 1 << 30  # the spec holds the graph; weights live in the blob file
MAX_MANIFEST_BYTES = 1 << 20

# MIL DataType enum names -> (numpy dtype of the unpacked values, bits per element)
MIL_DTYPES = {
    "FLOAT16": (np.float16, 16), "FLOAT32": (np.float32, 32), "FLOAT64": (np.float64, 64),
    "INT8": (np.int8, 8), "INT16": (np.int16, 16), "INT32": (np.int32, 32), "INT64": (np.int64, 64),
    "UINT8": (np.uint8, 8), "UINT16": (np.uint16, 16), "UINT32": (np.uint32, 32), "UINT64": (np.uint64, 64),
    "BOOL": (np.bool_, 8), "INT4": (np.int8, 4), "UINT4": (np.uint8, 4), "UINT1": (np.uint8, 1),
    "UINT2": (np.uint8, 2), "UINT3": (np.uint8, 3), "UINT6": (np.uint8, 6),
}


@dataclass
class MLPackage:
    path: Path
    spec: object  # Model_pb2.Model
    weights_path: Path | None

    @property
    def program(self):
        return self.spec.mlProgram

    def main_block(self):
        fn = self.program.functions["main"]
        return fn.block_specializations[fn.opset], fn


def read_mlpackage(path: str | Path) -> MLPackage:
    """Parse ``path`` (.mlpackage directory); ModelFormatError if it is not a readable ML Program."""
    p = Path(path)
    manifest = p / "Manifest.json"
    if not manifest.is_file():
        raise ModelFormatError(f"{p} is not an .mlpackage (no Manifest.json); convert the model again")
    try:
        if manifest.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"{manifest.stat().st_size} bytes")
        info = json.loads(manifest.read_bytes().decode("utf-8"))
        root = info["itemInfoEntries"][info["rootModelIdentifier"]]["path"]
        if not isinstance(root, str) or "\0" in root or not root:
            raise TypeError(f"the model path is {type(root).__name__} {root!r:.40}, not a file name")
    except (ValueError, KeyError, TypeError, RecursionError, OSError) as e:  # RecursionError: nesting bombs
        why = " ".join(str(e).split())[:120] or type(e).__name__
        raise ModelFormatError(f"{manifest} is corrupt ({why}); convert the model again") from e
    try:
        model_file = (p / "Data" / root).resolve()
        inside = p.resolve() in model_file.parents and model_file.is_file()
    except (OSError, ValueError, RuntimeError):  # ENAMETOOLONG, symlink loops
        inside = False
    if not inside:
        raise ModelFormatError(f"{p}: the manifest's model path '{root[:80]}' is missing or outside the package")
    if model_file.stat().st_size > MAX_SPEC_BYTES:
        raise ModelFormatError(f"{model_file} is larger than {MAX_SPEC_BYTES >> 20} MiB: not a Core ML spec")
    from ..torch_export import quiet_exporter

    with quiet_exporter():  # coremltools' import warns about untested torch/scikit-learn versions
        require("coremltools", "coreml", "Reading .mlpackage files")
        from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(model_file.read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise ModelFormatError(f"{model_file} is not a Core ML spec ({e}); the package is corrupt") from e
    if spec.WhichOneof("Type") != "mlProgram" or "main" not in spec.mlProgram.functions:
        raise ModelFormatError(f"{p} is not an ML Program package (type {spec.WhichOneof('Type')})")
    weights = model_file.parent / "weights" / "weight.bin"
    return MLPackage(p, spec, weights if weights.is_file() else None)


class BlobFile:
    """Read-only, memory-mapped view of ``weights/weight.bin`` with checked offsets."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._map = None
        if path is not None and path.stat().st_size:
            with open(path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return 0 if self._map is None else len(self._map)

    def read(self, offset: int, dtype_name: str, shape: tuple[int, ...]) -> np.ndarray:
        if self._map is None:
            raise ModelFormatError("the package's weights/weight.bin is missing or empty")
        if not 0 <= offset <= len(self) - 64:
            raise ModelFormatError(f"weight blob offset {offset} is outside weight.bin ({len(self)} bytes)")
        sentinel, _blob_dtype, size, data_offset = struct.unpack_from("<IIQQ", self._map, offset)
        if sentinel != BLOB_SENTINEL:
            raise ModelFormatError(f"weight blob at {offset} has a bad sentinel: weight.bin is corrupt")
        if dtype_name not in MIL_DTYPES:
            raise ModelFormatError(f"weight blob dtype {dtype_name} is not supported")
        np_dtype, bits = MIL_DTYPES[dtype_name]
        count = int(np.prod(shape, dtype=np.int64))
        need = (count * bits + 7) // 8
        if size < need or data_offset + size > len(self):
            raise ModelFormatError(f"weight blob at {offset} holds {size} bytes, {need} expected "
                                   f"(or runs past the end of weight.bin): the package is truncated")
        raw = np.frombuffer(self._map, np.uint8, need, data_offset)
        if bits >= 8:
            return raw.view(np_dtype).reshape(shape)
        return unpack_bits(raw, bits, count, signed=dtype_name.startswith("INT")).astype(np_dtype).reshape(shape)


def unpack_bits(raw: np.ndarray, bits: int, count: int, signed: bool) -> np.ndarray:
    """Sub-byte values packed LSB first, as MIL stores int4/uint4/uint6... blobs."""
    b = np.unpackbits(raw, bitorder="little")[: count * bits].reshape(count, bits).astype(np.int16)
    v = b @ (1 << np.arange(bits, dtype=np.int16))
    if signed:
        v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
    return v


SPEC_VERSION_TARGETS = {7: "iOS16", 8: "iOS17", 9: "iOS18"}
_COMPRESSION = {"constexpr_blockwise_shift_scale": "linear (blockwise shift-scale)",
                "constexpr_affine_dequantize": "linear (affine, iOS16)",
                "constexpr_lut_to_dense": "palettized (lookup table)"}


def inspect_mlpackage(path: Path):
    """``edge inspect`` for .mlpackage: I/O, op histogram, deployment target, weight compression per op."""
    from collections import Counter

    from ..inspect import InspectReport
    from ..onnx_graph import DtypeStats
    from .executor import MILReferenceSession, _dtype_name, _shape

    pkg = read_mlpackage(path)
    desc = pkg.spec.description
    block, fn = pkg.main_block()
    ops = Counter(op.type for op in block.operations)
    stats: dict[str, DtypeStats] = {}
    parameters = 0
    compression: Counter = Counter()
    for op in block.operations:
        if op.type == "const":
            tt = op.outputs[0].type.tensorType
            if tt.rank < 2:
                continue
            values = [op.attributes["val"]]
        elif op.type in _COMPRESSION:
            values = [a.arguments[0].value for k, a in op.inputs.items() if k in ("data", "indices", "quantized_data")]
            values += [v for k, v in op.attributes.items() if k in ("quantized_data", "indices")]
            name = _dtype_name(values[0].type.tensorType.dataType).lower() if values else "?"
            compression[f"{_COMPRESSION[op.type]}: {name}"] += 1
        else:
            continue
        for v in values[:1]:
            tt = v.type.tensorType
            name = _dtype_name(tt.dataType).lower()
            n = int(np.prod(_shape(tt), dtype=np.int64))
            bits = MIL_DTYPES.get(name.upper(), (None, 8))[1]
            s = stats.setdefault(name, DtypeStats())
            s.tensors, s.elements, s.bytes = s.tensors + 1, s.elements + n, s.bytes + (n * bits + 7) // 8
            parameters += n
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    meta = {"deployment_target": SPEC_VERSION_TARGETS.get(pkg.spec.specificationVersion,
                                                           f"spec v{pkg.spec.specificationVersion}"),
            "opset": fn.opset, "author": desc.metadata.author,
            "description": desc.metadata.shortDescription}
    return InspectReport(str(path), "coreml", size, [MILReferenceSession._spec(f) for f in desc.input],
                         [MILReferenceSession._spec(f) for f in desc.output], dict(ops.most_common()), parameters, stats,
                         [f"{k} ×{n}" for k, n in compression.most_common()], meta)
