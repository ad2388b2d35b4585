"""ONNX export and measurement: the export predicts like torch, stats come from the graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from squeeze.config.sections import EvaluateParams
from squeeze.config.workspace import write_json
from squeeze.data.spec import DataSpec, Split
from squeeze.measure import runtime
from squeeze.measure.export import INPUT, OUTPUT, export_onnx, graph_stats
from squeeze.measure.runtime import latencies, measure_logits, session, split_scores
from squeeze.methods.train import predict
from squeeze.nets.models import build_model, load_checkpoint, save_checkpoint

ARCH = {"name": "convnet", "channels": [8, 16], "convs_per_stage": 1, "dropout": 0.0,
        "batchnorm": True}  # fmt: skip
CFG = EvaluateParams(threads=1, warmup=2, runs=20, rounds=2, throughput_batch=64)


# a 3-channel data set unlike Fashion-MNIST in every dimension of the contract
RGB = DataSpec(classes=("cat", "dog", "ship"), height=32, width=32, channels=3,
               mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))  # fmt: skip


def exported(tmp_path: Path, spec: DataSpec) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model(ARCH, spec).eval()
    # non-trivial BatchNorm statistics, so folding them into the convs is really exercised
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    return model, path


def test_export_predicts_like_torch(tmp_path: Path, fmnist: dict, fmnist_profile: DataSpec) -> None:
    model, path = exported(tmp_path, fmnist_profile)
    images = fmnist["test"].images
    ours = session(path, 1).run(None, {"pixels": images})[0]
    theirs = predict(model, torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def expected_stats(spec: DataSpec) -> dict[str, int]:
    """ARCH's parameters and MACs by hand. BatchNorm is folded into the convs: conv weights + a
    bias per channel, then the classifier; the second stage runs at half the resolution."""
    c, k, h, w = spec.channels, spec.num_classes, spec.height, spec.width
    params = (8 * c * 9 + 8) + (16 * 8 * 9 + 16) + (16 * k + k)
    macs = h * w * 8 * c * 9 + (h // 2) * (w // 2) * 16 * 8 * 9 + 16 * k
    return {"params": params, "nonzero_params": params, "macs": macs}


def test_graph_stats_count_params_and_macs(tmp_path: Path, fmnist_profile: DataSpec) -> None:
    _, path = exported(tmp_path, fmnist_profile)
    assert graph_stats(path) == expected_stats(fmnist_profile)


def test_latencies_interleave_the_models_round_by_round(
    tmp_path: Path, fmnist_profile: DataSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every model is warmed up first, then timed in each round in turn, one untimed run after
    each switch; runs split evenly over the rounds (10 over 3: 4, 3, 3)."""
    _, path = exported(tmp_path, fmnist_profile)
    calls: list[str] = []

    class Logged:
        def __init__(self, name: str, sess: object) -> None:
            self.name, self.sess = name, sess

        def run(self, *args: object) -> object:
            calls.append(self.name)
            return self.sess.run(*args)

    opened = iter(["a", "b"])
    monkeypatch.setattr(runtime, "session", lambda p, t: Logged(next(opened), session(p, t)))
    cfg = EvaluateParams(threads=1, warmup=2, runs=10, rounds=3, throughput_batch=64)
    sample = np.zeros((28, 28, 1), np.uint8)
    timed = latencies({"a": path, "b": path}, sample, cfg)
    rounds = [["a"] * 5 + ["b"] * 5, ["a"] * 4 + ["b"] * 4, ["a"] * 4 + ["b"] * 4]
    assert calls == ["a", "a", "b", "b"] + [c for r in rounds for c in r]
    for name in ("a", "b"):
        assert 0 < timed[name]["latency_ms_p50"] <= timed[name]["latency_ms_p95"]
    with pytest.raises(ValueError, match=r"rounds: 11 is more than runs \(10\)"):
        EvaluateParams(threads=1, warmup=2, runs=10, rounds=11, throughput_batch=64)


