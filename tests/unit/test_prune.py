"""Pruning squeeze's ConvNet: exact unstructured sparsity that survives fine-tuning, structured
pruning that really shrinks the network and reloads from disk without the pruner, per-layer
widths and sparsities on record, and a sparsity some layer cannot take refused, naming the
layers. (Other architectures: test_prune_networks.py.)"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from squeeze.config.sections import PruneParams
from squeeze.config.workspace import Workspace
from squeeze.data.spec import Split
from squeeze.measure.export import export_onnx, graph_stats
from squeeze.methods import MethodData
from squeeze.methods import prune as prune_module
from squeeze.methods.prune import PruningError, agp_sparsity, prunable, prune, weight_sparsity
from squeeze.nets.models import load_checkpoint, save_checkpoint
from stages import candidate as candidate_module
from stages import prune as prune_stage
from stages.prune import run

Data = dict[str, Split]
# The [8, 16] test model (about 75% on the test subset, 1,384 prunable weights) pruned to 70%
# and fine-tuned for 2 epochs on 3,000 images may lose at most this much test accuracy. It
# measured a 2-point loss; a larger one means the masks or the fine-tuning are broken.
SPARSITY, MAX_DROP = 0.7, 0.05


def prune_cfg(tiny_fit: Callable, **changes: object) -> PruneParams:
    base = {"upstream": "tiny", "kind": "unstructured", "sparsity": SPARSITY, "steps": 3,
            "importance": "l1", "round_to": None, "distill_alpha": 0.0, "temperature": 4.0,
            "qat": None, "fit": tiny_fit(epochs=2, lr=0.02)}  # fmt: skip
    return PruneParams(**(base | changes))


def method_data(splits: Data, teacher: nn.Module | None = None) -> MethodData:
    """What prune reads of the small_fmnist splits (and the teacher it distils from)."""
    return MethodData(splits["train"], splits["val"], teacher)


def conv_widths(model: nn.Module) -> list[int]:
    """Output channels of the model's convs in order: [8, 16] for the tiny ConvNet."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_agp_schedule_is_cubic_and_ends_on_target() -> None:
    values = [agp_sparsity(0.9, t, 4) for t in range(5)]
    assert values[0] == 0 and values[-1] == pytest.approx(0.9)
    assert values == sorted(values)
    steps = np.diff(values)
    assert all(steps[i] > steps[i + 1] for i in range(len(steps) - 1))  # fast first, then slow
    assert values[1] == pytest.approx(0.9 * (1 - 0.75**3))


@pytest.mark.parametrize("distill_alpha", [0.0, 0.5])
def test_unstructured_hits_the_sparsity_exactly_and_keeps_accuracy(
    small_fmnist: Data,
    tiny_trained: nn.Module,
    tiny_fit: Callable,
    split_accuracy: Callable,
    distill_alpha: float,
    capsys: pytest.CaptureFixture,
) -> None:
    cfg = prune_cfg(tiny_fit, distill_alpha=distill_alpha)
    before = split_accuracy(tiny_trained, small_fmnist["test"])
    teacher = copy.deepcopy(tiny_trained) if distill_alpha else None
    result = prune(copy.deepcopy(tiny_trained), cfg, method_data(small_fmnist, teacher))
    pruned, history = result.model, result.history
    total = sum(m.weight.numel() for m, _ in prunable(pruned))
    zeros = sum(int((m.weight == 0).sum()) for m, _ in prunable(pruned))
    assert zeros == round(SPARSITY * total)  # every Conv2d and Linear weight, counted together
    assert weight_sparsity(pruned) == pytest.approx(SPARSITY, abs=0.5 / total)
    assert [row["sparsity"] for row in history] == sorted(row["sparsity"] for row in history)
    # each step's one-epoch fine-tune logs which step it is, not "epoch 1/1" again and again
    logged = [line.split(": train_loss")[0] for line in capsys.readouterr().out.splitlines()]
    assert cfg.steps > 1
    assert logged == [f"step {step}/{cfg.steps}: epoch 1/1" for step in range(1, cfg.steps + 1)]
    # permanent: plain parameters again, no masks or hooks left behind
    assert set(pruned.state_dict()) == set(tiny_trained.state_dict())
    assert split_accuracy(pruned, small_fmnist["test"]) >= before - MAX_DROP


