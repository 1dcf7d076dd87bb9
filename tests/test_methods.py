"""The training objectives equal DESIGN.md's formulas computed by hand, in both presets."""
import math

import pytest
import torch

from pmg_core.errors import UserError
from pmg_core.methods import MethodSettings, fare_loss, get_method, list_methods, pmg_aft_loss
from pmg_core.models import frozen_copy
from toy import make_toy

CLASSES = ["red", "green", "blue", "grey"]


def by_hand(la, lc, lo, y, alpha, beta, reduction):
    """CE + alpha KL(f_o(x_adv)||f_t(x_adv)) + beta KL(f_t(x)||f_t(x_adv)), written out with sums."""
    B = la.shape[0]
    logq = la - la.logsumexp(1, keepdim=True)
    ce = -logq[torch.arange(B), y].mean()

    def kl(p_logits):
        logp = p_logits - p_logits.logsumexp(1, keepdim=True)
        total = (logp.exp() * (logp - logq)).sum()
        return total / B if reduction == "batchmean" else total

    return ce + alpha * kl(lo) + beta * kl(lc)


@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.3, 2.0), (0.0, 0.0)])
def test_pmg_aft_loss_formula(reduction, alpha, beta):
    g = torch.Generator().manual_seed(0)
    la, lc, lo = (torch.randn(6, 5, generator=g) * 3 for _ in range(3))
    y = torch.randint(0, 5, (6,), generator=g)
    loss, *_ = pmg_aft_loss(la, lc, lo, y, alpha, beta, reduction)
    assert torch.allclose(loss, by_hand(la, lc, lo, y, alpha, beta, reduction), atol=1e-5)


def _fixed_adv(method, x_adv):
    class Fixed:
        def __init__(self, *_):
            pass

        def __call__(self, x, y):
            return x_adv

        perturb = __call__

    method.pgd = lambda model: Fixed()
    return method


@pytest.mark.parametrize("preset", ["paper", "public-code"])
def test_pmg_aft_method_matches_formula_and_tecoa(model, preset):
    x, y = make_toy(8, seed=3).tensors
    x_adv = (x + 2 / 255).clamp(0, 1)
    clf = model.classifier(CLASSES, ("a {} image",), preset)
    orig = frozen_copy(clf)
    with torch.no_grad():  # make f_t differ from f_o so the KL to the original is not zero
        next(clf.visual.parameters()).add_(0.05)
    out = _fixed_adv(get_method("pmg-aft", eps=1 / 255, preset=preset), x_adv)(clf, orig, x, y)
    la, lc, lo = clf(x_adv), clf(x), orig(x_adv)
    reduction = "batchmean" if preset == "paper" else "sum"
    expected = by_hand(la.double(), lc.double(), lo.double(), y, 1.0, 1.0, reduction)
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-4)
    assert out.metrics["kl_original"] > 0
    # gradients reach the trained encoder through the loss
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in clf.visual.parameters())
    assert all(p.grad is None for p in orig.parameters())
    clf.visual.zero_grad(set_to_none=True)
    # alpha = beta = 0 is TeCoA
    zero = _fixed_adv(get_method("pmg-aft", eps=1 / 255, alpha=0.0, beta=0.0, preset=preset), x_adv)(clf, orig, x, y)
    tecoa = _fixed_adv(get_method("tecoa", eps=1 / 255, preset=preset), x_adv)(clf, orig, x, y)
    assert math.isclose(zero.loss.item(), tecoa.loss.item(), rel_tol=1e-5)


def test_presets_change_logits(model):
    x, _ = make_toy(4, seed=1).tensors
    paper = model.classifier(CLASSES, ("a {} image",), "paper")(x)
    public = model.classifier(CLASSES, ("a {} image",), "public-code")(x)
    assert public.abs().max() <= 1.0 + 1e-5  # plain cosines
    assert paper.abs().max() > 1.0 or model.logit_scale < 1.5
    # the paper preset uses the model's own logit scale
    assert math.isclose(model.classifier(CLASSES).logit_scale, model.clip.logit_scale.exp().item(), rel_tol=1e-6)


def test_fare_method_matches_formula(model):
    x, y = make_toy(8, seed=4).tensors
    clf = model.classifier(CLASSES, ("a {} image",))
    orig = frozen_copy(clf)
    with torch.no_grad():
        next(clf.visual.parameters()).add_(0.05)
    method = get_method("fare", eps=2 / 255, steps=0)  # no attack steps: x_adv is the random start
    torch.manual_seed(0)
    out = method(clf, orig, x, y)
    torch.manual_seed(0)
    x_adv = (x + (2 * torch.rand(x.shape) - 1) * 2 / 255).clamp(0, 1)
    expected = ((clf.encode(x_adv, False) - orig.encode(x, False)) ** 2).sum(1).mean()
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-4)
    assert math.isclose(fare_loss(torch.ones(2, 3), torch.zeros(2, 3)).item(), 3.0)


def test_registry_and_bad_settings():
    assert {"clean", "tecoa", "pmg-aft", "fare"} <= set(list_methods())
    with pytest.raises(UserError, match="Unknown method"):
        get_method("magic")
    for bad in ({"eps": -1 / 255}, {"steps": -2}, {"alpha": float("nan")}, {"preset": "nope"}):
        with pytest.raises(UserError):
            get_method("pmg-aft", MethodSettings(**bad))
