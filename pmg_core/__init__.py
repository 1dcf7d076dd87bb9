"""pmg_core: Pre-trained Model Guided Adversarial Fine-Tuning (PMG-AFT) for CLIP, with baselines.

The names a user starts with are here, loaded on first use (so `import pmg_core` and the command
line stay quick)::

    import pmg_core as pmg
    model = pmg.load_model("clip-tiny")
    clf = model.classifier(["circle", "square", "triangle"])
    adv = pmg.PGD(clf, eps=8 / 255, steps=10)(images, labels)
    rows = list(pmg.iter_evaluate(pmg.EvalConfig(models=["clip-tiny", "pmg-aft-tiny"], datasets=["mini"])))
    events = list(pmg.Trainer(pmg.TrainConfig(model="clip-tiny", method="pmg-aft", max_steps=10)).run())

The package's folders are its floors, each importing only those below it (the README's architecture
map; tests/test_package.py checks it): core, data, models, attacks, training, evaluation,
leaderboard, bench, cli. The flat module paths of before the floors (``pmg_core.evaluate``,
``pmg_core.images``, ...) still import (pmg_core/core/layout.py).
"""
from __future__ import annotations

import importlib

from .core.layout import install_moved_paths

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_model": "models.clip", "ClipModel": "models.clip", "ZeroShotClassifier": "models.clip",
    "PGD": "attacks.pgd", "FeatureAttack": "attacks.pgd", "make_attack": "attacks.pgd", "list_attacks": "attacks.pgd",
    "get_method": "training.methods", "list_methods": "training.methods",
    "Trainer": "training.loop", "TrainConfig": "training.loop",
    "iter_evaluate": "evaluation.accuracy", "EvalConfig": "evaluation.accuracy", "to_markdown": "evaluation.accuracy",
    "get_dataset": "data.datasets", "list_datasets": "data.datasets",
    "compare": "evaluation.explore", "AttackSettings": "evaluation.explore",
    "save_finetune": "models.checkpoints", "read_metadata": "models.checkpoints",
    "UserError": "core.errors",
}
__all__ = sorted(_EXPORTS)


install_moved_paths()


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pmg_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
