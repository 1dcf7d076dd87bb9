"""Evaluation judges each model with the numerics it was fine-tuned with, unless told otherwise."""
import pytest
import torch

from pmg_core.data.datasets import get_dataset
from pmg_core.core.errors import UserError
from pmg_core.evaluation.accuracy import EvalConfig, evaluate
from pmg_core.models.clip import checkpoint_path, load_model
from pmg_core.data.presets import IMAGENET_MEAN

TASK, LIMIT = "real-digits", 100  # a task on which the two normalisations (CLIP's, ImageNet's) disagree


@pytest.fixture(scope="module")
def base():
    if checkpoint_path("clip-tiny") is None:
        pytest.skip("checkpoints/clip-tiny.safetensors is not there")
    return load_model("clip-tiny")


@pytest.fixture(scope="module")
def public_code_finetune(base):
    return base.fork("public-ft", "public-ft", {"kind": "finetune", "preset": "public-code"})


def _clean_correct(model, preset: str) -> int:
    data = get_dataset(TASK).limited(LIMIT, 0)
    x = torch.stack([data.data[i][0] for i in range(len(data))])
    y = torch.tensor([int(data.data[i][1]) for i in range(len(data))])
    with torch.no_grad():
        return int((model.classifier(data.classes, data.templates, preset)(x).argmax(1) == y).sum())


def test_each_model_is_judged_with_its_own_preset(base, public_code_finetune):
    assert _clean_correct(public_code_finetune, "public-code") != _clean_correct(public_code_finetune, "paper")
    cfg = EvalConfig(models=["base", "tuned"], datasets=[TASK], eps=0, steps=0, limit=LIMIT)
    base_row, tuned_row = evaluate(cfg, models=[base, public_code_finetune])["results"]
    assert (base_row["preset"], tuned_row["preset"]) == ("paper", "public-code")
    assert base_row["clean_correct"] == _clean_correct(base, "paper")
    assert tuned_row["clean_correct"] == _clean_correct(public_code_finetune, "public-code")


def test_an_explicit_preset_applies_to_every_model(public_code_finetune):
    cfg = EvalConfig(models=["tuned"], datasets=[TASK], eps=0, steps=0, limit=LIMIT, preset="paper")
    (row,) = evaluate(cfg, models=[public_code_finetune])["results"]
    assert row["preset"] == "paper" and row["clean_correct"] == _clean_correct(public_code_finetune, "paper")


@pytest.mark.parametrize("field, value, words", [("norm", "L3", "norm must be one of"),
                                                 ("preset", "fp8", "Unknown preset"),
                                                 ("num_workers", -1, "data-loading workers"),
                                                 ("attack", "autoattack", "needs at least 1 iteration")])
def test_bad_settings_are_refused_before_anything_runs(field, value, words):
    with pytest.raises(UserError, match=words):
        EvalConfig(**{field: value, "steps": 0 if field == "attack" else 10}).validate()


def test_every_tool_judges_a_model_with_its_own_preset_by_default(base, public_code_finetune):
    # The app's attack tab, `pmg_core attack` and the plots build classifiers without naming a preset.
    own, paper = public_code_finetune.classifier(["a", "b"]), public_code_finetune.classifier(["a", "b"], preset="paper")
    assert own.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN) and own.logit_scale == 1.0
    assert paper.mean.flatten().tolist() == pytest.approx(base.mean) and paper.logit_scale > 1.0
    assert base.classifier(["a", "b"]).mean.flatten().tolist() == pytest.approx(base.mean)
