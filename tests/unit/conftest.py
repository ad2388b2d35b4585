"""A small stratified subset of the real Fashion-MNIST, shared by the compression tests.

Real images, not random tensors: the compression tests assert accuracies, agreements and
orderings that only mean something on data a model can learn. Small (3,000 training images) so
that a tiny CNN trains in seconds on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from squeeze.config.files import load_params
from squeeze.config.params import Params
from squeeze.config.sections import FitParams, SearchParams
from squeeze.config.workspace import Workspace, write_json
from squeeze.data.idx import read_split
from squeeze.data.spec import DataSpec, Split
from squeeze.data.splits import save_split, stratified_indices, subset
from squeeze.methods.train import accuracy, fit, predict
from squeeze.nets.models import build_model, save_checkpoint

TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 300, 100, 100


@pytest.fixture(scope="session")
def small_fmnist(fmnist_dir: Path) -> dict[str, Split]:
    """{"train": 3000, "val": 1000 (disjoint, from the training file), "test": 1000} images.

    Without the data the tests that need it fail (fmnist_dir, tests/conftest.py), never skip: a
    setup that lost the dataset must not pass with the compression tests left out."""
    torch.set_num_threads(1)  # the machine is shared: one thread keeps test times predictable
    rng = np.random.default_rng(0)
    full = read_split(fmnist_dir, "train")
    both = subset(full, stratified_indices(full.labels, TRAIN_PER_CLASS + VAL_PER_CLASS, rng))
    first = np.concatenate(
        [np.flatnonzero(both.labels == c)[:VAL_PER_CLASS] for c in np.unique(both.labels)]
    )
    is_val = np.zeros(len(both), bool)
    is_val[first] = True
    test = read_split(fmnist_dir, "test")
    return {
        "train": subset(both, np.flatnonzero(~is_val)),
        "val": subset(both, np.flatnonzero(is_val)),
        "test": subset(test, stratified_indices(test.labels, TEST_PER_CLASS, rng)),
    }


def project_classes() -> list[str]:
    """The class names of the repo's params.yaml (Fashion-MNIST's, label k is classes[k])."""
    return load_params(Path(__file__).parents[2]).ingest.classes


@pytest.fixture(scope="session")
def fmnist_spec(small_fmnist: dict[str, Split]) -> DataSpec:
    """The data spec of small_fmnist (28×28×1, the class names of the repo's params.yaml)."""
    return DataSpec.measure(small_fmnist["train"], project_classes())


@pytest.fixture(scope="session")
def fmnist_profile(fmnist: dict[str, Split]) -> DataSpec:
    """The data spec of the fmnist subset (tests/conftest.py), measured on its training split
    as ingest measures data/profile.json: what a model trained on that subset is built for."""
    return DataSpec.measure(fmnist["train"], project_classes())


TINY_ARCH = {"name": "convnet", "channels": [8, 16], "convs_per_stage": 1, "dropout": 0.0,
             "batchnorm": True}  # fmt: skip


def make_tiny_fit(epochs: int = 8, seed: int = 0, lr: float = 0.1) -> FitParams:
    """Settings under which TINY_ARCH reaches about 75% on small_fmnist in a few seconds."""
    return FitParams(
        epochs=epochs, batch_size=32, lr=lr, momentum=0.9, weight_decay=5e-4,
        label_smoothing=0.0, augment=False, seed=seed, threads=1, device="cpu",
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_trained(small_fmnist: dict[str, Split], fmnist_spec: DataSpec) -> nn.Module:
    """A [8, 16] ConvNet trained on small_fmnist (≈ 75% test accuracy); copy before changing."""
    torch.manual_seed(0)
    model = build_model(TINY_ARCH, fmnist_spec)
    fit(model, small_fmnist["train"], small_fmnist["val"], make_tiny_fit())
    return model.eval()


@pytest.fixture(scope="session")
def tiny_arch() -> dict:
    """The architecture record of the tiny test ConvNet (copy before changing)."""
    return dict(TINY_ARCH)


@pytest.fixture(scope="session")
def tiny_fit() -> Callable[..., FitParams]:
    """make_tiny_fit(epochs=8, seed=0, lr=0.1): quick training settings for tiny models."""
    return make_tiny_fit


@pytest.fixture(scope="session")
def split_accuracy() -> Callable[[nn.Module, Split], float]:
    """Accuracy of a torch model on a split."""

    def measure(model: nn.Module, split: Split) -> float:
        images, labels = torch.from_numpy(split.images), torch.from_numpy(split.labels)
        return accuracy(predict(model, images), labels)

    return measure


@pytest.fixture(scope="session")
def workspace(
    small_fmnist: dict[str, Split],
    fmnist_spec: DataSpec,
    tiny_trained: nn.Module,
    tmp_path_factory: pytest.TempPathFactory,
) -> Workspace:
    """A pipeline workspace as train_teacher leaves it: splits, fingerprint, data profile,
    models/teacher (the tiny trained ConvNet). Stage tests write their candidates next to it,
    one name each."""
    ws = Workspace(tmp_path_factory.mktemp("workspace"))
    for name, split in small_fmnist.items():
        save_split(split, ws.split(name))
    write_json(ws.fingerprint, {"sha256": "0" * 64, "files": {}})
    write_json(ws.profile, fmnist_spec.to_json())
    save_checkpoint(tiny_trained, ws.model("teacher"), {"name": "teacher"})
    return ws


@pytest.fixture(scope="session")
def stage_params() -> Callable[..., Params]:
    """Params holding just the given candidate sections, e.g. stage_params(distill={...}).

    Built without validating the rest of the schema (model_construct): the stage modules read
    only params.<stage>[name], and these tests must not depend on the repo's params.yaml.
    """

    def build(**sections: dict[str, Any]) -> Params:
        empty = {stage: {} for stage in ("distill", "prune", "quantize", "merge")}
        no_search = {"search": SearchParams.model_construct(finalists=0)}
        return Params.model_construct(**(empty | no_search | sections))

    return build
