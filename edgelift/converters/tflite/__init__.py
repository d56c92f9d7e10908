"""TFLite flatbuffer writing (the ONNX -> TFLite lowering builds on it)."""
