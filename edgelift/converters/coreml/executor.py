"""A numpy reference executor for MIL programs, so .mlpackage files can be checked where Core ML
does not run (Linux CI). It reads the saved package (spec + weight.bin), decompresses constexpr
weights (blockwise shift-scale, lookup tables, affine) and executes the ops in order, one small
function per MIL op in ``MIL_OPS``.

fp16 programs are run with fp16 storage: each fp16 op computes in fp32 and rounds its result to
fp16, which is what Core ML's fp16 kernels store between ops (their accumulation width varies by
compute unit; this executor's accumulation is fp32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ...core.tensors import TensorSpec
from ...errors import InferenceError, ModelFormatError, UnsupportedOperatorError, shown
from ...runtimes.base import Session
from .package import MIL_DTYPES, BlobFile, MLPackage, read_mlpackage, unpack_bits

MIL_OPS: dict[str, Callable] = {}


def mil_op(*names: str):
    def deco(fn):
        for n in names:
            MIL_OPS[n] = fn
        return fn

    return deco


MAX_ELEMENTS = 1 << 40  # per constant: beyond any model, and no int64 overflow in element counts


def _dtype_name(code: int) -> str:
    from coremltools.proto import MIL_pb2

    try:
        return MIL_pb2.DataType.Name(code)
    except ValueError as e:  # an enum value the MIL schema does not define
        raise ModelFormatError(f"MIL dataType {code} is not a type Core ML defines; the package is corrupt") from e


def _shape(tensor_type) -> tuple[int, ...]:
    dims, count = [], 1
    for d in tensor_type.dimensions:
        if d.WhichOneof("dimension") != "constant":
            raise ModelFormatError("a constant has a non-constant dimension")
        dims.append(int(d.constant.size))
        count *= dims[-1]
    if count > MAX_ELEMENTS:
        raise ModelFormatError(f"a constant of shape {dims} has more elements than any model; the package is corrupt")
    return tuple(dims)


class MILProgramExecutor:
    """Executes the ``main`` function of a saved ML Program package."""

    def __init__(self, package: MLPackage) -> None:
        self.package = package
        self.block, self.function = package.main_block()
        self.blobs = BlobFile(package.weights_path)
        missing = sorted({op.type for op in self.block.operations if op.type not in MIL_OPS})
        if missing:
            raise UnsupportedOperatorError(
                f"the MIL reference executor has no implementation of: {', '.join(missing)}",
                nodes=[(m, m) for m in missing])
        self._consts: dict[str, np.ndarray] = {}
        self._check_names()

    def _check_names(self) -> None:
        """Every value an op reads is a function input or an earlier op's output, and so is every block output:
        a program that reads an undefined name is corrupt, found before it runs."""
        defined = {i.name for i in self.function.inputs}
        for op in self.block.operations:
            for arg in op.inputs.values():
                for b in arg.arguments:
                    if b.WhichOneof("binding") == "name" and b.name not in defined:
                        raise ModelFormatError(f"MIL op {op.type} reads '{shown(b.name)}', which nothing defines before "
                                               "it; the package is corrupt")
            defined.update(o.name for o in op.outputs)
        missing = [o for o in self.block.outputs if o not in defined]
        if missing:
            raise ModelFormatError(f"the program's output '{shown(missing[0])}' is never computed; the package is corrupt")

    # --- values ---
    def value(self, v) -> np.ndarray:
        try:
            return self._value(v)
        except (ValueError, TypeError, KeyError, IndexError) as e:  # sizes that disagree with the data held
            raise ModelFormatError(f"a MIL constant cannot be read ({' '.join(str(e).split())[:120]}); "
                                   "the package is corrupt") from e

    def _value(self, v) -> np.ndarray:
        tt = v.type.tensorType
        name = _dtype_name(tt.dataType)
        kind = v.WhichOneof("value")
        if kind == "blobFileValue":
            return self.blobs.read(int(v.blobFileValue.offset), name, _shape(tt))
        if kind != "immediateValue":
            raise ModelFormatError(f"unsupported MIL value kind {kind}")
        t = v.immediateValue.tensor
        shape = _shape(tt)
        field = t.WhichOneof("value")
        if name == "STRING":
            vals = list(t.strings.values)
            return np.array(vals[0] if not shape else vals, dtype=object)
        if field == "bytes":
            np_dtype, bits = MIL_DTYPES[name]
            raw = np.frombuffer(t.bytes.values, np.uint8)
            count = int(np.prod(shape, dtype=np.int64))
            if count * bits > raw.size * 8:
                raise ValueError(f"{count} {name} values declared, {raw.size} bytes held")
            if bits < 8:
                arr = unpack_bits(raw, bits, count, signed=name.startswith("INT")).astype(np_dtype)
            else:
                arr = raw.view(np_dtype)[:count]
            return arr.reshape(shape)
        np_dtype = MIL_DTYPES.get(name, (np.float32, 32))[0]
        vals = {"floats": t.floats.values, "ints": t.ints.values, "bools": t.bools.values,
                "longInts": t.longInts.values, "doubles": t.doubles.values}.get(field, [])
        return np.array(list(vals), dtype=np_dtype).reshape(shape)

    def _args(self, op, env: dict) -> dict:
        out = {}
        for key, arg in op.inputs.items():
            vals = [env[b.name] if b.WhichOneof("binding") == "name" else self.value(b.value) for b in arg.arguments]
            out[key] = vals if len(vals) > 1 or key == "values" else vals[0]
        for key, attr in op.attributes.items():
            if key != "name":
                out[key] = self.value(attr)
        return out

    def run(self, feeds: dict[str, np.ndarray], every_value: bool = False) -> dict[str, np.ndarray]:
        """The program's outputs, or with ``every_value`` every value it computes (layer-wise comparison)."""
        env: dict[str, np.ndarray] = dict(feeds)
        for op in self.block.operations:
            cached = op.outputs[0].name in self._consts
            if cached:  # const and constexpr results do not depend on the inputs
                env[op.outputs[0].name] = self._consts[op.outputs[0].name]
                continue
            try:
                results = MIL_OPS[op.type](**self._args(op, env))
            except (ValueError, IndexError, KeyError, TypeError) as e:
                raise InferenceError(f"MIL op {op.type} ({op.outputs[0].name}) failed: {e}") from e
            results = results if isinstance(results, tuple) else (results,)
            for o, r in zip(op.outputs, results):
                r = _as_declared(np.asarray(r), o.type)
                env[o.name] = r
                if op.type == "const" or op.type.startswith("constexpr"):
                    self._consts[o.name] = r
        if every_value:
            return env
        return {name: env[name] for name in self.block.outputs}


