"""Knowledge distillation (Hinton et al. 2015), optionally with pooled-feature matching.

The student learns from the teacher's temperature-softened logits as well as from the labels:

    loss = α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(s, y)
           [+ feature_weight · MSE(P · e_s, e_t)]

T² keeps the soft term's gradients on the scale of the hard term's when T changes. e_s, e_t are
the pooled embeddings (the classifier's input) of student and teacher; P is a linear projection
learned together with the student, because the two embeddings differ in width (a FitNets-style
hint on the last feature layer). The teacher only ever runs in eval mode under no_grad.

`distill` is the method's entry (squeeze.methods); `train_student` is the same with the params
one by one (merge's distill_ensemble calls it), and `distillation_loss` the loss alone (prune's
fine-tuning distils with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from squeeze.config.sections import ArchParams, DistillParams, FitParams
from squeeze.data.spec import Split
from squeeze.methods import MethodData, Result
from squeeze.methods.train import cross_entropy, fit
from squeeze.nets.models import build_model, example_input, output_layers


def output_layer(model: nn.Module) -> nn.Linear:
    """The model's one output layer (models.output_layers, found in the traced graph) when it is
    an nn.Linear: its input is the embedding that feature distillation matches. model is a
    Classifier or an Ensemble (its .spec gives the example input).

    Raises ValueError naming the network when it has no such layer: an all-convolutional head,
    or an ensemble, whose several members' embeddings are not one embedding.
    """
    layers = list(output_layers(model, example_input(model.spec)).values())
    if len(layers) == 1 and isinstance(layers[0], nn.Linear):
        return layers[0]
    net = getattr(model, "net", model)  # name the user's network, not the Classifier
    found = ", ".join(type(layer).__name__ for layer in layers)
    raise ValueError(
        f"{type(net).__name__} has no single nn.Linear output layer whose input features could "
        f"be matched (its output layers: {found}); set feature_weight to 0 for this network"
    )


class Embedding:
    """Keeps the latest input of a model's output layer, (B, D), via a forward pre-hook: the
    embedding the classifier reads (for squeeze's ConvNet, the pooled features).

    A hook instead of a second forward path: the model's own forward stays the only one, and
    the embedding keeps its graph when the model trains (so the feature loss reaches it).
    """

    def __init__(self, model: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = output_layer(model).register_forward_pre_hook(self.keep)

    def keep(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.value = inputs[0].flatten(1)

    def remove(self) -> None:
        self.handle.remove()


class WithProjection(nn.Module):
    """The student plus the projection of its embedding onto the teacher's.

    fit() optimises the parameters of the module it is given, so the projection has to be part
    of it to learn; forward is the student's own, and only the student is saved afterwards.
    """

    def __init__(self, student: nn.Module, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.student = student
        self.project = nn.Linear(student_dim, teacher_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.student(pixels)


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    log_student = F.log_softmax(student_logits / T, dim=1)
    log_teacher = F.log_softmax(teacher_logits / T, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * T * T


class DistillationLoss:
    """A LossFn for train.fit (see distillation_loss); remove() detaches its feature hooks."""

    def __init__(
        self,
        teacher: nn.Module,
        temperature: float,
        alpha: float,
        label_smoothing: float,
        feature_weight: float,
        student: WithProjection | None,
    ) -> None:
        if feature_weight > 0 and student is None:
            raise ValueError("feature_weight > 0 needs the student wrapped in WithProjection")
        self.teacher = teacher.eval()
        self.temperature, self.alpha, self.feature_weight = temperature, alpha, feature_weight
        self.label_smoothing, self.student = label_smoothing, student
        self.hooks: tuple[Embedding, Embedding] | None = None
        if feature_weight > 0 and student is not None:  # (student, teacher) embeddings
            output_layer(teacher)  # refuse before hooking the student: no hook left behind
            self.hooks = (Embedding(student.student), Embedding(teacher))

    def __call__(
        self, logits: torch.Tensor, pixels: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        self.teacher.to(pixels.device).eval()  # eval: BatchNorm/dropout of the teacher frozen
        with torch.no_grad():
            t_logits = self.teacher(pixels)
        loss = self.alpha * soft_loss(logits, t_logits, self.temperature)
        hard = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        loss = loss + (1 - self.alpha) * hard
        if self.hooks is not None and self.student is not None:
            s_emb, t_emb = self.hooks
            hint = F.mse_loss(self.student.project(s_emb.value), t_emb.value)
            loss = loss + self.feature_weight * hint
        return loss

    def remove(self) -> None:
        for hook in self.hooks or ():
            hook.remove()


def distillation_loss(
    teacher: nn.Module,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
    feature_weight: float = 0.0,
    student: WithProjection | None = None,
) -> DistillationLoss:
    """A LossFn for train.fit that queries the frozen teacher on every batch.

    Args:
        teacher: any (B, H, W, C) uint8 -> (B, K) model; run in eval mode under no_grad, so no
            gradient ever reaches it.
        temperature, alpha: Hinton's T and the weight of the (T²-scaled) soft term.
        label_smoothing: of the (1 − α)-weighted hard cross-entropy term.
        feature_weight: > 0 adds the pooled-embedding MSE; needs `student` (the module fit
            trains, holding the projection) and a teacher with an nn.Linear output layer.
    """
    return DistillationLoss(teacher, temperature, alpha, label_smoothing, feature_weight, student)


def embedding_dim(model: nn.Module) -> int:
    """Width D of the embedding Embedding keeps: the output layer's input features."""
    return output_layer(model).in_features


def train_student(
    teacher: nn.Module,
    student_arch: ArchParams | dict[str, Any],
    cfg: FitParams,
    temperature: float,
    alpha: float,
    feature_weight: float,
    train: Split,
    val: Split,
    state_path: Path | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Build a student (seeded by cfg.seed) and train it on the teacher's soft targets.

    With alpha == 0 and feature_weight == 0 this is plain cross-entropy training of the same
    initialisation and the teacher is never run: the fair baseline for "what distillation
    adds" (same student, epochs and seed). Returns (student in eval mode, curves).
    """
    arch = student_arch if isinstance(student_arch, dict) else student_arch.model_dump(mode="json")
    torch.manual_seed(cfg.seed)
    student = build_model(arch, teacher.spec)
    if alpha == 0 and feature_weight == 0:
        history = fit(student, train, val, cfg, state_path, cross_entropy(cfg.label_smoothing))
        return student.eval(), history
    # the projection is built after the student, so the student's initialisation is the same
    # with or without feature matching
    wrapped = None
    if feature_weight > 0:
        wrapped = WithProjection(student, embedding_dim(student), embedding_dim(teacher))
    loss = distillation_loss(
        teacher, temperature, alpha, cfg.label_smoothing, feature_weight, wrapped
    )
    try:
        history = fit(wrapped or student, train, val, cfg, state_path, loss)
    finally:
        loss.remove()
    return student.eval(), history


def distill(
    teacher: nn.Module, cfg: DistillParams, data: MethodData, *, state_path: Path | None = None
) -> Result[nn.Module]:
    """A student of architecture cfg.student, seeded by cfg.fit.seed, trained on the teacher's
    temperature-softened logits (cfg.temperature, weight cfg.alpha) and the labels, with the
    pooled-feature hint when cfg.feature_weight > 0.

    Args:
        teacher: any (B, H, W, C) uint8 -> (B, K) model (the upstream); never trained.
        cfg: the student's arch, T, α, the feature weight, and its fit.
        data: train and val (data.teacher is not read: the upstream is the teacher).
        state_path: where the run keeps its resume state (train.fit).

    Returns:
        Result(student in eval mode on the CPU, one curve row per epoch).

    Raises:
        ValueError: cfg.feature_weight > 0 and the teacher or student has no single nn.Linear
            output layer (output_layer).
        TrainingError: the run diverged (train.fit).
    """
    student, history = train_student(
        teacher, cfg.student, cfg.fit, cfg.temperature, cfg.alpha, cfg.feature_weight,
        data.train, data.val, state_path,
    )  # fmt: skip
    return Result(student, history)
