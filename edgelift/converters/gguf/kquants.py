"""Q4_K, Q5_K and Q6_K encoders in numpy, byte-identical to llama.cpp's reference quantizers
(``quantize_row_q4_K_ref`` / ``q5_K_ref`` / ``q6_K_ref`` in ggml-quants.c, which ``llama-quantize``
runs when no importance matrix is given).

Byte identity needs the C code's float32 arithmetic in the C code's order. Everything here is
float32; sums run element by element in the C loop order (``np.add.accumulate``, which is
sequential, never numpy's pairwise ``sum``); ``nearest_int`` is round-half-to-even (``np.rint``),
which is what its 1.5*2^23 trick computes. Work is vectorized across all blocks of a tensor, so the
Python loops are over the 16..32 elements of a sub-block and the 16..21 scale candidates, not over blocks.
Groups are held element-major, ``(group size, groups)``, so each step of a sequential sum is one
contiguous vector add.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
BLOCK_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
F = np.float32


def _acc(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 (a group's elements), in order, in float32: a C loop's ``s += a[i]`` from 0."""
    s = a[0] + F(0)
    for row in a[1:]:
        s += row
    return s


def _nearest(v: np.ndarray) -> np.ndarray:
    return np.rint(v).astype(np.int32)


def _fp16(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float32).astype(np.float16)


