"""Bring your own data and network, end to end: Fashion-MNIST written out as an ImageFolder of
3-channel 32×32 PNGs (a subset), a user's own ResNet named by class_path (examples/user_models.py,
allowed by the workspace's pyproject.toml), and a candidate graph that uses every method on it:
distillation into the built-in convnet (with feature matching), structured pruning (Torch-Pruning,
round_to) with distillation, unstructured pruning with QAT, static int8 / int4 and dynamic int8,
a logit ensemble and a greedy soup. `dvc repro` in one clone and the Prefect flow in another
build byte-identical models, and the exported model, run by stock onnxruntime on the PNGs'
raw pixels, scores what evaluate reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from examples.fmnist_imagefolder import write_imagefolder
from flows.compress import retrain_and_compress
from squeeze.config.workspace import Workspace, read_json
from tests.conftest import dvc_up_to_date, params_yaml, run
from tests.integration.test_reproducible import accuracies, digests

pytestmark = pytest.mark.slow

TINY_FIT = {
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.02,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "augment": True,
    "seed": 0,
    "threads": 1,
    "device": "auto",
}
GRAPH: dict[str, Any] = {
    "distill": {
        "kd_convnet": {
            "upstream": "teacher", "temperature": 4.0, "alpha": 0.7, "feature_weight": 0.5,
            "student": {"name": "convnet", "channels": [8, 16], "convs_per_stage": 1,
                        "dropout": 0.0, "batchnorm": True},
            "fit": TINY_FIT,
        },
    },
    "prune": {
        "res_ch": {"upstream": "teacher", "kind": "structured", "sparsity": 0.5, "steps": 1,
                   "importance": "l1", "round_to": 4, "distill_alpha": 0.7, "temperature": 4.0,
                   "qat": None, "fit": TINY_FIT},
        "res_ch_sp_qat": {"upstream": "res_ch", "kind": "unstructured", "sparsity": 0.5,
                          "steps": 1, "importance": "l1", "round_to": None, "distill_alpha": 0.0,
                          "temperature": 4.0, "qat": "int4", "fit": TINY_FIT},
    },
    "quantize": {
        "res_ch_int8": {"upstream": "res_ch", "mode": "static", "weights": "int8",
                        "per_channel": True, "calibration_samples": 64,
                        "fp32_first_layer": False},
        "res_ch_sp_qat_int4": {"upstream": "res_ch_sp_qat", "mode": "static", "weights": "int4",
                               "per_channel": True, "calibration_samples": 64,
                               "fp32_first_layer": False},
        "teacher_dynamic": {"upstream": "teacher", "mode": "dynamic", "weights": "int8",
                            "per_channel": False, "calibration_samples": 64,
                            "fp32_first_layer": False},
    },
    "merge": {
        "pair": {"kind": "ensemble", "upstreams": ["teacher", "res_ch"], "ingredients": [],
                 "student": None, "temperature": 4.0, "alpha": 0.9, "fit": TINY_FIT},
        "res_soup": {"kind": "soup_greedy", "upstreams": ["res_ch"], "student": None,
                     "ingredients": [{"seed": 0, "lr": 0.02, "epochs": 1, "augment": True,
                                      "label_smoothing": 0.0},
                                     {"seed": 1, "lr": 0.01, "epochs": 1, "augment": False,
                                      "label_smoothing": 0.1}],
                     "temperature": 4.0, "alpha": 0.9, "fit": TINY_FIT},
    },
}  # fmt: skip


def own_model_params(root: Path, images: Path) -> None:
    """The resnet profile (a class_path ResNet on a 3×32×32 ImageFolder), made tiny: the PNGs
    at `images`, a two-stage ResNet trained one epoch, and GRAPH as the candidates."""
    run(["squeeze", "profile", "resnet"], root)
    with params_yaml(root) as data:
        data["ingest"] |= {"source": str(images), "train_per_class": None,
                           "test_per_class": None, "expected_train": None,
                           "expected_test": None}  # fmt: skip
        data["train_teacher"]["arch"]["init_args"] |= {"widths": [8, 16], "blocks": [1, 1]}
        data["train_teacher"]["fit"] |= {"epochs": 2, "batch_size": 32, "threads": 1}
        data |= GRAPH
        data["gate"] |= {"min_accuracy": 0.2, "max_accuracy_drop": 1.0, "max_class_drop": 1.0,
                         "min_agreement": 0.0, "max_latency_ms": 100.0}  # fmt: skip
        data["flow"] |= {"task_runner": "threads", "workers": 2}
    run(["squeeze", "sync"], root)  # the merge stages of GRAPH into dvc.yaml


def conv_widths(structure: dict[str, Any]) -> list[int]:
    """Output channels of every conv of a checkpoint's structure record."""
    return [e["attrs"]["out_channels"] for e in structure.values() if e["type"] == "Conv2d"]


