"""Measurement in the deployment runtime: ONNX export, onnxruntime accuracy and latency, paired
statistics, plots."""
