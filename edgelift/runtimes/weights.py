"""Weight stores for the edge LLM engine: all resident, or streamed from storage under a byte budget.

Weights are grouped into *units* read with one contiguous ``pread`` each: one unit per transformer
block (its tensors lie together in a GGUF file), the output matrix in row chunks no larger than a
block, and the small always-needed tensors (norms) pinned. ``FlashWeights`` keeps as many units
permanently resident as the budget allows after reserving a window for the rest, and streams the
rest through that window in the order the forward pass needs them, reading ahead on a background
thread while the current unit computes (TPI-LLM's sliding window). It never holds more than the
budget: a read waits until the bytes it needs are free. After each read it tells the OS to drop the
file's pages (``posix_fadvise(DONTNEED)``), so the page cache does not hold a second copy and every
streamed read really comes from storage.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.gguf import GGUFInfo
from ..errors import InvalidOptionError, ModelFormatError


@dataclass
class TensorRef:
    name: str
    ggml_type: str
    shape: tuple[int, ...]  # numpy order (rows, cols)
    offset: int  # absolute file offset
    nbytes: int


@dataclass
class Unit:
    name: str
    tensors: list[TensorRef]
    start: int  # file offset of the unit's first byte
    nbytes: int
    rows: tuple[int, int] | None = None  # for row chunks of one matrix: the rows held

    def prepare(self, buf: np.ndarray, kernels: str, threads: int = 1, repack: bool = False) -> dict:
        """Matrices as ready-to-call matrix-vector kernels, vectors (norms, biases) as raw bytes.

        With ggml, kernels and the raw matrices are views of the bytes as read (the unit's buffer is the
        only copy of its weights); the engine runs a block as two fused graphs over them. ``repack`` (for
        units that stay resident): each matrix ggml has a repacked kernel for moves into its repack buffer
        (llama.cpp's interleaved layout, its fastest CPU kernels), the rest is copied out, so the read
        buffer goes and the weights are still held once. With ONNX Runtime, matrices that multiply the
        same vector (q/k/v; gate/up) become one session over their stacked rows (a call costs ~10 µs of
        overhead whatever its size, and a token makes 7 of them per block). numpy kernels work on the
        read buffer in place."""
        from .gguf_kernels import prepare_matvec

        out = {}
        raw_of = lambda t: buf[t.offset - self.start:t.offset - self.start + t.nbytes]  # noqa: E731
        if kernels == "ggml":
            from .ggml_kernels import SUPPORTED
            from .ggml_kernels import repack as ggml_repack

            mats = {}
            for t in self.tensors:
                raw = raw_of(t)
                if len(t.shape) != 2:
                    out[t.name] = raw.copy() if repack else raw
                    continue
                held = ggml_repack(raw, t.ggml_type, t.shape) if repack and t.ggml_type in SUPPORTED else None
                if held is None:
                    held = raw.copy() if repack else raw  # without repack the buffer stays alive through views
                out[t.name] = prepare_matvec(held, t.ggml_type, t.shape, kernels, threads)
                if t.ggml_type in SUPPORTED:  # a block runs as the engine's two fused graphs over these
                    mats[t.name.split(".", 2)[-1].removesuffix(".weight")] = (held, t.ggml_type, t.shape)
            out[RAW_MATRICES] = mats
            return out
        if kernels == "ort":
            by_suffix = {t.name.split(".", 2)[-1]: t for t in self.tensors if len(t.shape) == 2}
            for group in FUSED:
                ts = [by_suffix.get(f"{n}.weight") for n in group]
                if all(ts) and len({(t.ggml_type, t.shape[1]) for t in ts}) == 1:
                    rows = sum(t.shape[0] for t in ts)
                    shared = SharedMatVec(prepare_matvec(np.concatenate([raw_of(t) for t in ts]), ts[0].ggml_type,
                                                         (rows, ts[0].shape[1]), kernels))
                    r0 = 0
                    for t in ts:
                        out[t.name] = shared.rows(r0, r0 + t.shape[0])
                        r0 += t.shape[0]
        for t in self.tensors:
            if t.name in out:
                continue
            raw = raw_of(t)
            # vectors are copied out so the read buffer can go once ONNX Runtime holds the matrices
            out[t.name] = prepare_matvec(raw, t.ggml_type, t.shape, kernels) if len(t.shape) == 2 else raw.copy()
        return out


REPACK_RESIDENT = True  # resident matrices into ggml's repacked layout where it has kernels (A/B switch)
FUSED = (("attn_q", "attn_k", "attn_v"), ("ffn_gate", "ffn_up"))  # matrices applied to the same vector
RAW_MATRICES = "__raw_matrices__"  # key of a ggml-prepared unit's {short name: (bytes, type, shape)}


class SharedMatVec:
    """One kernel over stacked matrices; ``rows(a, b)`` is the callable for one of them. The product is
    computed once per input vector (the same array object) and sliced for each matrix."""

    def __init__(self, kernel) -> None:
        self.kernel, self.nbytes = kernel, kernel.nbytes
        self._x, self._y = None, None

    def rows(self, r0: int, r1: int):
        def mv(x: np.ndarray) -> np.ndarray:
            if x is not self._x:
                self._x, self._y = x, self.kernel(x)
            return self._y[..., r0:r1]
        return mv


@dataclass
class StoreStats:
    bytes_read: int = 0
    reads: int = 0
    io_seconds: float = 0.0  # time spent in reads (on any thread)
    wait_seconds: float = 0.0  # time the forward pass waited for a unit
    resident_bytes: int = 0
    peak_resident_bytes: int = 0


def tensor_refs(info: GGUFInfo) -> dict[str, TensorRef]:
    """Every tensor of a GGUF file by name: type, numpy-order shape, absolute offset, size."""
    return {t.name: TensorRef(t.name, t.type_name, tuple(reversed(t.shape)), info.data_offset + t.offset, t.nbytes)
            for t in info.tensors}


def split_rows(ref: TensorRef, parts: dict[str, int]) -> dict[str, TensorRef]:
    """A matrix's consecutive row ranges as tensors of their own, {name: rows} in order (views of the same
    bytes: rows are stored one after another and no quantization block spans two)."""
    per_row, out, r0 = ref.nbytes // ref.shape[0], {}, 0
    for name, n in parts.items():
        out[name] = TensorRef(name, ref.ggml_type, (n, *ref.shape[1:]), ref.offset + r0 * per_row, n * per_row)
        r0 += n
    return out


def plan_units(info: GGUFInfo, chunk_bytes: int | None = None,
               refs: dict[str, TensorRef] | None = None) -> tuple[list[Unit], list[TensorRef]]:
    """(streamable units in forward order, pinned small tensors) of a GGUF file; ``refs``: its tensors as the
    engine reads them (fused matrices split), else as the file lists them."""
    refs = list((refs or tensor_refs(info)).values())
    blocks: dict[int, list[TensorRef]] = {}
    pinned, big = [], []
    for r in refs:
        m = re.match(r"blk\.(\d+)\.", r.name)
        if m:
            blocks.setdefault(int(m.group(1)), []).append(r)
            continue
        if len(r.shape) == 1 or r.nbytes < 1 << 16:
            pinned.append(r)
        else:
            big.append(r)
    units = []
    for i in sorted(blocks):
        ts = sorted(blocks[i], key=lambda r: r.offset)
        units.append(Unit(f"blk.{i}", ts, ts[0].offset, ts[-1].offset + ts[-1].nbytes - ts[0].offset))
    largest = max((u.nbytes for u in units), default=1 << 20)
    chunk = chunk_bytes or largest
    out_ref = next((r for r in big if r.name == "output.weight"), None) or \
        next((r for r in big if r.name == "token_embd.weight"), None)
    if out_ref is not None:  # the output matrix (or the tied embedding) streams in row chunks
        rows = out_ref.shape[0]
        per_row = out_ref.nbytes // rows
        step = max(1, chunk // per_row)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            part = TensorRef(out_ref.name, out_ref.ggml_type, (r1 - r0, *out_ref.shape[1:]),
                             out_ref.offset + r0 * per_row, (r1 - r0) * per_row)
            units.append(Unit(f"output.{r0}", [part], part.offset, part.nbytes, (r0, r1)))
    return units, pinned


def _pread(fd: int, offset: int, nbytes: int, into: np.ndarray | None = None) -> np.ndarray:
    buf = np.empty(nbytes, np.uint8) if into is None else into[:nbytes]
    view = memoryview(buf)
    done = 0
    while done < nbytes:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise ModelFormatError(f"the model file ended at byte {offset + done}; it is truncated")
        done += n
    return buf


DIRECT_ALIGN = 4096  # O_DIRECT: offsets, lengths and buffers aligned to the logical block (4 KiB covers all)


def _aligned_slot(nbytes: int) -> np.ndarray:
    """A page-aligned buffer with room for a unit read from aligned boundaries on both sides."""
    import mmap

    return np.frombuffer(mmap.mmap(-1, nbytes + 2 * DIRECT_ALIGN), np.uint8)


def _pread_direct(fd: int, offset: int, nbytes: int, slot: np.ndarray) -> np.ndarray:
    """``nbytes`` at ``offset`` read with O_DIRECT (no page cache: the device's full read rate and nothing
    to evict afterwards) into ``slot``, from the aligned block below ``offset``; the unit's bytes are a
    view. A read that ends at the end of the file is short, as O_DIRECT allows."""
    start = offset - offset % DIRECT_ALIGN
    length = -(-(offset + nbytes - start) // DIRECT_ALIGN) * DIRECT_ALIGN
    view = memoryview(slot)[:length]
    done = 0
    while done < offset + nbytes - start:
        n = os.preadv(fd, [view[done:]], start + done)
        if n <= 0:
            raise ModelFormatError(f"the model file ended at byte {start + done}; it is truncated")
        done += n
    return slot[offset - start:offset - start + nbytes]


class WeightStore:
    """Units by name; ``get`` blocks until a unit is resident, ``done`` says it may be released."""

    def __init__(self, path: Path, info: GGUFInfo, kernels: str = "ort", threads: int = 1,
                 refs: dict[str, TensorRef] | None = None) -> None:
        # the header is not kept: its vocabulary arrays (tokens, merges) would stay alive for nothing
        self.path, self.kernels, self.threads = Path(path), kernels, threads
        self.units, pinned_refs = plan_units(info, refs=refs)
        self.order = [u.name for u in self.units]
        self._by_name = {u.name: u for u in self.units}
        self.stats = StoreStats()
        self._fd = os.open(self.path, os.O_RDONLY)
        self.pinned = {r.name: self._read(r.offset, r.nbytes) for r in pinned_refs}
        self._account(sum(r.nbytes for r in pinned_refs))
        self.pinned_bytes = sum(r.nbytes for r in pinned_refs)
        self.refs = refs or tensor_refs(info)
        self.embedding = self.refs.get("token_embd.weight")

    def _account(self, delta: int) -> None:
        self.stats.resident_bytes += delta
        self.stats.peak_resident_bytes = max(self.stats.peak_resident_bytes, self.stats.resident_bytes)

    def _read(self, offset: int, nbytes: int, into: np.ndarray | None = None, direct_fd: int = -1) -> np.ndarray:
        """``nbytes`` at ``offset``, counted in the stats; with ``direct_fd`` (opened O_DIRECT) into the
        aligned slot ``into``, bypassing the page cache."""
        t0 = time.perf_counter()
        buf = _pread(self._fd, offset, nbytes, into) if direct_fd < 0 else _pread_direct(direct_fd, offset, nbytes, into)
        self.stats.io_seconds += time.perf_counter() - t0
        self.stats.bytes_read += nbytes
        self.stats.reads += 1
        return buf

    def embedding_rows(self, ids) -> tuple[np.ndarray, str, int]:
        """Raw bytes of the embedding rows ``ids`` (read on demand: a few hundred bytes per token)."""
        e = self.embedding
        per_row = e.nbytes // e.shape[0]
        rows = [self._read(e.offset + int(i) * per_row, per_row) for i in ids]
        return np.concatenate(rows), e.ggml_type, e.shape[1]

    def get(self, name: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def done(self, name: str) -> None:
        pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ResidentWeights(WeightStore):
    """Every unit read once at load and kept (as prepared kernels)."""

    def __init__(self, path: Path, info: GGUFInfo, kernels: str = "ort", threads: int = 1,
                 refs: dict[str, TensorRef] | None = None) -> None:
        super().__init__(path, info, kernels, threads, refs)
        self._units = {}
        drop = hasattr(os, "posix_fadvise")
        for u in self.units:
            self._units[u.name] = u.prepare(self._read(u.start, u.nbytes), kernels, threads, repack=REPACK_RESIDENT)
            if drop:  # the weights are held once, here: the page cache's copy of the file would be a second
                os.posix_fadvise(self._fd, u.start, u.nbytes, os.POSIX_FADV_DONTNEED)
            self._account(u.nbytes)

    def get(self, name: str) -> dict:
        return self._units[name]


class FlashWeights(WeightStore):
    """Units streamed under ``budget`` bytes of resident weights, read ahead on a background thread."""

    def __init__(self, path: Path, info: GGUFInfo, budget: int, drop_cache: bool = True, prefetch: bool = True,
                 kernels: str = "ort", naive: bool = False, threads: int = 1,
                 refs: dict[str, TensorRef] | None = None) -> None:
        """``naive=True`` is the loader benchmarks compare with: nothing kept resident, no read-ahead,
        every unit read synchronously when the forward pass reaches it."""
        super().__init__(path, info, kernels, threads, refs)
        self.budget = int(budget)
        self.prefetch = prefetch and not naive
        self.drop_cache = drop_cache and hasattr(os, "posix_fadvise")
        largest = max(u.nbytes for u in self.units)
        minimum = self.pinned_bytes + largest
        if self.budget < minimum:
            big = max(self.units, key=lambda u: u.nbytes)
            raise InvalidOptionError(
                f"memory budget {self.budget:,} B is below the minimum {minimum:,} B for {self.path.name}: "
                f"its largest unit '{big.name}' is {largest:,} B and {self.pinned_bytes:,} B stay pinned")
        free = self.budget - self.pinned_bytes
        reserve = min(free, 2 * largest)  # a window of two units lets the next read overlap compute
        self.permanent: set[str] = set()
        kept = 0
        for u in self.units:
            if kept + u.nbytes > free - reserve:
                break
            self.permanent.add(u.name)
            kept += u.nbytes
        if sum(u.nbytes for u in self.units) <= free:
            self.permanent = {u.name for u in self.units}
        if naive:
            self.permanent = set()
        self.streamed = [n for n in self.order if n not in self.permanent]
        # Streamed units are read into a fixed set of slots, allocated once: fresh ~25 MB buffers per read
        # would leave the allocator's heaps holding freed ones (peak RSS far above the budget on 1B models).
        window = free - sum(self._by_name[n].nbytes for n in self.permanent)
        slot = max((self._by_name[n].nbytes for n in self.streamed), default=0)
        self._slots = [_aligned_slot(slot) for _ in range(max(1, window // (slot + 2 * DIRECT_ALIGN)) if slot else 0)]
        self._direct_fd = -1
        if self.streamed and self.drop_cache and hasattr(os, "O_DIRECT"):
            try:  # streamed reads bypass the page cache; where the filesystem refuses (tmpfs), buffered + DONTNEED
                self._direct_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
                _pread_direct(self._direct_fd, 0, 1, self._slots[0])
            except OSError:
                if self._direct_fd >= 0:
                    os.close(self._direct_fd)
                self._direct_fd = -1
        self._slot_of: dict[str, np.ndarray] = {}
        self._bufs: dict[str, np.ndarray] = {}
        self._cv = threading.Condition()
        self._next = 0  # index into self.streamed of the next unit to read ahead
        self._stop = False
        self.read_order: list[str] = []  # streamed reads, in the order they happened (tests check it)
        for name in self.permanent:
            u = self._by_name[name]
            self._bufs[name] = self._load(u)
            self._account(u.nbytes)
        self._thread = threading.Thread(target=self._prefetch, name="edge-flash-prefetch", daemon=True)
        if self.streamed and self.prefetch:
            self._thread.start()

    def _load(self, u: Unit, into: np.ndarray | None = None) -> dict:
        direct = self._direct_fd if into is not None else -1
        buf = self._read(u.start, u.nbytes, into, direct)
        if direct < 0 and self.drop_cache:
            os.posix_fadvise(self._fd, u.start, u.nbytes, os.POSIX_FADV_DONTNEED)
        # streamed units compute on the bytes as read: with ggml (its kernels take GGUF blocks as they
        # are), else numpy, where an ONNX Runtime kernel would first repack them (~1 ms per matrix,
        # more than the matrix's compute)
        streamed_kernels = "ggml" if self.kernels == "ggml" else "numpy"
        permanent = u.name in self.permanent
        return u.prepare(buf, self.kernels if permanent else streamed_kernels, self.threads,
                         repack=permanent and REPACK_RESIDENT)

    def _prefetch(self) -> None:
        """Read streamed units in forward order (wrapping to the next token) while the budget has room."""
        while True:
            with self._cv:
                name = self.streamed[self._next % len(self.streamed)]
                u = self._by_name[name]
                self._cv.wait_for(lambda: self._stop or (name not in self._bufs and self._slots and
                                                         self.stats.resident_bytes + u.nbytes <= self.budget))
                if self._stop:
                    return
                self._account(u.nbytes)  # reserve before reading: the budget holds during the read
                slot = self._slot_of[name] = self._slots.pop()
            buf = self._load(u, slot)
            with self._cv:
                self._bufs[name] = buf
                self.read_order.append(name)
                self._next += 1
                self._cv.notify_all()

    def get(self, name: str) -> dict:
        if name in self.permanent:
            return self._bufs[name]
        u = self._by_name[name]
        t0 = time.perf_counter()
        if not self.prefetch:  # synchronous: read now, in the forward pass's time
            with self._cv:
                self._account(u.nbytes)
                slot = self._slot_of[name] = self._slots.pop()
            self._bufs[name] = self._load(u, slot)
            self.read_order.append(name)
        with self._cv:
            self._cv.wait_for(lambda: name in self._bufs)
            buf = self._bufs[name]
        self.stats.wait_seconds += time.perf_counter() - t0
        return buf

    def done(self, name: str) -> None:
        if name in self.permanent:
            return
        with self._cv:
            if self._bufs.pop(name, None) is not None:
                self._account(-self._by_name[name].nbytes)
                self._slots.append(self._slot_of.pop(name))
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._bufs.clear()
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1
        super().close()


__all__ = ["ResidentWeights", "FlashWeights", "WeightStore", "StoreStats", "plan_units"]
