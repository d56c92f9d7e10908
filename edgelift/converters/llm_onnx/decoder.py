"""A Llama-family decoder (Llama, Qwen2/3, Phi-3, Gemma 1/2/3) written as an ONNX graph with a key-value
cache, read top to bottom; what a family changes is a field of its ``DecoderSpec``.

Inputs and outputs follow the names optimum and onnxruntime-genai use, so their runners and ours read
the same graph: ``input_ids`` [batch, seq], ``attention_mask`` [batch, total], and per layer
``past_key_values.{i}.key/value`` [batch, kv_heads, past, head_dim] -> ``logits`` [batch, seq, vocab]
and ``present.{i}.key/value`` [batch, kv_heads, total, head_dim].

Two ways to write the attention and norms, one class each (``OPS``):

- ``contrib``: ONNX Runtime's ``GroupQueryAttention`` (packed q/k/v in, rotary embedding applied inside from
  cos/sin tables, the cache concatenated inside) and ``SkipSimplifiedLayerNormalization`` (residual add and
  RMSNorm in one kernel) — the fast path on ONNX Runtime's CPU and CUDA providers;
- ``standard``: the same computation in standard ONNX operators (rotary by Gather/Split/Concat, the cache
  by Concat, key/value heads repeated by Expand, a causal and padding mask, Softmax), for runtimes and
  execution providers without those contrib operators (an fp32/fp16 graph is then plain ONNX).
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


class ContribOps:
    """GroupQueryAttention + SkipSimplifiedLayerNormalization (ONNX Runtime's com.microsoft domain)."""

    def __init__(self, g: GraphWriter, spec: DecoderSpec, mask: str, tables: dict[bool, tuple[str, str]]) -> None:
        self.g, self.spec, self.tables = g, spec, tables  # sliding layer? -> (cos, sin) caches
        # GroupQueryAttention's bookkeeping: tokens seen per row (minus one) and the total length
        seen = g.op1("ReduceSum", [mask, g.const("axis1", np.array([1], np.int64))], "seqlens/sum", keepdims=0)
        self.seqlens_k = g.op1("Cast", [g.op1("Sub", [seen, g.const("one", np.array(1, np.int64))], "seqlens/minus1")],
                               "seqlens_k", to=6)
        total = g.op1("Gather", [g.op1("Shape", [mask], "total/shape"), g.const("one", np.array(1, np.int64))],
                      "total/gather", axis=0)
        self.total = g.op1("Cast", [total], "total_sequence_length", to=6)

    def attention(self, qkv: str, i: int, name: str, qk_norms: tuple[str, str] | None = None) -> str:
        """``qk_norms``: (q, k) per-head RMSNorm weights, applied before the rotation GroupQueryAttention does
        inside, so q, k and v go in separately."""
        s, g = self.spec, self.g
        qkv_in = [qkv, "", ""]
        if qk_norms is not None:
            q, k, v = split_qkv(g, s, qkv, name)
            qkv_in = [head_rms_norm(g, s, q, s.n_head, qk_norms[0], name + "/q_norm"),
                      head_rms_norm(g, s, k, s.n_kv_head, qk_norms[1], name + "/k_norm"), v]
        cos, sin = self.tables[s.sliding(i)]
        extra = {"softcap": s.attn_softcap} if s.attn_softcap else {}
        if s.sliding(i):
            extra["local_window_size"] = s.sliding_window
        return g.op("GroupQueryAttention",
                    [*qkv_in, past_name(i, "key"), past_name(i, "value"), self.seqlens_k, self.total, cos, sin],
                    name, domain=MS_DOMAIN,
                    outputs=[g.unique(name + "/out"), present_name(i, "key"), present_name(i, "value")],
                    num_heads=s.n_head, kv_num_heads=s.n_kv_head, do_rotary=1, rotary_interleaved=0,
                    scale=s.attn_scale, **extra)[0]

    def gelu(self, x: str, name: str) -> str:
        """GELU, tanh approximation, in one kernel."""
        return self.g.op1("FastGelu", [x], name, domain=MS_DOMAIN)

    def add_norm(self, x: str, residual: str, weight: str, name: str) -> tuple[str, str]:
        """(RMSNorm(x + residual) * weight, x + residual) in one ``SkipSimplifiedLayerNormalization``."""
        out, _, _, total = self.g.op("SkipSimplifiedLayerNormalization", [x, residual, weight], name, n_out=4,
                                     domain=MS_DOMAIN, epsilon=self.spec.rms_eps)
        return out, total


class StandardOps:
    """The same attention and norms in standard ONNX operators (opset 17)."""

    def __init__(self, g: GraphWriter, spec: DecoderSpec, mask: str, tables: dict[bool, tuple[str, str]]) -> None:
        self.g, self.spec = g, spec
        c = g.const
        # positions of the new tokens: past length .. past length + sequence length - 1
        ids_shape = g.op1("Shape", ["input_ids"], "pos/ids_shape")
        n_new = g.op1("Gather", [ids_shape, c("one", np.array(1, np.int64))], "pos/n_new", axis=0)
        n_total = g.op1("Gather", [g.op1("Shape", [mask], "pos/mask_shape"), c("one", np.array(1, np.int64))],
                        "pos/n_total", axis=0)
        n_past = g.op1("Sub", [n_total, n_new], "pos/n_past")
        pos = g.op1("Range", [n_past, n_total, c("one", np.array(1, np.int64))], "pos/range")  # [S]
        self.rope_tables = {}  # sliding layer? -> (cos, sin) [S, head_dim] at the new positions
        for local, (cos, sin) in tables.items():
            tag = "rope_local" if local else "rope"
            half_cos, half_sin = g.op1("Gather", [cos, pos], f"{tag}/cos"), g.op1("Gather", [sin, pos], f"{tag}/sin")
            self.rope_tables[local] = (g.op1("Concat", [half_cos, half_cos], f"{tag}/cos_full", axis=-1),
                                       g.op1("Concat", [half_sin, half_sin], f"{tag}/sin_full", axis=-1))
        # allowed[b, 0, i, j]: key j is not padding and not after query i (causal)
        keys = g.op1("Range", [c("zero", np.array(0, np.int64)), n_total, c("one", np.array(1, np.int64))], "mask/keys")
        causal = g.op1("LessOrEqual", [g.op1("Unsqueeze", [keys, c("axis0", np.array([0], np.int64))], "mask/k_row"),
                                       g.op1("Unsqueeze", [pos, c("axis1", np.array([1], np.int64))], "mask/q_col")],
                       "mask/causal")  # [S, T]
        padding = g.op1("Cast", [g.op1("Unsqueeze", [mask, c("axes12", np.array([1, 2], np.int64))], "mask/pad4d")],
                        "mask/pad_bool", to=9)  # [B, 1, 1, T]
        self.allowed = {False: g.op1("And", [causal, padding], "mask/allowed")}  # [B, 1, S, T]
        if any(spec.sliding(i) for i in range(spec.n_layer)):  # and not more than the window back
            back = g.op1("Sub", [g.op1("Unsqueeze", [pos, c("axis1", np.array([1], np.int64))], "mask/q_col2"),
                                 g.op1("Unsqueeze", [keys, c("axis0", np.array([0], np.int64))], "mask/k_row2")],
                         "mask/back")
            near = g.op1("Less", [back, c("window", np.array(spec.sliding_window, np.int64))], "mask/near")
            self.allowed[True] = g.op1("And", [self.allowed[False], near], "mask/allowed_local")
        self.neg = c("neg_inf", np.array(np.finfo(np.float32).min, np.float32))

    def _heads(self, x: str, n: int, name: str) -> str:
        """[B, S, n * head_dim] -> [B, n, S, head_dim]."""
        g = self.g
        shaped = g.op1("Reshape", [x, g.const("heads_shape", np.array([0, 0, n, self.spec.head_dim], np.int64))],
                       name + "/split_heads")
        return g.op1("Transpose", [shaped], name + "/bnsh", perm=[0, 2, 1, 3])

    def _rope(self, x: str, local: bool, name: str) -> str:
        """x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] (the half-split layout)."""
        g = self.g
        cos, sin = self.rope_tables[local]
        x1, x2 = g.op("Split", [x], name + "/halves", n_out=2, axis=-1)  # two equal halves
        rotated = g.op1("Concat", [g.op1("Neg", [x2], name + "/neg"), x1], name + "/rotate_half", axis=-1)
        return g.op1("Add", [g.op1("Mul", [x, cos], name + "/cos"), g.op1("Mul", [rotated, sin], name + "/sin")],
                     name + "/rope")

    def _repeat_kv(self, x: str, name: str) -> str:
        """[B, kv, T, d] -> [B, heads, T, d]: each key/value head serves heads/kv query heads."""
        s, g = self.spec, self.g
        groups = s.n_head // s.n_kv_head
        if groups == 1:
            return x
        wide = g.op1("Unsqueeze", [x, g.const("axis2", np.array([2], np.int64))], name + "/unsqueeze")  # [B,kv,1,T,d]
        shape = g.op1("Shape", [wide], name + "/shape")
        target = g.op1("Mul", [shape, g.const("group_mult", np.array([1, 1, groups, 1, 1], np.int64))], name + "/target")
        expanded = g.op1("Expand", [wide, target], name + "/expand")
        return g.op1("Reshape", [expanded, g.const("bhtd", np.array([0, s.n_head, -1, s.head_dim], np.int64))],
                     name + "/merge")

    def attention(self, qkv: str, i: int, name: str, qk_norms: tuple[str, str] | None = None) -> str:
        s, g = self.spec, self.g
        local = s.sliding(i)
        q, k, v = split_qkv(g, s, qkv, name)
        q, k = self._heads(q, s.n_head, name + "/q"), self._heads(k, s.n_kv_head, name + "/k")  # [B, n, S, d]
        if qk_norms is not None:
            q = rms_norm(g, q, qk_norms[0], s.rms_eps, name + "/q_norm")
            k = rms_norm(g, k, qk_norms[1], s.rms_eps, name + "/k_norm")
        q, k = self._rope(q, local, name + "/q"), self._rope(k, local, name + "/k")
        v = self._heads(v, s.n_kv_head, name + "/v")
        k_all = g.op("Concat", [past_name(i, "key"), k], name + "/cache_k", outputs=[present_name(i, "key")], axis=2)[0]
        v_all = g.op("Concat", [past_name(i, "value"), v], name + "/cache_v", outputs=[present_name(i, "value")], axis=2)[0]
        k_t = g.op1("Transpose", [self._repeat_kv(k_all, name + "/k_rep")], name + "/k_t", perm=[0, 1, 3, 2])
        scores = g.op1("Mul", [g.op1("MatMul", [q, k_t], name + "/qk"),
                               g.const("scale", np.array(s.attn_scale, np.float32))], name + "/scaled")
        if s.attn_softcap:
            scores = softcap(g, scores, s.attn_softcap, name + "/softcap")
        probs = g.op1("Softmax", [g.op1("Where", [self.allowed[local], scores, self.neg], name + "/masked")],
                      name + "/softmax", axis=-1)
        out = g.op1("MatMul", [probs, self._repeat_kv(v_all, name + "/v_rep")], name + "/pv")  # [B, heads, S, d]
        merged = g.op1("Transpose", [out], name + "/bshd", perm=[0, 2, 1, 3])
        return g.op1("Reshape", [merged, g.const("merge_heads", np.array([0, 0, -1], np.int64))], name + "/merge_heads")

    def add_norm(self, x: str, residual: str, weight: str, name: str) -> tuple[str, str]:
        total = self.g.op1("Add", [x, residual], name + "/residual")
        return rms_norm(self.g, total, weight, self.spec.rms_eps, name), total

    def gelu(self, x: str, name: str) -> str:
        """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
        g, c = self.g, self.g.const
        cube = g.op1("Mul", [g.op1("Mul", [x, x], name + "/x2"), x], name + "/x3")
        inner = g.op1("Add", [x, g.op1("Mul", [cube, c("gelu_k", np.array(0.044715, np.float32))], name + "/kx3")],
                      name + "/inner")
        t = g.op1("Tanh", [g.op1("Mul", [inner, c("gelu_s", np.array(np.sqrt(2 / np.pi), np.float32))], name + "/s")],
                  name + "/tanh")
        half_x = g.op1("Mul", [x, c("half", np.array(0.5, np.float32))], name + "/half_x")
        return g.op1("Mul", [half_x, g.op1("Add", [t, c("one_f", np.array(1.0, np.float32))], name + "/1p")], name)


OPS = {"contrib": ContribOps, "standard": StandardOps}


def split_qkv(g: GraphWriter, s: DecoderSpec, qkv: str, name: str) -> list[str]:
    """A packed [B, S, (heads + 2 kv_heads) * head_dim] projection as q, k, v."""
    sizes = g.const("qkv_sizes", np.array([s.n_head * s.head_dim, s.n_kv_head * s.head_dim,
                                           s.n_kv_head * s.head_dim], np.int64))
    return g.op("Split", [qkv, sizes], name + "/split_qkv", n_out=3, axis=-1)


def head_rms_norm(g: GraphWriter, s: DecoderSpec, x: str, n_heads: int, weight: str, name: str) -> str:
    """RMSNorm over each head of a [B, S, n_heads * head_dim] tensor (Qwen3's and Gemma 3's q/k norms)."""
    heads = g.op1("Reshape", [x, g.const(f"heads{n_heads}", np.array([0, 0, n_heads, s.head_dim], np.int64))],
                  name + "/heads")
    normed = rms_norm(g, heads, weight, s.rms_eps, name)
    return g.op1("Reshape", [normed, g.const("merge_heads", np.array([0, 0, -1], np.int64))], name + "/merge")


def softcap(g: GraphWriter, x: str, cap: float, name: str) -> str:
    """cap * tanh(x / cap): Gemma 2's bound on attention scores and logits."""
    c = g.const(f"{name}/cap", np.array(cap, np.float32))
    return g.op1("Mul", [g.op1("Tanh", [g.op1("Div", [x, c], name + "/div")], name + "/tanh"), c], name)


def build_decoder(g: GraphWriter, enc: Encoding, spec: DecoderSpec, load, on_layer=None, ops: str = "contrib") -> None:
    """Write the decoder's nodes into ``g``; ``load(hf_name)`` returns a float32 tensor of the checkpoint."""
    kv_shape = ["batch_size", spec.n_kv_head, "past_sequence_length", spec.head_dim]
    ids = g.input("input_ids", INT64, ["batch_size", "sequence_length"])
    mask = g.input("attention_mask", INT64, ["batch_size", "total_sequence_length"])
    tables = {False: tuple(g.weight(f"rotary.{n}_cache", t) for n, t in zip(("cos", "sin"), spec.rotary_caches()))}
    if any(spec.sliding(i) for i in range(spec.n_layer)):  # sliding layers: their own base where it differs
        tables[True] = tables[False] if not spec.rope_theta_local else tuple(
            g.weight(f"rotary.local_{n}_cache", t) for n, t in zip(("cos", "sin"), spec.rotary_caches(spec.rope_theta_local)))
    op = OPS[ops](g, spec, mask, tables)

    def norm(name: str) -> str:  # RMSNorm weights as the graph multiplies them (Gemma: 1 + w)
        return g.weight(name, load(name) + np.float32(spec.norm_offset))

    embed = enc.table("model.embed_tokens.weight", load("model.embed_tokens.weight"))
    h = enc.gather(embed, ids)
    if spec.embed_scale != 1.0:  # Gemma: embeddings times sqrt(hidden)
        h = g.op1("Mul", [h, g.const("embed_scale", np.array(spec.embed_scale, np.float32))], "embed_scale")
    x = rms_norm(g, h, norm("model.layers.0.input_layernorm.weight"), spec.rms_eps, "norm0")
    for i in range(spec.n_layer):
        p = f"model.layers.{i}."
        # attention: one packed q/k/v projection, then [q/k norms,] rotary, the cache and softmax(QK^T)V
        if spec.fused_projections:
            qkv_w = load(p + "self_attn.qkv_proj.weight")
        else:
            qkv_w = np.concatenate([load(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        qkv_b = np.concatenate([load(p + f"self_attn.{n}_proj.bias") for n in "qkv"]) if spec.qkv_bias else None
        qkv = enc.linear(x, p + "self_attn.qkv_proj", qkv_w, qkv_b)
        g.input(past_name(i, "key"), FLOAT, kv_shape)
        g.input(past_name(i, "value"), FLOAT, kv_shape)
        qk_norms = (norm(p + "self_attn.q_norm.weight"), norm(p + "self_attn.k_norm.weight")) if spec.qk_norm else None
        attn = op.attention(qkv, i, p + "self_attn", qk_norms)
        o = enc.linear(attn, p + "self_attn.o_proj", load(p + "self_attn.o_proj.weight"))
        if spec.post_norms:  # Gemma 2/3: the attention output normed before the residual
            o = rms_norm(g, o, norm(p + "post_attention_layernorm.weight"), spec.rms_eps, p + "post_attn_out_norm")
        # h += o; x = RMSNorm(h)
        x, h = op.add_norm(o, h, norm(p + spec.pre_ffn_norm + ".weight"), p + "post_attn_norm")
        # gated feed-forward: one packed gate/up projection, split, act(gate) * up, down
        if spec.fused_projections:
            gate_up_w = load(p + "mlp.gate_up_proj.weight")
        else:
            gate_up_w = np.concatenate([load(p + "mlp.gate_proj.weight"), load(p + "mlp.up_proj.weight")])
        gate_up = enc.linear(x, p + "mlp.gate_up_proj", gate_up_w)
        gate, up = g.op("Split", [gate_up, g.const("ffn_halves", np.array([spec.ffn, spec.ffn], np.int64))],
                        p + "mlp/split", n_out=2, axis=-1)
        act = (op.gelu(gate, p + "mlp/gelu") if spec.act == "gelu_tanh" else
               g.op1("Mul", [gate, g.op1("Sigmoid", [gate], p + "mlp/sigmoid")], p + "mlp/silu"))
        f = enc.linear(g.op1("Mul", [act, up], p + "mlp/gated"), p + "mlp.down_proj", load(p + "mlp.down_proj.weight"))
        if spec.post_norms:
            f = rms_norm(g, f, norm(p + "post_feedforward_layernorm.weight"), spec.rms_eps, p + "post_ffn_out_norm")
        # h += f; x = RMSNorm(h) with the next layer's input norm (the final norm after the last layer)
        nxt = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < spec.n_layer else "model.norm.weight"
        x, h = op.add_norm(f, h, norm(nxt), p + "out_norm")
        g.output(present_name(i, "key"), FLOAT, ["batch_size", spec.n_kv_head, "total_sequence_length", spec.head_dim])
        g.output(present_name(i, "value"), FLOAT, ["batch_size", spec.n_kv_head, "total_sequence_length", spec.head_dim])
        if on_layer:
            on_layer(i)

    head = embed if spec.tied_embeddings else enc.table("lm_head.weight", load("lm_head.weight"))
    logits = enc.project(head, x)
    if spec.final_softcap:  # Gemma 2
        logits = softcap(g, logits, spec.final_softcap, "final_softcap")
    g.rename(logits, "logits")
    g.output("logits", FLOAT, ["batch_size", "sequence_length", spec.vocab])
    g.outputs.insert(0, g.outputs.pop())  # logits first, as optimum and onnxruntime-genai order them


def rms_norm(g: GraphWriter, x: str, weight: str, eps: float, name: str) -> str:
    """x / sqrt(mean(x^2) + eps) * weight in standard ops (ONNX Runtime fuses the pattern into
    SimplifiedLayerNormalization; the standard form keeps the graph valid for the ONNX checker)."""
    sq = g.op1("Mul", [x, x], name + "/square")
    mean = g.op1("ReduceMean", [sq], name + "/mean", axes=[-1], keepdims=1)  # opset 17: axes an attribute
    rms = g.op1("Sqrt", [g.op1("Add", [mean, g.const("eps", np.array(eps, np.float32))], name + "/eps")], name + "/sqrt")
    return g.op1("Mul", [g.op1("Div", [x, rms], name + "/scale"), weight], name + "/weight")
