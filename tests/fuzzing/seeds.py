"""Valid files the fuzzer mutates: the project's digits CNN in every format it ships, a tiny Llama GGUF,
calibration data, weights, a device's streamed profile and a profile report.

``build_seeds(dir)`` makes them once (a few seconds after the digits CNN is trained) and reuses them.
The tiny GGUF is written with llama.cpp's own ``gguf`` package: 2 blocks, 64 wide, a 256-token
byte-level vocabulary with a few merges — llama.cpp and the edge engine both load it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def build_seeds(root: Path, digits_dir: Path | None = None) -> Path:
    """Create (or reuse) the seed files under ``root``; returns ``root``. Sets ``EDGE_FUZZ_SEEDS``."""
    root.mkdir(parents=True, exist_ok=True)
    done = root / ".complete"
    os.environ["EDGE_FUZZ_SEEDS"] = str(root)
    if done.exists():
        return root
    import edgelift

    if digits_dir is None:
        from examples.digits.train import train

        digits_dir = root / "digits-train"
        train(digits_dir)
    for name in ("digits.pt2", "digits.safetensors"):
        shutil.copyfile(digits_dir / name, root / name)
    val = np.load(digits_dir / "val.npz")
    np.savez(root / "val.npz", x=val["x"][:16], labels=val["labels"][:16])
    res = edgelift.convert(digits_dir / "digits.pt2", quantize=["none", "int8", "int4"], calibration=root / "val.npz",
                           validation=root / "val.npz", out=root / "onnx")
    shutil.copyfile(res.artifact("none").path, root / "digits.onnx")
    shutil.copyfile(res.artifact("int8").path, root / "digits.int8.onnx")
    shutil.copyfile(res.artifact("int4").path, root / "digits.int4.onnx")
    _external_data_copy(root / "digits.onnx", root / "external")
    from examples.digits.to_tflite import digits_onnx_to_tflite

    (root / "digits.tflite").write_bytes(digits_onnx_to_tflite(root / "digits.onnx"))
    res = edgelift.convert(root / "digits.onnx", to="tflite", quantize=["int8"], calibration=root / "val.npz",
                           validation=root / "val.npz", out=root / "tflite", name="digits")
    shutil.copyfile(res.artifact("int8", "tflite").path, root / "digits.int8.tflite")
    _resizable_tflite(root)
    try:
        res = edgelift.convert(digits_dir / "digits.pt2", to="coreml", quantize=["none", "int8"],
                               validation=root / "val.npz", out=root / "coreml", name="digits")
        for a in res.artifacts:
            shutil.copytree(a.path, root / Path(a.path).name, dirs_exist_ok=True)
    except edgelift.errors.MissingDependencyError:
        pass
    tiny_llama_gguf(root / "tiny.gguf")
    tiny_llama_gguf(root / "tiny.q8.gguf", matrix_type="Q8_0")
    _stream_and_report(root)
    done.write_text("ok\n")
    return root


def _resizable_tflite(root: Path) -> None:
    """A .tflite whose H and W stay resizable (shape_signature -1 and the size-step metadata entry): a conv, a
    ReLU and a 2x nearest upsampling, converted with --input-shape x=1x3x?x?."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import edgelift

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Resize", ["r", "", "scales"], ["y"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor")]
    graph = helper.make_graph(nodes, "resizable", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "h2", "w2"])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    work = root / "resizable"
    work.mkdir(exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), work / "resizable.onnx")
    np.savez(work / "val.npz", x=np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32))
    res = edgelift.convert(work / "resizable.onnx", to="tflite", quantize=["none"], validation=work / "val.npz",
                           input_shapes={"x": (1, 3, None, None)}, out=work / "tflite", name="resizable")
    shutil.copyfile(res.artifact("none", "tflite").path, root / "resizable.tflite")


def _external_data_copy(src: Path, folder: Path) -> None:
    """The model with its weights in a sidecar (``model.onnx.data``), as large exports are saved."""
    import onnx

    folder.mkdir(exist_ok=True)
    m = onnx.load(str(src))
    onnx.save_model(m, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=64)


def _stream_and_report(root: Path) -> None:
    """What a device prints for ``edge profile --stream-results`` (replayed by the SSH client), and a report."""
    cmd = [sys.executable, "-m", "edgelift.cli", "profile", str(root / "digits.onnx"), "--runs", "20", "--warmup", "2",
           "--idle", "0", "--power", "none", "--stream-results"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=300).stdout
    (root / "device.stream").write_text("".join(ln + "\n" for ln in out.splitlines() if ln.startswith("@@edge-")))
    subprocess.run([sys.executable, "-m", "edgelift.cli", "profile", str(root / "digits.onnx"), "--runs", "20",
                    "--warmup", "2", "--idle", "0", "--power", "none", "--json", str(root / "report.json")],
                   capture_output=True, check=True, env=env, timeout=300)


