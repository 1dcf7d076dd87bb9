"""PGD and friends: eps-ball, monotone loss, batch-size independence, clean .grad, torchattacks parity."""
import pytest
import torch

from pmg_core.attacks.pgd import OUTER_AUTOCAST, PGD, AutoAttackAdapter, FeatureAttack, make_attack, random_start
from pmg_core.core.errors import UserError
from pmg_core.evaluation.accuracy import EvalConfig, evaluate
from numerics import MatmulDtypes
from toy import make_toy

CLASSES = ["red", "green", "blue", "grey"]


@pytest.fixture(scope="module")
def trained():
    """A pmg-test model briefly trained on the toy task, so attacks have real work to do."""
    from pmg_core.models.clip import load_model
    from pmg_core.training.loop import TrainConfig, train

    torch.manual_seed(0)
    m = load_model("pmg-test")
    train(TrainConfig(model="pmg-test", method="clean", dataset="toy-colours", max_steps=100, batch_size=32, lr=0.05,
                      warmup=5), progress=False, model=m)
    return m


@pytest.fixture(scope="module")
def batch():
    ds = make_toy(64, seed=5)
    return ds.tensors


@pytest.fixture
def clf(trained):
    return trained.classifier(CLASSES, ("a {} image",)).eval()


@pytest.mark.parametrize("norm,eps", [("Linf", 4 / 255), ("L2", 0.5)])
def test_pgd_stays_in_ball_and_range(clf, batch, norm, eps):
    x, y = batch
    for select in ("best", "last"):
        adv = PGD(clf, eps, steps=5, norm=norm, select=select, seed=0)(x, y)
        assert adv.min() >= 0 and adv.max() <= 1
        d = (adv - x).flatten(1)
        size = d.abs().max(1).values if norm == "Linf" else d.norm(dim=1)
        assert (size <= eps + 1e-6).all()


def test_pgd_lowers_accuracy(clf, batch):
    x, y = batch
    clean = (clf(x).argmax(1) == y).float().mean()
    res = PGD(clf, 16 / 255, steps=10).run(x, y)
    assert clean > 0.9
    assert (~res.fooled).float().mean() < clean - 0.3
    # the fooled flag is honest: every sample whose returned adversarial prediction is wrong counts as fooled
    assert res.fooled[res.adv_pred != y].all()


def test_eps_zero_robust_equals_clean(clf, batch):
    x, y = batch
    res = PGD(clf, 0.0, steps=5).run(x, y)
    assert torch.equal(res.fooled, clf(x).argmax(1) != y)
    assert torch.equal(res.adv, x)


def test_more_steps_never_lower_the_loss(clf, batch):
    x, y = batch
    prev = None
    for steps in (0, 1, 2, 5, 10):
        loss = PGD(clf, 2 / 255, steps=steps, seed=3).run(x, y).loss
        if prev is not None:
            assert (loss >= prev - 1e-6).all()
        prev = loss


def test_targeted_attack_reaches_target(clf, batch):
    x, y = batch
    target = (y + 1) % 4
    res = PGD(clf, 48 / 255, steps=20).run(x, y, target=target)
    assert res.fooled.float().mean() > 0.5
    assert torch.equal(res.fooled[res.adv_pred == target], torch.ones(int((res.adv_pred == target).sum()), dtype=torch.bool))


@pytest.mark.parametrize("random_start", [False, True])
def test_robust_accuracy_independent_of_batch_size(trained, random_start):
    counts = set()
    for bs in (1, 7, 64):
        cfg = EvalConfig(models=["x"], datasets=["toy-colours"], eps=3 / 255, steps=5, batch_size=bs, limit=64,
                         random_start=random_start)
        r = evaluate(cfg, models=[trained])["results"][0]
        counts.add((r["clean_correct"], r["robust_correct"]))
    assert len(counts) == 1, counts


def test_early_stop_gives_same_result(clf, batch):
    x, y = batch
    a = PGD(clf, 3 / 255, steps=8, random_start=False).run(x, y)
    b = PGD(clf, 3 / 255, steps=8, random_start=False, early_stop=True).run(x, y)
    assert torch.equal(a.fooled, b.fooled)


@pytest.mark.parametrize("steps,pool,norm", [(8, 16, "Linf"), (8, 200, "Linf"), (3, 5, "L2"), (0, 16, "Linf")])
def test_a_stream_of_batches_gets_the_verdicts_of_each_batch_attacked_alone(clf, batch, steps, pool, norm):
    x, y = batch
    eps = 3 / 255 if norm == "Linf" else 0.3
    attack = PGD(clf, eps, steps=steps, norm=norm, random_start=False, early_stop=True)
    starts = random_start(x, eps, norm, torch.Generator().manual_seed(0))
    cuts = [0, 10, 10, 37, 64]  # batches of 10, 0, 27 and 27 samples
    alone = torch.cat([attack.run(x[a:b], y[a:b], init=starts[a:b]).fooled for a, b in zip(cuts, cuts[1:]) if b > a])
    streamed = torch.zeros(len(y), dtype=torch.bool)
    seen = torch.zeros(len(y), dtype=torch.int)
    for pos, fooled in attack.fooled_stream(((x[a:b], y[a:b], starts[a:b]) for a, b in zip(cuts, cuts[1:])), pool):
        streamed[pos], seen[pos] = fooled, seen[pos] + 1
    assert torch.equal(seen, torch.ones_like(seen))  # every sample gets exactly one verdict
    assert torch.equal(streamed, alone)
    assert 0 < int(alone.sum()) < len(y) or steps == 0  # the attack fools some samples, not all


