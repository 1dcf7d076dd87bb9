"""pmg_core: Pre-trained Model Guided Adversarial Fine-Tuning (PMG-AFT) for CLIP, with baselines.

The names a user starts with are here, loaded on first use (so `import pmg_core` and the command
line stay quick)::

    import pmg_core as pmg
    model = pmg.load_model("clip-tiny")
    clf = model.classifier(["circle", "square", "triangle"])
    adv = pmg.PGD(clf, eps=8 / 255, steps=10)(images, labels)
    rows = list(pmg.iter_evaluate(pmg.EvalConfig(models=["clip-tiny", "pmg-aft-tiny"], datasets=["mini"])))
    events = list(pmg.Trainer(pmg.TrainConfig(model="clip-tiny", method="pmg-aft", max_steps=10)).run())

`pmg_core.evaluate` and `pmg_core.train` are the modules (their run-to-the-end functions share those
names: ``from pmg_core.evaluate import evaluate``); a re-export under the same name would be
replaced by the module as soon as anything imports it.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_model": "models", "ClipModel": "models", "ZeroShotClassifier": "models",
    "PGD": "attacks", "FeatureAttack": "attacks", "make_attack": "attacks", "list_attacks": "attacks",
    "get_method": "methods", "list_methods": "methods",
    "Trainer": "train", "TrainConfig": "train",
    "iter_evaluate": "evaluate", "EvalConfig": "evaluate", "to_markdown": "evaluate",
    "get_dataset": "data", "list_datasets": "data",
    "compare": "explore", "AttackSettings": "explore",
    "save_finetune": "checkpoints", "read_metadata": "checkpoints",
    "UserError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pmg_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
