"""TGA-ZSR's loss and attention maps equal its public code's formulas written out by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from pmg_core.core.errors import UserError
from pmg_core.training.methods import get_method, list_methods
from pmg_core.models.clip import frozen_copy
from pmg_core.attacks.text_attention import image_tokens, text_guided_attention, tga_zsr_loss
from toy import make_toy

CLASSES = ["red", "green", "blue", "grey"]


def map_by_hand(tokens, text, size):
    """One image at a time, with loops where the code vectorises: divide each feature by its norm over
    the tokens, dot the patch tokens with the text feature, min-max over patches, grid, bilinear resize."""
    out = []
    for t, f in zip(tokens.double(), text.double()):
        norms = torch.stack([t[:, d].norm() for d in range(t.shape[1])])
        patches = (t / norms)[1:]
        sim = torch.stack([p @ f for p in patches])
        sim = (sim - sim.min()) / (sim.max() - sim.min())
        side = math.isqrt(len(sim))
        grid = sim.view(1, 1, side, side)
        out.append(F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False).flatten())
    return torch.stack(out)


def loss_by_hand(logits_adv, y, a_adv, a_clean, a_orig, alpha, beta):
    B = logits_adv.shape[0]
    log_p = logits_adv - logits_adv.logsumexp(1, keepdim=True)
    ce = -sum(log_p[i, y[i]] for i in range(B)) / B
    l2 = lambda a, b: sum(((a[i] - b[i]) ** 2).sum().sqrt() for i in range(B)) / B  # noqa: E731
    return ce + alpha * l2(a_adv, a_orig) + beta * l2(a_clean, a_orig)


def test_tokens_pool_to_the_encoders_own_embedding(model):
    x, _ = make_toy(3, seed=1).tensors
    clf = model.classifier(CLASSES, ("a {} image",))
    pixels = clf.preprocess(x)
    pooled, tokens = image_tokens(clf.visual, pixels)
    grid = clf.visual.grid_size[0] * clf.visual.grid_size[1]
    assert tokens.shape == (3, 1 + grid, pooled.shape[1])
    assert torch.allclose(pooled, clf.visual(pixels), atol=1e-6)
    assert torch.equal(tokens[:, 0], pooled)


def test_attention_map_matches_the_public_code_steps_by_hand():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 1 + 16, 8, generator=g)
    text = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    ours = text_guided_attention(tokens, text, 32)
    assert ours.shape == (3, 32 * 32)
    assert torch.allclose(ours.double(), map_by_hand(tokens, text, 32), atol=1e-6)
    assert ours.min() >= 0 and ours.max() <= 1
    # Normalising over the feature axis instead (the "obvious" reading) gives a different map.
    feature_normed = torch.cat([tokens[:, :1], F.normalize(tokens[:, 1:], dim=-1)], 1)
    assert not torch.allclose(text_guided_attention(feature_normed, text, 32), ours, atol=1e-3)
    # A constant map is zero, not NaN.
    assert torch.equal(text_guided_attention(torch.ones(1, 17, 8), text[:1], 8), torch.zeros(1, 64))


@pytest.mark.parametrize("alpha,beta", [(0.08, 0.05), (1.0, 0.0), (0.0, 2.0)])
def test_tga_zsr_loss_and_gradients_by_hand(alpha, beta):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64) * 3
    maps = [torch.rand(5, 64, generator=g, dtype=torch.float64) for _ in range(3)]
    y = torch.randint(0, 4, (5,), generator=g)
    ours = [t.clone().requires_grad_(True) for t in (logits, maps[0], maps[1])]
    theirs = [t.clone().requires_grad_(True) for t in (logits, maps[0], maps[1])]
    loss, ce, refine, constraint = tga_zsr_loss(ours[0], y, ours[1], ours[2], maps[2], alpha, beta)
    expected = loss_by_hand(theirs[0], y, theirs[1], theirs[2], maps[2], alpha, beta)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-6)
    assert math.isclose(loss.item(), (ce + refine + constraint).item(), rel_tol=1e-9)
    for a, b in zip(torch.autograd.grad(loss, ours), torch.autograd.grad(expected, theirs)):
        assert torch.allclose(a.double(), b, rtol=1e-5, atol=1e-7)


def _fixed_adv(method, x_adv):
    method.attack = lambda model, x, y: x_adv
    return method


def test_tga_zsr_method_matches_the_formula_and_trains_only_the_target(model):
    x, y = make_toy(6, seed=3).tensors
    x_adv = (x + 4 / 255).clamp(0, 1)
    clf = model.classifier(CLASSES, ("a {} image",))
    orig = frozen_copy(clf)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # f_t's maps differ from f_o's, so both attention terms are well away from 0
        for p in clf.visual.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    method = _fixed_adv(get_method("tga-zsr", eps=4 / 255), x_adv)
    out = method(clf, orig, x, y)

    params = [p for p in clf.visual.parameters() if p.requires_grad]
    size, text = clf.image_size, clf.text_features[y]
    a_adv = map_by_hand(image_tokens(clf.visual, clf.preprocess(x_adv))[1], text, size)
    a_clean = map_by_hand(image_tokens(clf.visual, clf.preprocess(x))[1], text, size)
    with torch.no_grad():
        a_orig = map_by_hand(image_tokens(orig.visual, orig.preprocess(x))[1], text, size)
    expected = loss_by_hand(clf(x_adv).double(), y, a_adv, a_clean, a_orig, 0.08, 0.05)
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-5)
    assert out.metrics["attention_refine"] > 0.01 and out.metrics["attention_constraint"] > 0.01
    got, want = torch.autograd.grad(out.loss, params), torch.autograd.grad(expected, params)
    assert all(torch.allclose(a, b.float(), rtol=1e-3, atol=1e-6) for a, b in zip(got, want))
    assert sum(a.abs().sum() for a in got) > 0
    assert all(p.grad is None for p in orig.parameters())
    # With both weights 0 it is TeCoA.
    zero = _fixed_adv(get_method("tga-zsr", eps=4 / 255, tga_alpha=0.0, tga_beta=0.0), x_adv)(clf, orig, x, y)
    tecoa = _fixed_adv(get_method("tecoa", eps=4 / 255), x_adv)(clf, orig, x, y)
    assert math.isclose(zero.loss.item(), tecoa.loss.item(), rel_tol=1e-5)


def test_tga_zsr_is_registered_and_refuses_what_it_cannot_do(model):
    assert "tga-zsr" in list_methods()
    with pytest.raises(UserError, match="paper preset"):
        get_method("tga-zsr", preset="public-code")
    with pytest.raises(UserError):
        get_method("tga-zsr", tga_alpha=-1.0)
    with pytest.raises(UserError, match="ViT"):
        image_tokens(torch.nn.Linear(3, 3), torch.zeros(1, 3))
