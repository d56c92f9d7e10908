"""edge convert --to gguf, checked by llama.cpp itself (llama-cpp-python): the files load, their logits
match transformers on the same checkpoint, llama.cpp's tokenizer agrees with the Hugging Face one, and
every tensor equals what llama.cpp's own quantizer (llama_model_quantize) writes from the same input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import edgelift
from edgelift import errors

from tests.conftest import listing, tiny_causal_lm, tiny_sentencepiece_llama

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

FTYPES = {"Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7, "Q4_0": 2}


def llama_quantize(src, dst, ftype: int, pure: bool = False) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.pure = ftype, 2, pure
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) == 0


def differing_tensors(ours, theirs) -> list[str]:
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    assert set(a) == set(b)
    return [n for n in b if a[n].tensor_type != b[n].tensor_type
            or not np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data))]


@pytest.fixture(scope="module")
def tiny_llama(smollm2_hf_dir, tmp_path_factory):
    d = tiny_causal_lm("llama", tmp_path_factory.mktemp("tiny-llama"), smollm2_hf_dir)
    return d, edgelift.convert(d, to="gguf", quantize=["F32", *FTYPES, "Q4_K"], out=d / "out", name="t")


def test_tiny_llama_logits_and_mixes(tiny_llama):
    _, r = tiny_llama
    f32 = r.artifact("F32", "gguf")
    assert f32.parity.primary.top1_agreement == 1.0 and f32.parity.primary.rel_l2_error <= 1e-3
    assert f32.parity.runtime.startswith("llama.cpp")
    m = r.artifact("Q4_K_M", "gguf").quantization.details
    # 8 layers: use_more_bits picks layers 0, 3, 6, 7 for attn_v and ffn_down; the untied output is Q6_K
    assert m["tensor_types"] == {"F32": 17, "Q4_K": 49, "Q6_K": 9}
    assert m["type_changes"]["blk.3.attn_v.weight"].endswith("Q6_K") and "blk.2.attn_v.weight" not in m["type_changes"]
    assert 4.5 < m["bits_per_weight"] < 5.5
    info = edgelift.inspect(r.artifact("Q4_K_M", "gguf").path)  # the header, read by our bounded reader
    assert info.format == "gguf" and info.metadata["general.file_type"] == "15"
    assert {k: v.tensors for k, v in info.weight_dtypes.items()} == m["tensor_types"]


@pytest.mark.parametrize("ftype", [*FTYPES, "Q4_K"])
def test_every_tensor_equals_llama_quantize(tiny_llama, ftype, tmp_path):
    """Q4_K / Q5_K / Q6_K blocks and the mixes' type choices, byte for byte (Q4_K = --pure Q4_K_S)."""
    _, r = tiny_llama
    theirs = tmp_path / "ref.gguf"
    llama_quantize(r.artifact("F32", "gguf").path, theirs, FTYPES.get(ftype, 14), pure=ftype == "Q4_K")
    assert differing_tensors(r.artifact(ftype, "gguf").path, theirs) == []


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q4_0"])
def test_numpy_fallback_writes_llama_cpps_bytes_too(tiny_llama, ftype, tmp_path, monkeypatch):
    """Without the llama extra, the writer's own numpy quantizers run (qtypes.USE_GGML off): the same file."""
    from edgelift.converters.gguf import qtypes
    from edgelift.converters.gguf.convert import open_source, write_gguf
    from edgelift.converters.gguf.mixes import file_type

    d, r = tiny_llama
    monkeypatch.setattr(qtypes, "USE_GGML", False)
    write_gguf(open_source(d), file_type(ftype), tmp_path / "numpy.gguf")
    assert differing_tensors(tmp_path / "numpy.gguf", r.artifact(ftype, "gguf").path) == []


def test_tiny_qwen2_converts_and_matches_transformers(smollm2_hf_dir, tmp_path):
    """Qwen2 (no rotary permutation, q/k/v biases), saved as a sharded checkpoint."""
    d = tiny_causal_lm("qwen2", tmp_path / "qwen2", smollm2_hf_dir, max_shard_size="20MB")
    assert (d / "model.safetensors.index.json").exists() and len(list(d.glob("*.safetensors"))) > 1
    r = edgelift.convert(d, to="gguf", quantize=["F32", "Q4_K_M"], out=tmp_path / "out")
    f32 = r.artifact("F32", "gguf")
    assert f32.parity.primary.top1_agreement == 1.0 and f32.parity.primary.rel_l2_error <= 1e-3
    names = {t.name for t in gguf.GGUFReader(f32.path).tensors}
    assert "blk.0.attn_q.bias" in names  # Qwen2's q/k/v biases, kept F32
    assert differing_tensors(r.artifact("Q4_K_M", "gguf").path, _quantized(f32.path, 15, tmp_path)) == []


