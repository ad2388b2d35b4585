"""Measure the exports in onnxruntime, the deployment runtime.

Every reported number comes from the exported file reloaded in onnxruntime: accuracy and latency
from running it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from squeeze.config.sections import EvaluateParams
from squeeze.data.spec import Split
from squeeze.measure.export import INPUT, graph_stats
from squeeze.measure.stats import accuracy_ci
from squeeze.registry.package import pack


def session(path: Path, threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session with a fixed thread count, so latencies are comparable."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def latencies(paths: dict[str, Path], sample: np.ndarray, cfg: EvaluateParams) -> dict[str, dict]:
    """Median and p95 batch-1 latency in ms of every ONNX file, {name: {"latency_ms_p50",
    "latency_ms_p95"}}, timed in cfg.rounds interleaved rounds.

    Every session is opened and warmed up (cfg.warmup runs) first; then each round times every
    model in turn, cfg.runs in all per model, split evenly over the rounds, one untimed run
    after each switch (the caches held the previous model). A slow spell of the machine (another
    process, a frequency change) then falls on all models alike instead of on whichever was
    being timed: measured here, identical networks timed one after the other differed by 18%.

    Args:
        paths: {name: exported model}, all taking (B, H, W, C) uint8 `pixels`.
        sample: one image (H, W, C) uint8.
    """
    feed = {INPUT: sample[None]}
    sessions = {name: session(path, cfg.threads) for name, path in paths.items()}
    for sess in sessions.values():
        for _ in range(cfg.warmup):
            sess.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for runs in np.array_split(np.arange(cfg.runs), cfg.rounds):
        for name, sess in sessions.items():
            sess.run(None, feed)
            for _ in runs:
                start = time.perf_counter_ns()
                sess.run(None, feed)
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return {
        name: {
            "latency_ms_p50": round(float(np.percentile(t, 50)), 4),
            "latency_ms_p95": round(float(np.percentile(t, 95)), 4),
        }
        for name, t in times.items()
    }


def predict_onnx(sess: ort.InferenceSession, images: np.ndarray, batch: int) -> tuple:
    """(logits (N, K) float32 for all images, images per second) over the array in batches."""
    start = time.perf_counter()
    logits = np.concatenate(
        [sess.run(None, {INPUT: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    )
    return logits, len(images) / (time.perf_counter() - start)


def predicted_classes(path: Path, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """Predicted class (N,) int64 of an ONNX model for (N, H, W, C) uint8 images."""
    return predict_onnx(session(path, threads), images, 512)[0].argmax(1)


def accuracy_of(path: Path, split: Split) -> float:
    """Share of the split's (N,) labels the ONNX model at path predicts, in [0, 1]."""
    return float((predicted_classes(path, split.images) == split.labels).mean())


def split_scores(
    split: str, pred: np.ndarray, labels: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """`<split>_accuracy` with its Wilson 95% interval and `<split>_per_class_accuracy` (by
    class name; label k is classes[k]; None for a class the split holds no image of, which JSON
    writes as null: a mean over nothing is not a measurement)."""
    correct = pred == labels
    per_class = {
        name: round(float(correct[labels == c].mean()), 5) if (labels == c).any() else None
        for c, name in enumerate(classes)
    }
    return {
        f"{split}_accuracy": round(float(correct.mean()), 5),
        f"{split}_accuracy_ci": accuracy_ci(int(correct.sum()), len(correct)),
        f"{split}_per_class_accuracy": per_class,
    }


def measure_logits(
    path: Path,
    splits: dict[str, Split],
    classes: list[str],
    cfg: EvaluateParams,
    reference: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Everything evaluate reports about one ONNX file but its latency (latencies times all
    files together), and its logits per split.

    Args:
        path: the exported model.
        splits: {"val": ..., "test": ...}: every split is scored (`val_accuracy`, its CI and
            per-class accuracies; the same for test). Decisions read val; test is reported.
        classes: the class names, label k is classes[k] (DataSpec.classes).
        cfg: params.evaluate (threads, throughput batch).
        reference: the source model's predicted classes (N,) on the val split; the share the
            export agrees with is `agreement` (a broken export shows here even when accuracy
            looks plausible). None leaves agreement null.
    Returns:
        (the record, {split: logits (N, K) float32}).
    """
    blob = path.read_bytes()
    sess = session(path, cfg.threads)
    record: dict[str, Any] = {}
    logits: dict[str, np.ndarray] = {}
    throughput = 0.0
    for split, data in splits.items():
        logits[split], throughput = predict_onnx(sess, data.images, cfg.throughput_batch)
        record |= split_scores(split, logits[split].argmax(1), data.labels, classes)
    agreement = None
    if reference is not None:
        agreement = round(float((logits["val"].argmax(1) == reference).mean()), 5)
    record |= {
        "size_bytes": len(blob),
        "shipped_bytes": len(pack(blob)),  # what the registry stores
        **graph_stats(path),
        "throughput": round(throughput, 1),  # over the last split, in throughput_batch batches
        "agreement": agreement,
    }
    return record, logits
