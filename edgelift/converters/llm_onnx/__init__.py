"""Decoder language models (Llama, SmolLM2, TinyLlama, Qwen2) to ONNX graphs with a key-value cache."""

from .api import convert_llm_onnx, is_decoder_checkpoint

__all__ = ["convert_llm_onnx", "is_decoder_checkpoint"]
