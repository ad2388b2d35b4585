"""Model architectures and self-describing checkpoints (safetensors weights + JSON record)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file
from torch import nn

from squeeze.errors import StageRefused
from squeeze.workspace import read_json, write_json

# Fashion-MNIST pixel statistics over the 60k training images, on the 0..1 scale. They live in
# the network so that the exported ONNX graph takes raw uint8 pixels (the input contract).
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530
NUM_CLASSES = 10


class ConvNet(nn.Module):
    """A VGG-style CNN: stages of 3×3 conv-BN-ReLU blocks, 2×2 max-pool between stages,
    global average pooling and one linear classifier.

    Input is raw pixels, (B, 28, 28) uint8 or float in 0..255; output is (B, 10) logits.
    A stage's entry in `channels` is either one width (repeated convs_per_stage times) or the
    explicit list of its convs' widths, which is what a structurally pruned network needs.
    """

    def __init__(
        self,
        channels: list[int | list[int]],
        convs_per_stage: int,
        dropout: float,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i, widths in enumerate(stage_widths(channels, convs_per_stage)):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for out_ch in widths:
                layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not batchnorm))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(nn.ReLU(inplace=True))
                in_ch = out_ch
        self.convs_per_stage = convs_per_stage
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_ch, NUM_CLASSES)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # (B, 28, 28) raw 0..255 -> (B, 1, 28, 28) standardised floats
        x = (pixels.float().unsqueeze(1) / 255.0 - PIXEL_MEAN) / PIXEL_STD
        x = self.pool(self.features(x)).flatten(1)  # (B, C, h, w) -> (B, C)
        return self.classifier(self.dropout(x))


def stage_widths(channels: list[int | list[int]], convs_per_stage: int) -> list[list[int]]:
    """Per-stage lists of conv widths: an int stage repeats, a list stage is taken as is."""
    stages = []
    for i, entry in enumerate(channels):
        widths = [entry] * convs_per_stage if isinstance(entry, int) else list(entry)
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"channels[{i}]: widths must be positive, got {entry!r}")
        stages.append(widths)
    return stages


def arch_of(model: ConvNet) -> dict[str, Any]:
    """The architecture record of a ConvNet as it is now, read from its layers.

    After structured pruning the widths no longer match the params that built the network, so
    the checkpoint records the real ones (explicit per-conv lists, one per stage), and
    load_checkpoint rebuilds the pruned network without running the pruner again.
    """
    stages: list[list[int]] = [[]]
    for layer in model.features:
        if isinstance(layer, nn.MaxPool2d):
            stages.append([])
        elif isinstance(layer, nn.Conv2d):
            stages[-1].append(layer.out_channels)
    uniform = all(len(set(w)) == 1 and len(w) == model.convs_per_stage for w in stages)
    return {
        "name": "convnet",
        "channels": [w[0] for w in stages] if uniform else stages,
        "convs_per_stage": model.convs_per_stage,
        "dropout": model.dropout.p,
        "batchnorm": any(isinstance(m, nn.BatchNorm2d) for m in model.features),
    }


ARCHITECTURES = {"convnet": ConvNet}


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Build a model from its architecture record: {"name": ..., **constructor kwargs}."""
    kwargs = dict(arch)
    return ARCHITECTURES[kwargs.pop("name")](**kwargs)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear by name: the layers that hold the weights pruning zeroes and
    quantization rounds (biases and BatchNorm stay dense and fp32)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model: nn.Module, folder: Path, record: dict[str, Any]) -> None:
    """Write `model.safetensors` and `model.json` (architecture, params, metrics) to folder.

    The record must hold "arch" so that load_checkpoint can rebuild the model without guessing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    write_json(folder / "model.json", record)


def load_checkpoint(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by save_checkpoint; returns (model in eval mode, record)."""
    record = read_json(folder / "model.json")
    model = build_model(record["arch"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval(), record


class InitError(StageRefused):
    """train_teacher.init names weights that cannot start the teacher: missing, not safetensors,
    or not the state_dict of train_teacher.arch."""


def read_init(init: str, root: Path, endpoint_url: str | None = None) -> bytes:
    """The bytes of a weights file: s3://bucket/key through squeeze.storage, else a local path
    (relative to the workspace root, or absolute)."""
    if init.startswith("s3://"):
        from squeeze.storage import StoreError, open_store  # boto3 only for s3:// weights

        parts = urlsplit(init)
        prefix, _, key = parts.path.strip("/").rpartition("/")
        try:
            return open_store(f"s3://{parts.netloc}/{prefix}", endpoint_url).get(key)
        except StoreError as err:
            raise InitError(f"train_teacher.init: cannot read {init}: {err}") from err
    path = root / init
    try:
        return path.read_bytes()
    except OSError as err:
        raise InitError(
            f"train_teacher.init: cannot read {path} ({err.strerror}); give the path of a "
            "safetensors file (relative to the workspace, absolute, or s3://bucket/key)"
        ) from err


def load_init(model: nn.Module, init: str, root: Path, endpoint_url: str | None = None) -> str:
    """Load the safetensors weights named by train_teacher.init into model; return their sha256.

    The file is parsed by safetensors only (never unpickled, so a .pt/pickle file cannot run
    code). Every missing, unexpected and mis-shaped key is listed in one InitError.
    """
    data = read_init(init, root, endpoint_url)
    try:
        state = load(data)
    except (SafetensorError, ValueError) as err:
        raise InitError(
            f"train_teacher.init: {init} is not a safetensors file ({err}); save the teacher's "
            "state_dict with safetensors.torch.save_file (pickled .pt/.pth files are not read)"
        ) from err
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k} (file {list(state[k].shape)}, model {list(v.shape)})"
        for k, v in sorted(expected.items())
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        problems = [
            f"{label}: {', '.join(keys)}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("mis-shaped keys", misshaped),
            )  # fmt: skip
            if keys
        ]
        raise InitError(
            f"train_teacher.init: {init} does not fit train_teacher.arch ({'; '.join(problems)}); "
            "set train_teacher.arch to the architecture these weights were trained with, or "
            "save that model's state_dict"
        )
    model.load_state_dict(state)
    return hashlib.sha256(data).hexdigest()
