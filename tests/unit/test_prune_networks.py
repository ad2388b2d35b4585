"""Pruning networks squeeze did not write: a user's ResNet (residual sums, projection shortcuts)
and MobileNet-style network (depthwise convs, a concatenation), named by class_path, on
Fashion-MNIST as 3-channel 32×32 images. Structured pruning with round_to keeps every width a
multiple of it, at least halves the MACs and reloads from the checkpoint without the pruner;
unstructured pruning hits its sparsity exactly; the output layers are found whatever they are
called; the widths planned are the widths Torch-Pruning gives."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from squeeze.config.sections import PruneParams
from squeeze.data.spec import DataSpec, Split
from squeeze.methods import MethodData
from squeeze.methods import prune as prune_module
from squeeze.methods.prune import (
    PruningError,
    prunable,
    prunable_names,
    prune,
    prune_structured,
    weight_sparsity,
)
from squeeze.methods.train import fit
from squeeze.nets.models import (
    Classifier,
    build_model,
    example_input,
    load_checkpoint,
    output_layers,
    save_checkpoint,
    weight_layers,
)
from squeeze.nets.structure import structure_of

Data = dict[str, Split]
ARCHS = {
    "resnet": {"class_path": "examples.user_models.ResNet",
               "init_args": {"in_channels": 3, "num_classes": 10, "widths": [8, 16],
                             "blocks": [1, 1]}},
    "mobilenet": {"class_path": "examples.user_models.MobileNet",
                  "init_args": {"in_channels": 3, "num_classes": 10, "widths": [8, 16],
                                "head": 32}},
}  # fmt: skip
OUTPUT = {"resnet": "net.fc", "mobilenet": "net.classifier"}
ROUND_TO = 4
SPEC = DataSpec(tuple("abcdefghij"), 16, 16, 3, (0.5,) * 3, (0.25,) * 3)  # for untrained nets


@pytest.fixture(autouse=True)
def allow_test_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workspace owner's allow-list, as a worker's environment would hold it."""
    monkeypatch.setenv("SQUEEZE_ALLOWED_MODULES", "examples.user_models")


@pytest.fixture(scope="module")
def rgb32(small_fmnist: Data, fmnist_spec: DataSpec) -> tuple[Data, DataSpec]:
    """small_fmnist as the resnet profile sees it: 3 channels, 32×32 (a 2-pixel zero border),
    with its DataSpec."""
    data = {}
    for name, split in small_fmnist.items():
        images = np.pad(split.images, ((0, 0), (2, 2), (2, 2), (0, 0)))  # (N, 32, 32, 1)
        data[name] = Split(np.repeat(images, 3, axis=3), split.labels)  # (N, 32, 32, 3)
    return data, DataSpec.measure(data["train"], fmnist_spec.classes)


@pytest.fixture(scope="module")
def trained(rgb32: tuple[Data, DataSpec], tiny_fit: Callable) -> Iterator[dict[str, Classifier]]:
    """Both networks trained for 2 epochs (about 65% validation accuracy); copy before use."""
    (data, spec), models = rgb32, {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SQUEEZE_ALLOWED_MODULES", "examples.user_models")
        for name, arch in ARCHS.items():
            torch.manual_seed(0)
            models[name] = build_model(arch, spec)
            fit(models[name], data["train"], data["val"], tiny_fit(epochs=2, lr=0.05))
    yield models


def prune_cfg(tiny_fit: Callable, **changes: object) -> PruneParams:
    base = {"upstream": "teacher", "kind": "structured", "sparsity": 0.5, "steps": 2,
            "importance": "l1", "round_to": ROUND_TO, "distill_alpha": 0.0, "temperature": 4.0,
            "qat": None, "fit": tiny_fit(epochs=1, lr=0.02)}  # fmt: skip
    return PruneParams(**(base | changes))


def macs(model: Classifier) -> float:
    return tp.utils.count_ops_and_params(model, example_input(model.spec))[0]


def accuracy(model: nn.Module, split: Split) -> float:
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(split.images))
    return float((logits.argmax(1).numpy() == split.labels).mean())


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_structured_pruning_rounds_widths_halves_macs_and_reloads(
    name: str,
    trained: dict[str, Classifier],
    rgb32: tuple[Data, DataSpec],
    tiny_fit: Callable,
    tmp_path: Path,
) -> None:
    data, _ = rgb32
    model = copy.deepcopy(trained[name])
    before = macs(model)
    result = prune(model, prune_cfg(tiny_fit), MethodData(data["train"], data["val"]))
    pruned, history = result.model, result.history
    assert len(history) == 2
    layers = weight_layers(pruned)
    assert layers[OUTPUT[name]].out_features == 10  # the classes are never pruned
    unpruned = weight_layers(trained[name])
    for layer_name, layer in layers.items():
        if layer_name != OUTPUT[name]:  # every layer pruned, to a multiple of round_to
            width, was = layer.weight.shape[0], unpruned[layer_name].weight.shape[0]
            assert width % ROUND_TO == 0 and width < was, layer_name
        if isinstance(layer, nn.Conv2d) and layer.groups > 1:  # depthwise convs stay depthwise
            assert layer.groups == layer.in_channels == layer.out_channels
    if name == "mobilenet":  # the concatenation's consumer reads both pruned branches
        two = pruned.net.blocks[-1]
        assert pruned.net.head[0].in_channels == (
            two.point[0].out_channels + two.separable.layers[3].out_channels
        )
    assert macs(pruned) <= 0.5 * before
    assert accuracy(pruned, data["val"]) > 0.3  # still a classifier after 1 epoch of fine-tuning

    save_checkpoint(pruned, tmp_path / name, {"name": name})
    reloaded, record = load_checkpoint(tmp_path / name)
    assert record["arch"] == ARCHS[name]  # the arch as given; the widths are in the structure
    assert record["structure"] == structure_of(pruned.net)
    x = torch.from_numpy(data["test"].images[:128])
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_unstructured_pruning_hits_the_sparsity_on_any_network(
    name: str,
    trained: dict[str, Classifier],
    rgb32: tuple[Data, DataSpec],
    tiny_fit: Callable,
    tmp_path: Path,
) -> None:
    data, _ = rgb32
    cfg = prune_cfg(tiny_fit, kind="unstructured", sparsity=0.6, round_to=None)
    pruned = prune(copy.deepcopy(trained[name]), cfg, MethodData(data["train"], data["val"])).model
    total = sum(m.weight.numel() for m, _ in prunable(pruned))
    zeros = sum(int((m.weight == 0).sum()) for m, _ in prunable(pruned))
    assert zeros == round(0.6 * total)
    assert weight_sparsity(pruned) == pytest.approx(0.6, abs=0.5 / total)
    names = prunable_names(pruned)
    assert f"{OUTPUT[name]}.weight" in names  # every Conv and Linear weight, output layer too
    if name == "mobilenet":
        assert "net.blocks.0.layers.0.weight" in names  # a depthwise conv
    assert structure_of(pruned.net) == structure_of(trained[name].net)  # shapes unchanged
    save_checkpoint(pruned, tmp_path / name, {"name": name})
    reloaded, _ = load_checkpoint(tmp_path / name)
    x = torch.from_numpy(data["test"].images[:64])
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))


