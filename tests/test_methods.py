"""The training objectives equal docs/METHOD.md's formulas computed by hand, in every preset."""
import math

import pytest
import torch

from pmg_core.attacks.pgd import OUTER_AUTOCAST
from pmg_core.core.errors import UserError
from pmg_core.training.methods import MethodSettings, fare_loss, get_method, list_methods, pmg_aft_loss
from pmg_core.models.clip import frozen_copy
from toy import make_toy

CLASSES = ["red", "green", "blue", "grey"]


def by_hand(la, lc, lo, y, alpha, beta, reduction, direction="ref||adv"):
    """CE + alpha KL(f_o(x_adv)||f_t(x_adv)) + beta KL(f_t(x)||f_t(x_adv)), written out with sums;
    direction "adv||ref" (the public code): KL(f_t(x_adv)||f_o(x_adv)) and KL(f_t(x_adv)||f_t(x))."""
    B = la.shape[0]

    def log_softmax(logits):
        return logits - logits.logsumexp(1, keepdim=True)

    def kl(p_logits, q_logits):  # sum over batch and classes of p (log p - log q)
        logp, logq = log_softmax(p_logits), log_softmax(q_logits)
        total = (logp.exp() * (logp - logq)).sum()
        return total / B if reduction == "batchmean" else total

    ce = -log_softmax(la)[torch.arange(B), y].mean()
    if direction == "ref||adv":
        return ce + alpha * kl(lo, la) + beta * kl(lc, la)
    return ce + alpha * kl(la, lo) + beta * kl(la, lc)


# (reduction, direction) per preset: the public code's HEAD (a53fdd8) runs its KL terms in the
# paper's direction; its first commit 4baf55d ran them the other way round.
PRESET_KL = {"paper": ("batchmean", "ref||adv"), "public-code": ("sum", "ref||adv"),
             "public-code-4baf55d": ("sum", "adv||ref")}


@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
@pytest.mark.parametrize("direction", ["ref||adv", "adv||ref"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.3, 2.0), (0.0, 0.0)])
def test_pmg_aft_loss_formula(reduction, direction, alpha, beta):
    g = torch.Generator().manual_seed(0)
    la, lc, lo = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 3 for _ in range(3))
    y = torch.randint(0, 5, (6,), generator=g)
    ours = [t.clone().requires_grad_(True) for t in (la, lc)]
    theirs = [t.clone().requires_grad_(True) for t in (la, lc)]
    loss, *_ = pmg_aft_loss(*ours, lo, y, alpha, beta, reduction, direction)
    expected = by_hand(*theirs, lo, y, alpha, beta, reduction, direction)
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    # The gradients flow through both f_t branches (x_adv and clean x) as the formula says.
    grads, expected_grads = torch.autograd.grad(loss, ours), torch.autograd.grad(expected, theirs)
    assert all(torch.allclose(a.double(), b, rtol=1e-5, atol=1e-5) for a, b in zip(grads, expected_grads))
    assert grads[0].abs().sum() > 0 and bool(grads[1].abs().sum() > 0) == (beta > 0)


def test_kl_direction_by_hand_on_two_classes():
    """One sample, two classes: f_t(x_adv) -> (1/2, 1/2), f_o(x_adv) and f_t(x) -> (3/4, 1/4), written out."""
    la, lo = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    y = torch.tensor([0])
    ce = math.log(2.0)
    ref_adv = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL((3/4,1/4) || (1/2,1/2))
    adv_ref = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL((1/2,1/2) || (3/4,1/4))
    for direction, kl_value in (("ref||adv", ref_adv), ("adv||ref", adv_ref)):
        loss, _, kl_gen, kl_clean = pmg_aft_loss(la, lo, lo, y, 1.0, 2.0, "sum", direction)
        assert math.isclose(kl_gen.item(), kl_value, rel_tol=1e-6) and math.isclose(kl_clean.item(), kl_value, rel_tol=1e-6)
        assert math.isclose(loss.item(), ce + 3 * kl_value, rel_tol=1e-6)
    assert abs(ref_adv - adv_ref) > 0.01  # the two directions are different numbers here


def _fixed_adv(method, x_adv):
    class Fixed:
        def __init__(self, *_):
            pass

        def __call__(self, x, y, shard=(0, 1)):
            return x_adv

        perturb = __call__

    method.pgd = lambda model: Fixed()
    return method


