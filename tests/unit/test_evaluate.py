"""ONNX export and measurement: the export predicts like torch, stats come from the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from squeeze.evaluate import export_onnx, graph_stats, measure_logits, session
from squeeze.models import build_model
from squeeze.params import EvaluateParams
from squeeze.train import predict

ARCH = {"name": "convnet", "channels": [8, 16], "convs_per_stage": 1, "dropout": 0.0,
        "batchnorm": True}  # fmt: skip
CFG = EvaluateParams(threads=1, warmup=2, runs=20, throughput_batch=64)


def exported(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model(ARCH).eval()
    # non-trivial BatchNorm statistics, so folding them into the convs is really exercised
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    return model, path


def test_export_predicts_like_torch(tmp_path: Path, fmnist: dict) -> None:
    model, path = exported(tmp_path)
    images = fmnist["test"].images
    ours = session(path, 1).run(None, {"pixels": images})[0]
    theirs = predict(model, torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_graph_stats_count_params_and_macs(tmp_path: Path) -> None:
    _, path = exported(tmp_path)
    stats = graph_stats(path)
    # BatchNorm is folded into the convs: conv weights + a bias per channel, then the classifier
    params = (8 * 1 * 9 + 8) + (16 * 8 * 9 + 16) + (16 * 10 + 10)
    macs = 28 * 28 * 8 * 9 + 14 * 14 * 16 * 8 * 9 + 16 * 10
    assert stats == {"params": params, "nonzero_params": params, "macs": macs}


def test_measure_scores_val_and_test_with_intervals(tmp_path: Path, fmnist: dict) -> None:
    model, path = exported(tmp_path)
    splits = {"val": fmnist["val"], "test": fmnist["test"]}
    reference = predict(model, torch.from_numpy(splits["val"].images)).argmax(1).numpy()
    record, _ = measure_logits(path, splits, CFG, reference)
    assert record["agreement"] == 1.0  # on val, against the torch source
    assert record["size_bytes"] == path.stat().st_size > record["gzip_bytes"] > 0
    assert 0 < record["latency_ms_p50"] <= record["latency_ms_p95"]
    assert record["throughput"] > 0
    for split, data in splits.items():
        pred = predict(model, torch.from_numpy(data.images)).argmax(1).numpy()
        expected = float((pred == data.labels).mean())
        assert abs(record[f"{split}_accuracy"] - expected) < 1e-4
        low, high = record[f"{split}_accuracy_ci"]
        assert low < record[f"{split}_accuracy"] < high and high - low < 0.1
        assert set(record[f"{split}_per_class_accuracy"]) == {
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        }  # fmt: skip
    # a wrong reference shows as disagreement, whatever the accuracy
    wrong, _ = measure_logits(path, splits, CFG, (reference + 1) % 10)
    assert wrong["agreement"] == 0.0
