"""Build the network a class_path names (squeeze.config.allowlist decides whether it may be
imported).

What the path names must build a network, and be seen to before it is called: a class that
subclasses nn.Module, or a plain Python function annotated to return one (`-> nn.Module`), defined
in an allowed module. Never a builtin (`os.system`), an unannotated function (`subprocess.run`),
nor any other callable, whatever the allow-list says. Its output shape is checked on a dummy batch.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from squeeze.config.allowlist import (
    HOW_TO_ALLOW,
    ClassPathRefused,
    allowed_modules,
    is_allowed,
    split_class_path,
)
from squeeze.errors import StageRefused

if TYPE_CHECKING:  # torch is imported where a network is built: the allow-list needs none of it
    from torch import nn


class ClassPathError(StageRefused):
    """An allowed class_path does not build a usable network: it does not import, names no
    class or function that builds an nn.Module, does not take its init_args, or its output has
    the wrong shape."""


def build_net(
    class_path: str,
    init_args: dict[str, Any],
    root: Path = Path("."),
    allowed: Sequence[str] | None = None,
) -> nn.Module:
    """Import class_path (only if allowed), check it builds an nn.Module, call it with
    init_args and return the network.

    Args:
        class_path: `package.module.Name`: an nn.Module subclass, or a function annotated to
            return one, defined in an allowed module.
        init_args: its keyword arguments.
        root: the workspace: its allow-list, and the folder user packages import from (put on
            sys.path if missing, as `python -m stages.x` run there does).
        allowed: the allow-list; None reads root's (allowed_modules).
    Raises:
        ClassPathRefused: the module is not allowed (nothing was imported).
        ClassPathError: anything else, naming class_path and what was wrong.
    """
    from torch import nn

    module_name, name = split_class_path(class_path)
    allowed = allowed_modules(root) if allowed is None else tuple(allowed)
    if not is_allowed(module_name, allowed):
        raise ClassPathRefused(
            f"class_path {class_path!r}: module {module_name} is not in the modules the workspace "
            f"allows ({', '.join(allowed)}); to allow it, {HOW_TO_ALLOW}"
        )
    factory = resolve(class_path, module_name, name, root)
    check_kind(factory, class_path, allowed)
    check_init_args(factory, init_args, class_path)
    try:
        net = factory(**init_args)
    except Exception as err:
        raise ClassPathError(
            f"class_path {class_path!r}: building it with init_args {init_args} raised "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(net, nn.Module):
        raise ClassPathError(
            f"class_path {class_path!r}: returned a {type(net).__module__}.{type(net).__name__}, "
            "not an nn.Module"
        )
    return net


def check_init_args(factory: Any, init_args: dict[str, Any], class_path: str) -> None:
    """Refuse init_args that do not bind to factory's arguments, before it is called."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read: the call itself will say
        return
    try:
        signature.bind(**init_args)
    except TypeError as err:
        arguments = signature.replace(return_annotation=inspect.Signature.empty)
        raise ClassPathError(
            f"class_path {class_path!r}: init_args {sorted(init_args)} do not fit its "
            f"arguments {arguments}: {err}"
        ) from None


def resolve(class_path: str, module_name: str, name: str, root: Path) -> Any:
    """Import module_name (root on sys.path) and return its attribute name."""
    folder = str(root.resolve())
    if folder not in (str(Path(p or ".").resolve()) for p in sys.path):
        sys.path.insert(0, folder)  # where `python -m stages.x` in the workspace finds packages
    importlib.invalidate_caches()  # a package written since this process started
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the module raises at import
        raise ClassPathError(
            f"class_path {class_path!r}: module {module_name} does not import "
            f"({type(err).__name__}: {err}); it must be importable from the workspace {folder} "
            "or installed"
        ) from err
    try:
        return getattr(module, name)
    except AttributeError:
        raise ClassPathError(
            f"class_path {class_path!r}: module {module_name} ({module.__file__}) has no "
            f"attribute {name!r}"
        ) from None


def check_kind(factory: Any, class_path: str, allowed: Sequence[str]) -> None:
    """Refuse anything but an nn.Module subclass or a Python function annotated to return one,
    defined in an allowed module (not merely imported into one)."""
    from torch import nn

    if inspect.isclass(factory):
        ok = issubclass(factory, nn.Module)
    elif inspect.isfunction(factory):
        ok = returns_module(factory)
    else:
        ok = False
    if not ok:
        raise ClassPathError(
            f"class_path {class_path!r}: names a {describe(factory)}; it must name an nn.Module "
            "subclass, or a Python function annotated to return one (`-> nn.Module`)"
        )
    defined_in = getattr(factory, "__module__", None) or "?"
    if not is_allowed(defined_in, allowed):
        raise ClassPathError(
            f"class_path {class_path!r}: is defined in {defined_in}, which the workspace does not "
            f"allow ({', '.join(allowed)}); name it by its own module, or {HOW_TO_ALLOW}"
        )


def returns_module(function: Any) -> bool:
    """The function's return annotation is nn.Module or a subclass (string annotations too)."""
    from torch import nn

    try:
        hint = typing.get_type_hints(function).get("return")
    except Exception:  # an annotation that does not resolve says nothing we can trust
        return False
    return inspect.isclass(hint) and issubclass(hint, nn.Module)


def describe(obj: Any) -> str:
    """What obj is, in a few words, for an error."""
    if inspect.isfunction(obj):
        return "function not annotated to return an nn.Module"
    if inspect.isbuiltin(obj):
        return "builtin"
    if inspect.isclass(obj):
        return f"class that is not an nn.Module ({obj.__module__}.{obj.__qualname__})"
    if inspect.ismodule(obj):
        return "module"
    return f"{type(obj).__name__} object"


def check_output(
    net: nn.Module, channels: int, height: int, width: int, num_classes: int, network: str
) -> None:
    """Run a (2, C, H, W) float batch through net (eval mode, no grad) and refuse an output
    that is not a (2, K) tensor, naming the network (`class_path 'pkg.Net'` or the built-in's
    name), the shape got and the shape expected.

    The batch comes from a generator of its own: the check draws nothing from torch's global
    RNG, so it does not change what a seeded training run does after it.
    """
    import torch

    expected = (2, num_classes)
    batch = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(batch)
    except Exception as err:
        raise ClassPathError(
            f"{network}: its forward on a float (2, {channels}, {height}, "
            f"{width}) batch raised {type(err).__name__}: {err}; it must map (B, C, H, W) "
            f"to (B, {num_classes}) logits"
        ) from err
    finally:
        net.train(was_training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != expected:
        raise ClassPathError(
            f"{network}: its output on a float (2, {channels}, {height}, "
            f"{width}) batch is {got}, expected a tensor of shape {expected} (B, K logits "
            f"for {num_classes} classes)"
        )
