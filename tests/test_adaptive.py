"""Attacks a test-time defense cannot hide from, on hand-made models where the right and the wrong
verdict differ for certain: EOT over N draws, the attack through the defense (not around it),
best-of over attacks, the judging rule, the robust rules, the gate-aware attack and the encoder
TTC measures tau with."""
import pytest
import torch

from pmg_core.attacks.adaptive import ADAPTIVE, GATE_CAP, GateAwarePGD, SuiteSettings, clean_tau, right_on_every_draw
from pmg_core.attacks.pgd import EOTPGD, random_start
from pmg_core.attacks.defenses import DefendedClassifier, get_defense
from pmg_core.core.errors import UserError
from pmg_core.evaluation.accuracy import EvalConfig, evaluate, evaluate_batch, evaluate_defended_batch
from pmg_core.models.clip import ZeroShotClassifier
from pmg_core.data.presets import get_preset
from toy import SHIFT, ScriptedLine, grey, scripted_defense

STEP = 2 / 255
PAPER = get_preset("paper")


def _cfg(**kw) -> EvalConfig:
    # Four sign steps of STEP from the unperturbed image: the attacker's displacement e runs 0, 1, 2, 3, 4 steps.
    return EvalConfig(eps=4 * STEP, steps=4, step_size=STEP, random_start=False, **kw)


def _wrong_past(steps: float):
    return lambda e: (e - steps * STEP) * 1000  # label 0 wrong once e passes `steps` steps


def _defended_eval(model, shifts, **kw):
    x, y = grey()
    defended = DefendedClassifier(model, scripted_defense(shifts))
    return evaluate_defended_batch(defended, x, y, torch.arange(len(y)), _cfg(defense="ttc", **kw), PAPER)


def test_the_adaptive_attack_averages_its_gradients_over_n_draws_of_the_defense():
    """Through the defense one draw in four points up five times as hard as the other three point
    down: only the mean of four draws climbs to the wrong class. The attack that ignores the defense
    (or runs on the undefended classifier) goes down, and so does one that follows one draw at a time."""
    model = ScriptedLine(_wrong_past(1.5), slope=lambda d: torch.where(d > SHIFT / 2, 5.0, -1.0))
    shifts = [SHIFT, -SHIFT, -SHIFT, -SHIFT]
    clean, robust, by_attack = _defended_eval(model, shifts, eot=4)
    assert clean.all() and by_attack["unaware"].all()
    assert not by_attack["bpda-eot"].any() and not robust.any()
    _, robust, _ = _defended_eval(model, shifts, eot=1)
    assert robust.all()  # the same attack with one draw a step never gets there


def test_eot_pgd_steps_along_the_mean_of_its_draws_gradients(model):
    """On TTC's real random start: the step direction is the mean of `eot` BPDA gradients, each
    through the next draw of the defense, not any single one of them."""
    from toy import make_toy

    x, y = make_toy(3, seed=4).tensors
    clf = model.classifier(["red", "green", "blue", "grey"], ("a {} image",)).eval()
    defended = get_defense("ttc", tau_threshold=1e9).wrap(clf)
    grad, _, _ = EOTPGD(defended, 8 / 255, 2 / 255, 1, eot=3)._grad(x, y, False)
    defended.reseed()
    draws = []
    for _ in range(3):
        z = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(defended(z), y, reduction="sum"), z)
        draws.append(g)
    assert torch.allclose(grad, sum(draws) / 3, atol=1e-7)
    assert not any(torch.allclose(grad, g, atol=1e-7) for g in draws)


def test_every_attack_through_the_defense_takes_eot_draws_per_step():
    model = ScriptedLine(_wrong_past(100))  # never fooled: every attack runs every step
    x, y = grey()
    used = {}
    for name in ("bpda-eot", "apgd-ce"):
        for eot in (1, 3):
            defense = scripted_defense([0.0])
            attack = ADAPTIVE[name].build(DefendedClassifier(model, defense), SuiteSettings(eps=4 * STEP, steps=4,
                                                                                            step_size=STEP, eot=eot))
            attack(x, y, torch.zeros_like(x), 0)
            used[name, eot] = defense.draws
        assert used[name, 3] - used[name, 1] >= 2 * 3  # two more draws in each gradient step (APGD: its steps - 1)