def test_unstructured_sparsity_survives_export(
    small_fmnist: Data, tiny_trained: nn.Module, tiny_fit: Callable, tmp_path: Path
) -> None:
    """BatchNorm folding scales whole channels, so zeros stay zeros in the ONNX file."""
    cfg = prune_cfg(tiny_fit, steps=1, fit=tiny_fit(epochs=1, lr=0.02))
    pruned = prune(copy.deepcopy(tiny_trained), cfg, method_data(small_fmnist)).model
    export_onnx(pruned, tmp_path / "m.onnx")
    stats = graph_stats(tmp_path / "m.onnx")
    weights = sum(m.weight.numel() for m, _ in prunable(pruned))
    biases = stats["params"] - weights  # the folded conv biases and the classifier's
    assert stats["nonzero_params"] <= weights - round(SPARSITY * weights) + biases


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor"])
def test_structured_shrinks_the_network_and_reloads_without_the_pruner(
    small_fmnist: Data,
    tiny_trained: nn.Module,
    tiny_fit: Callable,
    tmp_path: Path,
    importance: str,
) -> None:
    cfg = prune_cfg(tiny_fit, kind="structured", sparsity=0.5, steps=2, importance=importance,
                    fit=tiny_fit(epochs=1, lr=0.02))  # fmt: skip
    result = prune(copy.deepcopy(tiny_trained), cfg, method_data(small_fmnist))
    pruned, history = result.model, result.history
    assert len(history) == 2
    assert conv_widths(pruned) == [4, 8]  # half the channels of [8, 16]
    save_checkpoint(pruned, tmp_path / "pruned", {"name": "pruned"})
    reloaded, _ = load_checkpoint(tmp_path / "pruned")
    x = torch.from_numpy(small_fmnist["test"].images[:256])
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned.eval()(x))
    export_onnx(tiny_trained, tmp_path / "before.onnx")
    export_onnx(reloaded, tmp_path / "after.onnx")
    before, after = graph_stats(tmp_path / "before.onnx"), graph_stats(tmp_path / "after.onnx")
    assert after["params"] < 0.5 * before["params"]
    assert after["macs"] < 0.5 * before["macs"]


def test_stage_saves_a_structurally_pruned_model_that_reloads(
    workspace: Workspace, stage_params: Callable, tiny_fit: Callable, tiny_arch: dict
) -> None:
    cfg = prune_cfg(tiny_fit, kind="structured", sparsity=0.5, steps=1, distill_alpha=0.5,
                    upstream="teacher", fit=tiny_fit(epochs=1, lr=0.02))  # fmt: skip
    run(workspace.root, stage_params(prune={"ch50": cfg}), "ch50")
    model, record = load_checkpoint(workspace.model("ch50"))
    assert conv_widths(model) == [4, 8] and record["method"] == "prune_structured"
    assert record["arch"] == tiny_arch  # as given: the widths are in record["structure"]
    assert record["parameters"] < record["parameters_before"] / 2
    row = {"channels_before": 8, "channels": 4, "channels_removed": 0.5, "sparsity": 0}
    assert record["layers"] == {  # every pruned layer at the requested ratio, the classes kept
        "net.features.0": row,
        "net.features.4": row | {"channels_before": 16, "channels": 8},
        "net.classifier": row | {"channels_before": 10, "channels": 10, "channels_removed": 0},
    }
    teacher, _ = load_checkpoint(workspace.model("teacher"))
    assert conv_widths(teacher) == [8, 16]  # the upstream on disk is untouched


def test_stage_records_the_sparsity_of_every_layer(
    workspace: Workspace, stage_params: Callable, tiny_fit: Callable
) -> None:
    """Global ranking spreads the sparsity unevenly: the record shows each layer's share."""
    cfg = prune_cfg(tiny_fit, steps=1, upstream="teacher", fit=tiny_fit(epochs=1, lr=0.02))
    run(workspace.root, stage_params(prune={"sp70": cfg}), "sp70")
    model, record = load_checkpoint(workspace.model("sp70"))
    layers, modules = record["layers"], dict(model.named_modules())
    assert set(layers) == {"net.features.0", "net.features.4", "net.classifier"}
    zeros = 0.0
    for name, row in layers.items():
        weight = modules[name].weight
        assert row["sparsity"] == round(float((weight == 0).float().mean()), 6)
        assert row["channels"] == row["channels_before"] and row["channels_removed"] == 0
        zeros += row["sparsity"] * weight.numel()
    total = sum(modules[name].weight.numel() for name in layers)
    assert zeros / total == pytest.approx(record["sparsity"], abs=1e-5)
    assert len({row["sparsity"] for row in layers.values()}) > 1  # not one shared ratio


# The tiny net's convs have 8 and 16 channels. Torch-Pruning keeps int(C · (1 − s)) of each and
# silently skips a layer that would keep none: unchecked, 0.97 came out [8, 16] (nothing pruned)
# and 0.9 came out [8, 1] (one layer skipped, the other a one-channel bottleneck).
@pytest.mark.parametrize(
    ("sparsity", "layers"),
    [(0.9, r"net\.features\.0 \(8 → 0\), net\.features\.4 \(16 → 1\)"),
     (0.97, r"net\.features\.0 \(8 → 0\), net\.features\.4 \(16 → 0\)")],
)  # fmt: skip
def test_structured_sparsity_a_layer_cannot_take_is_refused_naming_the_layers(
    small_fmnist: Data, tiny_trained: nn.Module, tiny_fit: Callable, sparsity: float, layers: str
) -> None:
    cfg = prune_cfg(tiny_fit, kind="structured", sparsity=sparsity, steps=1)
    model = copy.deepcopy(tiny_trained)
    with pytest.raises(PruningError, match=f"sparsity {sparsity} leaves too few .* in {layers}:"):
        prune(model, cfg, method_data(small_fmnist))
    assert conv_widths(model) == [8, 16]  # refused before the pruner touched it


