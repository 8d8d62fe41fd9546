"""Prediction, features, the fast path, export, int8, ONNX models."""
