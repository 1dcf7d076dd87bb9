"""The package's front door and its floors: the names a user starts with, imports that only run downward,
and every import a user was shown still working."""
import ast
import importlib
import re
import subprocess
from pathlib import Path

import pytest

import pmg_core

PACKAGE = Path(pmg_core.__file__).parent
ROOT = PACKAGE.parent
# The floors, from the bottom up (the README's architecture map): a module imports its own floor and those below.
FLOORS = ("core", "data", "models", "attacks", "training", "evaluation", "leaderboard", "bench", "cli")
# The one allowed circle: the dataset registry loads its built-in plug-ins lazily, and they register with it.
PLUGINS = {("pmg_core.data.datasets", "pmg_core.data.synthetic"), ("pmg_core.data.datasets", "pmg_core.data.paper_datasets")}
# Every module of pmg_core before it had floors (version 0.1): each path still imports.
FLAT_MODULES = """adaptive analysis attacks board card_stats cards cards_cli checkpoints cli data defenses distributed
downloads env errors evaluate explore findings hub_models images importers inputs integrity maps methods models
paper_datasets paper_prompts plots precision presets pretrain protocols recipes registry reported stats synthetic
text_attention threads train transformers_layout units zoo zoo_cli""".split()


def _modules() -> dict[str, Path]:
    """Every module and package of pmg_core on disk, by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """pmg_core modules a file imports, at the top or inside functions (a package's submodules by their own names)."""
    parts = list(path.resolve().relative_to(ROOT.resolve()).with_suffix("").parts)
    package = parts[:-1]
    modules, found = _modules(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            subs = {f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in modules}
            found |= subs if subs else {module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.split(".")[0] == "pmg_core"}


def _floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else None


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path) - {name} for name, path in _modules().items()}


def _cycles(graph: dict[str, set[str]], allowed=frozenset()) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if (node, nxt) in allowed:
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


def test_every_folder_of_the_package_is_a_floor_and_a_newcomer_reads_it_in_one_look():
    entries = {p.name for p in PACKAGE.iterdir() if p.name not in ("__init__.py", "__main__.py", "__pycache__")}
    assert entries == set(FLOORS), entries ^ set(FLOORS)
    assert len(entries) <= 10
    for floor in FLOORS:
        modules = [p for p in (PACKAGE / floor).glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 10, (floor, len(modules))
        doc = ast.get_docstring(ast.parse((PACKAGE / floor / "__init__.py").read_text()))
        assert doc and "mport" in doc, f"{floor}/__init__.py says what the floor holds and what it may import"


def test_each_floor_imports_only_itself_and_the_floors_below():
    upward = []
    for module, deps in _graph().items():
        floor = _floor(module)
        if floor is None:
            continue  # the front door (pmg_core/__init__.py, __main__.py) may name any floor
        for dep in deps:
            if _floor(dep) is not None and FLOORS.index(_floor(dep)) > FLOORS.index(floor):
                upward.append(f"{module} -> {dep}")
    assert upward == []


def test_pmg_core_modules_import_without_a_circle_other_than_the_dataset_plugins():
    assert _cycles(_graph(), PLUGINS) == []
    assert all(_floor(a) == _floor(b) == "data" for a, b in PLUGINS)


def test_the_projects_own_code_imports_the_modules_where_they_live():
    """Not the flat paths of before the floors, nor a name a floor only lends (pmg_core.data -> datasets)."""
    modules = _modules()
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "studio").glob("*.py"), ROOT / "app.py", *(ROOT / "tests").glob("*.py"),
             *(ROOT / "scripts").glob("*.py"), *(ROOT / "assets").glob("*.py")]
    wrong = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and path.is_relative_to(PACKAGE) and node.level:
                continue  # relative imports are resolved by _imports, checked below
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else []) + \
                    ([a.name for a in node.names] if isinstance(node, ast.Import) else [])
            wrong += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "pmg_core" and n not in modules]
        if path.is_relative_to(PACKAGE):
            wrong += [f"{path.name}: {m}" for m in _imports(path) if m not in modules]
    lent = {"pmg_core.data", "pmg_core.models", "pmg_core.attacks", "pmg_core.cli"}
    for path in files:
        if path.name in ("__main__.py", "test_package.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in lent:
                wrong += [f"{path.name}: {node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" not in modules]
    assert wrong == []


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


# What users were shown before the package had floors (README, docs and scripts of version 0.1): still works.
BEFORE_THE_FLOORS = [
    "from pmg_core.evaluate import EvalConfig, averages, evaluate",
    "from pmg_core.images import load_image",
    "from pmg_core.attacks import PGD, FeatureAttack, make_attack",
    "from pmg_core.data import expand_names, get_dataset, register_dataset",
    "from pmg_core.models import ClipModel, ZeroShotClassifier, load_model",
    "from pmg_core.cli import main",
    "from pmg_core.train import TrainConfig, train",
    "from pmg_core.units import from_255",
    "from pmg_core import adaptive, cards, env, evaluate, methods, synthetic",
    "from pmg_core.cards import Cell, parse_models",
    "from pmg_core.protocols import get_protocol, manifest_for",
    "from pmg_core.zoo import ZOO, load_entry, load_sharing_bases",
    "from pmg_core.explore import AttackSettings, compare, label_presets, prepare_image, starting_attack",
    "from pmg_core.errors import UserError",
]


def _documented_imports() -> list[str]:
    """Each pmg_core import in README.md's and docs/*.md's code blocks, and in scripts/, as one line."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), re.S):
            found += [line.strip() for line in block.splitlines() if re.match(r"\s*(from|import) pmg_core\b", line)]
    for script in sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pmg_core":
                found.append(f"from {node.module} import " + ", ".join(a.name for a in node.names))
    return found


@pytest.mark.parametrize("line", BEFORE_THE_FLOORS + _documented_imports())
def test_every_documented_import_works(line):
    namespace = {}
    exec(line, namespace)
    imported = line.split(" import ", 1)[1] if line.startswith("from ") else line.removeprefix("import ")
    names = [n.split(" as ")[-1].strip().split(".")[0] for n in imported.split(",")]
    assert all(namespace[n] is not None for n in names)


@pytest.mark.parametrize("name", FLAT_MODULES)
def test_every_flat_module_path_imports_as_the_module_where_it_lives_now(name, monkeypatch):
    old = importlib.import_module(f"pmg_core.{name}")
    if (PACKAGE / name).is_dir():
        assert dir(old) and old.__name__ == f"pmg_core.{name}"  # a floor that lends its old module's names
        return
    assert old.__name__ != f"pmg_core.{name}" and importlib.import_module(old.__name__) is old
    assert old.__spec__.name == old.__name__  # its own spec: reload and pickling see one module
    public = next(n for n in vars(old) if not n.startswith("_"))
    monkeypatch.setattr(f"pmg_core.{name}.{public}", "patched")
    assert getattr(importlib.import_module(old.__name__), public) == "patched"


def test_the_command_line_starts_from_the_package():
    out = subprocess.run(["python", "-m", "pmg_core", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and all(c in out.stdout for c in ("train", "eval", "attack", "cards", "zoo", "bench"))
