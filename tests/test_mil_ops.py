"""Every op of the numpy MIL executor against an independent reference (torch where it has the op,
numpy otherwise): each case builds a one-op ML Program with coremltools' builder, saves it as a real
.mlpackage and runs the saved file, so the spec and weight decoding is exercised too.

A registry check makes a new executor op without a case here fail the suite."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("coremltools")

R = np.random.default_rng(0)
X = R.standard_normal((2, 3, 4)).astype(np.float32)
Y = R.standard_normal((2, 3, 4)).astype(np.float32)
POS = (np.abs(X) + 0.5).astype(np.float32)
T = torch.from_numpy


def _mb():
    from coremltools.converters.mil import Builder as mb

    return mb


def run_program(build, *inputs: np.ndarray, tmp_path, name: str = "p") -> list[np.ndarray]:
    """``build(mb, *input_vars)`` as a saved fp32 iOS18 package, run by the executor."""
    import coremltools as ct

    from edgelift.converters.coreml.executor import MILReferenceSession

    from coremltools.converters.mil.mil import Function, Program

    mb = _mb()
    prog = Program()
    with Function({f"x{i}": mb.placeholder(shape=a.shape) for i, a in enumerate(inputs)},
                  opset_version=ct.target.iOS18) as fn:
        outs = build(mb, *[fn.inputs[f"x{i}"] for i in range(len(inputs))])
        fn.set_outputs(outs if isinstance(outs, (list, tuple)) else [outs])
        prog.add_function("main", fn)

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                       compute_precision=ct.precision.FLOAT32)
    path = tmp_path / f"{name}.mlpackage"
    shutil.rmtree(path, ignore_errors=True)
    model.save(str(path))
    s = MILReferenceSession(path)
    out = s.run({spec.name: a for spec, a in zip(s.inputs, inputs)})
    return [out[o.name] for o in s.outputs]


def _f32(v):
    """Core ML outputs cannot be bool or int: cast for the program's output."""
    return _mb().cast(x=v, dtype="fp32")


CT_W = R.standard_normal((2, 5, 3, 3)).astype(np.float32)  # conv_transpose: [C_in, C_out, kH, kW]
CT_B = R.standard_normal(5).astype(np.float32)