def test_an_image_only_the_unaware_attack_found_still_counts_against_the_defense():
    """Best-of: the attack on the undefended classifier climbs to the wrong class, and the defense
    does not undo it; the attack through the defense is led the other way. One fooling image is enough."""
    model = ScriptedLine(_wrong_past(1.5), slope=lambda d: torch.where(d.abs() < SHIFT / 2, 1.0, -1.0))
    clean, robust, by_attack = _defended_eval(model, [SHIFT])
    assert clean.all() and by_attack["bpda-eot"].all()
    assert not by_attack["unaware"].any() and not robust.any()


def test_a_sample_fooled_by_any_restart_is_not_robust():
    """One restart starts past the wrong-class line, the other at the image itself, from which the
    gradient leads away: whichever comes first, every restart's image is judged."""
    from pmg_core.attacks.adaptive import menu_for, run_suite

    model = ScriptedLine(_wrong_past(1.5), slope=lambda d: torch.where(d > 0, 1.0, -1.0))
    x, y = grey()
    defended = DefendedClassifier(model, scripted_defense([0.0]))
    settings = lambda restarts: SuiteSettings(eps=4 * STEP, steps=4, step_size=STEP, restarts=restarts)  # noqa: E731
    for fooling in (0, 1):
        starts = lambda r: torch.full_like(x, 4 * STEP if r == fooling else 0.0)  # noqa: E731
        verdicts = run_suite(defended, x, y, menu_for(defended, ["bpda-eot"]), settings(2), starts)
        assert not verdicts["bpda-eot"].any() and not verdicts["unaware"].any()
    verdicts = run_suite(defended, x, y, menu_for(defended, ["bpda-eot"]), settings(1),
                         lambda r: torch.full_like(x, 4 * STEP * r))
    assert verdicts["bpda-eot"].all()  # from the image itself the attack never gets there


def test_an_image_that_fools_one_draw_in_three_is_not_robust():
    """The judging rule: right on every fresh draw, not on most of them."""
    model = ScriptedLine(_wrong_past(1.5))
    x, y = grey()
    defense = scripted_defense([0.0, 0.0, 0.05])  # the third draw moves e past the wrong-class line
    defended = DefendedClassifier(model, defense)
    assert right_on_every_draw(defended, x, y, 1).all()
    defense.draws = 0
    assert not right_on_every_draw(defended, x, y, 3).any()


@pytest.mark.parametrize("early_stop", [True, False])
def test_ever_counts_a_mid_attack_fooling_and_final_scores_only_the_last_iterate(early_stop):
    """The attack passes through the wrong class at its second step and leaves it by its fourth: the
    sample is fooled under `ever` and robust under `final` (which must not pick the best iterate)."""
    model = ScriptedLine(lambda e: (1 - (e - 2 * STEP).abs() / (0.5 * STEP)) * 10)
    x, y = grey()
    idx = torch.arange(len(y))
    clean, ever = evaluate_batch(model, x, y, idx, _cfg(early_stop=early_stop), PAPER)
    _, final = evaluate_batch(model, x, y, idx, _cfg(early_stop=early_stop, robust_rule="final"), PAPER)
    assert clean.all() and not ever.any() and final.all()


# --- TTC's gate: tau measured with the original encoder, and an attack aimed at it --------------------

class _Flat(torch.nn.Module):
    """An image encoder that is the (normalised) image itself, plus a constant: tau is ||noise|| over
    ||image - grey + bias||, so a large bias makes tau small."""

    def __init__(self, bias: float):
        super().__init__()
        self.bias = bias

    def forward(self, x):
        return x.flatten(1) + self.bias


def _flat_classifier(bias: float, scale: float = 1.0) -> ZeroShotClassifier:
    text = torch.nn.functional.normalize(torch.randn(2, 48, generator=torch.Generator().manual_seed(0)), dim=-1)
    return ZeroShotClassifier(_Flat(bias), text, scale, 4, (0.5,) * 3, (1.0,) * 3)


