"""Tensor signatures and sets of input samples (calibration / validation data)."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CalibrationError

Dim = int | str | None  # a fixed size, a symbolic name ("batch"), or unknown


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of a tensor: real = scale * (q - zero_point), per tensor or per channel."""

    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int | None = None  # channel axis when per-channel


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (with symbolic dims), numpy dtype and quantization of one model input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    quantization: QuantParams | None = None

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    def sample_shape(self) -> tuple[Dim, ...]:
        """Shape without the leading (sample/batch) axis."""
        return self.shape[1:]


LABELS_KEY = "labels"


BATCH_NAMES = ("batch", "batch_size", "n", "b", "bs", "num_batches")


def batch_axes(specs: list[TensorSpec], given: dict[str, int | None] | None = None) -> dict[str, int | None]:
    """Per input, whether axis 0 is a batch (sample) axis: ``0``, or ``None`` for inputs fed whole
    (scalars, recurrent state tensors, a sample rate).

    ``given`` (``--batch-axis name=-``) wins. Otherwise a rank-0 input has none; a symbolic axis 0 is a
    batch; an input whose batch-named dim sits elsewhere (a state ``[2, batch, 128]``) is fed whole; a fixed
    axis 0 is a batch only when it agrees with the other inputs' batch (1, or every input the same size)."""
    given = given or {}
    out: dict[str, int | None] = {}
    symbolic0 = any(s.shape and not isinstance(s.shape[0], int) for s in specs)
    for s in specs:
        if s.name in given:
            out[s.name] = given[s.name]
        elif not s.shape:
            out[s.name] = None
        elif any(isinstance(d, str) and d.lower() in BATCH_NAMES for d in s.shape[1:]) and not (
                isinstance(s.shape[0], str) and s.shape[0].lower() in BATCH_NAMES):
            out[s.name] = None
        elif not isinstance(s.shape[0], int):
            out[s.name] = 0
        elif symbolic0:  # other inputs carry the batch: a fixed axis 0 here is the input's own
            out[s.name] = None
        else:
            firsts = {t.shape[0] for t in specs if t.shape and isinstance(t.shape[0], int)}
            out[s.name] = 0 if (s.shape[0] == 1 or len(firsts) == 1) else None
    return out


def unbatched_inputs(specs: list[TensorSpec]) -> frozenset[str]:
    """Names of the inputs fed whole, without a batch axis (see :func:`batch_axes`)."""
    return frozenset(name for name, axis in batch_axes(specs).items() if axis is None)


