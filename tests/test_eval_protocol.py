"""What a report's robust numbers mean: the robust rule, the attack's strength and the public code's PGD."""
import pytest
import torch

from pmg_core.attacks.pgd import PGD, PublicCodePGD, get_attack, make_attack
from pmg_core.core.errors import UserError
from pmg_core.evaluation.accuracy import EvalConfig, describe_protocol, evaluate, sample_noise, write_report
from toy import make_toy

TASK = "toy-colours"


def test_final_rule_scores_the_last_iterate_and_is_never_stricter_than_ever(model):
    cfg = dict(models=["x"], datasets=[TASK], eps=8 / 255, steps=4, step_size=4 / 255, batch_size=32)
    ever = evaluate(EvalConfig(**cfg), models=[model])["results"][0]
    final = evaluate(EvalConfig(**cfg, robust_rule="final"), models=[model])["results"][0]
    assert final["clean_correct"] == ever["clean_correct"]
    assert final["robust_correct"] >= ever["robust_correct"]
    # By hand: the last iterate of the same per-sample seeded PGD, every sample attacked every step.
    x, y = make_toy(96, seed=2).tensors
    clf = model.classifier(["red", "green", "blue", "grey"], ("a {} image",)).eval()
    with torch.no_grad():
        clean = clf(x).argmax(1) == y
    init = sample_noise(range(96), (3, 32, 32), 8 / 255, "Linf", 0)
    res = PGD(clf, 8 / 255, 4 / 255, 4, select="last").run(x, y, init=init)
    assert final["robust_correct"] == int((clean & (res.adv_pred == y)).sum())
    assert ever["robust_correct"] == int((clean & ~res.fooled).sum())


def test_every_report_names_its_robust_rule_and_prompts(model, tmp_path):
    report = evaluate(EvalConfig(models=["x"], datasets=[TASK], eps=2 / 255, steps=1, robust_rule="final"), models=[model])
    assert "(--robust-rule final)" in report["protocol"] and "prompts public-code" in report["protocol"]
    assert report["config"]["robust_rule"] == "final"
    paths = write_report(report, str(tmp_path / "r.json"))
    assert open(paths[2]).read().startswith(report["protocol"])
    assert "(--robust-rule ever)" in describe_protocol(EvalConfig())
    with pytest.raises(UserError, match="robust rule must be one of ever, final"):
        EvalConfig(robust_rule="sometimes").validate()


def test_autoattack_defaults_to_its_standard_iterations_and_says_when_fewer_ran():
    assert EvalConfig(attack="autoattack").steps == 100 and EvalConfig(attack="autoattack-standard").steps == 100
    assert EvalConfig().steps == 10  # PGD-10, the paper's
    assert "Fewer iterations" not in describe_protocol(EvalConfig(attack="autoattack"))
    assert "Fewer iterations than autoattack's standard 100" in describe_protocol(EvalConfig(attack="autoattack", steps=10))
    assert "Fewer iterations" not in describe_protocol(EvalConfig(steps=10))


def _toy_batch(n: int):
    x, y = make_toy(n, seed=7).tensors
    return x, y


def test_public_code_pgd_is_registered_and_stays_in_the_ball(model):
    clf = model.classifier(["red", "green", "blue", "grey"], ("a {} image",), "public-code").eval()
    x, y = _toy_batch(16)
    adv = make_attack("pgd-public-code", clf, 4 / 255, steps=3, alpha=1 / 255, seed=0)(x, y)
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6 and 0 <= adv.min() and adv.max() <= 1
    assert get_attack("pgd-public-code").pgd_loss is None  # judged on the image it returns: its final iterate


def test_public_code_pgd_loses_gradient_with_the_batch_size_and_ours_does_not(model):
    """Its batch-mean CE under fp16 without loss scaling: more input gradients underflow to zero (and
    those pixels stay put) in a bigger batch, so the same images are attacked less. Ours is unaffected."""
    clf = model.classifier(["red", "green", "blue", "grey"], ("a {} image",), "public-code").eval()
    x, y = _toy_batch(256)

    def unmoved(attack, n: int) -> float:  # share of the first 8 images' pixels that one step leaves alone
        return ((attack(x[:n], y[:n]) - x[:n])[:8] == 0).float().mean().item()

    theirs = PublicCodePGD(clf, 4 / 255, 4 / 255, steps=1, random_start=False)
    ours = PGD(clf, 4 / 255, 4 / 255, steps=1, random_start=False, select="last")
    assert unmoved(theirs, 256) > unmoved(theirs, 8)
    assert unmoved(ours, 256) == unmoved(ours, 8) < unmoved(theirs, 256)