def _as_declared(a: np.ndarray, value_type) -> np.ndarray:
    """Store each result in its declared dtype (fp16 programs keep fp16 between ops)."""
    if value_type.WhichOneof("type") != "tensorType":
        return a
    name = _dtype_name(value_type.tensorType.dataType)
    np_dtype, bits = MIL_DTYPES.get(name, (None, 0))
    if np_dtype is None or bits < 8 or a.dtype == np_dtype:
        return a
    return a.astype(np_dtype)


def _f(x: np.ndarray) -> np.ndarray:
    """Compute dtype: fp32 for any float input (fp16 results are rounded back on store)."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _ints(v) -> list[int]:
    return [int(i) for i in np.asarray(v).reshape(-1)]


# --- constants ---------------------------------------------------------------------------------


@mil_op("const")
def _const(val):
    return val


@mil_op("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(data, scale, offset=None):
    """data: n-bit ints; scale/offset: one value per block along each axis (block = dim / scale dim)."""
    def expand(a):
        for axis, (n, m) in enumerate(zip(data.shape, a.shape)):
            if m != n:
                a = np.repeat(a, n // m, axis=axis)
        return a

    d = data.astype(np.float32)
    if offset is not None:
        d = d - expand(np.asarray(offset).astype(np.float32))
    return (d * expand(_f(scale))).astype(scale.dtype)


@mil_op("constexpr_lut_to_dense")
def _lut_to_dense(indices=None, lut=None, shape=None):
    if shape is not None:  # iOS16: flat lut, packed uint8 indices, explicit shape
        n = int(np.prod(_ints(shape)))
        bits = int(np.log2(lut.size))
        return lut[unpack_bits(np.asarray(indices, np.uint8).reshape(-1), bits, n, False)].reshape(_ints(shape))
    if lut.shape[-1] != 1:
        raise ValueError("vector palettization (vector_size > 1) is not supported")
    table = lut[..., 0]  # (blocks per axis..., palette)
    idx = []
    for axis, (n, m) in enumerate(zip(indices.shape, table.shape[:-1])):
        shape = [1] * indices.ndim
        shape[axis] = n
        idx.append((np.arange(n) // (n // m)).reshape(shape))
    return table[(*idx, indices.astype(np.int64))]


@mil_op("constexpr_affine_dequantize")
def _affine_dequantize(quantized_data, zero_point, scale, axis):
    axis = int(axis) % quantized_data.ndim
    shape = [1] * quantized_data.ndim
    zp, sc = np.asarray(zero_point), np.asarray(scale)
    if zp.size > 1:
        zp = zp.reshape([-1 if i == axis else 1 for i in range(quantized_data.ndim)])
    if sc.size > 1:
        shape[axis] = -1
        sc = sc.reshape(shape)
    return ((quantized_data.astype(np.float32) - zp.astype(np.float32)) * _f(sc)).astype(sc.dtype)


@mil_op("cast")
def _cast(x, dtype):
    return np.asarray(x).astype({"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16,
                                 "bool": np.bool_, "int8": np.int8, "uint8": np.uint8}[str(dtype)])


@mil_op("identity")
def _identity(x):
    return x


# --- elementwise -------------------------------------------------------------------------------

_BIN = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "pow": np.power,
        "maximum": np.maximum, "minimum": np.minimum, "floor_div": np.floor_divide, "equal": np.equal,
        "not_equal": np.not_equal, "less": np.less, "greater": np.greater, "less_equal": np.less_equal,
        "greater_equal": np.greater_equal, "logical_and": np.logical_and, "logical_or": np.logical_or}
for _n, _fn in _BIN.items():
    mil_op(_n)(lambda x, y, _fn=_fn: _fn(_f(x), _f(y)))


def _erf_fast(x):
    """erf to ~1e-7 (W. J. Cody's rational approximations are overkill; this is Numerical Recipes' erfc)."""
    z = np.abs(x).astype(np.float64)
    t = 1 / (1 + 0.5 * z)
    r = t * np.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
    return (np.sign(x) * (1 - r)).astype(np.float32)


_UN = {"relu": lambda x: np.maximum(x, 0), "relu6": lambda x: np.clip(x, 0, 6), "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
       "tanh": np.tanh, "exp": np.exp, "sqrt": np.sqrt, "rsqrt": lambda x, epsilon=1e-12: 1 / np.sqrt(x + epsilon),
       "inverse": lambda x, epsilon=1e-4: 1 / (x + epsilon), "abs": np.abs, "log": lambda x, epsilon=1e-45: np.log(x + epsilon),
       "floor": np.floor, "ceil": np.ceil, "sin": np.sin, "cos": np.cos, "logical_not": np.logical_not,
       "erf": lambda x: _erf_fast(x), "square": np.square}
for _n, _fn in _UN.items():
    mil_op(_n)(lambda x, _fn=_fn, **kw: _fn(_f(x), **{k: float(v) for k, v in kw.items()}))


@mil_op("clip")
def _clip(x, alpha, beta):
    return np.clip(_f(x), _f(alpha), _f(beta))


@mil_op("leaky_relu")
def _leaky_relu(x, alpha):
    x = _f(x)
    return np.where(x >= 0, x, x * np.float32(alpha))


@mil_op("sigmoid_hard")
def _sigmoid_hard(x, alpha, beta):
    return np.clip(_f(x) * np.float32(alpha) + np.float32(beta), 0, 1)


@mil_op("gelu")
def _gelu(x, mode="EXACT"):
    x, mode = _f(x), str(mode)
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1 + np.exp(-1.702 * x))
    return 0.5 * x * (1 + _erf_fast(x / np.sqrt(2)))


@mil_op("silu")
def _silu(x):
    x = _f(x)
    return x / (1 + np.exp(-x))


@mil_op("cumsum")
def _cumsum(x, axis=0, exclusive=False, reverse=False):
    x = _f(x) if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x)
    axis = int(axis)
    if reverse:
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis, dtype=x.dtype)
    if exclusive:
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis=axis)), np.delete(out, -1, axis=axis)], axis=axis)
    return np.flip(out, axis) if reverse else out


@mil_op("upsample_nearest_neighbor")
def _upsample_nearest(x, scale_factor_height=1, scale_factor_width=1):
    return np.repeat(np.repeat(_f(x), int(scale_factor_height), axis=-2), int(scale_factor_width), axis=-1)


@mil_op("select")
def _select(cond, a, b):
    return np.where(cond, _f(a), _f(b))


# --- dense and convolution ---------------------------------------------------------------------


@mil_op("linear")
def _linear(x, weight, bias=None):
    y = _f(x) @ _f(weight).T
    return y if bias is None else y + _f(bias)


@mil_op("matmul")
def _matmul(x, y, transpose_x=False, transpose_y=False):
    x, y = _f(x), _f(y)
    if bool(transpose_x):
        x = np.swapaxes(x, -1, -2)
    if bool(transpose_y):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _explicit_pads(x_shape, k, strides, dilations, pad_type, pad) -> list[tuple[int, int]]:
    pad_type = str(pad_type)
    n = len(k)
    if pad_type == "custom":
        p = _ints(pad)
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if pad_type == "valid":
        return [(0, 0)] * n
    out = []
    for i in range(n):  # same / same_lower
        size, eff = x_shape[2 + i], (k[i] - 1) * dilations[i] + 1
        total = max((-(-size // strides[i]) - 1) * strides[i] + eff - size, 0)
        lo = total // 2 if pad_type == "same" else total - total // 2
        out.append((lo, total - lo))
    return out


def _windows(x, k, strides, dilations, pads, value=0.0):
    """(N, C, *out, *k) sliding windows of x padded by pads."""
    x = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=value)
    n = len(k)
    eff = [(k[i] - 1) * dilations[i] + 1 for i in range(n)]
    w = np.lib.stride_tricks.sliding_window_view(x, eff, axis=tuple(range(2, 2 + n)))
    sl = (slice(None), slice(None), *[slice(None, None, s) for s in strides], *[slice(None, None, d) for d in dilations])
    return w[sl]


@mil_op("conv")
def _conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    x, w = _f(x), _f(weight)
    k = list(w.shape[2:])
    strides = _ints(strides) if strides is not None else [1] * len(k)
    dilations = _ints(dilations) if dilations is not None else [1] * len(k)
    win = _windows(x, k, strides, dilations, _explicit_pads(x.shape, k, strides, dilations, pad_type, pad))
    g = int(groups)
    n_sp = len(k)
    if g == 1:
        y = np.tensordot(win, w, axes=([1, *range(2 + n_sp, 2 + 2 * n_sp)], [1, *range(2, 2 + n_sp)]))
        y = np.moveaxis(y, -1, 1)
    else:
        N, C = win.shape[:2]
        out_sp = win.shape[2:2 + n_sp]
        wg = w.reshape(g, w.shape[0] // g, *w.shape[1:])  # (G, Og, Cg, *k)
        win = win.reshape(N, g, C // g, *out_sp, *k)
        if n_sp != 2:
            raise ValueError("grouped convolution is implemented for 2-D only")
        y = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True).reshape(N, w.shape[0], *out_sp)
    if bias is not None:
        y = y + _f(bias).reshape(1, -1, *[1] * n_sp)
    return y


@mil_op("conv_transpose")
def _conv_transpose(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1,
                    output_shape=None):
    """2-D transposed convolution: every input pixel scatters its kernel-sized contribution (weight layout
    [C_in, C_out / groups, kH, kW]); the full result is cropped by ``pad`` and fitted to ``output_shape``."""
    x, w = _f(x), _f(weight)
    if x.ndim != 4:
        raise ValueError("conv_transpose is implemented for 2-D only")
    n, c, h, wd = x.shape
    g = int(groups)
    cin, cout, kh, kw = c // g, w.shape[1], w.shape[2], w.shape[3]
    sh, sw = _ints(strides) if strides is not None else [1, 1]
    dh, dw = _ints(dilations) if dilations is not None else [1, 1]
    full = np.zeros((n, g * cout, (h - 1) * sh + dh * (kh - 1) + 1, (wd - 1) * sw + dw * (kw - 1) + 1), np.float32)
    for gi in range(g):
        xg, wg = x[:, gi * cin:(gi + 1) * cin], w[gi * cin:(gi + 1) * cin]
        for i in range(kh):
            for j in range(kw):
                full[:, gi * cout:(gi + 1) * cout, i * dh:i * dh + (h - 1) * sh + 1:sh,
                     j * dw:j * dw + (wd - 1) * sw + 1:sw] += np.einsum("nchw,co->nohw", xg, wg[:, :, i, j])
    top, bottom, left, right = _ints(pad) if str(pad_type) == "custom" and pad is not None else [0, 0, 0, 0]
    y = full[:, :, top:full.shape[2] - bottom, left:full.shape[3] - right]
    if output_shape is not None:
        oh, ow = _ints(output_shape)[-2:]
        fitted = np.zeros((n, y.shape[1], oh, ow), np.float32)
        fitted[:, :, :min(oh, y.shape[2]), :min(ow, y.shape[3])] = y[:, :, :oh, :ow]
        y = fitted
    if bias is not None:
        y = y + _f(bias).reshape(1, -1, 1, 1)
    return y


def _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, reduce, value):
    x = _f(x)
    k = _ints(kernel_sizes)
    strides = _ints(strides)
    pads = _explicit_pads(x.shape, k, strides, [1] * len(k), pad_type, pad)
    if bool(ceil_mode):
        for i in range(len(k)):
            size = x.shape[2 + i] + sum(pads[i])
            extra = (-(size - k[i]) % strides[i])
            pads[i] = (pads[i][0], pads[i][1] + extra)
    win = _windows(x, k, strides, [1] * len(k), pads, value)
    return reduce(win, tuple(range(-len(k), 0)))


@mil_op("max_pool")
def _max_pool(x, kernel_sizes, strides, pad_type, pad=None, ceil_mode=False):
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, lambda w, a: w.max(axis=a), -np.inf)


@mil_op("avg_pool")
def _avg_pool(x, kernel_sizes, strides, pad_type, pad=None, ceil_mode=False, exclude_padding_from_average=False):
    s = _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, lambda w, a: w.sum(axis=a), 0.0)
    if bool(exclude_padding_from_average):
        ones = np.ones((1, 1, *np.asarray(x).shape[2:]), np.float32)
        n = _pool(ones, kernel_sizes, strides, pad_type, pad, ceil_mode, lambda w, a: w.sum(axis=a), 0.0)
    else:
        n = float(np.prod(_ints(kernel_sizes)))
    return s / n


@mil_op("batch_norm")
def _batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    shape = (1, -1) + (1,) * (np.asarray(x).ndim - 2)
    y = (_f(x) - _f(mean).reshape(shape)) / np.sqrt(_f(variance).reshape(shape) + np.float32(epsilon))
    if gamma is not None:
        y = y * _f(gamma).reshape(shape)
    return y if beta is None else y + _f(beta).reshape(shape)


@mil_op("layer_norm")
def _layer_norm(x, axes, gamma=None, beta=None, epsilon=1e-5):
    x = _f(x)
    a = tuple(_ints(axes))
    mu = x.mean(axis=a, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=a, keepdims=True) + np.float32(epsilon))
    if gamma is not None:
        y = y * _f(gamma)
    return y if beta is None else y + _f(beta)


@mil_op("softmax")
def _softmax(x, axis=-1):
    x = _f(x)
    e = np.exp(x - x.max(axis=int(axis), keepdims=True))
    return e / e.sum(axis=int(axis), keepdims=True)


@mil_op("scaled_dot_product_attention")
def _sdpa(query, key, value, attn_mask=None):
    q, k, v = _f(query), _f(key), _f(value)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(np.float32(q.shape[-1]))
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        s = np.where(m, s, -np.inf) if m.dtype == np.bool_ else s + _f(m)
    return _softmax(s, -1) @ v


# --- reductions --------------------------------------------------------------------------------

_RED = {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
        "reduce_prod": np.prod, "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims))}
for _n, _fn in _RED.items():
    mil_op(_n)(lambda x, axes=None, keep_dims=False, _fn=_fn: _fn(
        _f(x), axis=None if axes is None else tuple(_ints(axes)), keepdims=bool(keep_dims)))


# --- shape and indexing ------------------------------------------------------------------------


@mil_op("reshape")
def _reshape(x, shape):
    return np.reshape(x, _ints(shape))


@mil_op("transpose")
def _transpose(x, perm):
    return np.transpose(x, _ints(perm))


@mil_op("expand_dims")
def _expand_dims(x, axes):
    return np.expand_dims(x, tuple(_ints(axes)))


@mil_op("squeeze")
def _squeeze(x, axes=None):
    return np.squeeze(x, None if axes is None else tuple(_ints(axes)))


@mil_op("tile")
def _tile(x, reps):
    return np.tile(x, _ints(reps))


@mil_op("concat")
def _concat(values, axis, interleave=False):
    if bool(interleave):
        raise ValueError("interleaved concat")
    return np.concatenate([_f(v) if np.asarray(v).dtype == np.float16 else v for v in values], axis=int(axis))


@mil_op("split")
def _split(x, split_sizes=None, num_splits=None, axis=0):
    axis = int(axis)
    if split_sizes is not None:
        return tuple(np.split(x, np.cumsum(_ints(split_sizes))[:-1], axis=axis))
    return tuple(np.split(x, int(num_splits), axis=axis))


@mil_op("slice_by_index")
def _slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    x = np.asarray(x)
    b, e = _ints(begin), _ints(end)
    s = _ints(stride) if stride is not None else [1] * x.ndim
    bm = list(np.asarray(begin_mask).reshape(-1)) if begin_mask is not None else [False] * x.ndim
    em = list(np.asarray(end_mask).reshape(-1)) if end_mask is not None else [False] * x.ndim
    sq = list(np.asarray(squeeze_mask).reshape(-1)) if squeeze_mask is not None else [False] * x.ndim
    idx = []
    for i in range(x.ndim):
        if sq[i]:
            idx.append(b[i])
        else:
            idx.append(slice(None if bm[i] else b[i], None if em[i] else e[i], s[i]))
    return x[tuple(idx)]


@mil_op("gather")
def _gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    if int(batch_dims):
        raise ValueError("gather with batch_dims")
    return np.take(x, np.asarray(indices).astype(np.int64), axis=int(axis))


@mil_op("gather_nd")
def _gather_nd(x, indices, batch_dims=0, validate_indices=False):
    x, ind = np.asarray(x), np.asarray(indices).astype(np.int64)
    b = int(batch_dims)
    if b:
        return np.stack([_gather_nd(x[i], ind[i], b - 1) for i in range(x.shape[0])])
    return x[tuple(np.moveaxis(ind, -1, 0))]


@mil_op("scatter_nd")
def _scatter_nd(data, indices, updates, mode="add", validate_indices=False):
    if str(mode) != "update":
        raise ValueError(f"scatter_nd mode {mode}")
    out = np.array(data, copy=True)
    ind = np.asarray(indices).astype(np.int64)
    out[tuple(np.moveaxis(ind, -1, 0))] = updates
    return out


@mil_op("pad")
def _pad(x, pad, mode="constant", constant_val=0.0):
    p = _ints(pad)
    x = np.asarray(x)
    pairs = [(0, 0)] * (x.ndim - len(p) // 2) + [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
    mode = str(mode)
    if mode == "constant":
        return np.pad(x, pairs, constant_values=float(constant_val))
    return np.pad(x, pairs, mode={"reflect": "reflect", "replicate": "edge"}[mode])


# --- the session the parity report runs ---------------------------------------------------------

_FEATURE_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}


class MILReferenceSession(Session):
    """An .mlpackage run by the numpy MIL executor, behind the same Session API as the runtimes."""

    def __init__(self, path: str | Path) -> None:
        self.package = read_mlpackage(path)
        self.executor = MILProgramExecutor(self.package)
        desc = self.package.spec.description
        self.inputs = [self._spec(f) for f in desc.input]
        self.outputs = [self._spec(f) for f in desc.output]

    @staticmethod
    def _spec(feature) -> TensorSpec:
        arr = feature.type.multiArrayType
        dtype = _FEATURE_DTYPES.get(arr.dataType, "float32")
        if arr.WhichOneof("ShapeFlexibility") == "shapeRange":
            shape = tuple(None if r.upperBound != r.lowerBound else int(r.lowerBound)
                          for r in arr.shapeRange.sizeRanges)
        elif arr.WhichOneof("ShapeFlexibility") == "enumeratedShapes" and arr.enumeratedShapes.shapes:
            listed = [tuple(int(d) for d in e.shape) for e in arr.enumeratedShapes.shapes]
            shape = tuple(None if len({e[i] for e in listed}) > 1 else listed[0][i] for i in range(len(listed[0])))
        else:
            shape = tuple(int(d) for d in arr.shape)
        return TensorSpec(feature.name, shape, dtype)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {s.name: np.asarray(feeds[s.name]).astype(s.dtype) for s in self.inputs}
        out = self.executor.run(cast)
        return {s.name: np.asarray(out[s.name]).astype(np.float32) if np.asarray(out[s.name]).dtype == np.float16
                else np.asarray(out[s.name]) for s in self.outputs}
