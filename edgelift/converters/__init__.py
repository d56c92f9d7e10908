"""Converters: model sources -> deployable artifacts, with quantization and parity reports.

Heavy dependencies (torch, onnx, onnxscript) are imported inside the functions that need them,
so ``import edgelift`` stays light on devices.
"""
