"""The package's front door and its layers: the names a user starts with, and imports that only run downward."""
import ast
import re
from pathlib import Path

import pmg_core

PACKAGE = Path(pmg_core.__file__).parent
# A module may import those listed for it and what they may import (the README's architecture map).
# data -> synthetic / paper_datasets is the one allowed loop: the registry loads its built-in plug-ins lazily.
PLUGINS = {("data", "synthetic"), ("data", "paper_datasets")}


def _units() -> set[str]:
    """The package's modules and sub-packages, by name."""
    return {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def _imports(path: Path) -> set[str]:
    """pmg_core modules (or sub-packages) a file imports, at the top or inside functions."""
    here = ["pmg_core"] + list(path.parent.relative_to(PACKAGE).parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            found += [module + [a.name] for a in node.names] if not node.module else [module]
        elif isinstance(node, ast.Import):
            found += [a.name.split(".") for a in node.names]
    return {m[1] for m in found if len(m) > 1 and m[0] == "pmg_core"} & _units()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.glob("*.py"):
        graph[path.stem] = _imports(path) - {path.stem, "__init__"}
    for pkg in (p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        deps = set()
        for path in pkg.glob("*.py"):
            deps |= {n for n in _imports(path) if (PACKAGE / f"{n}.py").is_file() or (PACKAGE / n).is_dir()}
        graph[pkg.name] = deps - {pkg.name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if (node, nxt) in PLUGINS:
                continue
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_pmg_core_modules_import_without_a_circle_other_than_the_dataset_plugins():
    assert _cycles(_graph()) == []


def test_file_formats_and_environment_facts_import_nothing_above_them():
    graph = _graph()
    assert graph["checkpoints"] <= {"errors"}, graph["checkpoints"]
    assert graph["env"] <= {"errors"}, graph["env"]
    assert "models" not in graph["distributed"] and "data" not in graph["models"]


def test_the_names_a_user_starts_with_are_at_the_top_of_the_package():
    for name in pmg_core.__all__:
        assert getattr(pmg_core, name) is not None, name
    assert pmg_core.PGD.__module__ == "pmg_core.attacks.pgd" and pmg_core.load_model.__module__ == "pmg_core.models.clip"


def test_the_readme_python_example_runs(capsys):
    readme = (PACKAGE.parent / "README.md").read_text()
    code = re.search(r"<!-- python-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "| pmg-aft-tiny |" in out and "tensor(" in out


def test_the_apps_modules_import_without_a_circle():
    """studio/ too: policy and state imported each other (under TYPE_CHECKING, which still ties them)."""
    studio = PACKAGE.parent / "studio"
    names = {p.stem for p in studio.glob("*.py")}
    graph = {}
    for path in studio.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "studio"):
                module = (node.module or "").removeprefix("studio").lstrip(".")
                deps |= {module.split(".")[0]} if module else {a.name for a in node.names}
        graph[path.stem] = (deps & names) - {path.stem, "__init__"}
    assert graph["state"] and _cycles(graph) == []
