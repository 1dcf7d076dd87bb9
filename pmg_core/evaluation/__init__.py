"""The evaluation floor: how robust a model is, over datasets or on one image.

Holds zero-shot clean and robust accuracy over datasets (`accuracy`: `iter_evaluate`, `EvalConfig`,
the tables), protocols (`protocols`: datasets, sample manifests, the attack menu, pinned by a
definition hash), the one-image explorer behind the app's Attack tab and `pmg_core attack`
(`explore`), its attention maps (`maps`) and robustness-radius analysis (`analysis`), and the app's
figures (`plots`). Imports core/, data/, models/, attacks/ and training/ (torchrun's processes).
"""
