"""Distillation: the loss is Hinton's, the student learns from it and the teacher stays frozen."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from squeeze.config.sections import ConvNetArch, DistillParams
from squeeze.config.workspace import Workspace
from squeeze.data.spec import DataSpec, Split
from squeeze.data.splits import subset
from squeeze.methods.distill import WithProjection, distillation_loss, train_student
from squeeze.methods.merge import Ensemble
from squeeze.methods.train import fit
from squeeze.nets.models import Classifier, build_model, load_checkpoint
from stages.distill import run


class FixedLogits(nn.Module):
    """A 'teacher' that answers every batch with the same logits (a parameter, to check that it
    gets no gradient)."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits


def by_hand(s: list[list[float]], t: list[list[float]], y: list[int], T: float, a: float) -> float:
    """α·T²·mean KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·mean CE(s, y), in plain Python."""

    def softmax(row: list[float], temp: float) -> list[float]:
        exps = [math.exp(v / temp) for v in row]
        return [e / sum(exps) for e in exps]

    kl = [
        sum(pi * math.log(pi / qi) for pi, qi in zip(softmax(tr, T), softmax(sr, T), strict=True))
        for sr, tr in zip(s, t, strict=True)
    ]
    ce = [-math.log(softmax(sr, 1.0)[yi]) for sr, yi in zip(s, y, strict=True)]
    return a * T * T * sum(kl) / len(kl) + (1 - a) * sum(ce) / len(ce)


def test_loss_equals_the_hand_computed_value() -> None:
    s, t, y = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], [[2.0, 0.0, -1.0], [0.0, 0.0, 4.0]], [1, 2]
    loss_fn = distillation_loss(FixedLogits(t), temperature=2.0, alpha=0.7)
    loss = loss_fn(torch.tensor(s), torch.zeros(2, 28, 28, 1, dtype=torch.uint8), torch.tensor(y))
    assert loss.item() == pytest.approx(by_hand(s, t, y, 2.0, 0.7), rel=1e-5)
    # α = 0 is plain cross-entropy, α = 1 the T²-scaled soft term alone
    for alpha in (0.0, 1.0):
        loss = distillation_loss(FixedLogits(t), 2.0, alpha)(
            torch.tensor(s), torch.zeros(2, 28, 28, 1), torch.tensor(y)
        )
        assert loss.item() == pytest.approx(by_hand(s, t, y, 2.0, alpha), rel=1e-5)


Data = dict[str, Split]


def models_and_batch(data: Data, spec: DataSpec, arch: dict) -> tuple[nn.Module, nn.Module, tuple]:
    """A [16, 32] teacher, an [8, 16] student (untrained: only the plumbing is tested here)
    and one batch of 32 real images."""
    torch.manual_seed(0)
    teacher = build_model({**arch, "channels": [16, 32]}, spec)
    student = build_model(arch, spec)
    x, y = data["train"].images[:32], data["train"].labels[:32]
    return teacher, student, (torch.from_numpy(x), torch.from_numpy(y))