def test_a_sparsity_a_channel_group_cannot_take_names_its_coupled_layers(
    trained: dict[str, Classifier], rgb32: tuple[Data, DataSpec], tiny_fit: Callable
) -> None:
    """The stem and the first block's second conv are added together: one group, one width.
    0.6 keeps int(8 · 0.4) = 3 of its 8 channels, which round_to 4 rounds down to 0."""
    data, _ = rgb32
    model = copy.deepcopy(trained["resnet"])
    with pytest.raises(PruningError, match=(
        r"sparsity 0\.6 leaves too few output channels in net\.stem\.0 \+ "
        r"net\.stages\.0\.body\.3 \(8 → 0\), net\.stages\.0\.body\.0 \(8 → 0\) \(widths rounded "
        r"down to a multiple of round_to 4\): .* lower the sparsity to at most 0\.5$"
    )):  # fmt: skip
        prune(model, prune_cfg(tiny_fit, sparsity=0.6), MethodData(data["train"], data["val"]))
    assert structure_of(model.net) == structure_of(trained["resnet"].net)  # untouched


class TwoHeads(nn.Module):
    """Logits as the sum of two linear heads, neither named like a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.a, self.b = nn.Linear(8, 10), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x).flatten(1)
        return self.a(x) + self.b(x)


class AllConv(nn.Module):
    """No Linear at all: a 1×1 conv to K channels, averaged over the image."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        self.scores = nn.Conv2d(8, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(self.features(x)).mean((2, 3))


@pytest.mark.parametrize(
    ("net", "expected"),
    [(TwoHeads, {"net.a", "net.b"}), (AllConv, {"net.scores"}),
     (lambda: build_model(ARCHS["resnet"], SPEC).net, {"net.fc"}),
     (lambda: build_model(ARCHS["mobilenet"], SPEC).net, {"net.classifier"})],
    ids=["two-heads", "all-conv", "resnet", "mobilenet"],
)  # fmt: skip
def test_the_output_layers_are_found_whatever_they_are_called(net, expected: set) -> None:
    model = Classifier(net(), SPEC, {})
    assert set(output_layers(model, example_input(SPEC))) == expected


class Odd(nn.Module):
    """Widths that are no multiple of anything, a grouped conv and a depthwise one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 13, 3), nn.BatchNorm2d(13), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(13, 24, 3), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(24, 24, 3, groups=2), nn.ReLU())
        self.depthwise = nn.Conv2d(24, 24, 3, groups=24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(self.grouped(self.b(self.a(x))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("round_to", [None, 2, 3, 8])
@pytest.mark.parametrize(("sparsity", "steps"), [(0.3, 1), (0.45, 3), (0.6, 2)])
def test_the_planned_widths_are_the_widths_torch_pruning_gives(
    round_to: int | None,
    sparsity: float,
    steps: int,
    tiny_fit: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """prune_structured checks every step's widths against its plan (check_widths): on odd
    widths with every rounding, the plan must be what Torch-Pruning does, or a refusal."""
    monkeypatch.setattr(prune_module, "fine_tune", lambda *args: {"val_accuracy": 0.0})
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8), np.arange(32) % 10)
    cfg = prune_cfg(tiny_fit, sparsity=sparsity, steps=steps, round_to=round_to)
    torch.manual_seed(0)
    model = Classifier(Odd(), SPEC, {})
    try:
        prune_structured(model, cfg, split, split)
    except PruningError as err:  # only the plan's own refusal, never a step off the plan
        assert "leaves too few output channels" in str(err)
        return
    for name, layer in weight_layers(model).items():
        if name != "net.fc" and round_to:
            assert layer.weight.shape[0] % round_to == 0, name
