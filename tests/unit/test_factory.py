"""A class_path is code execution, so squeeze.factory imports only what the workspace allows
(built-ins, its own package, pyproject.toml's [tool.squeeze], $SQUEEZE_ALLOWED_MODULES) and
refuses params naming anything else before any import; what it imports must be an nn.Module
class or a function annotated to return one, never a builtin or another callable; the network's
output shape is checked. Dask workers get the allowed user packages in their bundle."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from flows import builds
from flows.builds import build_remote, bundle
from flows.remote import shared_remote
from squeeze.config.allowlist import (
    ENV_VAR,
    ClassPathRefused,
    allowed_modules,
    check_class_paths,
    class_paths,
    is_allowed,
)
from squeeze.config.errors import ParamsError
from squeeze.config.files import load_params
from squeeze.config.params import Params, validate
from squeeze.errors import StageRefused
from squeeze.nets.factory import ClassPathError, build_net, check_output
from tests.conftest import PROJECT, run

# A user's own network module: a class, an annotated factory function, and the wrong kinds.
NETS = """
from __future__ import annotations

import torch
from torch import nn
from torch.nn import Linear  # imported, not defined here


class Tiny(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))  # (B, C, H, W) -> (B, K)


def tiny(in_channels: int, num_classes: int) -> Tiny:
    return Tiny(in_channels, num_classes)


def unannotated(in_channels, num_classes):
    return Tiny(in_channels, num_classes)


def not_a_net(in_channels: int, num_classes: int) -> nn.Module:
    return {"in_channels": in_channels}


def broken(in_channels: int, num_classes: int) -> nn.Module:
    raise ValueError("width must be even")


class Flat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)  # (B, C*H*W): not (B, K)


class NotAModule:
    pass


NUMBER = 3
"""


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace root, restoring sys.path, sys.modules and SQUEEZE_ALLOWED_MODULES after."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    monkeypatch.delenv(ENV_VAR, raising=False)
    root = tmp_path / "workspace"
    root.mkdir()
    return root


def package(root: Path, files: dict[str, str]) -> str:
    """Write a package of a fresh name (so no test imports another's) into root; its name."""
    name = f"usernets_{uuid.uuid4().hex[:8]}"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / name / rel).write_text(textwrap.dedent(text))
    return name


def pyproject(root: Path, text: str) -> None:
    (root / "pyproject.toml").write_text(textwrap.dedent(text))


def params_with(archs: dict[str, dict[str, Any]]) -> Params:
    """The project's params with the archs at the given dotted keys replaced (not merged)."""
    data = load_params(PROJECT).model_dump(mode="json")
    for key, value in archs.items():
        *path, last = key.split(".")
        section = data
        for part in path:
            section = section[part]
        section[last] = value
    return validate(data, "test")


def arch(class_path: str, **init_args: Any) -> dict[str, Any]:
    return {"class_path": class_path, "init_args": init_args}


# ---------------------------------------------------------------- the allow-list


def test_an_entry_allows_its_module_and_submodules_on_dotted_boundaries_only() -> None:
    allowed = ("mynets", "lab.models")
    assert is_allowed("mynets", allowed) and is_allowed("mynets.resnet.v2", allowed)
    assert is_allowed("lab.models", allowed) and is_allowed("lab.models.small", allowed)
    assert not is_allowed("mynetsevil", allowed) and not is_allowed("mynet", allowed)
    assert not is_allowed("lab", allowed) and not is_allowed("lab.modelsx", allowed)
    assert not is_allowed("subprocess", allowed)


def test_by_default_squeeze_and_the_workspaces_own_package(workspace: Path) -> None:
    assert allowed_modules(workspace) == ("squeeze",)  # no pyproject.toml
    pyproject(workspace, """
        [project]
        name = "My-Nets"
        [tool.setuptools]
        packages = ["lab", "lab.vision"]
    """)  # fmt: skip
    assert allowed_modules(workspace) == ("squeeze", "my_nets", "lab", "lab.vision")
    assert allowed_modules(PROJECT) == ("squeeze", "examples")  # squeeze's, with its examples/


