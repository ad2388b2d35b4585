"""A network's shapes as plain JSON, and a freshly built network resized to them.

Structured pruning changes a network's widths: a conv keeps fewer filters, the BatchNorm after
it fewer features, the next layer fewer inputs, a depthwise conv fewer groups. The params that
built the network still describe the unpruned one, so a checkpoint also records its structure:
for every module, the shape-defining attributes of its type (a Conv's in/out channels and
groups, a Linear's features, a norm's features...) and the shapes of its own parameters and
saved buffers. Rebuilding is then build from the params, apply the structure, load the weights,
for any architecture and without running the pruner again.

Torch-Pruning has its own record (tp.state_dict / tp.load_state_dict), but it is a pickle read
back with torch.load, which can run code: the record here is JSON and the weights safetensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from squeeze.errors import StageRefused

# The attributes, per module type, that say how big its tensors are and that forward reads:
# what Torch-Pruning's pruning functions change beside the tensors (torch_pruning/pruner/
# function.py). The first matching type wins, so subclasses come before their bases.
SHAPE_ATTRS: tuple[tuple[type[nn.Module], tuple[str, ...]], ...] = (
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.Linear, ("in_features", "out_features")),
    (nn.modules.batchnorm._NormBase, ("num_features",)),  # BatchNorm*d, InstanceNorm*d
    (nn.GroupNorm, ("num_groups", "num_channels")),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.PReLU, ("num_parameters",)),
    (nn.Embedding, ("num_embeddings", "embedding_dim")),
    (nn.MultiheadAttention, ("embed_dim", "kdim", "vdim", "num_heads", "head_dim")),
    (nn.RNNBase, ("input_size", "hidden_size", "proj_size")),
)


class StructureError(StageRefused):
    """A structure record does not fit the network the checkpoint's arch builds."""


def shape_attrs(module: nn.Module) -> tuple[str, ...]:
    """The shape-defining attribute names of module's type (none for a type not listed)."""
    for kind, attrs in SHAPE_ATTRS:
        if isinstance(module, kind):
            return attrs
    return ()


def own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """module's own parameters and the buffers it saves (not its children's; no None slots,
    no non-persistent buffers, which are not in the state_dict the weights file holds)."""
    tensors = {n: p for n, p in module._parameters.items() if p is not None}
    skip = module._non_persistent_buffers_set
    tensors |= {n: b for n, b in module._buffers.items() if b is not None and n not in skip}
    return tensors


def describe(module: nn.Module) -> dict[str, Any] | None:
    """One module's entry: type, shape attributes and tensor shapes; None when it has neither
    (ReLU, pooling, containers), so nothing about it can change."""
    attrs, tensors = shape_attrs(module), own_tensors(module)
    if not attrs and not tensors:
        return None
    return {
        "type": type(module).__name__,
        "attrs": {a: to_json(getattr(module, a)) for a in attrs},
        "tensors": {n: list(t.shape) for n, t in tensors.items()},
    }


def to_json(value: Any) -> Any:
    """A shape attribute as JSON: ints stay, tuples (LayerNorm's normalized_shape) become lists."""
    return list(value) if isinstance(value, tuple) else value


def structure_of(net: nn.Module) -> dict[str, dict[str, Any]]:
    """The structure of net as it is now, by module name (named_modules; "" is net itself):
    {"layer1.0.conv1": {"type": "Conv2d", "attrs": {"in_channels": 16, "out_channels": 8,
    "groups": 1}, "tensors": {"weight": [8, 16, 3, 3]}}, ...}. Plain JSON."""
    entries = {name: describe(module) for name, module in net.named_modules()}
    return {name: entry for name, entry in entries.items() if entry is not None}


def apply_structure(net: nn.Module, structure: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize a freshly built net to a structure_of record, in place, so that the state_dict
    saved with the record loads into it; returns net.

    Shape attributes are set and every tensor whose recorded shape differs is replaced by an
    uninitialised one of that shape (load_state_dict fills it). Raises StructureError naming the
    modules when the record does not fit net: a module missing on either side, another type,
    other attributes or tensors, or a value that is not a shape.
    """
    modules = dict(net.named_modules())
    expected = {name for name, module in modules.items() if describe(module) is not None}
    missing, unknown = sorted(expected - structure.keys()), sorted(structure.keys() - expected)
    if missing or unknown:
        parts = [f"{label}: {', '.join(repr(n) for n in names)}"
                 for label, names in (("not in the record", missing), ("not in the network",
                                      unknown)) if names]  # fmt: skip
        raise StructureError(
            f"the structure record does not fit this network's modules ({'; '.join(parts)}): "
            "it was saved from another architecture; rebuild with the arch it was saved with"
        )
    for name, entry in structure.items():
        resize(name, modules[name], entry)
    return net


def resize(name: str, module: nn.Module, entry: dict[str, Any]) -> None:
    """Set one module's shape attributes and tensor shapes to its record entry."""
    attrs, tensors = shape_attrs(module), own_tensors(module)
    kind = type(module).__name__
    if (entry.get("type") != kind or set(entry.get("attrs", {})) != set(attrs)
            or set(entry.get("tensors", {})) != set(tensors)):  # fmt: skip
        raise StructureError(
            f"the structure record's module {name!r} is a {entry.get('type')} with attributes "
            f"{sorted(entry.get('attrs', {}))} and tensors {sorted(entry.get('tensors', {}))}, "
            f"the network's a {kind} with {sorted(attrs)} and {sorted(tensors)}: the record was "
            "saved from another architecture"
        )
    for attr, value in entry["attrs"].items():
        if not is_shape(value, allow_none=True):
            raise StructureError(f"the structure record's {name}.{attr} is {value!r}, not a size")
        setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for tensor_name, shape in entry["tensors"].items():
        if not isinstance(shape, list) or not is_shape(shape):
            raise StructureError(f"the structure record's {name}.{tensor_name} shape is {shape!r}")
        old = tensors[tensor_name]
        if list(old.shape) == shape:
            continue
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if tensor_name in module._parameters:
            # setattr, not _parameters[...]: modules like LSTM refresh their caches in __setattr__
            setattr(module, tensor_name, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module._buffers[tensor_name] = new


def is_shape(value: Any, allow_none: bool = False) -> bool:
    """A size (a non-negative int), a list of sizes, or (for optional attributes) None."""
    if value is None:
        return allow_none
    if isinstance(value, list):
        return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
