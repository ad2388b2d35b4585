"""The project's import graph, read from the source with the stdlib `ast` (nothing is imported).

Every `import` and `from ... import` counts wherever it is written (module level, inside a
function, under `if TYPE_CHECKING:`), because each one runs the module when reached. A module is a
file of the workspace: `a.b` is `a/b.py` or `a/b/__init__.py`; imports of installed packages
(torch, prefect) are not the project's and are left out.

Two uses: the code deps of every dvc.yaml stage are the import closure of its stage module
(squeeze.config.dvcyaml), so a change to any module a stage runs makes DVC re-run it; and the
unit test that fails on an import cycle among the project's modules (tests/unit/test_imports.py).
"""

from __future__ import annotations

import ast
from pathlib import Path


def module_file(root: Path, module: str) -> Path | None:
    """The file of a dotted module under root (`a.b` -> a/b.py or a/b/__init__.py), or None when
    root holds no such module (an installed package, the standard library)."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(root: Path, path: Path) -> str:
    """The dotted name of a file under root (a/b/__init__.py -> a.b)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from X import ...` names, resolving relative levels."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(root: Path, module: str) -> frozenset[str]:
    """The project modules `module` imports directly (each package on the way included, since
    importing a.b.c runs a/__init__.py and a/b/__init__.py): names `module_file` finds under root.

    Raises:
        FileNotFoundError: root holds no module of that name.
        SyntaxError: the file does not parse (its path and line in the message).
    """
    path = module_file(root, module)
    if path is None:
        raise FileNotFoundError(f"{root}: no module {module!r} (no .py file or package there)")
    tree = ast.parse(path.read_text(), filename=str(path))
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path.name == "__init__.py")
            named.add(base)
            # `from package import module` imports package.module
            named.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for name in named:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix != module and module_file(root, prefix) is not None:
                found.add(prefix)
    return frozenset(found)


def closures(root: Path, modules: list[str]) -> dict[str, list[str]]:
    """Every project file each module runs when imported, itself and its packages' __init__.py
    files included: {module: paths relative to root, sorted}. Each file is parsed once."""
    direct: dict[str, frozenset[str]] = {}
    out = {}
    for module in modules:
        seen, todo = set(), [module]
        todo += [module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                if name not in direct:
                    direct[name] = imports(root, name)
                todo.extend(direct[name])
        files = {module_file(root, name) for name in seen}
        # an empty file (a package's bare __init__.py) holds no code, and DVC warns on empty deps
        out[module] = sorted(str(path.relative_to(root)) for path in files
                             if path is not None and path.stat().st_size)  # fmt: skip
    return out


def graph(root: Path, packages: list[str]) -> dict[str, frozenset[str]]:
    """The import graph of every module in the given top-level packages under root."""
    modules = [module_name(root, path) for top in packages
               for path in sorted((root / top).rglob("*.py"))]  # fmt: skip
    return {name: imports(root, name) for name in modules}


def cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """The import cycles: each strongly connected component of more than one module (or a module
    that imports itself), sorted; Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    found.append(sorted(component))
    return sorted(found)
