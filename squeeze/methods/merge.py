"""Model merging: logit ensembles, weight soups (Wortsman et al. 2022), ensemble distillation.

An ensemble averages its members' logits, f(x) = 1/n Σ fᵢ(x): more accurate, n times the cost.
A soup averages the weights of models fine-tuned from one shared starting point (same
architecture, same basin), which costs nothing at inference. Averaging weights does not average
BatchNorm statistics correctly (the mean of the running variances is not the variance of the
averaged network's activations), so every soup re-estimates them on training images.
Distilling an ensemble into one student keeps some of its accuracy at one model's cost.

`merge` is the method's entry (squeeze.methods): it builds what cfg.kind names from the parts
below (Ensemble, fine_tune_ingredients, uniform_soup, greedy_soup, distill_ensemble).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from squeeze.config.sections import ArchParams, FitParams, IngredientParams, MergeParams
from squeeze.data.spec import DataSpec, Split
from squeeze.methods import MethodData, Result
from squeeze.methods.distill import train_student
from squeeze.methods.train import accuracy, fit, predict

BN_BATCH = 512  # images per forward pass while re-estimating BatchNorm; memory only
BEST_INGREDIENT = "best_ingredient"  # the variant a soup is compared with, besides the other soup


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
    for i, ingredient in enumerate(ingredients, start=1):
        torch.manual_seed(ingredient.seed)
        model = copy.deepcopy(base)
        fit_cfg = cfg.model_copy(update=ingredient.model_dump())
        histories.append(
            fit(model, train, val, fit_cfg, part=f"ingredient {i}/{len(ingredients)}: ")
        )
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


def soup(cfg: MergeParams, base: nn.Module, data: MethodData) -> Result[nn.Module]:
    """Fine-tune the ingredients from base, then average them all (uniform soup) and greedily
    on val (greedy soup). Returns the soup cfg.kind names, with record fields (each ingredient's
    params and val accuracy, the ingredients kept, the variants' val accuracies) and, as
    variants, what it is compared with: the best ingredient on val and the other soup."""
    train, val = data.train, data.val
    ingredients, _ = fine_tune_ingredients(base, cfg.fit, cfg.ingredients, train, val)
    scores = [round(val_accuracy(m, val), 5) for m in ingredients]
    best = scores.index(max(scores))
    uniform = uniform_soup(ingredients, train.images)
    # each: (model, the ingredients it averages, its val accuracy)
    soups = {
        "uniform_soup": (uniform, list(range(len(ingredients))), val_accuracy(uniform, val)),
        "greedy_soup": greedy_soup(ingredients, val, train.images, scores),
        BEST_INGREDIENT: (ingredients[best], [best], scores[best]),
    }
    model, kept, _ = soups.pop("uniform_soup" if cfg.kind == "soup_uniform" else "greedy_soup")
    record = {
        "ingredients": [i.model_dump() | {"val_accuracy": s}
                        for i, s in zip(cfg.ingredients, scores, strict=True)],
        "ingredients_kept": kept,
        "variants": {k: round(score, 5) for k, (_, _, score) in soups.items()},
    }  # fmt: skip
    return Result(model, record=record, variants={k: other for k, (other, _, _) in soups.items()})


def merge(upstreams: list[nn.Module], cfg: MergeParams, data: MethodData) -> Result[nn.Module]:
    """Merge the upstream models as cfg.kind says.

    - ensemble: Ensemble(upstreams), their averaged logits, in eval mode (it exports to one
      ONNX graph); record {"members": cfg.upstreams}.
    - soup_uniform / soup_greedy: cfg.ingredients fine-tunes of the one upstream averaged,
      BatchNorm re-estimated on data.train (Wortsman et al. 2022; see soup).
    - distill_ensemble: a student of cfg.student, seeded by cfg.fit.seed, distilled from the
      upstreams' ensemble (Hinton et al. 2015, squeeze.methods.distill); history its curves.

    Args:
        upstreams: (B, H, W, C) uint8 -> (B, K) models trained on the same data (a soup: one).
        cfg: kind, upstreams (their names), ingredients, student, temperature, alpha, fit.
        data: train (fine-tuning, BatchNorm statistics, distillation) and val (curves, the
            greedy soup's choices, the variants' scores).

    Returns:
        Result(the merged model in eval mode, history, record, variants (soups only)).

    Raises:
        ValueError: no upstream, or soup ingredients that do not share one architecture.
        TrainingError: a fine-tune or the student's training diverged (train.fit).
    """
    if cfg.kind == "ensemble":
        return Result(Ensemble(upstreams).eval(), record={"members": cfg.upstreams})
    if cfg.kind == "distill_ensemble":
        torch.manual_seed(cfg.fit.seed)
        student, history = distill_ensemble(
            upstreams, cfg.student, cfg.fit, cfg.temperature, cfg.alpha, data.train, data.val
        )
        return Result(student, history)
    return soup(cfg, upstreams[0], data)
