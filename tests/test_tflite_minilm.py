"""The real all-MiniLM-L6-v2 encoder: torch -> ONNX (our exporter) -> TFLite, embeddings vs the torch model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgelift

pytest.importorskip("transformers")
pytest.importorskip("ai_edge_litert")

TEXTS = ["edge devices run small models", "a cat sat on the mat", "hello", "quantization shrinks weights",
         "the weather is nice today", "transformers on a raspberry pi"]


@pytest.mark.slow
def test_minilm_tflite_embeddings(minilm_dir, tmp_path, convert_all):
    from examples.models.minilm import load_minilm, tokenize

    encoder, tokenizer = load_minilm(minilm_dir)
    feeds = tokenize(tokenizer, TEXTS, length=16)
    with torch.no_grad():
        ref = encoder(**feeds).numpy()
    np.savez(tmp_path / "val.npz", **{k: v.numpy() for k, v in feeds.items()})
    # full-integer int8 lands below its gate here (kept, unrepaired: the test checks the figure it reports)
    r = convert_all(encoder, example_inputs=(feeds["input_ids"], feeds["attention_mask"]), to=["tflite"],
                    quantize=["none", "fp16", "int8-dynamic", "int4", "int8"], validation=tmp_path / "val.npz",
                    calibration=tmp_path / "val.npz", repair=False,
                    out=tmp_path / "o", name="minilm")
    fp32, dyn = r.artifact("none", "tflite"), r.artifact("int8-dynamic", "tflite")
    assert fp32.parity.primary.cosine_similarity >= 0.9999
    assert r.artifact("fp16", "tflite").parity.primary.cosine_similarity >= 0.9999
    assert dyn.parity.primary.cosine_similarity >= 0.99
    # full integer: int8 projections, float islands for softmax / layer norm / gelu / broadcasting ops.
    # Per-tensor int8 activations cost a BERT much accuracy (0.81 here): int8-dynamic is the
    # transformer mode; this checks it runs and that the report shows the real (poor) figure.
    full = r.artifact("int8", "tflite")
    assert 0.7 <= full.parity.primary.cosine_similarity < dyn.parity.primary.cosine_similarity
    assert full.quantization.details["float_ops"] > 0
    int4 = r.artifact("int4", "tflite")
    assert 0.9 <= int4.parity.primary.cosine_similarity < dyn.parity.primary.cosine_similarity
    assert edgelift.inspect(int4.path).weight_dtypes["int4"].tensors == 36  # 6 layers x 6 projections
    # recomputed here, one sentence at a time through the runtime API (the artifact has batch 1)
    m = edgelift.load(fp32.path)
    got = np.concatenate([m.run({k: v[i:i + 1].numpy() for k, v in feeds.items()})[m.outputs[0].name]
                          for i in range(len(TEXTS))])
    cos = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999