def _near_grey(n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return 0.5 + 6 / 255 * (2 * torch.randint(0, 2, (n, 3, 4, 4), generator=g) - 1)


def test_ttc_gates_on_the_tau_of_the_reference_encoder_not_the_defended_one():
    x = _near_grey()
    small, large = _flat_classifier(bias=100.0), _flat_classifier(bias=0.0)
    ttc = get_defense("ttc")
    start = ttc.start(x, torch.Generator().manual_seed(0))
    low, high = ttc.tau(small, x, start), ttc.tau(large, x, start)
    threshold = float((low.max() * high.min()).sqrt())
    assert (low < threshold).all() and (high > threshold).all()
    ttc = get_defense("ttc", tau_threshold=threshold)
    # The reference sees a big tau: no counterattack, the random start itself.
    assert torch.equal(ttc.wrap(small, reference=large).purify(x), start)
    # The reference sees a small tau: counterattacked, though the defended encoder alone would not be.
    assert not torch.equal(ttc.wrap(large, reference=small).purify(x), start)


def test_the_gate_attack_follows_the_gradient_of_the_tau_ttc_measures():
    x = _near_grey()
    classifier, reference = _flat_classifier(bias=100.0), _flat_classifier(bias=0.0)
    defended = get_defense("ttc", tau_threshold=1.0).wrap(classifier, reference)
    got = GateAwarePGD(defended, 8 / 255, 1 / 255, 1, eot=1)._gate_grad(x)
    defended.reseed()
    z = x.clone().requires_grad_(True)
    tau = defended.defense.relative_shift(reference, z, defended.defense.start(z, defended.generator))
    (want,) = torch.autograd.grad(tau.clamp(max=GATE_CAP).sum(), z)
    assert torch.allclose(got, want) and want.abs().sum() > 0


def test_the_gate_attack_raises_tau_past_the_threshold_where_the_plain_attack_does_not():
    """Moving pixels toward grey raises tau here; the gate attack does it, and TTC then lets its image
    through without a counterattack. (A tiny logit scale keeps the cross-entropy's pull small.)"""
    x = _near_grey()
    y = torch.zeros(len(x), dtype=torch.long)
    clf = _flat_classifier(bias=0.0, scale=0.01)
    noise = random_start(x, 4 / 255, "Linf", torch.Generator().manual_seed(3))
    defended = get_defense("ttc", tau_threshold=1.0).wrap(clf)
    assert (clean_tau(defended, x, noise) < 1.0).all()
    settings = SuiteSettings(eps=8 / 255, steps=8, step_size=1 / 255, eot=2)
    taus = {name: clean_tau(defended, ADAPTIVE[name].build(defended, settings)(x, y, torch.zeros_like(x), 0)[0].adv,
                            noise)
            for name in ("bpda-eot", "gate")}
    assert (taus["gate"] >= 1.0).all() and (taus["bpda-eot"] < 1.0).all()


def test_a_defended_row_reports_every_attack_the_threshold_and_the_open_gate():
    """The full suite on the tiny fine-tune behind TTC, with the threshold calibrated on the images
    evaluated: half of them reach it, and the adaptive number is the best-of over every attack."""
    from pmg_core.models.clip import load_model

    tecoa = load_model("tecoa-tiny", base=load_model("clip-tiny"))
    cfg = EvalConfig(models=["tecoa-tiny"], datasets=["synth-colour"], eps=8 / 255, steps=2, step_size=2 / 255,
                     limit=8, defense="ttc", eot=2, adaptive=["bpda-eot", "apgd-ce", "apgd-dlr", "gate"],
                     judge_draws=2, defense_threshold="calibrated")
    report = evaluate(cfg, models=[tecoa])
    (row,) = report["results"]
    assert set(row["robust_correct_by_attack"]) == {"unaware", "bpda-eot", "apgd-ce", "apgd-dlr", "gate"}
    assert row["robust_correct_by_attack"]["unaware"] == row["robust_correct_unaware"]
    assert row["robust_correct"] <= min(row["robust_correct_by_attack"].values()) <= row["clean_correct"]
    assert row["gate_open"] == 0.5 and 0 < row["tau_threshold"] < 0.2
    assert "tau threshold calibrated" in report["protocol"] and "all of 2 fresh draws" in report["protocol"]


def test_bad_suite_settings_are_refused_in_one_sentence():
    with pytest.raises(UserError, match="Unknown adaptive attack 'magic'"):
        EvalConfig(defense="ttc", adaptive=["magic"]).validate()
    with pytest.raises(UserError, match="number or 'calibrated'"):
        EvalConfig(defense="ttc", defense_threshold="median").validate()
    with pytest.raises(UserError, match="judge draws"):
        EvalConfig(defense="ttc", judge_draws=0).validate()
