"""ONNX decoder language models (``past_key_values.*`` in, ``present.*`` out) run token by token.

``load("model.onnx")`` hands a graph with ``input_ids`` and a key-value cache to this session instead of
a plain one: the graphs ``edge convert CHECKPOINT --to onnx`` writes, and those optimum or
onnxruntime-genai's model builder write (``position_ids`` is fed when the graph takes it). The API and
statistics are the GGUF backends': ``tokens -> logits`` as the signature, ``eval_tokens`` for the
profiler, ``tokenize``/``detokenize``/``generate`` with streaming and sampling, ``last_stats``.

The cache stays in ONNX Runtime's own tensors between steps (``run_with_ort_values``): the ``present``
outputs of one step are the ``past`` inputs of the next, with no copy through numpy. The tokenizer is
the checkpoint's ``tokenizer.json`` beside the model, read by the ``tokenizers`` package; the sidecar
``<model>.genai_config.json`` (or ``genai_config.json``) gives the special tokens and context length.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.tensors import TensorSpec
from ..errors import InputMismatchError, InvalidOptionError, ModelFormatError, require
from .base import Session
from .generation import RunStats, check_request, sample, stream_tokens

PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)$")
DEFAULT_CONTEXT = 2048


def is_decoder_graph(input_names: list[str]) -> bool:
    """A graph with ``input_ids`` and a key-value cache: a language model to run token by token."""
    return "input_ids" in input_names and any(PAST.match(n) for n in input_names)


def is_language_model_file(path: Path) -> bool:
    """A GGUF file, or an ONNX decoder graph with a key-value cache: what ``generate``/``eval_tokens`` run."""
    from ..core.formats import ModelFormat, detect_format

    fmt = detect_format(path)
    if fmt is ModelFormat.GGUF:
        return True
    if fmt is not ModelFormat.ONNX:
        return False
    from ..core.onnx_proto import graph_input_names
    from ..errors import EdgeError

    try:
        return is_decoder_graph(graph_input_names(Path(path).read_bytes()))
    except (EdgeError, OSError, ValueError, IndexError):
        return False


def sidecar(path: Path) -> dict:
    """The genai_config-style file beside the model (``<stem>.genai_config.json``, else ``genai_config.json``)."""
    for p in (path.with_name(path.name.removesuffix(".onnx") + ".genai_config.json"), path.with_name("genai_config.json")):
        if p.is_file():
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ModelFormatError(f"{p} is not valid JSON ({e}): convert the model again") from e
    return {}


class OnnxLlmSession(Session):
    def __init__(self, ort_session, path: Path, n_ctx: int | None = None) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.ort_session = ort_session  # edgelift's OrtSession (providers, profiling)
        self.session = ort_session.session
        self.path = path
        names = [i.name for i in self.session.get_inputs()]
        past = sorted((int(m.group(1)), m.group(2), n) for n in names if (m := PAST.match(n)))
        self.past_names = [n for _, _, n in past]
        self.present_names = [f"present.{i}.{kind}" for i, kind, _ in past]
        outputs = [o.name for o in self.session.get_outputs()]
        missing = [n for n in ["logits", *self.present_names] if n not in outputs]
        if missing:
            raise ModelFormatError(f"{path.name} takes a key-value cache but has no output(s) {missing[:3]}: "
                                   "it is not a decoder graph edgelift can run step by step")
        spec = {i.name: i for i in self.session.get_inputs()}[self.past_names[0]]
        heads, head_dim = spec.shape[1], spec.shape[3]
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            raise ModelFormatError(f"{path.name}: the cache input {self.past_names[0]} has no fixed head count/size")
        self.cache_dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
        self._empty_cache = np.zeros((1, heads, 0, head_dim), self.cache_dtype)
        self.takes_mask, self.takes_positions = "attention_mask" in names, "position_ids" in names
        self.config = sidecar(path)
        model_cfg = self.config.get("model", {})
        logits = {o.name: o for o in self.session.get_outputs()}["logits"]
        self.n_vocab = logits.shape[-1] if isinstance(logits.shape[-1], int) else int(model_cfg.get("vocab_size", 0))
        self.n_ctx = int(n_ctx or model_cfg.get("context_length") or DEFAULT_CONTEXT)
        eos = model_cfg.get("eos_token_id")
        self.eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.inputs = [TensorSpec("tokens", (None,), "int32")]
        self.outputs = [TensorSpec("logits", (None, self.n_vocab), "float32")]
        self._tokenizer = None
        self._cache: list | None = None
        self._pos = 0
        self.last_stats: RunStats | None = None

    # -- one step of the decoder -------------------------------------------------------------------
    def _forward(self, ids: list[int], reset: bool) -> np.ndarray:
        """Logits [len(ids), vocab] for ``ids`` appended to the cached sequence (a new one with ``reset``)."""
        pos = 0 if reset else self._pos
        if not ids or pos + len(ids) > self.n_ctx:
            raise InvalidOptionError(f"need 1..{self.n_ctx - pos} tokens (the context holds {self.n_ctx}), got {len(ids)}")
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise InputMismatchError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.n_vocab})")
        value = self._ort.OrtValue.ortvalue_from_numpy
        feeds = {"input_ids": value(np.asarray([ids], np.int64))}
        if self.takes_mask:
            feeds["attention_mask"] = value(np.ones((1, pos + len(ids)), np.int64))
        if self.takes_positions:
            feeds["position_ids"] = value(np.arange(pos, pos + len(ids), dtype=np.int64)[None])
        cache = self._cache if not reset and self._cache is not None else [value(self._empty_cache)] * len(self.past_names)
        feeds.update(zip(self.past_names, cache))
        out = self.session.run_with_ort_values(["logits", *self.present_names], feeds)
        self._cache, self._pos = out[1:], pos + len(ids)
        return out[0].numpy()[0]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Logits for every position of ``tokens`` (a fresh sequence)."""
        return {"logits": self._forward([int(t) for t in np.asarray(feeds["tokens"]).reshape(-1)], reset=True)}

    def eval_tokens(self, ids: list[int], reset: bool = False) -> np.ndarray:
        """Extend the sequence by ``ids`` (restart it with ``reset``); the last position's logits."""
        return self._forward([int(t) for t in ids], reset)[-1]

    # -- text ----------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            tokenizers = require("tokenizers", "llm", "Tokenizing text for ONNX language models")
            f = self.path.with_name("tokenizer.json")
            if not f.is_file():
                raise ModelFormatError(f"no tokenizer.json beside {self.path.name}: copy the checkpoint's tokenizer "
                                       "files there (edge convert does), or pass token ids to run()")
            try:
                self._tokenizer = tokenizers.Tokenizer.from_file(str(f))
            except Exception as e:  # the tokenizers package's own error type
                raise ModelFormatError(f"{f} cannot be read by the tokenizers package: {str(e)[:200]}") from e
        return self._tokenizer

    def tokenize(self, text: str, add_bos: bool = True) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=add_bos).ids, np.int32)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode([int(t) for t in ids], skip_special_tokens=False)

    def generate(self, prompt: str, max_tokens: int = 32, temperature: float = 0.0, stream: bool = False,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> str | Iterator[str]:
        """Complete ``prompt``: greedy at temperature 0, else temperature / top-k / top-p sampling."""
        ids = self.tokenize(prompt).tolist() if prompt else []
        check_request(prompt, max_tokens, len(ids), self.n_ctx)
        rng = np.random.default_rng(seed)
        pieces = self._generate(ids, max_tokens, lambda z: sample(z, temperature, top_k, top_p, rng))
        return pieces if stream else "".join(pieces)

    def _generate(self, ids: list[int], max_tokens: int, pick) -> Iterator[str]:
        stats = RunStats()
        yield from stream_tokens(lambda: self.eval_tokens(ids, reset=True), lambda t: self.eval_tokens([t]),
                                 self.detokenize, self.eos, len(ids), max_tokens, pick, stats)
        self.last_stats = stats

    def close(self) -> None:
        self._cache = None
        self.ort_session.close()