def test_attacks_leave_model_grads_untouched(trained, batch):
    x, y = batch
    clf = trained.classifier(CLASSES, ("a {} image",))
    params = list(clf.parameters())
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, float(i))
    before = [p.grad.clone() for p in params]
    PGD(clf, 4 / 255, steps=3)(x, y)
    PGD(clf, 4 / 255, steps=3, select="last")(x, y)
    FeatureAttack(lambda z: clf.encode(z, normalize=False), 4 / 255, steps=2)(x, clf.encode(x, False).detach())
    for p, g in zip(params, before):
        assert torch.equal(p.grad, g)
    for p in params:
        p.grad = None


def test_matches_torchattacks_pgd(clf, batch):
    import torchattacks

    x, y = batch
    eps, alpha, steps = 3 / 255, 1 / 255, 7
    theirs = torchattacks.PGD(clf, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    ours = PGD(clf, eps, alpha, steps, random_start=False, select="last")(x, y)
    with torch.no_grad():
        acc_theirs = (clf(theirs).argmax(1) == y).float().mean().item()
        acc_ours = (clf(ours).argmax(1) == y).float().mean().item()
    assert abs(acc_theirs - acc_ours) <= 2 / 64
    assert (theirs - ours).abs().max() <= 1 / 255 + 1e-6 or (theirs != ours).float().mean() < 0.01


def test_feature_attack_increases_feature_distance(clf, batch):
    x, _ = batch
    target = clf.encode(x, normalize=False).detach()
    adv = FeatureAttack(lambda z: clf.encode(z, normalize=False), 4 / 255, steps=5)(x, target)
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6
    dist = (clf.encode(adv, normalize=False) - target).pow(2).sum(1)
    assert dist.mean() > 0


def test_autoattack_fast_lowers_accuracy(clf, batch):
    x, y = batch
    x, y = x[:16], y[:16]
    adv = AutoAttackAdapter(clf, 16 / 255, version="fast", n_classes=4)(x, y)
    assert (adv - x).abs().max() <= 16 / 255 + 1e-5
    with torch.no_grad():
        assert (clf(adv).argmax(1) == y).float().mean() < (clf(x).argmax(1) == y).float().mean()


@pytest.mark.parametrize("kwargs,words", [
    ({"eps": -3 / 255}, "eps"), ({"eps": float("nan")}, "eps"), ({"eps": 4 / 255, "steps": -1}, "steps"),
    ({"eps": 4 / 255, "norm": "L3"}, "norm"), ({"eps": 4 / 255, "loss": "hinge"}, "loss"), ({"eps": 3.0}, "eps"),
])
def test_bad_attack_settings_are_one_sentence(clf, kwargs, words):
    with pytest.raises(UserError) as e:
        PGD(clf, **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unknown_attack_name(clf):
    with pytest.raises(UserError, match="Unknown attack"):
        make_attack("deepfool", clf, 1 / 255)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("seeded", [False, True])
def test_random_start_of_a_shard_is_its_rows_of_the_global_batch_draw(batch, norm, seeded):
    """Processes seeded alike draw the global batch's noise and keep rows rank::world; their streams stay in step."""
    x, _ = batch
    x = x[:12]

    def draw(rows, shard):
        torch.manual_seed(5)
        gen = torch.Generator().manual_seed(7) if seeded else None
        noise = random_start(x[rows], 4 / 255 if norm == "Linf" else 0.5, norm, gen, shard)
        return noise, (gen.initial_seed(), torch.rand(1, generator=gen)) if seeded else torch.rand(1)

    whole, after = draw(slice(None), (0, 1))
    for world in (2, 3):
        for rank in range(world):
            part, part_after = draw(slice(rank, None, world), (rank, world))
            assert torch.equal(part, whole[rank::world])
            assert str(part_after) == str(after)  # the same amount drawn: the next draw agrees


def test_pgd_perturb_of_shards_equals_the_whole_batch(clf, batch):
    x, y = batch
    torch.manual_seed(0)
    whole = PGD(clf, 8 / 255, 4 / 255, steps=2, select="last").perturb(x, y)
    for rank in range(2):
        torch.manual_seed(0)
        part = PGD(clf, 8 / 255, 4 / 255, steps=2, select="last").perturb(x[rank::2], y[rank::2], shard=(rank, 2))
        assert torch.allclose(part, whole[rank::2], atol=1e-6)


@pytest.mark.parametrize("dtype,expected", [(None, torch.float32), (OUTER_AUTOCAST, torch.bfloat16),
                                            (torch.float16, torch.float16)])
def test_attack_numerics_inside_an_outer_autocast(clf, batch, dtype, expected):
    """A training step's autocast (bf16 here) must not reach an fp32 attack, in its forward passes
    or in the input-gradient passes behind them; OUTER_AUTOCAST opts into it. (The final logits
    product is fp32 in every case: ZeroShotClassifier.logits_from_features.)"""
    x, y = batch
    attacks = [lambda: PGD(clf, 4 / 255, steps=2, select="last", dtype=dtype)(x[:8], y[:8]),
               lambda: PGD(clf, 4 / 255, steps=2, dtype=dtype).run(x[:8], y[:8]),
               lambda: FeatureAttack(clf, 4 / 255, steps=2, dtype=dtype)(x[:8], torch.zeros(8, 4))]

    def encoder_dtypes() -> set:
        with MatmulDtypes() as products:
            clf(x[:4])
        return set(products.seen)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.bfloat16 in encoder_dtypes()  # the outer autocast does apply to the model
        for attack in attacks:
            with MatmulDtypes() as products:
                attack()
            assert len(products.seen) >= 8 and expected in products.seen
            assert set(products.seen) <= {expected, torch.float32}
        assert torch.bfloat16 in encoder_dtypes()  # and the outer passes still run (no cross-dtype weight cache)
