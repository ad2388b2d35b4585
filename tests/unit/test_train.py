"""Training: a small CNN learns real Fashion-MNIST, and resuming reproduces an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import torch

from squeeze.models import build_model, load_checkpoint, save_checkpoint
from squeeze.params import FitParams
from squeeze.train import accuracy, augment, fit, predict

ARCH = {"name": "convnet", "channels": [16, 32], "convs_per_stage": 1, "dropout": 0.0,
        "batchnorm": True}  # fmt: skip
FIT = FitParams(epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4,
                label_smoothing=0.0, augment=False, seed=0, threads=2, device="cpu")  # fmt: skip


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ARCH)


def test_small_cnn_beats_chance_clearly(fmnist: dict) -> None:
    model = tiny_model()
    history = fit(model, fmnist["train"], fmnist["val"], FIT)
    test = fmnist["test"]
    acc = accuracy(predict(model, torch.from_numpy(test.images)), torch.from_numpy(test.labels))
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert acc > 0.5, acc  # 5× chance after three epochs on 2,500 images


def test_resume_ends_with_the_same_weights(fmnist: dict, tmp_path: Path) -> None:
    straight = tiny_model()
    fit(straight, fmnist["train"], fmnist["val"], FIT)
    state = tmp_path / "state.pt"
    interrupted = tiny_model()
    first = fit(interrupted, fmnist["train"], fmnist["val"], FIT, state, stop_after=1)
    assert len(first) == 1 and state.exists()
    resumed = tiny_model()  # a fresh process would rebuild the model from scratch
    history = fit(resumed, fmnist["train"], fmnist["val"], FIT, state)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = tiny_model().eval()
    save_checkpoint(model, tmp_path / "m", {"arch": ARCH, "name": "m"})
    loaded, record = load_checkpoint(tmp_path / "m")
    x = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(loaded(x), model(x))
    assert record["name"] == "m"


def test_augment_shifts_and_flips_but_keeps_pixels(fmnist: dict) -> None:
    batch = torch.from_numpy(fmnist["train"].images[:64])
    out = augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert not torch.equal(out, batch)
    # a shift moves at most 2 border rows/cols out: most of the ink survives
    assert out.float().sum() > 0.8 * batch.float().sum()