def png_test_set(images: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test PNGs decoded by Pillow alone, (N, 32, 32, 3) uint8, and their labels: the index
    of their class folder in sorted order (ImageFolder's convention)."""
    classes = sorted(p.name for p in (images / "test").iterdir())
    pixels, labels = [], []
    for label, name in enumerate(classes):
        for png in sorted((images / "test" / name).glob("*.png")):
            pixels.append(np.asarray(Image.open(png).convert("RGB")))
            labels.append(label)
    return np.stack(pixels), np.array(labels)


def test_own_data_and_network_through_dvc_repro_and_the_flow(
    workspace: Path, tmp_path: Path, prefect_api
) -> None:
    images = write_imagefolder(tmp_path / "images", 60, 20, rgb32=True)
    own_model_params(workspace, images)
    run(["git", "add", "-A"], workspace)
    run(["git", "commit", "-qm", "own data and network"], workspace)
    twin = tmp_path / "twin"
    shutil.copytree(workspace, twin)

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    repro = subprocess.run(["dvc", "repro"], cwd=twin, env={**os.environ, "PATH": path},
                           capture_output=True, text=True)  # fmt: skip
    assert repro.returncode == 0, repro.stdout + repro.stderr
    result = retrain_and_compress(workspace=str(workspace))
    assert "evaluate" in result["ran"] and dvc_up_to_date(workspace)

    ws = Workspace(workspace)
    profile = read_json(ws.profile)
    assert (profile["height"], profile["width"], profile["channels"]) == (32, 32, 3)
    assert profile["classes"] == sorted(p.name for p in (images / "train").iterdir())
    teacher = read_json(ws.model("teacher") / "model.json")
    assert teacher["arch"]["class_path"] == "examples.user_models.ResNet"
    pruned = read_json(ws.model("res_ch") / "model.json")
    widths = conv_widths(pruned["structure"])
    assert widths and all(w % 4 == 0 for w in widths)  # round_to
    assert sum(widths) < sum(conv_widths(teacher["structure"]))

    flow_built, dvc_built = digests(workspace), digests(twin)
    assert {k.split("/")[1] for k in flow_built if k.startswith("models/")} >= {
        "teacher",
        *GRAPH["distill"],
        *GRAPH["prune"],
        *GRAPH["quantize"],
        *GRAPH["merge"],
    }
    differ = sorted(k for k in flow_built.keys() | dvc_built.keys()
                    if flow_built.get(k) != dvc_built.get(k))  # fmt: skip
    assert differ == [], f"the flow and dvc repro wrote different files: {differ}"
    candidates = read_json(ws.metrics("candidates"))
    assert dict(accuracies(candidates)) == dict(accuracies(read_json(Workspace(twin).metrics(
        "candidates"))))  # fmt: skip

    # the exports take raw pixels: stock onnxruntime on the PNGs, no squeeze code in between
    pixels, labels = png_test_set(images)
    for name in ("teacher", "res_ch_int8", "pair"):
        sess = ort.InferenceSession(str(ws.export(name)), providers=["CPUExecutionProvider"])
        (graph_input,) = sess.get_inputs()
        assert graph_input.type == "tensor(uint8)" and graph_input.shape[1:] == [32, 32, 3]
        predicted = sess.run(None, {graph_input.name: pixels})[0].argmax(1)
        assert round(float((predicted == labels).mean()), 5) == candidates[name]["test_accuracy"]
    assert candidates["teacher"]["val_accuracy"] > 0.2  # learned something in two epochs

    # the promoted model's card states the contract of this data, not Fashion-MNIST's IDX one
    (card_path,) = (workspace / "registry").rglob("card.json")
    card = read_json(card_path)
    assert card["input"]["shape"] == ["N", 32, 32, 3] and card["input"]["layout"] == "NHWC"
    assert card["output"]["shape"] == ["N", 10] and card["classes"] == profile["classes"]
