"""CLIPure-Cos, the latent-space test-time defense: its update rule on cases worked out by hand,
the contract a latent defense keeps (images untouched, embedding length kept, one sentence without
its text target), and an attack through it that is a real attack."""
import math

import pytest
import torch
import torch.nn.functional as F

from pmg_core.attacks.pgd import PGD
from pmg_core.data.datasets import get_dataset
from pmg_core.attacks.defenses import DefenseSettings, defend, get_defense, list_defenses
from pmg_core.core.errors import UserError
from pmg_core.models.clip import load_model


def _clipure(steps: int, eta: float):
    return get_defense("clipure", latent_steps=steps, latent_step_size=eta)


def test_clipure_is_registered_and_refuses_bad_settings():
    assert "clipure" in list_defenses()
    for bad in ({"latent_steps": -1}, {"latent_steps": 2.5}, {"latent_step_size": float("nan")}, {"null_prompt": " "}):
        with pytest.raises(UserError):
            get_defense("clipure", **bad)


def test_the_blank_prompt_is_the_mean_over_the_80_imagenet_templates_unless_one_prompt_is_given(tiny_model):
    """As the authors' code computes it: each of ImageNet's 80 templates with an empty class name,
    embedded and normalised, then averaged; a single prompt is an option."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    def embedded(prompts):
        with torch.no_grad():
            return F.normalize(tiny_model.clip.encode_text(tiny_model.tokenizer(prompts)).float(), dim=-1)

    blank = [t("") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(blank) == 80 and blank[0] == "a bad photo of a ."
    assert torch.allclose(get_defense("clipure").anchor(tiny_model), embedded(blank).mean(0), atol=1e-6)
    single = get_defense("clipure", null_prompt="a photo of a .").anchor(tiny_model)
    assert torch.allclose(single, embedded(["a photo of a ."])[0], atol=1e-6)
    assert not torch.allclose(single, embedded(blank).mean(0), atol=1e-3)


def test_one_step_rotates_the_direction_by_atan_eta_towards_the_blank_prompt_and_keeps_the_length():
    """By hand: z = (3, 0, 0), t = (1, 1, 0). u0 = (1, 0, 0); the part of t_hat orthogonal to u0 is
    (0, 1/sqrt2, 0), normalised (0, 1, 0); u1 = normalise((1, eta, 0)), i.e. atan(eta) towards t;
    eta = 1: 45 degrees, onto t_hat itself, where the gradient vanishes and further steps stay."""
    z, t = torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([1.0, 1.0, 0.0])
    eta = math.tan(math.radians(30))
    one = _clipure(1, eta).purify_embedding(z, t)
    assert torch.allclose(one, 3 * torch.tensor([[math.cos(math.radians(30)), 0.5, 0.0]]), atol=1e-6)
    on_target = _clipure(1, 1.0).purify_embedding(z, t)
    assert torch.allclose(on_target, torch.tensor([[3 / math.sqrt(2), 3 / math.sqrt(2), 0.0]]), atol=1e-6)
    assert torch.allclose(_clipure(5, 1.0).purify_embedding(z, t), on_target, atol=1e-6)
    assert torch.equal(_clipure(0, 1.0).purify_embedding(z, t), z)


def test_the_update_follows_the_papers_rule_with_the_gradient_taken_by_autograd():
    """The rule as the paper and its code write it: r = |z|, u = z / r; the gradient of cos(z, t) in
    z, times r, normalised per sample, added with step eta; u renormalised; z = r u."""
    torch.manual_seed(0)
    z, t = torch.randn(4, 16) * 5, torch.randn(16)
    eta, steps = 0.3, 4
    r = z.norm(dim=-1, keepdim=True)
    u = z / r
    for _ in range(steps):
        w = (r * u).requires_grad_(True)
        (g,) = torch.autograd.grad(F.cosine_similarity(w, t[None], dim=-1).sum(), w)
        g = r * g
        u = u + eta * g / g.norm(dim=-1, keepdim=True)
        u = u / u.norm(dim=-1, keepdim=True)
    ours = _clipure(steps, eta).purify_embedding(z, t)
    assert torch.allclose(ours, r * u, atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), z.norm(dim=-1), atol=1e-4)
    before, after = F.cosine_similarity(z, t[None]), F.cosine_similarity(ours, t[None])
    assert (after > before).all()  # purified embeddings are closer to the blank prompt's


@pytest.fixture(scope="module")
def shapes():
    model = load_model("clip-tiny")
    data = get_dataset("synth-shape", split="test").limited(16, 0)
    x = torch.stack([data.data[i][0] for i in range(len(data))])
    y = torch.tensor([int(data.data[i][1]) for i in range(len(data))])
    return model, model.classifier(data.classes, data.templates, exact=True).eval(), x, y


def test_a_latent_defense_leaves_the_images_and_scores_the_purified_embedding(shapes):
    model, clf, x, _ = shapes
    defended = defend(model, clf, "clipure", DefenseSettings(latent_step_size=0.05))
    assert torch.equal(defended.purify(x), x)
    with torch.no_grad():
        feats = clf.encode(x, normalize=False)
        purified = defended.purified_features(x)
        assert torch.allclose(defended(x), clf.logits_from_features(purified), atol=1e-5)
        assert not torch.allclose(purified, feats)
    with pytest.raises(UserError, match="blank prompt"):
        get_defense("clipure").wrap(clf)(x)  # no text target: one sentence, not a traceback


def test_an_attack_through_clipure_fools_it_from_inside_its_eps_ball(shapes):
    """White-box PGD through the purification (its exact gradient) breaks most of what the
    defended model got right, from images inside the attack's eps ball."""
    model, clf, x, y = shapes
    defended = defend(model, clf, "clipure")
    with torch.no_grad():
        right = defended(x).argmax(1) == y
    assert right.sum() >= 6
    xs, ys, eps = x[right], y[right], 2 / 255
    adv = PGD(defended, eps, 0.5 / 255, 6, seed=0).run(xs, ys).adv
    assert (adv - xs).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        fooled = (defended(adv).argmax(1) != ys).float().mean()
    assert fooled >= 0.5



def test_the_attack_tab_offers_clipure_and_shows_each_model_behind_it(tmp_path):
    from helpers import EACH, EXAMPLE, LABELS, tiny_models
    from studio import one_image
    from studio.state import Studio

    studio = Studio.create(tiny_models()[:1], tmp_path)
    label = next(k for k, v in one_image.DEFENSES.items() if v == "clipure")
    *_, html, _, data = one_image.attack(studio, EXAMPLE, LABELS, "circle", "Linf", 8, 3, 1, "cross-entropy", "", EACH,
                                         studio.names, defend=label)
    defended = data["verdicts"][0]["defended"]
    assert {"clean", "adversarial", "adaptive"} <= set(defended) and "CLIPURE" in html
    with pytest.raises(UserError, match="test-time defense"):
        one_image.defense_name("magic")