def _make_qkx2(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """``make_qkx2_quants`` (use_mad=false) over the columns of ``x`` (n, groups): (scale, the_min, L)."""
    mn = np.minimum(x.min(axis=0), F(0))
    mx = x.max(axis=0)
    sum_w, sum_x = _acc(w), _acc(w * x)
    flat = mx == mn
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F(nmax) / (mx - mn)
        scale = F(1) / iscale
        L = np.clip(_nearest(iscale * (x - mn)), 0, nmax)
        diff = (scale * L.astype(F) + mn) - x
        best = _acc(w * (diff * diff))
        for step in range(nstep + 1):
            # C reads ``min`` as updated by the previous accepted candidate
            iscale = (F(rmin) + F(rdelta) * F(step) + F(nmax)) / (mx - mn)
            la = np.clip(_nearest(iscale * (x - mn)), 0, nmax)
            lf = la.astype(F)
            wl = w * lf
            sum_l, sum_l2, sum_xl = _acc(wl), _acc(wl * lf), _acc(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            diff = (this_scale * lf + this_min) - x
            err = _acc(w * (diff * diff))
            better = (D > 0) & (err < best) & ~flat  # a flat group returned early in C
            L = np.where(better, la, L)
            best = np.where(better, err, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L[:, flat] = 0
    scale = np.where(flat, F(0), scale).astype(F)
    return scale, (-mn).astype(F), L


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12-byte 6-bit scale/min packing of Q4_K and Q5_K (inverse of ``get_scale_min_k4``)."""
    s = np.zeros((ls.shape[0], 12), np.uint8)
    s[:, 0:4] = ls[:, 0:4]
    s[:, 4:8] = lm[:, 0:4]
    s[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    s[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    s[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return s


def _q45_k(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared part of Q4_K / Q5_K: super-block scales and the final levels L (nb, 256)."""
    nb = x.shape[0] // QK_K
    xs = np.ascontiguousarray(x.reshape(nb * 8, 32).T)  # (32, groups)
    av_x = np.sqrt(_acc(xs * xs) / F(32))
    w = av_x + np.abs(xs)
    scales, mins, L = _make_qkx2(xs, w, nmax, rmin, rdelta, nstep)
    L = L.T
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(axis=1), F(0))
    max_min = np.maximum(mins.max(axis=1), F(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F(63) / max_scale, F(0)).astype(F)
        inv_min = np.where(max_min > 0, F(63) / max_min, F(0)).astype(F)
    ls = np.minimum(_nearest(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)  # uint8_t, then MIN
    lm = np.minimum(_nearest(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d = _fp16(max_scale / F(63))
    dmin = _fp16(max_min / F(63))
    dj = d.astype(F)[:, None] * ls.astype(F)
    dm = dmin.astype(F)[:, None] * lm.astype(F)
    xb = x.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest((xb + dm[..., None]) / dj[..., None]), 0, nmax)
    L = np.where((dj != 0)[..., None], requant, L.reshape(nb, 8, 32)).reshape(nb, QK_K).astype(np.uint8)
    head = np.concatenate([d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2),
                           _pack_scales_k4(ls, lm)], axis=1)
    return head, L


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (float32, length a multiple of 256) as Q4_K blocks: (..., n/256*144) uint8."""
    x = np.ascontiguousarray(x, np.float32)
    head, L = _q45_k(x.reshape(-1), 15, -1.0, 0.1, 20)
    q = L.reshape(-1, 4, 2, 32)  # 64-value chunks: low nibble value l, high nibble value l + 32
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([head, qs], axis=1).reshape(*x.shape[:-1], -1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` as Q5_K blocks (176 bytes per 256 values)."""
    x = np.ascontiguousarray(x, np.float32)
    head, L = _q45_k(x.reshape(-1), 31, -0.5, 0.1, 15)
    q = L.reshape(-1, 4, 2, 32)
    hi = (q >> 4) & 1  # fifth bit of value (chunk c, half h, j) goes to bit 2c + h of qh[j]
    shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
    qh = np.bitwise_or.reduce((hi << shifts[None, :, :, None]).reshape(-1, 8, 32), axis=1).astype(np.uint8)
    low = q & 0xF
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([head, qh, qs], axis=1).reshape(*x.shape[:-1], -1)


def _make_qx_rmse1(x: np.ndarray, nmax: int):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, NULL)`` over the columns of ``x`` (n, groups):
    (scale, L in 0..2*nmax-1)."""
    ax = np.abs(x)
    amax = ax.max(axis=0)
    mx = np.take_along_axis(x, ax.argmax(axis=0)[None, :], axis=0)[0]  # first index of the largest |x|
    w = x * x
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F(-nmax) / mx
        L = np.clip(_nearest(iscale * x), -nmax, nmax - 1)
        lf = L.astype(F)
        sumlx, suml2 = _acc(wx * lf), _acc((w * lf) * lf)
        scale = np.where(suml2 != 0, sumlx / suml2, F(0)).astype(F)
        best = scale * sumlx
        for step in (*range(-9, 0), *range(1, 10)):
            iscale = -(F(nmax) + F(0.1) * F(step)) / mx
            li = np.clip(_nearest(iscale * x), -nmax, nmax - 1)
            lf = li.astype(F)
            sumlx, suml2 = _acc(wx * lf), _acc((w * lf) * lf)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better, li, L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    zero = amax < F(1e-15)
    L = np.where(zero, 0, L + nmax)  # GROUP_MAX_EPS: an all-zero group keeps L = 0
    return np.where(zero, F(0), scale).astype(F), L


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` as Q6_K blocks (210 bytes per 256 values)."""
    x = np.ascontiguousarray(x, np.float32)
    flat = x.reshape(-1)
    nb = flat.size // QK_K
    scales, L = _make_qx_rmse1(np.ascontiguousarray(flat.reshape(nb * 16, 16).T), 32)
    scales, L = scales.reshape(nb, 16), L.T.reshape(nb, 16, 16)
    first = np.abs(scales).argmax(axis=1)  # first index of the largest |scale|
    max_scale = np.take_along_axis(scales, first[:, None], axis=1)[:, 0]
    empty = np.abs(max_scale) < F(1e-15)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F(-128) / max_scale
        d = _fp16(F(1) / iscale)
        sc = np.minimum(127, _nearest(iscale[:, None] * scales))
        sc = np.where(empty[:, None], 0, sc).astype(np.int8)
        dj = d.astype(F)[:, None] * sc.astype(F)
        requant = np.clip(_nearest(flat.reshape(nb, 16, 16) / dj[..., None]), -32, 31) + 32
    L = np.where((dj != 0)[..., None], requant, L).reshape(nb, 2, 4, 32).astype(np.uint8)
    L = np.where(empty[:, None, None, None], 0, L).astype(np.uint8)
    d = np.where(empty, np.float16(0), d)
    low, high = L & 0xF, L >> 4
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    out = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.view(np.uint8),
                          d.view(np.uint8).reshape(nb, 2)], axis=1)
    return out.reshape(*x.shape[:-1], -1)


K_QUANTIZERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}
