"""Deployment toolchain: ONNX export, INT8 calibration, TensorRT and ONNX Runtime engines."""
