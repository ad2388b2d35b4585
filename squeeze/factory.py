"""Your own network, named by import path: `{class_path: "package.module.Name", init_args: {...}}`
(LightningCLI's convention), resolved here under an allow-list.

Params can arrive from the Prefect UI or API, so a class_path is code execution: importing a
module runs it. Only modules the workspace owner allowed are imported, and the allow-list lives
outside params, where a run's params cannot change it:

- `squeeze` (the built-in architectures) and the workspace's own package, which is its
  pyproject.toml's `[project].name` (dashes and dots as underscores) and every name in an explicit
  `[tool.setuptools] packages` list (package discovery patterns are not read: name those packages
  in allowed_modules);
- `[tool.squeeze] allowed_modules = ["mynets", ...]` in the workspace's pyproject.toml;
- the environment variable SQUEEZE_ALLOWED_MODULES (comma-separated), e.g. of a Prefect worker;
  the flow checks params against its own, a stage against its machine's (a Dask worker's
  environment is its own; pyproject.toml travels to it with the code, flows.builds).

An entry is a module prefix on dotted boundaries: `mynets` allows `mynets` and `mynets.resnet`,
never `mynetsevil`. Importing `mynets.resnet` also runs `mynets/__init__.py`, as any import does.

What the path names must build a network, and be seen to before it is called: a class that
subclasses nn.Module, or a plain Python function annotated to return one (`-> nn.Module`), defined
in an allowed module. Never a builtin (`os.system`), an unannotated function (`subprocess.run`),
nor any other callable, whatever the allow-list says. Its output shape is checked on a dummy batch.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import tomllib
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from squeeze.errors import StageRefused
from squeeze.params import ParamsError

if TYPE_CHECKING:  # torch is imported where a network is built: the allow-list needs none of it
    from torch import nn

    from squeeze.params import Params

ENV_VAR = "SQUEEZE_ALLOWED_MODULES"
BUILT_IN = ("squeeze",)
PYPROJECT = "pyproject.toml"
DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
HOW_TO_ALLOW = (
    f"add its module (or a package above it) to `[tool.squeeze] allowed_modules` in the "
    f"workspace's {PYPROJECT} (Dask workers get a copy), or to {ENV_VAR} (comma-separated) "
    "in the environment of what runs the flow (`squeeze run`, `squeeze serve`, a Prefect "
    "worker) and of every Dask worker"
)


class ClassPathRefused(ParamsError, StageRefused):
    """A class_path names a module the workspace does not allow, or the allow-list itself is
    malformed; raised before anything is imported."""


class ClassPathError(StageRefused):
    """An allowed class_path does not build a usable network: it does not import, names no
    class or function that builds an nn.Module, does not take its init_args, or its output has
    the wrong shape."""


def allowed_modules(root: Path) -> tuple[str, ...]:
    """The module prefixes the workspace at root allows a class_path to import: the built-ins,
    the workspace's own package, `[tool.squeeze] allowed_modules` and $SQUEEZE_ALLOWED_MODULES.

    Raises ClassPathRefused naming the file or variable when an entry is not a dotted name.
    """
    project = read_pyproject(root)
    entries = [*BUILT_IN, *own_packages(project)]
    configured = project.get("tool", {}).get("squeeze", {}).get("allowed_modules", [])
    where = f"{root / PYPROJECT}: tool.squeeze.allowed_modules"
    if not isinstance(configured, list) or not all(isinstance(e, str) for e in configured):
        raise ClassPathRefused(f"{where}: expected a list of module names, got {configured!r}")
    entries += checked(configured, where)
    env = [e.strip() for e in os.environ.get(ENV_VAR, "").split(",") if e.strip()]
    entries += checked(env, ENV_VAR)
    return tuple(dict.fromkeys(entries))


def read_pyproject(root: Path) -> dict[str, Any]:
    """The workspace's pyproject.toml as a mapping ({} when there is none)."""
    path = root / PYPROJECT
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as err:
        raise ClassPathRefused(
            f"{path}: not valid TOML ({err}); the allow-list is read there"
        ) from None


def own_packages(project: dict[str, Any]) -> list[str]:
    """The workspace's own package: `[project].name` as an import name, plus an explicit
    `[tool.setuptools] packages` list (not find patterns, which can match more than meant)."""
    names = []
    if isinstance(name := project.get("project", {}).get("name"), str):
        names.append(re.sub(r"[-.]+", "_", name).lower())
    packages = project.get("tool", {}).get("setuptools", {}).get("packages")
    if isinstance(packages, list):
        names += [p for p in packages if isinstance(p, str)]
    return [n for n in names if DOTTED.match(n)]


def checked(entries: Iterable[str], where: str) -> list[str]:
    """entries, each a dotted module name; else ClassPathRefused naming where it came from."""
    entries = list(entries)
    for entry in entries:
        if not DOTTED.match(entry):
            raise ClassPathRefused(f"{where}: {entry!r} is not a module name like mynets.resnet")
    return entries


def is_allowed(module: str, allowed: Sequence[str]) -> bool:
    """module is an allowed entry or inside one (dotted boundaries: `a` allows `a.b`, not `ab`)."""
    return any(module == entry or module.startswith(entry + ".") for entry in allowed)


def split_class_path(class_path: str) -> tuple[str, str]:
    """`package.module.Name` -> (`package.module`, `Name`); ClassPathRefused if malformed."""
    if not DOTTED.match(class_path) or "." not in class_path:
        raise ClassPathRefused(
            f"class_path {class_path!r}: expected package.module.Name (a dotted import path)"
        )
    module, name = class_path.rsplit(".", 1)
    return module, name


def workspace_packages(root: Path, modules: Iterable[str]) -> list[str]:
    """The folder or .py file in root of each dotted module's top-level package, first seen
    first; squeeze itself and packages that are installed rather than in root are left out.
    These are the user's code files: DVC deps of the stages that build networks, and what a
    remote build ships so a worker imports the same code."""
    tops = dict.fromkeys(module.split(".")[0] for module in modules)
    found = [[rel for rel in (top, f"{top}.py") if (root / rel).exists()] for top in tops
             if top != "squeeze"]  # fmt: skip
    return [rels[0] for rels in found if rels]


def class_paths(params: Params) -> dict[str, str]:
    """Every class_path in params by its key (`distill.kd_small.student.class_path`): the
    teacher's arch, the distilled students and the distilled-ensemble students."""
    archs = {"train_teacher.arch": params.train_teacher.arch}
    archs |= {f"distill.{name}.student": cfg.student for name, cfg in params.distill.items()}
    archs |= {f"merge.{name}.student": cfg.student for name, cfg in params.merge.items()}
    return {f"{key}.class_path": arch.class_path for key, arch in archs.items()
            if getattr(arch, "class_path", None) is not None}  # fmt: skip


def check_class_paths(params: Params, root: Path) -> None:
    """Refuse params naming a class_path outside the workspace's allow-list, before anything is
    imported: one ClassPathRefused naming every such key, its value and how to allow it."""
    allowed = allowed_modules(root)
    refused = [
        f"{key}: {path!r} is not in the modules the workspace allows ({', '.join(allowed)})"
        for key, path in class_paths(params).items()
        if not is_allowed(split_class_path(path)[0], allowed)
    ]
    if refused:
        raise ClassPathRefused("\n".join(refused) + f"\nTo allow a module, {HOW_TO_ALLOW}.")


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
            sys.path if missing, as `python -m tasks.x` run there does).
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
        sys.path.insert(0, folder)  # where `python -m tasks.x` in the workspace finds packages
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