@pytest.mark.parametrize("preset", list(PRESET_KL))
def test_pmg_aft_method_matches_formula_and_tecoa(model, preset):
    x, y = make_toy(8, seed=3).tensors
    x_adv = (x + 2 / 255).clamp(0, 1)
    clf = model.classifier(CLASSES, ("a {} image",), preset)
    orig = frozen_copy(clf)
    with torch.no_grad():  # make f_t differ from f_o so the KL to the original is not zero
        clf.visual.proj.add_(0.2 * torch.randn(clf.visual.proj.shape, generator=torch.Generator().manual_seed(0)))
    out = _fixed_adv(get_method("pmg-aft", eps=1 / 255, preset=preset), x_adv)(clf, orig, x, y)
    la, lc, lo = clf(x_adv), clf(x), orig(x_adv)
    expected = by_hand(la.double(), lc.double(), lo.double(), y, 1.0, 1.0, *PRESET_KL[preset])
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


def test_detached_clean_target_only_stops_the_gradient_through_the_clean_branch(model):
    """The seed study's ablation: same loss, gradient of CE + alpha KL_gen + beta KL(f_t(x).detach() || f_t(x_adv))."""
    from pmg_core.training.methods import PMGAFT

    x, y = make_toy(8, seed=3).tensors
    x_adv = (x + 2 / 255).clamp(0, 1)
    clf = model.classifier(CLASSES, ("a {} image",))
    orig = frozen_copy(clf)
    with torch.no_grad():
        clf.visual.proj.add_(0.2 * torch.randn(clf.visual.proj.shape, generator=torch.Generator().manual_seed(0)))
    params = [p for p in clf.visual.parameters() if p.requires_grad]
    full = _fixed_adv(get_method("pmg-aft", eps=1 / 255), x_adv)
    detached = _fixed_adv(get_method("pmg-aft", eps=1 / 255), x_adv)
    detached.detach_clean_target = True
    assert not PMGAFT.detach_clean_target  # the method itself keeps both branches
    out_full, out_det = full(clf, orig, x, y), detached(clf, orig, x, y)
    assert math.isclose(out_full.loss.item(), out_det.loss.item(), rel_tol=1e-6)
    by_hand_loss = pmg_aft_loss(clf(x_adv), clf(x).detach(), orig(x_adv), y, 1.0, 1.0)[0]
    want = torch.autograd.grad(by_hand_loss, params)
    got = torch.autograd.grad(out_det.loss, params)
    other = torch.autograd.grad(out_full.loss, params)
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want))
    assert not all(torch.allclose(g, o, atol=1e-6) for g, o in zip(got, other))


def test_public_code_kl_runs_in_the_papers_direction_unless_the_first_commit_is_asked_for():
    from pmg_core.data.presets import get_preset

    assert get_preset("public-code").kl_direction == get_preset("paper").kl_direction == "ref||adv"
    old = get_preset("public-code-4baf55d")
    assert old.kl_direction == "adv||ref"
    # The first commit's preset differs from HEAD's in the KL direction and nothing else.
    assert {**vars(old), "name": "public-code", "kl_direction": "ref||adv"} == vars(get_preset("public-code"))


@pytest.mark.parametrize("preset", list(PRESET_KL))
def test_training_step_logits_are_fp32_under_a_bf16_autocast(model, preset):
    """The step's logits (the product with the text features) run in fp32 inside the trainer's
    bf16 autocast, while the encoder runs in bf16; the loss equals the formula on those logits."""
    from numerics import MatmulDtypes

    x, y = make_toy(8, seed=3).tensors
    x_adv = (x + 2 / 255).clamp(0, 1)
    classes = CLASSES + ["purple", "teal", "amber"]  # a class count no width of the encoder has
    clf = model.classifier(classes, ("a {} image",), preset)
    orig = frozen_copy(clf)
    with torch.no_grad():
        clf.visual.proj.add_(0.5 * torch.randn(clf.visual.proj.shape, generator=torch.Generator().manual_seed(0)))
    method = _fixed_adv(get_method("pmg-aft", eps=1 / 255, preset=preset), x_adv)
    with torch.autocast("cpu", dtype=torch.bfloat16), MatmulDtypes() as products:
        out = method(clf, orig, x, y)
    logits_products = [dtype for dtype, shape in products.products if shape[-1] == len(classes)]
    assert len(logits_products) == 2  # f_t over [x_adv; x], f_o over x_adv
    assert set(logits_products) == {torch.float32}
    assert torch.bfloat16 in products.seen  # the encoder did run under the autocast
    assert out.logits.dtype == torch.float32


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
        clf.visual.proj.add_(0.2 * torch.randn(clf.visual.proj.shape, generator=torch.Generator().manual_seed(0)))
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


