"""The package's imports flow one way: no module imports, directly or through others, a module that imports it
back. Read statically from the source (every `import`/`from ... import` of imgcls, those inside functions too,
so a cycle cannot hide behind a deferred import), which takes milliseconds where importing each module alone
in a fresh interpreter would take a second each."""

from __future__ import annotations

import ast
from pathlib import Path

import imgcls

PACKAGE = Path(imgcls.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imgcls_imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in it: `from imgcls.data import cache` names the module
    imgcls.data.cache, `from imgcls.data.types import Batch` the module imgcls.data.types."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    # `import imgcls` alone (for __version__) is the package's __init__, which imports nothing of it
    return {target for target in found if target in modules and target not in (name, "imgcls")}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imgcls_imports(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (a depth-first search that meets a module still on its path)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once all it imports is searched
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_finder_sees_a_cycle_and_its_absence():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    root = tmp_path / "imgcls"
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("")
    (root / "data" / "a.py").write_text("def f():\n    from imgcls.data import b\n")
    (root / "data" / "b.py").write_text("from .a import f\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", root)
    graph = import_graph()
    assert "imgcls.data.b" in graph["imgcls.data.a"] and graph["imgcls.data.b"] == {"imgcls.data.a"}
    assert find_cycle(graph) == ["imgcls.data.a", "imgcls.data.b", "imgcls.data.a"]


def test_no_module_of_the_package_is_part_of_an_import_cycle():
    graph = import_graph()
    assert "imgcls.data.prepare" in graph and graph["imgcls.data.prepare"]  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_data_types_import_nothing_of_the_package():
    assert import_graph()["imgcls.data.types"] == set()


LAYERS = ["linear", "data", "runs", "training", "report", "cli"]  # each imports only the ones before it
BELOW = {"linear": set(), "data": set(), "runs": {"linear", "data"}, "training": {"linear", "data", "runs"},
         "report": {"linear", "data", "runs"}, "cli": set(LAYERS) - {"cli"}}


def test_every_package_imports_only_the_packages_below_it():
    """The layout is the architecture: the lecture's mathematics (linear/) and the data at the bottom, then what
    runs leave on disk, the training, the reports, the command line; the top-level modules serve all of them."""
    wrong = []
    for module, targets in import_graph().items():
        parts = module.split(".")
        if len(parts) < 3 or parts[1] not in BELOW:
            continue
        for target in targets:
            layer = target.split(".")[1] if target.count(".") >= 1 else None
            if layer in BELOW and layer != parts[1] and layer not in BELOW[parts[1]]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong
