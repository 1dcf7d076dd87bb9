"""Test-time defenses: TTC's contract (eps ball, seeded, clean predictions kept), its steps written
out by hand, and the adaptive attack beating the attack that does not know the defense."""
import math

import pytest
import torch

from pmg_core.attacks.pgd import random_start
from pmg_core.data.datasets import get_dataset
from pmg_core.attacks.defenses import defend, get_defense, list_defenses, original_reference
from pmg_core.core.errors import UserError
from pmg_core.evaluation.accuracy import EvalConfig, evaluate
from pmg_core.models.clip import load_model
from toy import make_toy

CLASSES = ["red", "green", "blue", "grey"]


@pytest.fixture(scope="module")
def embedded():
    base = load_model("clip-tiny")
    return base, load_model("tecoa-tiny", base=base)


def _task(name: str, n: int):
    data = get_dataset(name, split="test").limited(n, 0)
    x = torch.stack([data.data[i][0] for i in range(n)])
    y = torch.tensor([int(data.data[i][1]) for i in range(n)])
    return data, x, y


def test_registry_and_bad_settings():
    assert {"none", "ttc"} <= set(list_defenses())
    with pytest.raises(UserError, match="Unknown defense"):
        get_defense("magic")
    for bad in ({"eps": -1.0}, {"steps": 1.5}, {"tau_threshold": float("nan")}):
        with pytest.raises(UserError):
            get_defense("ttc", **bad)


def test_counterattacked_images_stay_in_their_eps_ball_and_the_pixel_range(model):
    x, _ = make_toy(6, seed=1).tensors
    clf = model.classifier(CLASSES, ("a {} image",)).eval()
    for threshold in (0.0, 1e9):  # nothing counterattacked (random start only) / everything counterattacked
        defended = get_defense("ttc", eps=4 / 255, steps=3, step_size=2 / 255, tau_threshold=threshold).wrap(clf)
        seen = defended.purify(x)
        assert (seen - x).abs().max() <= 4 / 255 + 1e-6
        assert seen.min() >= 0 and seen.max() <= 1
        assert (seen - x).abs().max() > 1 / 255  # it did move the image


def test_a_fixed_seed_gives_bit_identical_images_and_logits(model):
    x, _ = make_toy(5, seed=2).tensors
    clf = model.classifier(CLASSES, ("a {} image",)).eval()
    a = get_defense("ttc", seed=7, tau_threshold=1e9).wrap(clf)
    b = get_defense("ttc", seed=7, tau_threshold=1e9).wrap(clf)
    first = a.purify(x)
    assert torch.equal(first, b.purify(x))
    assert not torch.equal(first, a.purify(x))  # the next call draws a new random start
    a.reseed()
    b.reseed()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert not torch.equal(first, get_defense("ttc", seed=8, tau_threshold=1e9).wrap(clf).purify(x))