# --- a tiny Llama GGUF ---------------------------------------------------------------------------------------

def byte_vocabulary() -> tuple[list[str], list[str]]:
    """GPT-2's 256 byte symbols plus a few merges ("he", "ll", "hell"...), as byte-level BPE files hold them."""
    from edgelift.runtimes.gguf_tokenizer import byte_alphabet

    symbols = [byte_alphabet()[b] for b in range(256)]
    merges = ["h e", "l l", "he ll", "Ġ t", "Ġt h", "o r"]
    tokens = symbols + [m.replace(" ", "") for m in merges] + ["<|endoftext|>", "<|im_start|>"]
    return tokens, merges


def tiny_llama_gguf(path: Path, *, matrix_type: str = "F32", edit=None, alignment: int | None = None,
                    extra_keys: int = 0) -> Path:
    """A random 2-block Llama (n_embd 64, 4 heads, 2 KV heads, n_ff 128) with a byte-level vocabulary.

    ``edit(metadata)`` may change, retype or delete header keys before writing (semantic mutants);
    ``alignment`` writes ``general.alignment``; ``extra_keys`` adds that many junk metadata keys."""
    import gguf

    tokens, merges = byte_vocabulary()
    n_vocab, n_embd, n_head, n_kv, n_ff, n_layer = len(tokens), 64, 4, 2, 128, 2
    head = n_embd // n_head
    meta: dict[str, tuple[str, object]] = {
        "llama.context_length": ("u32", 128), "llama.embedding_length": ("u32", n_embd),
        "llama.block_count": ("u32", n_layer), "llama.feed_forward_length": ("u32", n_ff),
        "llama.attention.head_count": ("u32", n_head), "llama.attention.head_count_kv": ("u32", n_kv),
        "llama.rope.dimension_count": ("u32", head), "llama.rope.freq_base": ("f32", 10000.0),
        "llama.attention.layer_norm_rms_epsilon": ("f32", 1e-5), "general.file_type": ("u32", 0),
        "tokenizer.ggml.model": ("str", "gpt2"), "tokenizer.ggml.pre": ("str", "smollm"),
        "tokenizer.ggml.tokens": ("strs", tokens), "tokenizer.ggml.token_type": ("i32s", [1] * 262 + [3, 3]),
        "tokenizer.ggml.merges": ("strs", merges), "tokenizer.ggml.bos_token_id": ("u32", n_vocab - 1),
        "tokenizer.ggml.eos_token_id": ("u32", n_vocab - 2), "tokenizer.ggml.add_bos_token": ("bool", False),
    }
    if alignment is not None:
        meta["general.alignment"] = ("u32", alignment)
    for i in range(extra_keys):
        meta[f"junk.key_{i}"] = ("u32", i)
    if edit is not None:
        edit(meta)
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        meta.pop("general.alignment", None)
        if alignment & (alignment - 1):  # gguf-py takes powers of two only: set the key and padding by hand
            w.data_alignment = alignment
            w.add_uint32("general.alignment", alignment)
        else:
            w.add_custom_alignment(alignment)
    adders = {"u32": w.add_uint32, "i32": w.add_int32, "f32": w.add_float32, "str": w.add_string,
              "bool": w.add_bool, "u64": w.add_uint64, "strs": w.add_array, "i32s": w.add_array}
    for key, (kind, value) in meta.items():
        if kind in ("strs", "i32s") and not isinstance(value, list):
            kind = {str: "str", bool: "bool", float: "f32"}.get(type(value), "u32")
        adders[kind](key, value)
    rng = np.random.default_rng(0)

    def add(name: str, shape: tuple[int, ...], matrix: bool) -> None:
        a = (rng.standard_normal(shape) * (0.02 if matrix else 1)).astype(np.float32)
        if not matrix:
            a = 1 + 0.01 * a
        if matrix and matrix_type == "Q8_0":
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)

    add("token_embd.weight", (n_vocab, n_embd), True)
    for i in range(n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (n_embd,), False)
        add(p + "attn_q.weight", (n_head * head, n_embd), True)
        add(p + "attn_k.weight", (n_kv * head, n_embd), True)
        add(p + "attn_v.weight", (n_kv * head, n_embd), True)
        add(p + "attn_output.weight", (n_embd, n_head * head), True)
        add(p + "ffn_norm.weight", (n_embd,), False)
        add(p + "ffn_gate.weight", (n_ff, n_embd), True)
        add(p + "ffn_up.weight", (n_ff, n_embd), True)
        add(p + "ffn_down.weight", (n_embd, n_ff), True)
    add("output_norm.weight", (n_embd,), False)
    add("output.weight", (n_vocab, n_embd), True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
