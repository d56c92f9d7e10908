"""A Llama/Qwen2 decoder written as an ONNX graph with a key-value cache, read top to bottom.

Inputs and outputs follow the names optimum and onnxruntime-genai use, so their runners and ours read
the same graph: ``input_ids`` [batch, seq], ``attention_mask`` [batch, total], and per layer
``past_key_values.{i}.key/value`` [batch, kv_heads, past, head_dim] -> ``logits`` [batch, seq, vocab]
and ``present.{i}.key/value`` [batch, kv_heads, total, head_dim].

Attention is ONNX Runtime's ``GroupQueryAttention`` (packed q/k/v in, rotary embedding applied inside
from cos/sin tables, the cache concatenated inside); RMSNorm after the first is
``SkipSimplifiedLayerNormalization``, which adds the residual and normalizes in one kernel.
"""

from __future__ import annotations

import numpy as np

from .encodings import Encoding
from .spec import DecoderSpec
from .writer import MS_DOMAIN, GraphWriter

FLOAT, INT64 = 1, 7  # onnx.TensorProto element types


def past_name(i: int, kind: str) -> str:
    return f"past_key_values.{i}.{kind}"


def present_name(i: int, kind: str) -> str:
    return f"present.{i}.{kind}"


def build_decoder(g: GraphWriter, enc: Encoding, spec: DecoderSpec, load, on_layer=None) -> None:
    """Write the decoder's nodes into ``g``; ``load(hf_name)`` returns a float32 tensor of the checkpoint."""
    kv_shape = ["batch_size", spec.n_kv_head, "past_sequence_length", spec.head_dim]
    ids = g.input("input_ids", INT64, ["batch_size", "sequence_length"])
    mask = g.input("attention_mask", INT64, ["batch_size", "total_sequence_length"])

    # GroupQueryAttention's bookkeeping: tokens seen per row (minus one) and the total length
    seen = g.op1("ReduceSum", [mask, g.const("axis1", np.array([1], np.int64))], "seqlens/sum", keepdims=0)
    seqlens_k = g.op1("Cast", [g.op1("Sub", [seen, g.const("one", np.array(1, np.int64))], "seqlens/minus1")],
                      "seqlens_k", to=6)
    total = g.op1("Cast", [g.op1("Gather", [g.op1("Shape", [mask], "total/shape"), g.const("one", np.array(1, np.int64))],
                                 "total/gather", axis=0)], "total_sequence_length", to=6)
    cos, sin = spec.rotary_caches()
    cos, sin = g.weight("rotary.cos_cache", cos), g.weight("rotary.sin_cache", sin)

    embed = enc.table("model.embed_tokens.weight", load("model.embed_tokens.weight"))
    h = enc.gather(embed, ids)
    x = rms_norm(g, h, g.weight("model.layers.0.input_layernorm.weight", load("model.layers.0.input_layernorm.weight")),
                 spec.rms_eps)
    for i in range(spec.n_layer):
        p = f"model.layers.{i}."
        # attention: one packed q/k/v projection, rotary + cache + softmax(QK^T)V inside GroupQueryAttention
        qkv_w = np.concatenate([load(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        qkv_b = np.concatenate([load(p + f"self_attn.{n}_proj.bias") for n in "qkv"]) if spec.qkv_bias else None
        qkv = enc.linear(x, p + "self_attn.qkv_proj", qkv_w, qkv_b)
        g.input(past_name(i, "key"), FLOAT, kv_shape)
        g.input(past_name(i, "value"), FLOAT, kv_shape)
        attn = g.op("GroupQueryAttention",
                    [qkv, "", "", past_name(i, "key"), past_name(i, "value"), seqlens_k, total, cos, sin],
                    p + "self_attn/gqa", domain=MS_DOMAIN,
                    outputs=[g.unique(p + "self_attn/out"), present_name(i, "key"), present_name(i, "value")],
                    num_heads=spec.n_head, kv_num_heads=spec.n_kv_head, do_rotary=1, rotary_interleaved=0,
                    scale=float(1.0 / np.sqrt(spec.head_dim)))[0]
        o = enc.linear(attn, p + "self_attn.o_proj", load(p + "self_attn.o_proj.weight"))
        # h += o; x = RMSNorm(h)
        x, h = skip_rms_norm(g, o, h, g.weight(p + "post_attention_layernorm.weight",
                                               load(p + "post_attention_layernorm.weight")), spec.rms_eps, p + "post_attn_norm")
        # SwiGLU feed-forward: one packed gate/up projection, split, silu(gate) * up, down
        gate_up = enc.linear(x, p + "mlp.gate_up_proj",
                             np.concatenate([load(p + "mlp.gate_proj.weight"), load(p + "mlp.up_proj.weight")]))
        gate, up = g.op("Split", [gate_up, g.const("ffn_halves", np.array([spec.ffn, spec.ffn], np.int64))],
                        p + "mlp/split", n_out=2, axis=-1)
        act = g.op1("Mul", [g.op1("Mul", [gate, g.op1("Sigmoid", [gate], p + "mlp/sigmoid")], p + "mlp/silu"), up],
                    p + "mlp/gated")
        f = enc.linear(act, p + "mlp.down_proj", load(p + "mlp.down_proj.weight"))
        # h += f; x = RMSNorm(h) with the next layer's input norm (the final norm after the last layer)
        nxt = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < spec.n_layer else "model.norm.weight"
        x, h = skip_rms_norm(g, f, h, g.weight(nxt, load(nxt)), spec.rms_eps, p + "out_norm")
        g.output(present_name(i, "key"), FLOAT, ["batch_size", spec.n_kv_head, "total_sequence_length", spec.head_dim])
        g.output(present_name(i, "value"), FLOAT, ["batch_size", spec.n_kv_head, "total_sequence_length", spec.head_dim])
        if on_layer:
            on_layer(i)

    head = embed if spec.tied_embeddings else enc.table("lm_head.weight", load("lm_head.weight"))
    g.rename(enc.project(head, x), "logits")
    g.output("logits", FLOAT, ["batch_size", "sequence_length", spec.vocab])
    g.outputs.insert(0, g.outputs.pop())  # logits first, as optimum and onnxruntime-genai order them


def rms_norm(g: GraphWriter, x: str, weight: str, eps: float) -> str:
    """x / sqrt(mean(x^2) + eps) * weight in standard ops (once per graph: ONNX Runtime fuses it into
    SimplifiedLayerNormalization; the standard form keeps the graph valid for the ONNX checker)."""
    sq = g.op1("Mul", [x, x], "norm0/square")
    mean = g.op1("ReduceMean", [sq], "norm0/mean", axes=[-1], keepdims=1)  # opset 17: axes an attribute
    rms = g.op1("Sqrt", [g.op1("Add", [mean, g.const("eps", np.array(eps, np.float32))], "norm0/eps")], "norm0/sqrt")
    return g.op1("Mul", [g.op1("Div", [x, rms], "norm0/scale"), weight], "norm0/weight")


def skip_rms_norm(g: GraphWriter, x: str, residual: str, weight: str, eps: float, name: str) -> tuple[str, str]:
    """(RMSNorm(x + residual) * weight, x + residual) in one ``SkipSimplifiedLayerNormalization``."""
    out, _, _, total = g.op("SkipSimplifiedLayerNormalization", [x, residual, weight], name, n_out=4,
                            domain=MS_DOMAIN, epsilon=eps)
    return out, total