def test_llama3_rope_scaling_becomes_rope_freqs(smollm2_hf_dir, tmp_path):
    """Llama 3.1's rope scaling is the rope_freqs.weight tensor llama.cpp reads (without it: rel error ~3e-2)."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    d = tiny_causal_lm("llama", tmp_path / "l3", smollm2_hf_dir, num_hidden_layers=2, rope_theta=500000.0,
                       rope_scaling=scaling)
    r = edgelift.convert(d, to="gguf", quantize="F32", out=tmp_path / "out")
    assert r.artifacts[0].parity.primary.rel_l2_error <= 1e-3
    freqs = next(t for t in gguf.GGUFReader(r.artifacts[0].path).tensors if t.name == "rope_freqs.weight")
    factors = np.asarray(freqs.data)
    assert factors.max() == 8.0 and 1.0 < factors.min() < 8.0  # low frequencies scaled by 8, the band between blended


def _quantized(path, ftype, tmp_path):
    out = tmp_path / f"ref{ftype}.gguf"
    llama_quantize(path, out, ftype)
    return out


def test_sentencepiece_vocab(tmp_path):
    """SentencePiece vocabularies (tokens, scores, byte tokens): llama.cpp tokenizes like transformers."""
    d = tiny_sentencepiece_llama(tmp_path / "spm")
    r = edgelift.convert(d, to="gguf", quantize="F32", out=tmp_path / "out")
    a = r.artifacts[0]
    assert a.quantization.details["tokenizer_agreement"] == 1.0
    assert a.parity.primary.top1_agreement == 1.0 and a.parity.primary.rel_l2_error <= 1e-3
    reader = gguf.GGUFReader(a.path)
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types.count(6) == 256  # byte-fallback tokens <0x00>..<0xFF> typed BYTE


@pytest.mark.slow
def test_smollm2_every_type(smollm2_hf_dir, tmp_path):
    types = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q4_K_S", "Q4_K_M"]
    r = edgelift.convert(smollm2_hf_dir, to="gguf", quantize=types, out=tmp_path / "out", name="smol")
    f32, f16 = r.artifact("F32", "gguf").parity.primary, r.artifact("F16", "gguf").parity.primary
    assert f32.top1_agreement == 1.0 and f32.rel_l2_error <= 1e-3
    assert f16.rel_l2_error <= 1e-2
    kl = {a.mode: a.parity.primary.kl_divergence for a in r.artifacts}
    assert kl["F32"] < kl["Q8_0"] < kl["Q4_K_M"] < kl["Q4_0"]  # fewer bits, further from the source
    for a in r.artifacts:
        assert a.quantization.details["tokenizer_agreement"] == 1.0
        assert a.parity.primary.top1_agreement >= 0.5, a.mode
        assert a.status == "passed" and a.gate["passed"], (a.mode, a.gate)  # every type llama.cpp makes passes
    # tied embeddings: token_embd is the output matrix -> Q8_0 (576 columns); like llama.cpp, byte for byte
    assert r.artifact("Q4_K_M", "gguf").quantization.details["type_changes"]["token_embd.weight"].endswith("Q8_0")
    assert differing_tensors(r.artifact("Q4_K_M", "gguf").path,
                             _quantized(r.artifact("F32", "gguf").path, 15, tmp_path)) == []
    report = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert report["source"]["kind"] == "hf" and len(report["artifacts"]) == len(types)


@pytest.mark.slow
def test_requantize_gguf_source_equals_llama_quantize(smollm2_hf_dir, tmp_path):
    """A GGUF source (here our F16 file) re-quantized by us and by llama.cpp: same tensors."""
    f16 = edgelift.convert(smollm2_hf_dir, to="gguf", quantize="F16", out=tmp_path / "f16", name="s").artifacts[0].path
    r = edgelift.convert(f16, to="gguf", quantize="Q4_K_M", out=tmp_path / "q", name="s")
    assert r.source.kind == "gguf" and r.artifacts[0].parity.reference.endswith("source GGUF")
    assert r.artifacts[0].parity.primary.top1_agreement >= 0.7
    assert differing_tensors(r.artifacts[0].path, _quantized(f16, 15, tmp_path)) == []


def test_minilm_embeddings_match(minilm_dir, tmp_path):
    types = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q4_K_S", "Q4_K_M"]
    r = edgelift.convert(minilm_dir, to="gguf", quantize=types, out=tmp_path)
    assert r.artifact("F32", "gguf").parity.primary.cosine_similarity >= 0.9999
    assert r.artifact("Q4_K_M", "gguf").parity.primary.cosine_similarity >= 0.98
    for a in r.artifacts:
        assert a.quantization.details["tokenizer_agreement"] == 1.0
    reader = gguf.GGUFReader(r.artifact("F32", "gguf").path)
    assert reader.fields["bert.pooling_type"].contents() == 1  # mean, from 1_Pooling/config.json
    assert reader.fields["tokenizer.ggml.model"].contents() == "bert"


# --- bad input ------------------------------------------------------------------------------------


def _broken_checkpoint(src, dst, cut: int):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    data = (src / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[:cut])
    return dst


def test_truncated_safetensors_is_a_format_error(minilm_dir, tmp_path):
    bad = _broken_checkpoint(minilm_dir, tmp_path / "bad", 1 << 20)
    with pytest.raises(errors.ModelFormatError, match="truncated"):
        edgelift.convert(bad, to="gguf", quantize="Q8_0", out=tmp_path / "out")
    assert listing(tmp_path / "out") == []


def test_hostile_header_length_is_refused(minilm_dir, tmp_path):
    bad = _broken_checkpoint(minilm_dir, tmp_path / "bad", 0)
    (bad / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(errors.ModelFormatError, match="header length"):
        edgelift.convert(bad, to="gguf", out=tmp_path / "out")


def test_unknown_architecture_and_type(minilm_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(minilm_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    with pytest.raises(errors.QuantizationError, match="Q4_K_M"):
        edgelift.convert(d, to="gguf", quantize="Q3_XYZ", out=tmp_path / "o")
    cfg["architectures"] = ["MambaForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.SourceError, match="MambaForCausalLM"):
        edgelift.convert(d, to="gguf", out=tmp_path / "o")
    with pytest.raises(errors.InvalidOptionError, match="alone"):
        edgelift.convert(d, to=["gguf", "onnx"], out=tmp_path / "o")


def test_cli_exit_code_2_on_missing_source(tmp_path):
    from typer.testing import CliRunner

    from edgelift.cli import app

    res = CliRunner().invoke(app, ["convert", str(tmp_path / "nope"), "--to", "gguf", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_wrong_conversion_is_refused_by_its_gate(smollm2_hf_dir, tmp_path, monkeypatch):
    """A conversion that computes a different model (here q/k rows left in Hugging Face's order, which
    llama.cpp's rotary reads as pairs) fails its file type's gate: exit 3, --out untouched; --keep-failed
    keeps the file, marked failed in the report."""
    from typer.testing import CliRunner

    from edgelift.cli import app
    from edgelift.converters.gguf import archs

    monkeypatch.setattr(archs.Llama, "transform", lambda self, name, data, cfg: data)
    res = CliRunner().invoke(app, ["convert", str(smollm2_hf_dir), "--to", "gguf", "-q", "F16", "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code == 3 and "fails its parity gate (KL divergence" in res.output, res.output
    assert not (tmp_path / "o").exists()
    with pytest.raises(errors.ParityError) as e:
        edgelift.convert(smollm2_hf_dir, to="gguf", quantize="F16", out=tmp_path / "k", keep_failed=True)
    a = e.value.result.artifacts[0]
    assert a.status == "failed" and a.gate["max_kl"] == 0.01 and a.parity.primary.kl_divergence > 0.5
    report = json.loads((tmp_path / "k" / "conversion.json").read_text())
    assert report["artifacts"][0]["status"] == "failed" and (tmp_path / "k" / report["artifacts"][0]["path"].split("/")[-1]).exists()


def test_bulk_metadata_packing_writes_gguf_pys_bytes(tmp_path):
    """The writer packs vocabulary-sized arrays in one pass (gguf-py packs them element by element): the
    header and metadata bytes must be gguf-py's own, for strings, integers and floats."""
    from edgelift.converters.gguf.writer import fast_writer_class

    tokens = [f"tok{i}" for i in range(5000)] + ["naïve", "日本", "<0x0A>", ""]
    files = []
    for cls in (gguf.GGUFWriter, fast_writer_class()):
        path = tmp_path / f"{cls.__name__}.gguf"
        w = cls(path, "llama")
        w.add_token_list(tokens)
        w.add_token_types([i % 7 for i in range(len(tokens))])
        w.add_token_scores([-i / 3 for i in range(len(tokens))])
        w.add_token_merges([f"a{i} b{i}" for i in range(300)])
        w.add_array("test.bools", [True, False] * 40)
        w.add_array("test.small", [1, 2, 3])
        w.write_header_to_file(path)
        w.write_kv_data_to_file()
        w.close()
        files.append(path.read_bytes())
    assert files[0] == files[1]
