"""The models floor: one contract for every model, one file format, and where weights come from.

Holds loading CLIP models and `ZeroShotClassifier`, the contract every attack, method and metric
uses (`clip`, with the architectures in model_configs/), this project's checkpoint format
(`checkpoints`), byte checks and lock files (`integrity`), hub models (`hub_models`), the zoo of
published robust checkpoints (`zoo`) with its `downloads`, `importers` and `transformers_layout`.
Imports core/ and data/ (the presets' normalisation and templates).

`from pmg_core.models.clip import load_model` and every other name of `clip` work as they did when this
floor was one module.
"""
from ..core.layout import lend

__getattr__, __dir__ = lend(__name__, "clip")