def test_measure_scores_val_and_test_with_intervals(
    tmp_path: Path, fmnist: dict, fmnist_profile: DataSpec
) -> None:
    model, path = exported(tmp_path, fmnist_profile)
    splits = {"val": fmnist["val"], "test": fmnist["test"]}
    reference = predict(model, torch.from_numpy(splits["val"].images)).argmax(1).numpy()
    classes = list(fmnist_profile.classes)
    record, _ = measure_logits(path, splits, classes, CFG, reference)
    assert record["agreement"] == 1.0  # on val, against the torch source
    assert record["size_bytes"] == path.stat().st_size > record["shipped_bytes"] > 0
    assert "latency_ms_p50" not in record  # latencies times all files together
    assert record["throughput"] > 0
    for split, data in splits.items():
        pred = predict(model, torch.from_numpy(data.images)).argmax(1).numpy()
        expected = float((pred == data.labels).mean())
        assert abs(record[f"{split}_accuracy"] - expected) < 1e-4
        low, high = record[f"{split}_accuracy_ci"]
        assert low < record[f"{split}_accuracy"] < high and high - low < 0.1
        per_class = record[f"{split}_per_class_accuracy"]
        assert list(per_class) == classes  # by name, in label order
        for c, name in enumerate(classes):
            assert per_class[name] == round(float((pred[data.labels == c] == c).mean()), 5)
    # a wrong reference shows as disagreement, whatever the accuracy
    wrong, _ = measure_logits(path, splits, classes, CFG, (reference + 1) % len(classes))
    assert wrong["agreement"] == 0.0


def rgb_split(n: int, seed: int) -> Split:
    """n random (N, 32, 32, 3) uint8 images, each brighter in the channel of its label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % RGB.num_classes
    images = rng.integers(0, 160, (n, RGB.height, RGB.width, RGB.channels), dtype=np.uint8)
    images[np.arange(n), :, :, labels] += 90
    return Split(images, labels.astype(np.int64))


def test_a_three_channel_spec_builds_exports_and_evaluates(tmp_path: Path) -> None:
    """Nothing assumes 28×28 grayscale or 10 classes: an RGB 32×32 3-class model takes raw
    (N, 32, 32, 3) uint8 pixels in torch, in its checkpoint and in its ONNX export, and is
    scored by the spec's class names."""
    model, path = exported(tmp_path, RGB)
    graph = onnx.load(str(path)).graph
    pixels, logits = graph.input[0].type.tensor_type, graph.output[0].type.tensor_type
    assert (graph.input[0].name, graph.output[0].name) == (INPUT, OUTPUT)
    assert pixels.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in pixels.shape.dim][1:] == [32, 32, 3]  # NHWC, batch dynamic
    assert [d.dim_value for d in logits.shape.dim][1:] == [3]
    assert graph_stats(path) == expected_stats(RGB)  # every conv reads 3 channels
    splits = {"val": rgb_split(60, 1), "test": rgb_split(90, 2)}
    x = torch.from_numpy(splits["val"].images)
    # standardised per channel, channel c with mean[c] and std[c]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (RGB.mean, RGB.std))
    with torch.no_grad():
        by_hand = model.net((x.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    torch.testing.assert_close(predict(model, x), by_hand, rtol=1e-4, atol=1e-4)
    ours = session(path, 1).run(None, {INPUT: splits["val"].images})[0]
    np.testing.assert_allclose(ours, predict(model, x).numpy(), rtol=1e-4, atol=1e-4)
    reference = predict(model, x).argmax(1).numpy()
    record, _ = measure_logits(path, splits, list(RGB.classes), CFG, reference)
    assert record["agreement"] == 1.0
    assert list(record["test_per_class_accuracy"]) == ["cat", "dog", "ship"]
    test_pred = predict(model, torch.from_numpy(splits["test"].images)).argmax(1).numpy()
    assert abs(record["test_accuracy"] - (test_pred == splits["test"].labels).mean()) < 1e-4
    save_checkpoint(model, tmp_path / "rgb", {"name": "rgb"})
    loaded, record = load_checkpoint(tmp_path / "rgb")
    assert loaded.spec == RGB and DataSpec.from_json(record["data"]) == RGB
    torch.testing.assert_close(loaded(x), model(x))


def test_a_class_the_split_lacks_has_no_accuracy_and_nan_never_reaches_json(
    tmp_path: Path,
) -> None:
    labels = np.array([0, 0, 2, 2])
    scores = split_scores("test", np.array([0, 1, 2, 2]), labels, ["a", "b", "c"])
    assert scores["test_per_class_accuracy"] == {"a": 0.5, "b": None, "c": 1.0}
    write_json(tmp_path / "scores.json", scores)
    assert json.loads((tmp_path / "scores.json").read_text()) == scores  # strict JSON
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(tmp_path / "nan.json", {"accuracy": float("nan")})
    assert not (tmp_path / "nan.json").exists()
