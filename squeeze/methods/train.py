"""Training: SGD with Nesterov momentum and a one-cycle learning rate (Smith & Topin 2019).

`train` is the method's entry (squeeze.methods): what train_teacher calls. `fit` is the loop
itself, seeded, resumable, with one curve row per epoch; distill, prune and merge call it with
their own loss (LossFn) and per-step params, which is why it takes the splits one by one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from squeeze.config.sections import FitParams
from squeeze.data.spec import Split
from squeeze.errors import StageRefused
from squeeze.methods import MethodData, Result

# (logits, pixels, labels) -> scalar loss; distillation passes one that also queries a teacher.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SHIFT = 2  # augmentation: random translations of up to ±2 pixels


class TrainingError(StageRefused):
    """Training produced no usable model (a non-finite loss, or a model no better than chance)."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def augment(pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random ±SHIFT translation (zero fill) and horizontal flip of a (B, H, W, C) batch."""
    b, h, w, _ = pixels.shape
    padded = F.pad(pixels, (0, 0, SHIFT, SHIFT, SHIFT, SHIFT))  # pads W, then H; not C
    dy, dx = torch.randint(0, 2 * SHIFT + 1, (2, b), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, w)
    out = padded[torch.arange(b)[:, None, None], rows, cols]  # (B, h, w, C)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(2), out)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Logits (N, K) of a model over (N, H, W, C) pixels, in eval mode, batched."""
    model.eval()
    device = next(model.parameters()).device
    chunks = [images[i : i + batch].to(device) for i in range(0, len(images), batch)]
    return torch.cat([model(x).cpu() for x in chunks])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def cross_entropy(label_smoothing: float) -> LossFn:
    return lambda logits, _pixels, labels: F.cross_entropy(
        logits, labels, label_smoothing=label_smoothing
    )


def train(
    model: nn.Module,
    cfg: FitParams,
    data: MethodData,
    *,
    state_path: Path | None = None,
    stop_after: int | None = None,
) -> Result[nn.Module]:
    """Train model on data.train with cross-entropy (label smoothing cfg.label_smoothing).

    Args:
        model: any (B, H, W, C) uint8 -> (B, K) logits network (a Classifier), initialised;
            trained in place on cfg.device and returned on the CPU in eval mode.
        cfg: epochs, batch size, peak lr, momentum, weight decay, augmentation, seed, device.
        data: train (what it learns from) and val (each epoch's val_loss and val_accuracy).
        state_path, stop_after: resumption, as `fit` says.

    Returns:
        Result(model, history): one curve row per epoch (fit's columns).

    Raises:
        TrainingError: a non-finite training or validation loss (the run diverged).
    """
    history = fit(model, data.train, data.val, cfg, state_path, stop_after=stop_after)
    return Result(model, history)


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: FitParams,
    state_path: Path | None = None,
    loss_fn: LossFn | None = None,
    stop_after: int | None = None,
    part: str = "",
) -> list[dict[str, Any]]:
    """Train model with SGD + one-cycle LR; return one curve row per epoch.

    part names what this call is one of, before each epoch's log line (`step 2/4`: a pruning
    step's fine-tune; `ingredient 1/4`: a soup's), so that a log of many one-epoch calls does
    not read as "epoch 1/1" over and over.

    With state_path, the full training state is saved after every epoch and a matching state
    found there is resumed, so an interrupted run continues where it stopped and ends with the
    same weights as an uninterrupted one. stop_after ends the call after that many epochs (used
    to test resumption). The state file is the caller's to delete once the result is saved.

    Raises TrainingError at the first non-finite training loss (before that step updates the
    weights) or validation loss: weights that overflowed never recover, so every later epoch would
    only burn time on a model that is no longer a model.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    loss_fn = loss_fn or cross_entropy(cfg.label_smoothing)
    images, labels = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    val_images, val_labels = torch.from_numpy(val.images), torch.from_numpy(val.labels)
    steps = (len(labels) + cfg.batch_size - 1) // cfg.batch_size
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )  # fmt: skip
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
    began = time.perf_counter()  # this call's own epochs (done_here) time the estimate
    for done_here, epoch in enumerate(range(len(history) + 1, cfg.epochs + 1), start=1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        total_loss, correct = 0.0, 0
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = augment(images[idx], gen) if cfg.augment else images[idx]
            x, y = x.to(device), labels[idx].to(device)
            logits = model(x)
            loss = loss_fn(logits, x, y)
            value = loss.item()
            if not math.isfinite(value):
                raise diverged(f"the training loss is {value} at epoch {epoch}/{cfg.epochs}, "
                               f"step {step + 1}/{steps}", cfg, sched.get_last_lr()[0])  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += value * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{value:.3f}")
        val_logits = predict(model, val_images)
        val_loss = F.cross_entropy(val_logits, val_labels).item()
        if not math.isfinite(val_loss):
            raise diverged(f"the validation loss is {val_loss} after epoch {epoch}/{cfg.epochs}",
                           cfg, sched.get_last_lr()[0])  # fmt: skip
        history.append({
            "epoch": epoch,
            "train_loss": round(total_loss / len(labels), 5),
            "train_accuracy": round(correct / len(labels), 5),
            "val_loss": round(val_loss, 5),
            "val_accuracy": round(accuracy(val_logits, val_labels), 5),
            "seconds": round(time.perf_counter() - start, 2),
        })  # fmt: skip
        elapsed = time.perf_counter() - began
        tqdm.write(part + progress_line(history[-1], cfg.epochs, elapsed, done_here))
        if state_path is not None:
            save_state(state_path, model, opt, sched, gen, history)
        if stop_after is not None and epoch >= stop_after:
            break
    model.cpu().eval()
    return history


def progress_line(row: dict[str, Any], epochs: int, elapsed_s: float, done_here: int) -> str:
    """One log line per epoch that reads well in a non-interactive log (Prefect, CI, dvc repro):
    the epoch's curve row, the time this call has trained, and the time left at its mean pace.

    Args:
        row: the epoch's history row (its "epoch" key is 1-based).
        epochs: the run's total epochs.
        elapsed_s: seconds since this call started training (a resumed run counts from there).
        done_here: epochs this call trained, the last included (>= 1).
    """
    left_s = elapsed_s / done_here * (epochs - row["epoch"])
    metrics = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("epoch", "seconds"))
    return (f"epoch {row['epoch']}/{epochs}: {metrics}; {row['seconds']:.1f} s, "
            f"elapsed {duration(elapsed_s)}, about {duration(left_s)} left")  # fmt: skip


def duration(seconds: float) -> str:
    """A duration as people read it: 42s, 3m05s, 1h02m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def diverged(where: str, cfg: FitParams, lr_now: float) -> TrainingError:
    """The error of a training run whose loss left the finite numbers: where, at which lr, and
    what to change (the step size, or weight decay: SGD multiplies the weights by 1 − lr·wd every
    step, which grows them without bound once lr·wd > 2)."""
    return TrainingError(
        f"training diverged: {where}, at learning rate {lr_now:.4g} of the one-cycle schedule "
        f"that peaks at fit.lr = {cfg.lr} (fit.weight_decay = {cfg.weight_decay}); lower fit.lr "
        f"(or fit.weight_decay) in params.yaml"
    )


def save_state(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    history: list[dict[str, Any]],
) -> None:
    """Atomically write everything needed to resume (loadable with weights_only=True)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
        },
        tmp,
    )
    tmp.replace(path)
