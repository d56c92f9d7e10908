"""Shared fixtures: the example models are trained once per session into a temp directory."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from examples.digits.train import train

    out = tmp_path_factory.mktemp("digits")
    train(out)
    return out


@pytest.fixture(scope="session")
def digits_result(digits_dir, tmp_path_factory):
    """The digits CNN converted in every ONNX mode (shared by several tests: conversion is the slow part)."""
    import edge_sdk

    out = tmp_path_factory.mktemp("digits-onnx")
    return edge_sdk.convert(
        digits_dir / "digits.pt2", quantize=["none", "fp16", "int8", "int8-dynamic", "int4"],
        calibration=digits_dir / "calib.npz", validation=digits_dir / "val.npz", out=out,
    )


@pytest.fixture(scope="session")
def transformer_dir(tmp_path_factory) -> Path:
    from examples.tiny_transformer.train import train

    out = tmp_path_factory.mktemp("tiny-transformer")
    train(out, epochs=15)
    return out


def listing(d: Path) -> list[str]:
    """Every file under ``d`` (hidden ones too), to prove failed runs leave nothing behind."""
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*")) if Path(d).exists() else []