@dataclass
class InputSet:
    """Samples keyed by input name (first axis = samples), optional labels, and where they came from.

    ``synthetic`` is true for random data: quantization ranges and parity figures computed on it
    say nothing about real inputs, and reports must say so. Inputs in ``unbatched`` have no batch axis in
    the model (a scalar, a recurrent state): their arrays still stack one value per sample on axis 0, and
    each model call gets one sample's value without that axis, so such models run one sample per call.
    """

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "random"
    synthetic: bool = True
    notes: list[str] = field(default_factory=list)
    unbatched: frozenset[str] = frozenset()

    @property
    def num_samples(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0]) if self.arrays else 0

    def _feed(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {k: (np.asarray(v[rows[0]]) if k in self.unbatched else v[rows]) for k, v in self.arrays.items()}

    def batches(self, batch_size: int):
        """Yield feeds of at most ``batch_size`` samples (one per call when an input is unbatched)."""
        n = self.num_samples
        step = 1 if self.unbatched else batch_size
        for start in range(0, n, step):
            yield self._feed(np.arange(start, min(start + step, n)))

    def fixed_batches(self, batch_size: int):
        """Yield (feeds, valid) with exactly ``batch_size`` samples each, for models whose batch axis
        is fixed: the last batch is padded by repeating its final sample; ``valid`` says how many
        leading rows of its outputs are real. With unbatched inputs every call holds one sample,
        repeated to the fixed batch size."""
        n = self.num_samples
        step = 1 if self.unbatched else batch_size
        for start in range(0, n, step):
            valid = min(step, n - start)
            rows = np.arange(start, start + valid)
            rows = np.concatenate([rows, np.repeat(rows[-1:], batch_size - valid)])
            yield self._feed(rows), valid

    def head(self, n: int) -> "InputSet":
        return InputSet(
            {k: v[:n] for k, v in self.arrays.items()},
            None if self.labels is None else self.labels[:n],
            self.source,
            self.synthetic,
            list(self.notes),
            self.unbatched,
        )


def read_npz(path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read an .npz of arrays without pickle; return (arrays by name, labels or None).

    Each member's .npy header is checked against the bytes the member really holds before anything
    is allocated, so a small file cannot claim a huge shape; object arrays (pickles) are refused."""
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"data file {p} does not exist or is not a file; check the path")
    try:
        with zipfile.ZipFile(p) as z:
            _check_npz_members(p, z)
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except CalibrationError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, NotImplementedError, RuntimeError) as e:
        why = " ".join(str(e).split())[:160] or type(e).__name__
        raise CalibrationError(f"{p} is not a readable .npz of arrays ({why}); write it with numpy.savez") from e
    labels = arrays.pop(LABELS_KEY, None)
    if not arrays:
        raise CalibrationError(f"{p} holds no input arrays; key them by the model's input names")
    return arrays, labels


MAX_NPZ_EXPANSION = 1000  # deflate's ceiling is ~1032x: beyond this a member is a zip bomb


def _check_npz_members(p: Path, z: zipfile.ZipFile) -> None:
    from numpy.lib import format as npy

    total = 0
    for info in z.infolist():
        where = f"{p}: member '{info.filename[:80]}'"
        if not info.filename.endswith(".npy"):
            raise CalibrationError(f"{where} is not an .npy array; write the file with numpy.savez")
        if info.file_size > MAX_NPZ_EXPANSION * max(info.compress_size, 1) + 4096:
            raise CalibrationError(f"{where} expands {info.compress_size} bytes to {info.file_size}; refusing it")
        total += info.file_size
        if total > max_data_bytes():
            raise CalibrationError(f"{p} holds {total:,} bytes of arrays, more than {max_data_bytes():,} "
                                   "(half this machine's memory): use fewer samples")
        with z.open(info) as f:
            try:
                version = npy.read_magic(f)
                read_header = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f".npy format version {version} (1.0 and 2.0 are read)")
                shape, _fortran, dtype = read_header(f, max_header_size=1 << 16)
                header = f.tell()
            except MemoryError:
                raise
            except Exception as e:  # numpy parses the header with tokenize/ast: TokenError, SyntaxError, ValueError...
                raise CalibrationError(f"{where} has a corrupt .npy header ({type(e).__name__}: "
                                       f"{' '.join(str(e).split())[:120]})") from e
        if dtype.hasobject:
            raise CalibrationError(f"{where} holds Python objects (a pickle); save plain numeric arrays")
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize != info.file_size - header:
            raise CalibrationError(f"{where}: its header claims shape {list(shape)} of {dtype} "
                                   f"({count * dtype.itemsize:,} bytes) but it holds {info.file_size - header:,}; "
                                   "the file is corrupted")


def physical_memory_bytes() -> int:
    """This machine's RAM (8 GiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 33


def max_data_bytes() -> int:
    """Ceiling for data read from one file or synthesized for one call: half the physical memory."""
    return physical_memory_bytes() // 2


def _castable(src: np.dtype, dst: np.dtype) -> bool:
    if np.issubdtype(dst, np.floating):
        return np.issubdtype(src, np.floating)
    if np.issubdtype(dst, np.integer):
        return np.issubdtype(src, np.integer)
    if dst == np.bool_:
        return src == np.bool_
    return src == dst


def validate_inputs(
    arrays: dict[str, np.ndarray],
    labels: np.ndarray | None,
    specs: list[TensorSpec],
    origin: str,
    unbatched: frozenset[str] | set[str] = frozenset(),
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Check names, per-sample shapes and dtypes against ``specs``; return arrays cast to them.

    Axis 0 of a batched input's array is the sample axis. An input in ``unbatched`` may hold one value for
    every sample (the input's own shape: a scalar, a state tensor) or one per sample (stacked on a new
    axis 0); the first is broadcast so that every returned array has the same number of samples."""
    want = {s.name for s in specs}
    have = set(arrays)
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        raise CalibrationError(
            f"{origin}: input names do not match the model (missing {missing}, unexpected {extra}); "
            f"key the arrays by {sorted(want)}"
        )
    by_name = {s.name: s for s in specs}
    shared = {k for k in unbatched if k in arrays and arrays[k].ndim == len(by_name[k].shape)}
    counts = {name: a.shape[0] if a.ndim else 0 for name, a in arrays.items() if name not in shared}
    if len(set(counts.values())) > 1 or 0 in counts.values():
        raise CalibrationError(
            f"{origin}: every array needs the same number (> 0) of samples on axis 0, got {counts}"
        )
    n = next(iter(counts.values()), 1)
    out = {}
    for s in specs:
        a = arrays[s.name]
        expected = s.shape if s.name in unbatched else s.sample_shape()
        got = a.shape if s.name in shared else a.shape[1:]
        ok = len(got) == len(expected) and all(
            not isinstance(e, int) or e == g for e, g in zip(expected, got)
        )
        if not ok:
            layout = ("it has no batch axis: give its exact shape, or one value per sample stacked on a new axis 0"
                      if s.name in unbatched else "axis 0 of the array is the sample axis")
            raise CalibrationError(
                f"{origin}: '{s.name}' has samples of shape {tuple(got)} but the model expects "
                f"{tuple(expected)} ({layout})"
            )
        dst = np.dtype(s.dtype)
        if not _castable(a.dtype, dst):
            raise CalibrationError(
                f"{origin}: '{s.name}' holds {a.dtype} data but the model input is {dst}; "
                f"save it as {dst}"
            )
        if np.issubdtype(dst, np.integer) and a.size and a.dtype != dst:
            info = np.iinfo(dst)
            if a.min() < info.min or a.max() > info.max:
                raise CalibrationError(
                    f"{origin}: '{s.name}' holds values outside {dst}'s range [{info.min}, {info.max}]")
        a = a.astype(dst, copy=False)
        a = a if a.flags.c_contiguous else a.copy()  # (ascontiguousarray makes a scalar 1-D)
        out[s.name] = np.broadcast_to(a, (n, *a.shape)) if s.name in shared else a
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise CalibrationError(
                f"{origin}: 'labels' must be integer class ids, one per sample ({n}), "
                f"got {labels.dtype}{list(labels.shape)}"
            )
    return out, labels


def load_input_set(path: str | Path, specs: list[TensorSpec], unbatched: frozenset[str] = frozenset()) -> InputSet:
    arrays, labels = read_npz(path)
    arrays, labels = validate_inputs(arrays, labels, specs, str(path), unbatched)
    return InputSet(arrays, labels, source=str(path), synthetic=False, unbatched=frozenset(unbatched))


MAX_RANDOM_INPUT_BYTES = 1 << 30  # synthetic inputs for one call: beyond 1 GiB a dim is not a real image size


def _spec_dtype(s: TensorSpec) -> np.dtype:
    try:
        return np.dtype(s.dtype)
    except TypeError as e:
        raise CalibrationError(f"cannot synthesize random data for '{s.name}' of dtype {s.dtype}") from e


def checked_sizes(specs: list[TensorSpec], limit: int | None = None) -> list[TensorSpec]:
    """``specs`` (fixed shapes) after checking that arrays of them fit ``limit`` bytes together: a model's
    declared dims (2**31 on a hostile file) must not size an allocation unchecked."""
    limit = min(max_data_bytes(), MAX_RANDOM_INPUT_BYTES) if limit is None else limit
    total = 0
    for s in specs:
        count = 1
        for d in s.shape:
            count *= max(int(d), 0) if isinstance(d, int) else 1
        total += count * _spec_dtype(s).itemsize
        if total > limit:
            raise CalibrationError(f"input '{s.name}' of shape {list(s.shape)} {s.dtype} needs {count * _spec_dtype(s).itemsize:,} "
                                   f"bytes (limit {limit:,}); the model's input shape is unreasonable — check the "
                                   "model or pass --input-shape")
    return specs


def random_input_set(specs: list[TensorSpec], num_samples: int, seed: int = 0,
                     int_high: dict[str, int] | None = None, unbatched: frozenset[str] = frozenset(),
                     ranges: dict[str, tuple[float, float]] | None = None,
                     example_shapes: dict[str, tuple[int, ...]] | None = None) -> InputSet:
    """Seeded synthetic samples for every input (symbolic dims other than a batch axis take the size in
    ``example_shapes`` — a model's built size, e.g. a resizable .tflite input's — else 1).

    Integer inputs (token ids, masks) are drawn from [0, ``int_high[name]``), default [0, 2), so
    they stay valid indices into any embedding table; ``ranges`` (``--input-range name=lo..hi``, inclusive)
    overrides both for any input. Inputs in ``unbatched`` get the input's whole shape per sample.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    ranges = ranges or {}
    def example(s: TensorSpec) -> tuple:
        shown = (example_shapes or {}).get(s.name)
        if shown is None or len(shown) != len(s.shape):
            return (1,) * len(s.shape)
        return tuple(int(d) for d in shown)

    shapes = []
    for s in specs:
        dims, sizes = (s.shape, example(s)) if s.name in unbatched else (s.sample_shape(), example(s)[1:])
        shapes.append((num_samples,) + tuple(d if isinstance(d, int) else sz for d, sz in zip(dims, sizes)))
    checked_sizes([TensorSpec(s.name, shape, s.dtype) for s, shape in zip(specs, shapes)])
    for s, shape in zip(specs, shapes):
        dt = _spec_dtype(s)
        lo, hi = ranges.get(s.name, (None, None))
        if np.issubdtype(dt, np.floating):
            v = rng.standard_normal(shape) if lo is None else rng.uniform(lo, hi, size=shape)
            arrays[s.name] = v.astype(dt)
        elif np.issubdtype(dt, np.integer):
            lo, hi = (0, (int_high or {}).get(s.name, 2) - 1) if lo is None else (int(lo), int(hi))
            arrays[s.name] = rng.integers(lo, hi, size=shape, endpoint=True).astype(dt)
        elif dt == np.bool_:
            arrays[s.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise CalibrationError(f"cannot synthesize random data for '{s.name}' of dtype {dt}")
    return InputSet(arrays, None, source="random", synthetic=True, unbatched=frozenset(unbatched))
