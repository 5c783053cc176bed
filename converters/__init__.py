"""Exporters and in-place patchers for deployment formats (GGUF, ONNX)."""
