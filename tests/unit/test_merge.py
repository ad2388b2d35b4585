"""Merging: the ensemble export is the mean of its members, soups average weights and re-estimate
BatchNorm exactly, and a greedy soup is never worse on validation than its best ingredient."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from squeeze.config.sections import IngredientParams, MergeParams
from squeeze.config.workspace import Workspace, read_json
from squeeze.data.spec import DataSpec, Split
from squeeze.data.splits import load_split, subset
from squeeze.measure.export import INPUT, export_onnx
from squeeze.measure.runtime import session
from squeeze.methods import merge as merge_method
from squeeze.methods.merge import (
    BN_BATCH,
    Ensemble,
    average_state_dicts,
    distill_ensemble,
    fine_tune_ingredients,
    greedy_soup,
    reestimate_bn,
    uniform_soup,
    val_accuracy,
)
from squeeze.nets.models import Classifier, build_model, load_checkpoint
from stages.merge import run

Data = dict[str, Split]


def members(arch: dict, spec: DataSpec, n: int = 3) -> list[nn.Module]:
    """n differently initialised ConvNets with non-trivial BatchNorm statistics."""
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = build_model(arch, spec).eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
        out.append(model)
    return out


def test_ensemble_onnx_is_the_mean_of_member_logits(
    small_fmnist: Data, fmnist_spec: DataSpec, tiny_arch: dict, tmp_path
) -> None:
    models = members(tiny_arch, fmnist_spec)
    export_onnx(Ensemble(models), tmp_path / "ensemble.onnx")
    images = small_fmnist["test"].images[:256]
    ours = session(tmp_path / "ensemble.onnx", 1).run(None, {INPUT: images})[0]
    with torch.no_grad():
        x = torch.from_numpy(images)
        mean = sum(m(x) for m in models) / len(models)
    np.testing.assert_allclose(ours, mean.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("copies", [2, 3])
def test_soup_of_identical_models_is_the_model(
    tiny_trained: nn.Module, small_fmnist: Data, copies: int
) -> None:
    """Exact for 2 copies ((a + a) / 2 = a in floating point); for 3, up to rounding."""
    soup = uniform_soup([copy.deepcopy(tiny_trained) for _ in range(copies)], bn_images=None)
    exact = copies == 2
    for key, value in tiny_trained.state_dict().items():
        tol = 0.0 if exact else 1e-6
        torch.testing.assert_close(soup.state_dict()[key], value, rtol=tol, atol=tol, msg=key)
    x = torch.from_numpy(small_fmnist["test"].images[:64])
    with torch.no_grad():
        tol = 0.0 if exact else 1e-5  # weight rounding, carried through the layers
        torch.testing.assert_close(soup(x), tiny_trained(x), rtol=tol, atol=tol)


def test_average_state_dicts_means_floats_and_keeps_counters(
    tiny_arch: dict, fmnist_spec: DataSpec
) -> None:
    a, b = (m.state_dict() for m in members(tiny_arch, fmnist_spec, 2))
    avg = average_state_dicts([a, b])
    key = "net.features.0.weight"
    torch.testing.assert_close(avg[key], (a[key] + b[key]) / 2)
    counter = next(k for k in a if k.endswith("num_batches_tracked"))
    assert torch.equal(avg[counter], a[counter])


def test_bn_reestimation_gives_the_exact_statistics(
    tiny_arch: dict, fmnist_spec: DataSpec, small_fmnist: Data
) -> None:
    """momentum=None: the running mean is the plain average over all images, not an EMA."""
    model = members(tiny_arch, fmnist_spec, 1)[0]
    images = small_fmnist["train"].images[:1536]  # three equal batches of BN_BATCH
    reestimate_bn(model, images)
    conv, bn = model.net.features[0], model.net.features[1]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (fmnist_spec.mean, fmnist_spec.std))
    with torch.no_grad():
        x = torch.from_numpy(images).double().permute(0, 3, 1, 2) / 255.0  # (N, C, H, W)
        out = copy.deepcopy(conv).double()((x - mean) / std)  # (N, 8, H, W), exact enough
    exact, last = out.mean((0, 2, 3)), out[-BN_BATCH:].mean((0, 2, 3))
    # torch's float32 batch statistics are themselves off by up to ~5e-5 here; an estimate that
    # leaned on the last batch (an EMA) would be off by its distance from the whole, far more
    tol = 2e-4
    assert (last - exact).abs().max() > 10 * tol
    torch.testing.assert_close(bn.running_mean.double(), exact, rtol=0, atol=tol)
    assert not model.training


def permuted(model: nn.Module) -> nn.Module:
    """The same function in another basin: the first conv's output channels (and the BatchNorm and
    next conv that read them) in reverse order. Its accuracy is the model's, but averaging it with
    the model mixes unrelated filters."""
    model = copy.deepcopy(model)
    conv, bn, after = model.net.features[0], model.net.features[1], model.net.features[4]
    order = torch.arange(conv.out_channels - 1, -1, -1)
    with torch.no_grad():
        for tensor in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            tensor.copy_(tensor[order])
        after.weight.copy_(after.weight[:, order])
    return model


def test_greedy_soup_tries_by_val_accuracy_and_rejects_what_hurts(
    tiny_trained: nn.Module, small_fmnist: Data, tiny_fit: Callable, monkeypatch, capsys
) -> None:
    train, val = small_fmnist["train"], small_fmnist["val"]
    tuned, histories = fine_tune_ingredients(
        tiny_trained, tiny_fit(epochs=1, lr=0.05), diverse_ingredients(3), train, val
    )
    assert [len(h) for h in histories] == [1, 2, 1]  # each ingredient's own epochs
    logged = [line.split(": train_loss")[0] for line in capsys.readouterr().out.splitlines()]
    assert logged == ["ingredient 1/3: epoch 1/1", "ingredient 2/3: epoch 1/2",
                      "ingredient 2/3: epoch 2/2", "ingredient 3/3: epoch 1/1"]  # fmt: skip
    assert not torch.equal(tuned[0].net.features[0].weight, tuned[1].net.features[0].weight)
    # listed worst first, so trying them in list order would not be trying them by accuracy
    tuned.sort(key=lambda m: val_accuracy(m, val))
    scores = [val_accuracy(m, val) for m in tuned]
    assert scores[0] < scores[-1]
    ingredients = [*tuned, permuted(tuned[-1])]  # as accurate as the best, and it hurts
    assert val_accuracy(ingredients[-1], val) == pytest.approx(scores[-1], abs=0.002)
    tried = []  # the ingredient each trial soup adds, in the order greedy_soup tries them

    def recording_soup(models: list[nn.Module], bn_images: np.ndarray | None) -> nn.Module:
        tried.append(next(i for i, m in enumerate(ingredients) if m is models[-1]))
        return uniform_soup(models, bn_images)

    monkeypatch.setattr(merge_method, "uniform_soup", recording_soup)
    soup, kept, score = greedy_soup(ingredients, val, train.images)
    order = [kept[0], *tried]
    assert sorted(order) == list(range(len(ingredients)))  # each tried once, the start included
    accuracies = [val_accuracy(ingredients[i], val) for i in order]
    assert accuracies == sorted(accuracies, reverse=True)
    assert len(ingredients) - 1 not in kept  # the permuted copy was tried and rejected
    assert score >= max(scores) and val_accuracy(soup, val) == score
    assert 1 <= len(kept) <= 3 and len(set(kept)) == len(kept)
    uniform = uniform_soup(tuned, train.images)
    assert val_accuracy(uniform, val) > 0.5  # same basin: averaging does not destroy the model
    assert val_accuracy(uniform_soup(ingredients, train.images), val) < score  # the other does


def test_distill_ensemble_trains_the_student(
    small_fmnist: Data, fmnist_spec: DataSpec, tiny_arch: dict, tiny_fit: Callable
) -> None:
    train = subset(small_fmnist["train"], np.arange(512))
    teachers = members(tiny_arch, fmnist_spec, 2)
    student, history = distill_ensemble(
        teachers, tiny_arch, tiny_fit(epochs=1), 4.0, 0.9, train, small_fmnist["val"]
    )
    assert len(history) == 1 and isinstance(student, Classifier)
    assert type(student.net).__name__ == "ConvNet" and student.spec == fmnist_spec


def diverse_ingredients(n: int) -> list[IngredientParams]:
    """n ingredients that differ in seed, lr, epochs, augmentation and label smoothing."""
    return [IngredientParams(seed=i, lr=0.05 / (1 + i), epochs=1 + i % 2, augment=i % 2 == 0,
                             label_smoothing=0.1 * (i % 2)) for i in range(n)]  # fmt: skip


def merge_params(kind: str, upstreams: list[str], tiny_fit: Callable) -> MergeParams:
    return MergeParams(kind=kind, upstreams=upstreams, student=None,
                       ingredients=diverse_ingredients(2) if kind.startswith("soup") else [],
                       temperature=4.0, alpha=0.9, fit=tiny_fit(epochs=1, lr=0.05))  # fmt: skip


def test_ingredients_belong_to_soups_only(tiny_fit: Callable) -> None:
    raw = merge_params("soup_greedy", ["teacher"], tiny_fit).model_dump()
    with pytest.raises(ValidationError, match="soup_greedy averages at least 2 fine-tunes, got 1"):
        MergeParams.model_validate(raw | {"ingredients": raw["ingredients"][:1]})
    raw = merge_params("ensemble", ["teacher", "teacher"], tiny_fit).model_dump()
    with pytest.raises(ValidationError, match="kind ensemble fine-tunes none; set ingredients"):
        MergeParams.model_validate(
            raw | {"ingredients": [i.model_dump() for i in diverse_ingredients(2)]}
        )


def test_stage_writes_an_onnx_ensemble_and_a_soup_checkpoint(
    workspace: Workspace, fmnist_spec: DataSpec, stage_params: Callable, tiny_fit: Callable
) -> None:
    params = stage_params(merge={
        "ens": merge_params("ensemble", ["teacher", "teacher"], tiny_fit),
        "soup": merge_params("soup_greedy", ["teacher"], tiny_fit),
    })  # fmt: skip
    run(workspace.root, params, "ens")
    record = read_json(workspace.model("ens") / "model.json")
    assert record["format"] == "onnx" and (workspace.model("ens") / "model.onnx").exists()
    assert record["method"] == "ensemble" and record["upstream"] == ["teacher", "teacher"]
    assert record["arch"]["name"] == "ensemble" and record["data_sha256"] == "0" * 64
    assert record["data"] == fmnist_spec.to_json()  # what the ONNX graph expects, recorded
    run(workspace.root, params, "soup")
    record = read_json(workspace.model("soup") / "model.json")
    assert record["method"] == "soup_greedy" and record["format"] == "safetensors"
    scores = [i["val_accuracy"] for i in record["ingredients"]]
    assert [i["lr"] for i in record["ingredients"]] == [0.05, 0.025] and len(scores) == 2
    assert record["val_accuracy"] >= max(scores)  # greedy: never below its best ingredient
    assert record["variants"]["best_ingredient"] == max(scores)
    for variant in ("best_ingredient", "uniform_soup"):  # saved beside it, loadable
        model, saved = load_checkpoint(workspace.variant("soup", variant))
        assert saved["variant_of"] == "soup"
        assert (
            round(val_accuracy(model, load_split(workspace.split("val"))), 5)
            == (record["variants"][variant])
        )
    params.merge["soup"] = merge_params("soup_uniform", ["teacher"], tiny_fit)
    run(workspace.root, params, "soup")
    record = read_json(workspace.model("soup") / "model.json")
    assert record["ingredients_kept"] == [0, 1]  # the uniform soup averages every ingredient
    assert set(record["variants"]) == {"best_ingredient", "greedy_soup"}