def test_ttc_by_hand_weights_the_counterattack_steps_and_gates_on_tau(model):
    """Steps written out: random start, 2 sign steps up ||phi(x') - phi(x)||^2, weights exp(2k)/sum;
    above the tau threshold the result is the random start itself."""
    x, _ = make_toy(4, seed=3).tensors
    clf = model.classifier(CLASSES, ("a {} image",)).eval()
    eps, step = 4 / 255, 1 / 255
    start = (x + random_start(x, eps, "Linf", torch.Generator().manual_seed(0))).clamp(0, 1)
    anchor = clf.encode(x, normalize=False).detach()
    tau = (clf.encode(start, normalize=False) - anchor).norm(dim=-1) / anchor.norm(dim=-1)
    iterates = [start]
    for _ in range(2):
        z = iterates[-1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(((clf.encode(z, normalize=False) - anchor) ** 2).sum(), z)
        iterates.append((x + (z.detach() + step * g.sign() - x).clamp(-eps, eps)).clamp(0, 1))
    w = [math.exp(2 * k) for k in range(3)]
    expected = sum(wk / sum(w) * it for wk, it in zip(w, iterates))

    # Some images are counterattacked, the rest only get the noise: the threshold sits mid-way across the
    # widest gap between taus, so last-bit differences between kernels cannot move an image across it.
    ordered = tau.detach().sort().values
    widest = int((ordered[1:] - ordered[:-1]).argmax())
    threshold = float(ordered[widest:widest + 2].mean())
    seen = get_defense("ttc", tau_threshold=threshold).wrap(clf).purify(x)
    counter = tau < threshold
    assert counter.any() and (~counter).any()
    assert torch.allclose(seen[counter], expected[counter].detach(), atol=1e-6)
    assert torch.equal(seen[~counter], start[~counter])


def test_tau_of_a_fine_tune_is_measured_with_the_original_encoder(embedded):
    base, tecoa = embedded
    _, x, _ = _task("synth-colour", 4)
    clf = tecoa.classifier(["a", "b"])
    ref = original_reference(tecoa, clf)
    assert ref is not None and ref.visual is base.visual and original_reference(base, base.classifier(["a", "b"])) is None
    ttc = get_defense("ttc")
    start = (x + 4 / 255).clamp(0, 1)
    assert not torch.allclose(ttc.tau(ref, x, start), ttc.tau(clf, x, start))


def test_defended_clean_predictions_of_the_tiny_model_are_unchanged_in_the_common_case(embedded):
    base, _ = embedded
    data, x, y = _task("synth-colour", 48)
    clf = base.classifier(data.classes, data.templates).eval()
    defended = defend(base, clf, "ttc")
    with torch.no_grad():
        plain, guarded = clf(x).argmax(1), defended(x).argmax(1)
    assert (plain == guarded).float().mean() >= 0.9
    assert (guarded == y).float().mean() >= 0.9


def test_gradients_through_the_defense_are_the_classifiers_at_the_defended_image(model):
    """BPDA: the backward holds the counterattack's change constant."""
    x, y = make_toy(3, seed=4).tensors
    clf = model.classifier(CLASSES, ("a {} image",)).eval()
    defended = get_defense("ttc", tau_threshold=1e9).wrap(clf)
    z = x.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(torch.nn.functional.cross_entropy(defended(z), y), z)
    defended.reseed()
    seen = defended.purify(x).requires_grad_(True)
    (want,) = torch.autograd.grad(torch.nn.functional.cross_entropy(clf(seen), y), seen)
    assert torch.allclose(got, want, atol=1e-7)


def test_both_attacks_are_reported_and_the_adaptive_one_is_never_the_weaker(embedded):
    """On the tiny model the attack through TTC rarely fools images the unaware attack did not
    (TTC moves an image by 4/255 at most, and its tau gate never opens there: docs/BENCHMARK.md);
    the adaptive number counts both images, so it can only be lower, and both are real attacks."""
    _, tecoa = embedded
    cfg = EvalConfig(models=["tecoa-tiny"], datasets=["synth-colour"], eps=8 / 255, steps=5, step_size=2 / 255,
                     limit=24, defense="ttc", eot=2)
    (row,) = evaluate(cfg, models=[tecoa])["results"]
    assert row["model"] == "tecoa-tiny+ttc" and row["defense"] == "ttc"
    assert row["robust_correct"] <= row["robust_correct_unaware"] < row["clean_correct"]
    assert row["robust_acc"] < 0.75 * row["clean_acc"]


def test_autoattack_through_the_defense_averages_its_gradients_over_draws(model):
    """AutoAttack's gradient attacks (APGD) take `eot` gradients per step through a randomised model, as
    the original's "rand" version does; an attack without EOT refuses rather than ignoring it."""
    from pmg_core.attacks.pgd import make_attack
    from pmg_core.evaluation.accuracy import describe_protocol

    x, _ = make_toy(4, seed=2).tensors
    clf = model.classifier(CLASSES, ("a {} image",)).eval()
    defended = get_defense("ttc", eps=4 / 255, steps=1, step_size=1 / 255).wrap(clf)
    with torch.no_grad():
        y = defended(x).argmax(1)
    calls = {}
    for eot in (1, 3):
        attack = make_attack("autoattack", defended, 8 / 255, steps=2, seed=0, eot=eot)
        assert {a.eot_iter for a in attack.attack.attacks} == {eot}
        count = [0]
        hook = clf.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        try:
            adv = attack(x, y)
        finally:
            hook.remove()
        calls[eot] = count[0]
        assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert calls[3] > 2 * calls[1]  # three gradients a step where there was one
    with pytest.raises(UserError, match="has no EOT"):
        make_attack("pgd-public-code", defended, 8 / 255, eot=3)
    line = describe_protocol(EvalConfig(attack="autoattack", defense="ttc", eot=5))
    assert "EOT-5 autoattack through it (BPDA), EOT in its gradient attacks (APGD)" in line


def test_the_attack_through_the_defense_fools_the_defended_model_on_its_own(embedded):
    from pmg_core.attacks.pgd import EOTPGD

    _, tecoa = embedded
    data, x, y = _task("synth-colour", 24)
    clf = tecoa.classifier(data.classes, data.templates).eval()
    defended = defend(tecoa, clf, "ttc")
    adv = EOTPGD(defended, 8 / 255, 2 / 255, 5, eot=2).run(x, y).adv
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        clean, attacked = (defended(x).argmax(1) == y).sum(), (defended(adv).argmax(1) == y).sum()
    assert attacked < 0.75 * clean


def test_compare_judges_each_model_with_and_without_the_defense(model):
    from pmg_core.evaluation.explore import AttackSettings, compare

    x, _ = make_toy(1, seed=5).tensors
    settings = AttackSettings(eps=8 / 255, steps=3, defense="ttc", eot=2)
    res = compare([model], x[0], CLASSES, "red", settings, templates=("a {} image",))
    (v,) = res.verdicts
    assert v.defended is not None and v.defended.defense == "ttc"
    assert (v.defended.adaptive_image - res.image).abs().max() <= 8 / 255 + 1e-6
    doc = res.to_dict(settings)
    assert doc["defense"] == "ttc" and set(doc["verdicts"][0]["defended"]) == {"clean", "adversarial", "adaptive"}
    plain = compare([model], x[0], CLASSES, "red", AttackSettings(eps=8 / 255, steps=3), templates=("a {} image",))
    assert plain.verdicts[0].defended is None and "defended" not in plain.to_dict(AttackSettings())["verdicts"][0]
    with pytest.raises(UserError, match="Unknown defense"):
        compare([model], x[0], CLASSES, "red", AttackSettings(defense="magic"))


def test_the_attack_tab_shows_each_model_with_and_without_the_defense(tmp_path):
    from helpers import EACH, EXAMPLE, LABELS, tiny_models
    from studio import one_image
    from studio.state import Studio

    studio = Studio.create(tiny_models()[:1], tmp_path)
    args = (studio, EXAMPLE, LABELS, "circle", "Linf", 8, 2, 2, "cross-entropy", "", EACH, studio.names)
    *_, html, _, details = one_image.attack(*args, True)
    name = studio.names[0]
    assert f"{name} + TTC" in html and "attacked through TTC (adaptive)" in html
    assert details["defense"] == "ttc" and "defended" in details["verdicts"][0]
    *_, html, _, details = one_image.attack(*args)  # the toggle is off by default
    assert "TTC" not in html and details["defense"] == "none"