def test_pyproject_and_the_environment_add_entries(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyproject(workspace, """
        [tool.squeeze]
        allowed_modules = ["mynets", "lab.models"]
    """)  # fmt: skip
    monkeypatch.setenv(ENV_VAR, " extra.nets, ,mynets,")
    assert allowed_modules(workspace) == ("squeeze", "mynets", "lab.models", "extra.nets")


@pytest.mark.parametrize(
    ("toml", "env", "match"),
    [
        ('[tool.squeeze]\nallowed_modules = "mynets"', "", "expected a list of module names"),
        ('[tool.squeeze]\nallowed_modules = ["my nets"]', "", "'my nets' is not a module name"),
        ("[tool.squeeze\n", "", "not valid TOML"),
        ("", "mynets,../evil", f"{ENV_VAR}: '../evil' is not a module name"),
    ],
)
def test_a_malformed_allow_list_is_refused_naming_where_it_is(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: str, match: str
) -> None:
    pyproject(workspace, toml)
    monkeypatch.setenv(ENV_VAR, env)
    with pytest.raises(ClassPathRefused, match=match):
        allowed_modules(workspace)


# ---------------------------------------------------------------- params: refused before import


def test_params_naming_a_module_not_allowed_are_refused_naming_every_key(
    workspace: Path,
) -> None:
    pyproject(workspace, '[tool.squeeze]\nallowed_modules = ["mynets"]\n')
    params = params_with(
        {
            "train_teacher.arch": arch("subprocess.run", args=["true"]),
            "distill.kd_small.student": arch("mynetsevil.Net"),
        }
    )
    assert class_paths(params) == {
        "train_teacher.arch.class_path": "subprocess.run",
        "distill.kd_small.student.class_path": "mynetsevil.Net",
    }
    with pytest.raises(ClassPathRefused) as err:
        check_class_paths(params, workspace)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("train_teacher.arch.class_path: 'subprocess.run' is not in the "
                               "modules the workspace allows (squeeze, mynets)")  # fmt: skip
    assert lines[1].startswith("distill.kd_small.student.class_path: 'mynetsevil.Net' is not")
    assert "[tool.squeeze] allowed_modules" in lines[2] and ENV_VAR in lines[2]
    # a params error and a stage refusal: the CLI and every stage's entry point report it
    assert isinstance(err.value, ParamsError) and isinstance(err.value, StageRefused)


def test_allowed_class_paths_and_built_ins_pass(workspace: Path) -> None:
    check_class_paths(load_params(PROJECT), workspace)  # the convnet everywhere
    pyproject(workspace, '[tool.squeeze]\nallowed_modules = ["mynets"]\n')
    params = params_with(
        {
            "train_teacher.arch": arch("mynets.resnet.ResNet", widths=[8, 16]),
            "distill.ce_small.student": arch("mynets.Small"),
        }
    )
    assert set(class_paths(params)) == {"train_teacher.arch.class_path",
                                        "distill.ce_small.student.class_path"}  # fmt: skip
    check_class_paths(params, workspace)


def test_a_module_not_allowed_is_never_imported(workspace: Path) -> None:
    marker = workspace / "imported"
    name = package(workspace, {"__init__.py": f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("imported")
        from torch import nn
        class Net(nn.Linear):
            def __init__(self) -> None:
                super().__init__(3, 2)
    """})  # fmt: skip
    params = params_with({"train_teacher.arch": arch(f"{name}.Net")})
    with pytest.raises(ClassPathRefused, match=rf"train_teacher.arch.class_path: '{name}.Net'"):
        check_class_paths(params, workspace)
    with pytest.raises(ClassPathRefused, match=rf"module {name} is not in the modules"):
        build_net(f"{name}.Net", {}, workspace)
    assert not marker.exists() and name not in sys.modules
    # the same module, allowed: imported (so the marker would have shown an import)
    assert isinstance(build_net(f"{name}.Net", {}, workspace, allowed=[name]), nn.Linear)
    assert marker.exists()


# ---------------------------------------------------------------- what may be called


def test_subprocess_run_and_os_system_are_refused_even_if_allowed(workspace: Path) -> None:
    marker = workspace / "ran"
    unannotated = r"'subprocess.run': names a function not annotated to return an nn.Module"
    with pytest.raises(ClassPathError, match=unannotated + "; it must name an nn.Module"):
        build_net("subprocess.run", {"args": ["touch", str(marker)]}, allowed=["subprocess"])
    with pytest.raises(ClassPathError, match=r"'os.system': names a builtin"):
        build_net("os.system", {"command": f"touch {marker}"}, allowed=["os"])
    assert not marker.exists()  # neither was called


def test_a_class_or_an_annotated_function_of_the_workspace_builds_the_network(
    workspace: Path,
) -> None:
    name = package(workspace, {"nets.py": NETS})
    allowed = [name]
    net = build_net(f"{name}.nets.Tiny", {"in_channels": 3, "num_classes": 7, "width": 5},
                    workspace, allowed)  # fmt: skip
    assert type(net).__name__ == "Tiny" and net.conv.out_channels == 5
    check_output(net, 3, 8, 6, 7, f"{name}.nets.Tiny")
    net = build_net(f"{name}.nets.tiny", {"in_channels": 1, "num_classes": 4}, workspace, allowed)
    check_output(net, 1, 5, 5, 4, f"{name}.nets.tiny")
    # through pyproject.toml, as a stage reads it (root on sys.path, like `python -m` there)
    pyproject(workspace, f'[tool.squeeze]\nallowed_modules = ["{name}.nets"]\n')
    assert type(build_net(f"{name}.nets.Tiny", {"in_channels": 1, "num_classes": 2},
                          workspace)).__name__ == "Tiny"  # fmt: skip


@pytest.mark.parametrize(
    ("attr", "init_args", "match"),
    [
        ("unannotated", {}, "names a function not annotated to return an nn.Module"),
        ("NotAModule", {}, r"names a class that is not an nn.Module \(.*\.NotAModule\)"),
        ("NUMBER", {}, "names a int object"),
        ("torch", {}, "names a module"),
        ("Linear", {"in_features": 2, "out_features": 2},
         r"is defined in torch\.nn\.modules\.linear, which the workspace does not allow"),
        ("missing", {}, r"module .*\.nets \(.*nets\.py\) has no attribute 'missing'"),
        ("not_a_net", {"in_channels": 1, "num_classes": 2}, "returned a builtins.dict, not an "
                                                            "nn.Module"),
        ("broken", {"in_channels": 1, "num_classes": 2},
         r"building it with init_args .* raised ValueError: width must be even"),
        ("Tiny", {"in_channels": 1, "classes": 2},
         r"init_args \['classes', 'in_channels'\] do not fit its arguments \(in_channels: .*\): "
            r"missing a required argument: 'num_classes'"),
    ],
)  # fmt: skip
def test_a_class_path_that_cannot_build_a_network_is_refused_saying_why(
    workspace: Path, attr: str, init_args: dict[str, Any], match: str
) -> None:
    name = package(workspace, {"nets.py": NETS})
    with pytest.raises(ClassPathError, match=rf"class_path '{name}\.nets\.{attr}': {match}"):
        build_net(f"{name}.nets.{attr}", init_args, workspace, allowed=[name])


def test_a_module_that_does_not_import_is_refused_naming_the_class_path(workspace: Path) -> None:
    name = package(workspace, {"nets.py": "import no_such_dependency_xyz\n"})
    expected = (
        rf"class_path '{name}\.nets\.Net': module {name}\.nets does not import "
        r"\(ModuleNotFoundError: No module named 'no_such_dependency_xyz'\); it must be "
        r"importable from the workspace"
    )
    with pytest.raises(ClassPathError, match=expected):
        build_net(f"{name}.nets.Net", {}, workspace, allowed=[name])
    with pytest.raises(ClassPathError, match=rf"module {name}\.absent does not import"):
        build_net(f"{name}.absent.Net", {}, workspace, allowed=[name])
    broken = package(workspace, {"nets.py": "raise RuntimeError('needs a GPU')\n"})
    with pytest.raises(ClassPathError, match=r"does not import \(RuntimeError: needs a GPU\)"):
        build_net(f"{broken}.nets.Net", {}, workspace, allowed=[broken])


def test_a_malformed_class_path_is_refused() -> None:
    for bad in ("Net", "mynets..Net", "../mynets.Net", "mynets.Net()"):
        with pytest.raises(ClassPathRefused, match="expected package.module.Name"):
            build_net(bad, {}, allowed=["mynets"])


# ---------------------------------------------------------------- the output shape


def test_an_output_of_the_wrong_shape_is_refused_with_the_shape_got_and_expected(
    workspace: Path,
) -> None:
    name = package(workspace, {"nets.py": NETS})
    flat = build_net(f"{name}.nets.Flat", {}, workspace, allowed=[name])
    expected = (
        r"class_path 'x\.Flat': its output on a float \(2, 3, 4, 4\) batch is \(2, 48\), "
        r"expected a tensor of shape \(2, 10\)"
    )
    with pytest.raises(ClassPathError, match=expected):
        check_output(flat, 3, 4, 4, 10, "class_path 'x.Flat'")
    tiny = build_net(f"{name}.nets.Tiny", {"in_channels": 1, "num_classes": 10}, workspace, [name])
    expected = (
        r"its forward on a float \(2, 3, 4, 4\) batch raised RuntimeError: .*; it must map "
        r"\(B, C, H, W\) to \(B, 10\) logits"
    )
    with pytest.raises(ClassPathError, match=expected):
        check_output(tiny, 3, 4, 4, 10, "x.Tiny")  # built for 1 channel, given 3


def test_a_non_tensor_output_is_refused() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.mean((2, 3)), x

    with pytest.raises(ClassPathError, match=r"its output .* is tuple, expected a tensor"):
        check_output(Pair(), 2, 3, 3, 2, "x.Pair")


def test_the_check_keeps_the_training_mode_and_the_global_rng(workspace: Path) -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 3))
    net.train()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_output(net, 1, 5, 5, 3, "x.Seq")
    assert net.training and torch.equal(torch.rand(3), expected)
    assert int(net[1].num_batches_tracked) == 0  # eval mode: BatchNorm statistics untouched


# ---------------------------------------------------------------- through squeeze.nets.models


def test_a_stage_builds_a_users_network_behind_the_raw_pixel_contract_or_refuses_it(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from squeeze.data.spec import DataSpec
    from squeeze.nets.models import build_model

    name = package(workspace, {"nets.py": NETS, "broken.py": "import no_such_dependency_xyz\n"})
    pyproject(workspace, f'[tool.squeeze]\nallowed_modules = ["{name}"]\n')
    monkeypatch.chdir(workspace)  # a stage runs in the workspace (`python -m stages.x`)
    spec = DataSpec(("a", "b", "c"), 6, 5, 3, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    model = build_model(arch(f"{name}.nets.Tiny", in_channels=3, num_classes=3), spec)
    logits = model(torch.zeros(4, 6, 5, 3, dtype=torch.uint8))  # raw (B, H, W, C) pixels
    assert logits.shape == (4, 3)
    with pytest.raises(ClassPathError, match=rf"class_path '{name}\.broken\.Net': module "
                       rf"{name}\.broken does not import"):  # fmt: skip
        build_model(arch(f"{name}.broken.Net"), spec)
    with pytest.raises(ClassPathError, match=r"output on a float \(2, 3, 6, 5\) batch is "
                       r"\(2, 90\), expected a tensor of shape \(2, 3\)"):  # fmt: skip
        build_model(arch(f"{name}.nets.Flat"), spec)
    with pytest.raises(ClassPathRefused, match="module subprocess is not in the modules"):
        build_model(arch("subprocess.run", args=["true"]), spec)


# ---------------------------------------------------------------- Dask workers: shipped code

PIPELINE = {
    "dvc.yaml": """stages:
  net:
    cmd: python -m stages.net
    deps: [stages/net.py]
    outs: [out/net]
""",
    "params.yaml": "net: {}\n",
    "pyproject.toml": '[tool.squeeze]\nallowed_modules = ["mynets.small", "out"]\n',
    "stages/__init__.py": "",
    "stages/net.py": """import json, os
from squeeze.nets.factory import build_net, check_output
net = build_net("mynets.small.Tiny", {"in_channels": 1, "num_classes": 3})
check_output(net, 1, 6, 6, 3, "mynets.small.Tiny")
os.makedirs("out/net", exist_ok=True)
json.dump({"params": sum(p.numel() for p in net.parameters()), "cwd": os.getcwd()},
          open("out/net/value.json", "w"))
""",
    "mynets/__init__.py": "",
    "mynets/small.py": NETS,
    "notallowed/__init__.py": "",
}


def test_a_worker_gets_the_allowed_user_packages_and_builds_a_users_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builds, "get_run_logger", lambda: logging.getLogger("squeeze.test"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    root = tmp_path / "workspace"
    for rel, text in PIPELINE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    run(["dvc", "init", "-q", "--no-scm"], root)
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], root)
    (root / "out" / "net").mkdir(parents=True)
    (root / "out" / "net" / "stale.txt").write_text("an out of an earlier build")
    packed = bundle(root, "net", *shared_remote(root))
    # the allowed package (whole: mynets/__init__.py runs first) and the pyproject that allows
    # it; not a package the allow-list does not name, nor a DVC out it does
    assert set(packed.files) == {"dvc.yaml", "params.yaml", ".dvcignore", "pyproject.toml",
                                 "stages/__init__.py", "stages/net.py", "mynets/__init__.py",
                                 "mynets/small.py"}  # fmt: skip
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    built = build_remote.fn("net", packed, timeout_s=120)
    builds.adopt(root, "net", built.lock)
    value = json.loads((root / "out/net/value.json").read_text())
    assert value["params"] == 4 * 1 * 9 + 4 + 4 * 3 + 3  # conv 1->4 (3x3) + fc 4->3
    assert not value["cwd"].startswith(str(root))  # built on the "worker", from the bundle