def test_the_highest_sparsity_the_error_suggests_prunes_as_planned(
    small_fmnist: Data, tiny_trained: nn.Module, tiny_fit: Callable
) -> None:
    cfg = prune_cfg(tiny_fit, kind="structured", sparsity=0.9, steps=1)
    with pytest.raises(PruningError, match="lower the sparsity to at most 0.75$"):
        prune(copy.deepcopy(tiny_trained), cfg, method_data(small_fmnist))
    cfg = prune_cfg(tiny_fit, kind="structured", sparsity=0.75, steps=3,
                    fit=tiny_fit(epochs=1, lr=0.02))  # fmt: skip
    pruned = prune(copy.deepcopy(tiny_trained), cfg, method_data(small_fmnist)).model
    assert conv_widths(pruned) == [2, 4]  # MIN_CHANNELS in the narrowest layer


def test_a_per_layer_policy_prunes_each_group_by_its_own_share(
    small_fmnist: Data, tiny_trained: nn.Module, tiny_fit: Callable
) -> None:
    """The search's policies: each group its own share over the steps, a group not named kept
    whole; a key that roots no group, or a share that leaves a group too narrow, refused before
    the pruner touches the model."""
    cfg = prune_cfg(tiny_fit, kind="structured", sparsity=0.5, steps=2,
                    fit=tiny_fit(epochs=1, lr=0.02))  # fmt: skip
    policy = {"net.features.0": 0.5, "net.features.4": 0.25}
    pruned = prune(copy.deepcopy(tiny_trained), cfg, method_data(small_fmnist), policy=policy)
    assert conv_widths(pruned.model) == [4, 12]
    only_first = {"net.features.0": 0.75}
    pruned = prune(copy.deepcopy(tiny_trained), cfg, method_data(small_fmnist), policy=only_first)
    assert conv_widths(pruned.model) == [2, 16]
    model = copy.deepcopy(tiny_trained)
    with pytest.raises(PruningError, match=r"names net\.features\.1, which roots no channel"):
        prune(model, cfg, method_data(small_fmnist), policy={"net.features.1": 0.5})
    with pytest.raises(
        PruningError, match=r"too few output channels in net\.features\.0 \(8 → 0\)"
    ):
        prune(model, cfg, method_data(small_fmnist), policy={"net.features.0": 0.9})
    assert conv_widths(model) == [8, 16]


def test_a_layer_torch_pruning_skips_is_caught_after_its_step(
    small_fmnist: Data,
    tiny_trained: nn.Module,
    tiny_fit: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the plan check, Torch-Pruning's silent skip is still caught, by the widths."""
    monkeypatch.setattr(prune_module, "check_plan", lambda *args: None)
    cfg = prune_cfg(tiny_fit, kind="structured", sparsity=0.97, steps=1)
    with pytest.raises(PruningError, match="step 1 of 1 did not prune as planned: net.features.0 "
                       "has 8 channels, planned 0; net.features.4 has 16 channels, planned "
                       "0"):  # fmt: skip
        prune(copy.deepcopy(tiny_trained), cfg, method_data(small_fmnist))


def test_unstructured_pruning_that_empties_a_layer_is_refused(
    small_fmnist: Data, tiny_trained: nn.Module, tiny_fit: Callable
) -> None:
    """At 0.97 global ranking takes all 1,152 weights of the second conv: a cut network that
    scored exactly chance (10%) when unchecked."""
    cfg = prune_cfg(tiny_fit, sparsity=0.97, steps=3, fit=tiny_fit(epochs=1, lr=0.02))
    with pytest.raises(PruningError, match=r"weight of net\.features\.4\.weight \(1152"):
        prune(copy.deepcopy(tiny_trained), cfg, method_data(small_fmnist))


def test_the_stage_stops_with_one_line_and_writes_nothing(
    workspace: Workspace,
    stage_params: Callable,
    tiny_fit: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = prune_cfg(tiny_fit, kind="structured", sparsity=0.97, upstream="teacher")
    params = stage_params(prune={"ch97": cfg})
    monkeypatch.chdir(workspace.root)
    monkeypatch.setattr(candidate_module, "stage_params", lambda: params)
    monkeypatch.setattr("sys.argv", ["stages.prune", "ch97"])
    with pytest.raises(SystemExit) as exit_:
        prune_stage.main()
    message = exit_.value.code
    assert isinstance(message, str) and "\n" not in message  # sys.exit(str): status 1, no traceback
    assert message.startswith("params.yaml prune.ch97: structured sparsity 0.97 leaves too few")
    assert not workspace.model("ch97").exists()
