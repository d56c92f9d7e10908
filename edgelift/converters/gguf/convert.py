"""``edge convert --to gguf``: Hugging Face checkpoints or GGUF files -> GGUF files, in one step.

Tensors stream one at a time: read (memory-mapped), permuted for llama.cpp where needed, encoded
in slices, written; the whole model is never in memory. Each file is written into a staging
directory and renamed into place only once every requested type has converted and been checked by
llama.cpp itself (``check.py``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import ConversionError, SourceError, require
from . import mixes, qtypes
from .checkpoint import HFCheckpoint, is_hf_checkpoint, read_bytes, read_checkpoint


@dataclass
class PlannedTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order (rows last)
    load: Callable[[], np.ndarray]  # float32 values, in llama.cpp's layout
    source_type: str = "F32"


@dataclass
class GGUFSource:
    """What every file type is written from: metadata writer, tensors, layer count."""

    kind: str  # hf | gguf
    name: str
    path: Path
    arch: str
    n_layer: int
    tensors: list[PlannedTensor]
    write_metadata: Callable[[object], None]
    parameters: int
    checkpoint: HFCheckpoint | None = None
    requantized: bool = False


def open_source(path: str | Path, name: str | None = None) -> GGUFSource:
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if is_hf_checkpoint(path):
        return _from_checkpoint(read_checkpoint(path), name)
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path, name)
    raise SourceError(f"{path} is neither a Hugging Face checkpoint directory (config.json + *.safetensors) "
                      "nor a .gguf file")


def _from_checkpoint(ckpt: HFCheckpoint, name: str | None) -> GGUFSource:
    require("gguf", "gguf", "Writing GGUF files")
    from .archs import arch_unit
    from .vocab import read_vocab, write_vocab

    unit = arch_unit(ckpt)
    cfg = ckpt.config
    n_layer = int(cfg.get("num_hidden_layers", 0))
    vocab = read_vocab(ckpt, cfg.get("vocab_size"))
    tensors = []
    for hf_name, ref in ckpt.tensors.items():
        new = unit.rename(hf_name, n_layer)
        if new is None:
            continue

        def load(ref=ref, hf_name=hf_name):
            return np.ascontiguousarray(unit.transform(hf_name, ref.load().astype(np.float32, copy=False), cfg))

        tensors.append(PlannedTensor(new, ref.shape, load))
    for new, value in unit.extra_tensors(cfg).items():
        tensors.append(PlannedTensor(new, value.shape, lambda value=value: value))
    label = name or ckpt.path.name

    def write_metadata(w) -> None:
        w.add_type("model")
        w.add_name(str(cfg.get("_name_or_path") or label).split("/")[-1] or label)
        unit.write_hparams(w, cfg, ckpt)
        write_vocab(w, ckpt, vocab)

    return GGUFSource("hf", label, ckpt.path, unit.arch_name(), n_layer, tensors, write_metadata,
                      sum(int(np.prod(t.shape)) for t in tensors), checkpoint=ckpt)


def _from_gguf(path: Path, name: str | None) -> GGUFSource:
    """A GGUF file as a source, read by our own bounded reader (gguf-py's reader parses every vocabulary
    entry into numpy fields: seconds on a 49k-token file); each tensor read when it is encoded and freed
    after (a memory map would keep every page it touched resident: the whole input, by the end)."""
    require("gguf", "gguf", "Re-quantizing GGUF files")
    import gguf

    from ...core.gguf import read_gguf_info

    info = read_gguf_info(path, arrays=("*",))
    arch = info.architecture or "?"
    n_layer = int(info.metadata.get(f"{arch}.block_count", 0) or 0)
    tensors = []
    for t in info.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        start = info.data_offset + t.offset

        def load(start=start, nbytes=t.nbytes, shape=shape, tname=t.type_name, name=t.name):
            return qtypes.decode(read_bytes(path, start, nbytes, name), tname, shape)

        tensors.append(PlannedTensor(t.name, shape, load, t.type_name))
    skip = {"general.file_type", "general.quantization_version", "general.architecture"}

    def write_metadata(w) -> None:
        for key, value in info.metadata.items():
            if key in skip or key.startswith("split."):
                continue
            vtype = gguf.GGUFValueType(info.value_types[key])
            if vtype == gguf.GGUFValueType.ARRAY:
                w.add_key_value(key, value["values"], vtype, sub_type=gguf.GGUFValueType(value["array"]))
            else:
                w.add_key_value(key, value, vtype)

    quantized = [t.name for t in tensors if t.source_type not in ("F32", "F16", "BF16")]
    return GGUFSource("gguf", name or path.stem, path, arch, n_layer, tensors, write_metadata,
                      sum(int(np.prod(t.shape)) for t in tensors), requantized=bool(quantized))


@dataclass
class WrittenFile:
    path: Path
    file_type: str
    tensor_types: dict[str, str]
    reasons: dict[str, str]
    seconds: float


def write_gguf(src: GGUFSource, ft: mixes.FileType, path: Path,
               tensor_done: Callable[[str], None] | None = None) -> WrittenFile:
    """Write ``src`` as file type ``ft`` to ``path`` (a staging path), one tensor at a time."""
    import gguf

    t0 = time.perf_counter()
    shapes = {t.name: t.shape for t in src.tensors}
    plan = mixes.plan_types(shapes, ft, src.n_layer, {t.name: t.source_type for t in src.tensors})
    from .writer import fast_writer_class

    w = fast_writer_class()(path, src.arch)
    src.write_metadata(w)
    w.add_file_type(ft.ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for t in src.tensors:
        qt = plan[t.name][0]
        dtype = {"F32": np.float32, "F16": np.float16}.get(qt, np.uint8)
        shape = t.shape if dtype is not np.uint8 else gguf.quant_shape_to_byte_shape(t.shape, qtypes.ggml_type(qt))
        w.add_tensor_info(t.name, shape, np.dtype(dtype), qtypes.nbytes(qt, t.shape), raw_dtype=qtypes.ggml_type(qt))
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    def encoded(t: PlannedTensor) -> np.ndarray:
        data = t.load()
        if data.shape != t.shape:
            raise ConversionError(f"tensor {t.name}: expected shape {t.shape}, got {data.shape}")
        if not np.isfinite(data).all():
            raise ConversionError(f"tensor {t.name} holds NaN or Inf values; the checkpoint is damaged")
        return qtypes.encode(data, plan[t.name][0])

    # Tensors are encoded on ENCODE_THREADS threads (numpy releases the GIL in the heavy loops), at most
    # that many ahead of the writer, and written in order: llama-quantize's speed, without holding the model.
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=ENCODE_THREADS) as pool:
        pending: deque = deque()
        for t in src.tensors:
            pending.append((t.name, pool.submit(encoded, t)))
            if len(pending) > ENCODE_THREADS:
                _write_next(w, pending, tensor_done)
        while pending:
            _write_next(w, pending, tensor_done)
    w.close()
    return WrittenFile(path, ft.name, {n: v[0] for n, v in plan.items()},
                       {n: v[1] for n, v in plan.items() if v[1]}, time.perf_counter() - t0)


ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))


def _write_next(w, pending, tensor_done) -> None:
    name, future = pending.popleft()
    w.write_tensor_data(future.result())
    if tensor_done:
        tensor_done(name)


def type_histogram(types: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in types.values():
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def bits_per_weight(src: GGUFSource, types: dict[str, str]) -> float:
    """Stored bits per parameter over the tensors (metadata excluded), as llama.cpp reports BPW."""
    stored = sum(qtypes.nbytes(types[t.name], t.shape) for t in src.tensors)
    return 8.0 * stored / max(1, src.parameters)

