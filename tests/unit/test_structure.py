"""A network's structure as JSON: a network pruned by Torch-Pruning (depthwise and grouped convs,
GroupNorm, LayerNorm, PReLU, residual sums, a concatenation) rebuilt from its unpruned
definition, the structure record and its safetensors weights gives the same outputs, without the
pruner and without pickle; a record that does not fit the network is refused naming the module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from safetensors.torch import load_file, save_file
from torch import nn

from examples.user_models import MobileNet, ResNet
from squeeze.nets.structure import StructureError, apply_structure, structure_of


class Zoo(nn.Module):
    """One of every module kind the record knows, wired so that pruning couples them: a
    grouped conv, GroupNorm, PReLU, a depthwise conv with a residual sum, a concatenation,
    LayerNorm over the pooled features and two Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.PReLU(16))
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16),
                                       nn.BatchNorm2d(16))  # fmt: skip
        self.side = nn.Conv2d(16, 8, 1)
        self.norm = nn.LayerNorm(24)
        self.hidden = nn.Linear(24, 32)
        self.out = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.grouped(x) + self.depthwise(x)  # residual-style sum of two coupled branches
        x = torch.cat([x, self.side(x)], dim=1).mean((2, 3))  # (B, 24)
        return self.out(torch.relu(self.hidden(self.norm(x))))


def prune(net: nn.Module, ratio: float = 0.5) -> nn.Module:
    """Prune net's channels with Torch-Pruning (its output layer kept), in place."""
    example = torch.randn(1, 3, 16, 16)
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    tp.pruner.MetaPruner(net, example, importance=tp.importance.MagnitudeImportance(p=1),
                         pruning_ratio=ratio, ignored_layers=[last]).step()  # fmt: skip
    return net.eval()


def save_and_reload(net: nn.Module, fresh: nn.Module, folder: Path) -> nn.Module:
    """What a checkpoint does: safetensors weights and a JSON record, read back into a freshly
    built (unpruned) network."""
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "w.safetensors")
    (folder / "structure.json").write_text(json.dumps(structure_of(net)))
    apply_structure(fresh, json.loads((folder / "structure.json").read_text()))
    fresh.load_state_dict(load_file(folder / "w.safetensors"))
    return fresh.eval()


@pytest.mark.parametrize(
    "build",
    [Zoo, lambda: ResNet(in_channels=3, num_classes=5, widths=[8, 16], blocks=[1, 1]),
     lambda: MobileNet(in_channels=3, num_classes=5, widths=[8, 16], head=16)],
    ids=["zoo", "resnet", "mobilenet"],
)  # fmt: skip
def test_a_pruned_network_reloads_from_its_record_and_weights(build, tmp_path: Path) -> None:
    torch.manual_seed(0)
    pruned = prune(build())
    before = structure_of(build())
    assert structure_of(pruned) != before  # the pruner really changed shapes
    reloaded = save_and_reload(pruned, build(), tmp_path)
    assert structure_of(reloaded) == structure_of(pruned)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))


def test_the_record_holds_what_the_pruner_changed() -> None:
    torch.manual_seed(0)
    record = structure_of(prune(Zoo()))
    assert record["depthwise.0"]["type"] == "Conv2d"
    depthwise = record["depthwise.0"]["attrs"]
    assert depthwise["groups"] == depthwise["out_channels"] == depthwise["in_channels"] == 8
    assert record["stem.1"]["attrs"] == {"num_groups": 4, "num_channels": 8}  # GroupNorm
    assert record["stem.2"]["tensors"] == {"weight": [8]}  # PReLU
    assert record["norm"]["attrs"] == {"normalized_shape": [12]}  # LayerNorm after the cat
    assert record["out"]["attrs"] == {"in_features": 16, "out_features": 5}  # outputs kept
    assert record["depthwise.1"]["tensors"]["num_batches_tracked"] == []
    assert "" not in record and "stem" not in record  # containers hold nothing of their own


def test_an_unpruned_network_is_left_as_built() -> None:
    net = Zoo()
    tensors = {k: v for k, v in net.state_dict(keep_vars=True).items()}
    apply_structure(net, structure_of(Zoo()))
    assert all(v is tensors[k] for k, v in net.state_dict(keep_vars=True).items())


def test_a_record_of_another_architecture_is_refused_naming_the_modules() -> None:
    record = structure_of(ResNet(in_channels=3, num_classes=5, widths=[8, 16], blocks=[1, 1]))
    with pytest.raises(StructureError, match=r"not in the record: 'blocks\.0\.layers\.0'.*"
                       r"not in the network: 'fc', .*saved from another architecture"):  # fmt: skip
        apply_structure(MobileNet(in_channels=3, num_classes=5, widths=[8, 16]), record)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"type": "Conv2d"}, r"module 'hidden' is a Conv2d .* the network's a Linear"),
     ({"attrs": {"in_features": 24}}, r"module 'hidden' .* attributes \['in_features'\]"),
     ({"tensors": {"weight": [32, 24]}}, r"module 'hidden' .* tensors \['weight'\], the net"),
     ({"attrs": {"in_features": "24", "out_features": 32}}, r"hidden\.in_features is '24'"),
     ({"tensors": {"weight": [32, -1], "bias": [32]}}, r"hidden\.weight shape is \[32, -1\]")],
)  # fmt: skip
def test_an_entry_that_does_not_fit_its_module_is_refused(change: dict, message: str) -> None:
    record = structure_of(Zoo())
    record["hidden"] = record["hidden"] | change
    with pytest.raises(StructureError, match=message):
        apply_structure(Zoo(), record)


def test_the_record_is_plain_json() -> None:
    record = structure_of(prune(Zoo()))
    assert json.loads(json.dumps(record)) == record
