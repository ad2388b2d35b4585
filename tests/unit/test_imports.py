"""The import graph: no cycle among the project's modules, every stage's code among its dvc.yaml
deps, and no stage that imports Prefect (what `dvc repro` runs is plain Python)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from squeeze.config.imports import closures, cycles, graph, imports

PROJECT = Path(__file__).resolve().parents[2]
PACKAGES = ["squeeze", "stages", "flows", "benchmarks", "examples"]


def stage_modules() -> dict[str, str]:
    """dvc.yaml's stages -> the stage module each runs (`python -m stages.X ...`)."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    out = {}
    for key, stage in stages.items():
        cmd = stage.get("do", stage)["cmd"]
        out[key] = cmd.split()[2]
    return out


def test_the_project_has_no_import_cycle() -> None:
    assert cycles(graph(PROJECT, PACKAGES)) == []


def test_cycles_are_found_through_function_level_imports(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import f\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from pkg import a  # a dodge\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\nimport os\n")
    edges = graph(tmp_path, ["pkg"])
    assert edges["pkg.c"] == {"pkg", "pkg.a"}  # os is not the project's
    assert cycles(edges) == [["pkg.a", "pkg.b"]]


def test_relative_imports_resolve(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ("pkg/__init__.py", "pkg/sub/__init__.py", "pkg/x.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "pkg" / "sub" / "y.py").write_text("from .. import x\nfrom . import z\n")
    (tmp_path / "pkg" / "sub" / "z.py").write_text("")
    assert imports(tmp_path, "pkg.sub.y") == {"pkg", "pkg.x", "pkg.sub", "pkg.sub.z"}


def test_every_stage_lists_its_import_closure_among_its_deps() -> None:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    modules = stage_modules()
    closure = closures(PROJECT, sorted(set(modules.values())))
    for key, module in modules.items():
        deps = stages[key].get("do", stages[key])["deps"]
        missing = sorted(set(closure[module]) - set(deps))
        assert not missing, f"dvc.yaml stage {key} lacks {missing}: run `squeeze sync`"
        assert f"{module.replace('.', '/')}.py" in deps


# Imports every stage module in a fresh child of one interpreter (the third-party packages are
# imported once, before the fork) and prints the project files and Prefect modules it loaded.
PROBE = """
import json, os, sys
import numpy, torch, onnx, onnxruntime, pydantic, yaml  # shared by all, loaded once
root = sys.argv[1]
for module in sys.argv[2:]:
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        __import__(module)
        files = sorted({os.path.relpath(m.__file__, root) for m in list(sys.modules.values())
                        if getattr(m, "__file__", None) and m.__file__.startswith(root + "/")})
        prefect = sorted(m for m in sys.modules if m.split(".")[0] == "prefect")
        os.write(write, json.dumps({"files": files, "prefect": prefect}).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        print(module, pipe.read())
    os.wait()
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, dict[str, list[str]]]:
    """What importing each stage module really loads, by the interpreter (not by ast)."""
    modules = sorted(set(stage_modules().values()))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(PROJECT), *modules],
        cwd=PROJECT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = {}
    for line in proc.stdout.splitlines():
        module, _, payload = line.partition(" ")
        out[module] = json.loads(payload)
    assert sorted(out) == modules
    return out


def test_what_a_stage_really_imports_is_among_its_deps(loaded: dict) -> None:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    for key, module in stage_modules().items():
        deps = set(stages[key].get("do", stages[key])["deps"])
        files = {f for f in loaded[module]["files"]
                 if f.split("/")[0] in PACKAGES and (PROJECT / f).stat().st_size}  # fmt: skip
        assert files <= deps, f"{key}: {sorted(files - deps)} imported but not among the deps"


def test_no_stage_imports_prefect(loaded: dict) -> None:
    for module, found in loaded.items():
        assert not found["prefect"], f"`python -m {module}` imports Prefect"
    # nor later, from inside a function: no file a stage runs names prefect at all
    for module, files in closures(PROJECT, sorted(loaded)).items():
        for rel in files:
            tree = ast.parse((PROJECT / rel).read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not any(n.split(".")[0] == "prefect" for n in names), f"{module}: {rel}"
