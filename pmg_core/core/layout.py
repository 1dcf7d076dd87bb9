"""How the package's names are found: a floor lending the names of its main module, and the flat paths of before the floors.

- `lend(package, module)`: the `__getattr__` / `__dir__` pair for a floor's __init__ that lends the
  names of one of its modules. `pmg_core.attacks`, `.data`, `.models` and `.cli` were single modules
  before the package had floors; each floor lends its old module's names (`from pmg_core.attacks
  import PGD` still works), loaded on first use so that importing a floor stays cheap.
- `MOVED` and `install_moved_paths()`: the other flat module paths (`pmg_core.evaluate`,
  `pmg_core.images`, ...) still import, as the very module objects of their new homes, so a
  monkeypatch or a logger level set through either path reaches the one module. The library's own
  code imports the new paths (tests/test_package.py checks that).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Callable

# flat module name (pmg_core.<name>, before the floors) -> its path now, below pmg_core
MOVED = {
    "errors": "core.errors", "env": "core.env", "registry": "core.registry", "units": "core.units",
    "threads": "core.threads", "precision": "core.precision", "synthetic": "data.synthetic",
    "paper_datasets": "data.paper_datasets", "paper_prompts": "data.paper_prompts", "images": "data.images",
    "inputs": "data.inputs", "presets": "data.presets", "checkpoints": "models.checkpoints",
    "hub_models": "models.hub_models", "zoo": "models.zoo", "importers": "models.importers",
    "downloads": "models.downloads", "transformers_layout": "models.transformers_layout",
    "integrity": "models.integrity", "adaptive": "attacks.adaptive", "defenses": "attacks.defenses",
    "text_attention": "attacks.text_attention", "methods": "training.methods", "train": "training.loop",
    "pretrain": "training.pretrain", "distributed": "training.distributed", "evaluate": "evaluation.accuracy",
    "protocols": "evaluation.protocols", "explore": "evaluation.explore", "maps": "evaluation.maps",
    "analysis": "evaluation.analysis", "plots": "evaluation.plots", "cards": "leaderboard.cards",
    "card_stats": "leaderboard.card_stats", "board": "leaderboard.board", "findings": "leaderboard.findings",
    "reported": "leaderboard.reported", "stats": "leaderboard.stats", "cards_cli": "cli.cards",
    "zoo_cli": "cli.zoo", "recipes": "cli.recipes",
}


def lend(package: str, module: str) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package` that look a missing name up in `package.module`."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def __dir__() -> list[str]:
        lent = importlib.import_module(f"{package}.{module}")
        return sorted(set(vars(sys.modules[package])) | {n for n in vars(lent) if not n.startswith("_")})

    return __getattr__, __dir__


class _MovedPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `pmg_core.<flat name>` as the module at its new path (last on sys.meta_path: real files win)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != "pmg_core" or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(f"pmg_core.{MOVED[spec.name.partition('.')[2]]}")
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # the import machinery just set the old path's spec on the module: give it back its own
        module.__spec__ = module.__spec__.loader_state


def install_moved_paths() -> None:
    if not any(isinstance(f, _MovedPaths) for f in sys.meta_path):
        sys.meta_path.append(_MovedPaths())
