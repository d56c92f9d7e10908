"""Backends that run model artifacts on the device (numpy + the backend's own package only).

Nothing here imports torch, onnx, coremltools or transformers.
"""