def test_gradients_reach_the_student_and_not_the_teacher(
    small_fmnist: Data, fmnist_spec: DataSpec, tiny_arch: dict
) -> None:
    teacher, student, (x, y) = models_and_batch(small_fmnist, fmnist_spec, tiny_arch)
    teacher.train()  # the loss must put it in eval mode itself
    stats = {k: v.clone() for k, v in teacher.state_dict().items()}
    student.train()
    loss = distillation_loss(teacher, 4.0, 0.9)(student(x), x, y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    for key, value in teacher.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(value, stats[key]), key


def no_hooks(model: nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_feature_matching_trains_the_projection_and_cleans_up(
    small_fmnist: Data, fmnist_spec: DataSpec, tiny_arch: dict
) -> None:
    teacher, student, (x, y) = models_and_batch(small_fmnist, fmnist_spec, tiny_arch)
    wrapped = WithProjection(student, 16, 32)
    loss_fn = distillation_loss(teacher, 4.0, 0.0, feature_weight=1.0, student=wrapped)
    hard_only = distillation_loss(teacher, 4.0, 0.0)
    logits = wrapped(x)
    loss = loss_fn(logits, x, y)
    assert loss.item() > hard_only(logits, x, y).item()  # the MSE hint is really added
    loss.backward()
    assert wrapped.project.weight.grad is not None and wrapped.project.weight.grad.abs().sum() > 0
    assert student.net.features[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    loss_fn.remove()
    assert no_hooks(teacher) and no_hooks(student)


def test_feature_matching_reads_the_input_of_the_output_layer(
    small_fmnist: Data, fmnist_spec: DataSpec, tiny_arch: dict
) -> None:
    """The matched embedding is what the last nn.Linear reads: for the ConvNet, its pooled
    features, (B, widest channels)."""
    teacher, student, (x, y) = models_and_batch(small_fmnist, fmnist_spec, tiny_arch)
    wrapped = WithProjection(student, 16, 32)
    loss_fn = distillation_loss(teacher, 4.0, 0.0, feature_weight=1.0, student=wrapped)
    loss_fn(wrapped(x), x, y)
    kept_student, kept_teacher = (hook.value for hook in loss_fn.hooks)
    loss_fn.remove()
    with torch.no_grad():
        for model, kept in ((student, kept_student), (teacher, kept_teacher)):
            standardised = (x.permute(0, 3, 1, 2).float() - model.mean) / model.std
            pooled = model.net.pool(model.net.features(standardised)).flatten(1)
            torch.testing.assert_close(kept, pooled)
    assert kept_student.shape == (32, 16) and kept_teacher.shape == (32, 32)


class AllConv(nn.Module):
    """A network without any nn.Linear: a 1×1 conv to K maps, averaged (B, C, H, W) -> (B, K)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x))).mean((2, 3))


def test_feature_matching_refuses_a_network_without_a_linear_layer(
    small_fmnist: Data, fmnist_spec: DataSpec, tiny_arch: dict, tiny_fit: Callable
) -> None:
    """Nothing to match: a clear ValueError naming the network and the way out, before any
    training and without leaving a hook behind; plain distillation of it still works."""
    _, student, (x, y) = models_and_batch(small_fmnist, fmnist_spec, tiny_arch)
    spec = fmnist_spec
    teacher = Classifier(AllConv(spec.channels, spec.num_classes), spec, {"name": "allconv"})
    refusal = r"AllConv has no single nn\.Linear output layer.*set feature_weight to 0"
    with pytest.raises(ValueError, match=refusal):
        distillation_loss(teacher, 4.0, 0.5, feature_weight=1.0,
                          student=WithProjection(student, 16, 16))  # fmt: skip
    assert no_hooks(student) and no_hooks(teacher)
    train = subset(small_fmnist["train"], np.arange(64))
    with pytest.raises(ValueError, match=refusal):
        train_student(teacher, tiny_arch, tiny_fit(epochs=1), 4.0, 0.5, 0.5, train, train)
    assert no_hooks(teacher)
    loss = distillation_loss(teacher, 4.0, 0.5)(student(x), x, y)  # logits only: fine
    assert torch.isfinite(loss)


def test_student_with_features_trains_and_comes_back_bare(
    small_fmnist: Data, fmnist_spec: DataSpec, tiny_arch: dict, tiny_fit: Callable
) -> None:
    teacher, _, _ = models_and_batch(small_fmnist, fmnist_spec, tiny_arch)
    train = subset(small_fmnist["train"], np.arange(512))
    student, history = train_student(
        teacher, tiny_arch, tiny_fit(epochs=1), 4.0, 0.5, 0.5, train, small_fmnist["val"]
    )
    assert len(history) == 1 and isinstance(student, Classifier)
    assert type(student.net).__name__ == "ConvNet" and student.spec == fmnist_spec
    assert set(student.state_dict()) == set(build_model(tiny_arch, fmnist_spec).state_dict())
    assert no_hooks(teacher) and no_hooks(student)


def test_alpha_zero_is_plain_training_of_the_same_initialisation(
    small_fmnist: Data, fmnist_spec: DataSpec, tiny_arch: dict, tiny_fit: Callable
) -> None:
    """The "without distillation" baseline differs from the distilled student in the loss only."""
    train = subset(small_fmnist["train"], np.arange(512))
    teacher, _, _ = models_and_batch(small_fmnist, fmnist_spec, tiny_arch)
    student, _ = train_student(
        teacher, tiny_arch, tiny_fit(epochs=1), 4.0, 0.0, 0.0, train, small_fmnist["val"]
    )
    torch.manual_seed(0)
    plain = build_model(tiny_arch, fmnist_spec)
    fit(plain, train, small_fmnist["val"], tiny_fit(epochs=1))
    for key, value in plain.state_dict().items():
        assert torch.equal(student.state_dict()[key], value), key


def test_stage_writes_a_self_describing_student(
    workspace: Workspace,
    fmnist_spec: DataSpec,
    stage_params: Callable,
    tiny_arch: dict,
    tiny_fit: Callable,
) -> None:
    student = ConvNetArch(**{**tiny_arch, "channels": [4, 8]})
    cfg = DistillParams(upstream="teacher", student=student, temperature=4.0, alpha=0.9,
                        feature_weight=0.0, fit=tiny_fit(epochs=1))  # fmt: skip
    run(workspace.root, stage_params(distill={"kd": cfg}), "kd")
    model, record = load_checkpoint(workspace.model("kd"))
    assert record["arch"]["channels"] == [4, 8] and record["method"] == "distill"
    assert record["data"] == fmnist_spec.to_json() and model.spec == fmnist_spec
    assert record["upstream"] == ["teacher"] and record["params"]["alpha"] == 0.9
    assert {"data_sha256", "val_accuracy", "parameters", "history"} <= set(record)
    assert not list(workspace.state("x").parent.glob("distill-kd-*"))  # resume state cleaned up


def test_feature_matching_refuses_an_ensemble_teacher(
    small_fmnist: Data, fmnist_spec: DataSpec, tiny_arch: dict
) -> None:
    """An ensemble has one output layer per member and no single embedding to match: refused
    naming it, not matched against whichever member's layer comes last."""
    teacher, student, _ = models_and_batch(small_fmnist, fmnist_spec, tiny_arch)
    ensemble = Ensemble([teacher, build_model(tiny_arch, fmnist_spec)])
    refusal = r"Ensemble has no single nn\.Linear output layer .*layers: Linear, Linear\)"
    with pytest.raises(ValueError, match=refusal):
        distillation_loss(ensemble, 4.0, 0.5, feature_weight=1.0,
                          student=WithProjection(student, 16, 16))  # fmt: skip
    assert no_hooks(student) and no_hooks(ensemble)
