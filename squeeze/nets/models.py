"""Models: the raw-pixel Classifier around a built-in or user network, and self-describing
checkpoints (safetensors weights + JSON record)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import torch_pruning as tp
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file
from torch import nn

from squeeze.config.workspace import read_json, write_json
from squeeze.data.spec import DataSpec
from squeeze.errors import StageRefused
from squeeze.nets import factory
from squeeze.nets.structure import apply_structure, structure_of
from squeeze.registry.store import StoreError, open_store


class Classifier(nn.Module):
    """Raw pixels in, logits out: the input contract of every squeeze model and its exports.

    Takes (B, H, W, C) uint8 pixels (or floats on the 0..255 scale), moves channels first,
    standardises them with the training split's per-channel mean and standard deviation
    (DataSpec, from data/profile.json) and returns `net`'s (B, K) logits. The statistics are
    buffers that are not saved in the state_dict (the checkpoint's record holds the spec), so a
    state_dict's keys are `net.` + the keys of the network the user wrote. `arch` is the
    record that built net (params' arch), which save_checkpoint writes beside the weights.
    """

    def __init__(self, net: nn.Module, spec: DataSpec, arch: dict[str, Any]) -> None:
        super().__init__()
        self.net, self.spec, self.arch = net, spec, arch
        shape = (1, spec.channels, 1, 1)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(shape) * 255.0
        std = torch.tensor(spec.std, dtype=torch.float32).view(shape) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float().permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        return self.net((x - self.mean) / self.std)


class ConvNet(nn.Module):
    """squeeze's built-in network, VGG-style: stages of 3×3 conv-BN-ReLU blocks, 2×2 max-pool
    between stages, global average pooling and one linear classifier.

    Maps normalised float (B, in_channels, H, W) to (B, num_classes) logits, for any image size
    (global pooling); each stage's entry in `channels` is the width of its convs_per_stage convs.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: list[int],
        convs_per_stage: int,
        dropout: float,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = in_channels
        for i, width in enumerate(channels):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(convs_per_stage):
                layers.append(nn.Conv2d(in_ch, width, 3, padding=1, bias=not batchnorm))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)  # (B, C, h, w) -> (B, C)
        return self.classifier(self.dropout(x))


def build_net(arch: dict[str, Any], spec: DataSpec) -> nn.Module:
    """The network an arch record names, for spec's channels and classes, output checked.

    arch is the built-in {"name": "convnet", ...} (squeeze/params.py ConvNetArch) or a user's
    {"class_path": ..., "init_args": ...}, imported only if the workspace allows its module
    (squeeze.factory); raises squeeze.factory's errors naming class_path when it cannot be
    built or does not map (B, C, H, W) to (B, K).
    """

    kwargs = dict(arch)
    if "class_path" in kwargs:
        net = factory.build_net(kwargs["class_path"], kwargs["init_args"], Path.cwd())
        where = f"class_path {kwargs['class_path']!r}"
    else:
        kwargs.pop("name")
        net = ConvNet(spec.channels, spec.num_classes, **kwargs)
        where = "the built-in convnet"
    factory.check_output(net, spec.channels, spec.height, spec.width, spec.num_classes, where)
    return net


def build_model(arch: dict[str, Any], spec: DataSpec) -> Classifier:
    """The model an arch record names, taking raw (B, H, W, C) uint8 pixels (Classifier)."""
    return Classifier(build_net(arch, spec), spec, arch)


def example_input(spec: DataSpec) -> torch.Tensor:
    """One raw image of zeros, (1, H, W, C) uint8: the shape a model and its export are fed."""
    return torch.zeros(1, spec.height, spec.width, spec.channels, dtype=torch.uint8)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear by name: the layers that hold the weights pruning zeroes and
    quantization rounds (biases and BatchNorm stay dense and fp32)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def output_layers(model: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
    """The weight layers whose outputs are the logits, by name: found in the traced graph by
    walking back from the model's output through every op that is not a Conv or Linear (a
    flatten, a pooling, a sum of two heads), whatever the layers are called. Their outputs are
    the K classes, which pruning must never remove."""
    graph = tp.DependencyGraph().build_dependency(model, example, verbose=False)
    names = {module: name for name, module in model.named_modules()}
    weights = set(weight_layers(model).values())
    found: dict[str, nn.Module] = {}
    stack = [node for node in graph.module2node.values() if not node.outputs]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.module in weights:
            found[names[node.module]] = node.module
        else:
            stack.extend(node.inputs)
    return found


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model: Classifier, folder: Path, record: dict[str, Any]) -> None:
    """Write `model.safetensors` and `model.json` (architecture, data spec, structure, params,
    metrics) to folder.

    The model's arch, data spec and the network's structure as it is now (squeeze.nets.structure:
    widths after structured pruning) are added to record, so load_checkpoint rebuilds any
    architecture, pruned or not, without running the pruner.
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    identity = {"arch": model.arch, "data": model.spec.to_json(),
                "structure": structure_of(model.net)}  # fmt: skip
    write_json(folder / "model.json", record | identity)


def load_checkpoint(folder: Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a model saved by save_checkpoint; returns (model in eval mode, record)."""
    record = read_json(folder / "model.json")
    model = build_model(record["arch"], DataSpec.from_json(record["data"]))
    apply_structure(model.net, record["structure"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval(), record


class InitError(StageRefused):
    """train_teacher.init names weights that cannot start the teacher: missing, not safetensors,
    or not the state_dict of train_teacher.arch."""


def read_init(init: str, root: Path, endpoint_url: str | None = None) -> bytes:
    """The bytes of a weights file: s3://bucket/key through squeeze.registry.store, else a local
    path (relative to the workspace root, or absolute)."""
    if init.startswith("s3://"):
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