# (case id, MIL ops covered, build(mb, *vars), inputs, reference(*inputs))
CASES = [
    ("add", ["add"], lambda mb, x, y: mb.add(x=x, y=y), (X, Y), lambda x, y: T(x) + T(y)),
    ("sub", ["sub"], lambda mb, x, y: mb.sub(x=x, y=y), (X, Y), lambda x, y: T(x) - T(y)),
    ("mul", ["mul"], lambda mb, x, y: mb.mul(x=x, y=y), (X, Y), lambda x, y: T(x) * T(y)),
    ("real_div", ["real_div"], lambda mb, x, y: mb.real_div(x=x, y=y), (X, POS), lambda x, y: T(x) / T(y)),
    ("pow", ["pow"], lambda mb, x, y: mb.pow(x=x, y=y), (POS, Y), lambda x, y: torch.pow(T(x), T(y))),
    ("maximum", ["maximum"], lambda mb, x, y: mb.maximum(x=x, y=y), (X, Y), lambda x, y: torch.maximum(T(x), T(y))),
    ("minimum", ["minimum"], lambda mb, x, y: mb.minimum(x=x, y=y), (X, Y), lambda x, y: torch.minimum(T(x), T(y))),
    ("floor_div", ["floor_div"], lambda mb, x, y: mb.floor_div(x=x, y=y), (X * 5, POS),
     lambda x, y: torch.div(T(x), T(y), rounding_mode="floor")),
    ("compare", ["equal", "not_equal", "less", "greater", "less_equal", "greater_equal", "cast"],
     lambda mb, x, y: [_f32(getattr(mb, op)(x=x, y=y)) for op in
                       ("equal", "not_equal", "less", "greater", "less_equal", "greater_equal")],
     (np.round(X), np.round(Y)),
     lambda x, y: [f(T(x), T(y)).float() for f in (torch.eq, torch.ne, torch.lt, torch.gt, torch.le, torch.ge)]),
    ("logical", ["logical_and", "logical_or", "logical_not"],
     lambda mb, x, y: [_f32(mb.logical_and(x=mb.greater(x=x, y=0.0), y=mb.less(x=y, y=0.5))),
                       _f32(mb.logical_or(x=mb.greater(x=x, y=0.0), y=mb.less(x=y, y=0.5))),
                       _f32(mb.logical_not(x=mb.greater(x=x, y=0.0)))],
     (X, Y), lambda x, y: [((T(x) > 0) & (T(y) < 0.5)).float(), ((T(x) > 0) | (T(y) < 0.5)).float(),
                           (~(T(x) > 0)).float()]),
    ("select", ["select"], lambda mb, x, y: mb.select(cond=mb.greater(x=x, y=y), a=x, b=y), (X, Y),
     lambda x, y: torch.where(T(x) > T(y), T(x), T(y))),
    ("unary", ["abs", "ceil", "floor", "cos", "sin", "exp", "tanh", "sigmoid", "relu", "relu6", "square", "erf",
               "silu"],
     lambda mb, x: [getattr(mb, op)(x=x) for op in ("abs", "ceil", "floor", "cos", "sin", "exp", "tanh", "sigmoid",
                                                   "relu", "relu6", "square", "erf", "silu")],
     (X * 4,), lambda x: [f(T(x)) for f in (torch.abs, torch.ceil, torch.floor, torch.cos, torch.sin, torch.exp,
                                            torch.tanh, torch.sigmoid, torch.relu, F.relu6, torch.square,
                                            torch.erf, F.silu)]),
    ("positive_unary", ["log", "sqrt", "rsqrt", "inverse"],
     lambda mb, x: [mb.log(x=x), mb.sqrt(x=x), mb.rsqrt(x=x, epsilon=1e-3), mb.inverse(x=x, epsilon=1e-3)],
     (POS,), lambda x: [torch.log(T(x)), torch.sqrt(T(x)), torch.rsqrt(T(x) + 1e-3), 1 / (T(x) + 1e-3)]),
    ("conv_transpose", ["conv_transpose"],
     lambda mb, x: mb.conv_transpose(x=mb.expand_dims(x=x, axes=[0]), weight=CT_W, bias=CT_B, strides=[2, 2],
                                     pad_type="custom", pad=[1, 1, 0, 1], output_shape=[1, 5, 5, 7]), (X,),
     lambda x: F.conv_transpose2d(T(x)[None], T(CT_W), T(CT_B), stride=2, padding=(1, 0))[..., :5, :7]),
    ("cumsum", ["cumsum"],
     lambda mb, x: [mb.cumsum(x=x, axis=1), mb.cumsum(x=x, axis=2, exclusive=True, reverse=True)], (X,),
     lambda x: [torch.cumsum(T(x), 1),
                torch.flip(torch.cumsum(torch.flip(T(x), [2]), 2), [2]) - T(x)]),
    ("upsample_nearest_neighbor", ["upsample_nearest_neighbor"],
     lambda mb, x: mb.upsample_nearest_neighbor(x=mb.expand_dims(x=x, axes=[0]), scale_factor_height=2,
                                                scale_factor_width=3), (X,),
     lambda x: F.interpolate(T(x)[None], scale_factor=(2, 3), mode="nearest")),
    ("clip", ["clip"], lambda mb, x: mb.clip(x=x, alpha=-0.5, beta=0.7), (X,), lambda x: torch.clamp(T(x), -0.5, 0.7)),
    ("leaky_relu", ["leaky_relu"], lambda mb, x: mb.leaky_relu(x=x, alpha=0.1), (X,),
     lambda x: F.leaky_relu(T(x), 0.1)),
    ("sigmoid_hard", ["sigmoid_hard"], lambda mb, x: mb.sigmoid_hard(x=x, alpha=1 / 6, beta=0.5), (X * 4,),
     lambda x: F.hardsigmoid(T(x))),
    ("gelu_modes", ["gelu"],
     lambda mb, x: [mb.gelu(x=x, mode="TANH_APPROXIMATION"), mb.gelu(x=x, mode="SIGMOID_APPROXIMATION")],
     (X * 3,), lambda x: [F.gelu(T(x), approximate="tanh"), T(x) * torch.sigmoid(1.702 * T(x))]),
    ("linear", ["linear"],
     lambda mb, x: mb.linear(x=x, weight=np.arange(20, dtype=np.float32).reshape(5, 4) / 10,
                             bias=np.arange(5, dtype=np.float32)),
     (X,), lambda x: F.linear(T(x), torch.arange(20.0).reshape(5, 4) / 10, torch.arange(5.0))),
    ("matmul", ["matmul"], lambda mb, x, y: mb.matmul(x=x, y=y, transpose_y=True), (X, Y),
     lambda x, y: T(x) @ T(y).transpose(-1, -2)),
    ("batch_norm", ["batch_norm"],
     lambda mb, x: mb.batch_norm(x=x, mean=np.array([0.1, -0.2, 0.3], np.float32),
                                 variance=np.array([1.0, 0.5, 2.0], np.float32), gamma=np.array([1, 2, 3], np.float32),
                                 beta=np.array([0, 1, -1], np.float32), epsilon=1e-5),
     (X,), lambda x: F.batch_norm(T(x), torch.tensor([0.1, -0.2, 0.3]), torch.tensor([1.0, 0.5, 2.0]),
                                  torch.tensor([1.0, 2, 3]), torch.tensor([0.0, 1, -1]), eps=1e-5)),
    ("reductions", ["reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_l2_norm"],
     lambda mb, x: [getattr(mb, op)(x=x, axes=[1, -1], keep_dims=k) for op, k in
                    (("reduce_mean", True), ("reduce_sum", False), ("reduce_max", True), ("reduce_min", False),
                     ("reduce_prod", True), ("reduce_l2_norm", False))],
     (X,), lambda x: [T(x).mean((1, 2), keepdim=True), T(x).sum((1, 2)), T(x).amax((1, 2), keepdim=True),
                      T(x).amin((1, 2)), T(x).prod(2, keepdim=True).prod(1, keepdim=True), T(x).norm(dim=(1, 2))]),
    ("layout", ["reshape", "transpose", "expand_dims", "squeeze", "tile"],
     lambda mb, x: [mb.reshape(x=x, shape=[3, -1]), mb.transpose(x=x, perm=[2, 0, 1]),
                    mb.squeeze(x=mb.expand_dims(x=x, axes=[1]), axes=[1]), mb.tile(x=x, reps=[1, 2, 1])],
     (X,), lambda x: [T(x).reshape(3, -1), T(x).permute(2, 0, 1), T(x), T(x).repeat(1, 2, 1)]),
    ("concat_split", ["concat", "split"],
     lambda mb, x, y: [mb.concat(values=[x, y], axis=1), *mb.split(x=x, split_sizes=[1, 3], axis=2),
                       *mb.split(x=y, num_splits=3, axis=1)],
     (X, Y), lambda x, y: [torch.cat([T(x), T(y)], 1), *torch.split(T(x), [1, 3], 2), *torch.chunk(T(y), 3, 1)]),
    ("slice_by_index", ["slice_by_index"],
     lambda mb, x: [mb.slice_by_index(x=x, begin=[0, 1, 0], end=[2, 3, 4], stride=[1, 1, 2]),
                    mb.slice_by_index(x=x, begin=[1, 0, 3], end=[2, 0, 0], end_mask=[False, True, True],
                                      squeeze_mask=[True, False, False])],
     (X,), lambda x: [T(x)[:, 1:3, ::2], T(x)[1, :, 3:]]),
    ("gather", ["gather", "gather_nd"],
     lambda mb, x: [mb.gather(x=x, indices=np.array([2, 0, -1], np.int32), axis=1),
                    mb.gather_nd(x=x, indices=np.array([[1, 2], [0, 0]], np.int32))],
     (X,), lambda x: [T(x)[:, [2, 0, -1]], torch.stack([T(x)[1, 2], T(x)[0, 0]])]),
    ("scatter_nd", ["scatter_nd"],
     lambda mb, x, y: mb.scatter_nd(data=x, indices=np.array([[1, 2], [0, 0]], np.int32),
                                    updates=mb.slice_by_index(x=y, begin=[0, 0, 0], end=[1, 2, 4], squeeze_mask=[True, False, False]),
                                    mode="update"),
     (X, Y), lambda x, y: T(x).clone().index_put_((torch.tensor([1, 0]), torch.tensor([2, 0])), T(y)[0, :2])),
    ("pad", ["pad"],
     lambda mb, x: [mb.pad(x=x, pad=[1, 2], mode="constant", constant_val=0.5), mb.pad(x=x, pad=[0, 1, 2, 1], mode="reflect"),
                    mb.pad(x=x, pad=[1, 1], mode="replicate")],
     (X,), lambda x: [F.pad(T(x), (1, 2), value=0.5), F.pad(T(x)[None], (2, 1, 0, 1), mode="reflect")[0],
                      F.pad(T(x), (1, 1), mode="replicate")]),
    ("sdpa", ["scaled_dot_product_attention"],
     lambda mb, q, k: mb.scaled_dot_product_attention(query=q, key=k, value=k,
                                                       attn_mask=np.triu(np.full((3, 3), -1e4, np.float32), 1)),
     (X, Y), lambda q, k: F.scaled_dot_product_attention(T(q), T(k), T(k), is_causal=True)),
    ("identity_cast", ["identity"], lambda mb, x: [mb.identity(x=x), _f32(mb.cast(x=mb.floor(x=x), dtype="int32"))],
     (X * 3,), lambda x: [T(x), torch.floor(T(x))]),
]

ELSEWHERE = {  # ops with their own tests (test_coreml.py): convolution, pooling, norms, decompression
    "const", "conv", "max_pool", "avg_pool", "layer_norm", "softmax", "constexpr_affine_dequantize",
    "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mil_op_matches_reference(case, tmp_path):
    name, _, build, inputs, reference = case
    got = run_program(build, *inputs, tmp_path=tmp_path, name=name)
    want = reference(*inputs)
    want = want if isinstance(want, list) else [want]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=2e-6, err_msg=name)


def test_every_executor_op_has_a_reference_case():
    from edgelift.converters.coreml.executor import MIL_OPS

    covered = {op for c in CASES for op in c[1]} | ELSEWHERE
    assert sorted(set(MIL_OPS) - covered) == []
