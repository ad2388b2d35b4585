"""Model merging: logit ensembles, weight soups (Wortsman et al. 2022), ensemble distillation.

An ensemble averages its members' logits, f(x) = 1/n Σ fᵢ(x): more accurate, n times the cost.
A soup averages the weights of models fine-tuned from one shared starting point (same
architecture, same basin), which costs nothing at inference. Averaging weights does not average
BatchNorm statistics correctly (the mean of the running variances is not the variance of the
averaged network's activations), so every soup re-estimates them on training images.
Distilling an ensemble into one student keeps some of its accuracy at one model's cost.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from squeeze.config.sections import ArchParams, FitParams, IngredientParams
from squeeze.data.spec import DataSpec, Split
from squeeze.methods.distill import train_student
from squeeze.methods.train import accuracy, fit, predict

BN_BATCH = 512  # images per forward pass while re-estimating BatchNorm; memory only


class Ensemble(nn.Module):
    """f(x) = 1/n Σ fᵢ(x) over the members' logits; exports to one ONNX graph."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def spec(self) -> DataSpec:
        """The members' data spec (they were all trained on the same data)."""
        return self.members[0].spec

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # n × (B, K) -> (n, B, K) -> (B, K)
        return torch.stack([member(pixels) for member in self.members]).mean(0)


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating tensors; integer buffers (BatchNorm's batch counter)
    are taken from the first state, as averaging counts means nothing."""
    if not states or any(s.keys() != states[0].keys() for s in states):
        raise ValueError("soup ingredients must share one architecture (the same state keys)")
    averaged = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            averaged[key] = torch.stack([s[key] for s in states]).mean(0)
        else:
            averaged[key] = first.clone()
    return averaged


def reestimate_bn(model: nn.Module, images: np.ndarray) -> None:
    """Recompute every BatchNorm's running mean/variance as averages over images.

    torch.optim.swa_utils.update_bn resets the statistics and runs the data through the model
    with momentum=None: a cumulative average of the batch statistics (of all images exactly when
    the batches are equal), instead of an exponential average dominated by the last batches.
    """
    batches = [torch.from_numpy(images[i : i + BN_BATCH]) for i in range(0, len(images), BN_BATCH)]
    with torch.no_grad():
        update_bn(batches, model)
    model.eval()


def uniform_soup(models: list[nn.Module], bn_images: np.ndarray | None) -> nn.Module:
    """The average of the models' weights, BatchNorm re-estimated on bn_images (None: skip)."""
    soup = copy.deepcopy(models[0])
    soup.load_state_dict(average_state_dicts([m.state_dict() for m in models]))
    if bn_images is not None:
        reestimate_bn(soup, bn_images)
    return soup.eval()


def val_accuracy(model: nn.Module, val: Split) -> float:
    return accuracy(predict(model, torch.from_numpy(val.images)), torch.from_numpy(val.labels))


def greedy_soup(
    models: list[nn.Module],
    val: Split,
    bn_images: np.ndarray | None,
    scores: list[float] | None = None,
) -> tuple[nn.Module, list[int], float]:
    """Greedy soup: start from the best model on val, then try the others in order of their val
    accuracy, keeping each only if the soup's val accuracy does not drop.

    The start is the best ingredient as it is (its own BatchNorm statistics), so the soup is
    never worse on val than its best ingredient. `scores`: the models' val accuracies when the
    caller has them (val_accuracy of each otherwise). Returns (soup, indices kept, its val
    accuracy).
    """
    scores = scores or [val_accuracy(m, val) for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    kept, best, soup = [order[0]], scores[order[0]], models[order[0]]
    for i in order[1:]:
        trial = uniform_soup([models[j] for j in [*kept, i]], bn_images)
        score = val_accuracy(trial, val)
        if score >= best:
            kept, best, soup = [*kept, i], score, trial
    return copy.deepcopy(soup).eval(), kept, best


def fine_tune_ingredients(
    base: nn.Module,
    cfg: FitParams,
    ingredients: list[IngredientParams],
    train: Split,
    val: Split,
) -> tuple[list[nn.Module], list[list[dict[str, Any]]]]:
    """One copy of base per ingredient, fine-tuned with cfg updated by that ingredient's seed,
    lr, epochs, augmentation and label smoothing: models that share one initialisation (as
    soups need) but differ in more than the seed, as Wortsman et al. 2022's ingredients do.
    Returns (the fine-tuned models in eval mode, their curves), in ingredient order."""
    models, histories = [], []
    for ingredient in ingredients:
        torch.manual_seed(ingredient.seed)
        model = copy.deepcopy(base)
        histories.append(fit(model, train, val, cfg.model_copy(update=ingredient.model_dump())))
        models.append(model.eval())
    return models, histories


def distill_ensemble(
    members: list[nn.Module],
    student_arch: ArchParams | dict[str, Any],
    cfg: FitParams,
    temperature: float,
    alpha: float,
    train: Split,
    val: Split,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A student distilled from the members' logit ensemble (squeeze.methods.distill, no
    features)."""
    teacher = Ensemble(members).eval()
    return train_student(teacher, student_arch, cfg, temperature, alpha, 0.0, train, val)