def _grads_of(method, clf, orig, x, y, shard):
    method.shard = shard
    out = method(clf, orig, x, y)
    params = [p for p in clf.visual.parameters() if p.requires_grad]
    return torch.autograd.grad(out.loss, params), {"loss": out.loss.item(), **out.metrics}


@pytest.mark.parametrize("preset", ["paper", "public-code"])
def test_a_batch_split_over_processes_averages_to_the_whole_batch_gradient(model, preset):
    """What DDP does with two processes (each its rows r::2, gradients and logged metrics averaged)
    equals one process on the whole batch; public-code's summed KL included."""
    x, y = make_toy(8, seed=3).tensors
    x_adv = (x + 3 / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).sign()).clamp(0, 1)
    clf = model.classifier(CLASSES, ("a {} image",), preset)
    orig = frozen_copy(clf)
    with torch.no_grad():
        clf.visual.proj.add_(0.2 * torch.randn(clf.visual.proj.shape, generator=torch.Generator().manual_seed(0)))

    def run(rows, shard):
        method = _fixed_adv(get_method("pmg-aft", eps=3 / 255, preset=preset), x_adv[rows])
        return _grads_of(method, clf, orig, x[rows], y[rows], shard)

    whole, whole_metrics = run(slice(None), (0, 1))
    parts = [run(slice(r, None, 2), (r, 2)) for r in range(2)]
    for g, g0, g1 in zip(whole, parts[0][0], parts[1][0]):
        assert torch.allclose((g0 + g1) / 2, g, rtol=1e-4, atol=1e-6)
    for k in ("loss", "ce", "kl_original", "kl_clean"):
        assert math.isclose((parts[0][1][k] + parts[1][1][k]) / 2, whole_metrics[k], rel_tol=1e-4), k


@pytest.mark.parametrize("name", ["pmg-aft", "fare"])
def test_split_batch_attacks_draw_the_whole_batch_random_start(model, name):
    """With the real attack (random start, eps 8/255): shards seeded alike see the one-process noise."""
    x, y = make_toy(8, seed=6).tensors
    clf = model.classifier(CLASSES, ("a {} image",))
    orig = frozen_copy(clf)
    with torch.no_grad():
        clf.visual.proj.add_(0.2 * torch.randn(clf.visual.proj.shape, generator=torch.Generator().manual_seed(0)))

    def run(rows, shard):
        torch.manual_seed(0)  # the trainer seeds every rank alike
        return _grads_of(get_method(name, eps=8 / 255, steps=2, step_size=4 / 255), clf, orig, x[rows], y[rows], shard)

    whole, _ = run(slice(None), (0, 1))
    parts = [run(slice(r, None, 2), (r, 2))[0] for r in range(2)]
    for g, g0, g1 in zip(whole, *parts):
        assert torch.allclose((g0 + g1) / 2, g, rtol=1e-4, atol=1e-6)
    # Without the shard each process would draw its own rows' noise: a different step.
    torch.manual_seed(0)
    unsharded, _ = _grads_of(get_method(name, eps=8 / 255, steps=2, step_size=4 / 255), clf, orig, x[1::2], y[1::2],
                             (0, 1))
    assert not all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(unsharded, parts[1]))


def test_attack_dtype_follows_preset_and_attack_amp(model, monkeypatch):
    assert get_method("tecoa").attack_dtype is None  # the paper: fp32 attacks, even inside autocast
    assert get_method("tecoa", attack_amp=True).attack_dtype == OUTER_AUTOCAST
    assert get_method("pmg-aft", preset="public-code").attack_dtype == torch.float16
    assert get_method("fare", preset="public-code", attack_amp=True).attack_dtype == torch.float16
    # On a CPU the step has no autocast: attack_amp is the attack's own bf16 where the CPU has it.
    monkeypatch.setattr("pmg_core.core.env.cpu_bf16", lambda: "avx512_bf16")
    assert get_method("fare", attack_amp=True).pgd(model.classifier(["a", "b"])).dtype == torch.bfloat16
    with pytest.raises(UserError, match="attack_amp"):
        get_method("tecoa", attack_amp="yes")
