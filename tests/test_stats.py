"""The intervals and paired tests behind every number shown: textbook values, and coverage on simulated
data with fixed seeds (a 95% interval should hold the truth about 95 times in 100)."""
import numpy as np
import pytest

from pmg_core.leaderboard import stats
from pmg_core.core.errors import UserError


@pytest.mark.parametrize("k, n, low, high", [  # Newcombe (1998), Statistics in Medicine 17:857, Table I (Wilson)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_matches_the_textbook(k, n, low, high):
    i = stats.wilson(k, n)
    assert (round(i.low, 4), round(i.high, 4), i.n) == (low, high, n) and i.estimate == k / n


def test_the_paired_interval_and_exact_mcnemar_match_the_textbook():
    """Fagerland, Lydersen and Laake, Statistical Analysis of Contingency Tables (2017), chapter 8: complete
    response before and after consolidation therapy, pairs (59, 6, 16, 80)."""
    i = stats.newcombe_paired(59, 6, 16, 80)
    assert (round(i.estimate, 4), round(i.low, 4), round(i.high, 4), i.n) == (-0.0621, -0.1186, -0.0046, 161)
    assert round(stats.mcnemar_exact(6, 16), 6) == 0.052479
    # The same images as two 0/1 lists: B right on 75, A on 65. The interval excludes 0 but the exact test
    # does not reject, so no difference is claimed.
    a = [1] * 59 + [1] * 6 + [0] * 16 + [0] * 80
    b = [1] * 59 + [0] * 6 + [1] * 16 + [0] * 80
    p = stats.paired([a], [b])
    assert (p.only_a, p.only_b, round(p.difference.estimate, 4)) == (6, 16, 0.0621)
    assert not p.difference.holds(0) and not p.detected
    assert "+6.2 points [+0.5, +11.9], exact McNemar p = 0.052; of 161 images, 6 right only A, 16 only B" in \
        p.evidence("A", "B")


def _coverage(intervals, truth) -> float:
    return float(np.mean([i.low <= truth <= i.high for i in intervals]))


@pytest.mark.parametrize("p, n", [(0.05, 20), (0.5, 20), (0.9, 40), (0.3, 150)])
def test_wilson_covers_at_the_small_n_and_extreme_accuracies_cards_have(p, n):
    """Wilson's coverage dips to about 92% at some (p, n) (Brown, Cai and DasGupta 2001); the textbook
    normal interval holds 64% at p = 0.05, n = 20 (it is [0, 0] whenever no image is right)."""
    rng = np.random.default_rng(1)
    found = [stats.wilson(int(k), n) for k in rng.binomial(n, p, size=1500)]
    assert 0.91 <= _coverage(found, p) <= 0.995


def test_an_average_over_datasets_covers_at_four_images_a_dataset_where_a_bootstrap_does_not():
    """Five datasets of 4 images (the mini v1 cards): the card's interval covers the true average; the
    percentile bootstrap's would not, which is why an average of equal-n datasets is a pooled Wilson."""
    rng = np.random.default_rng(2)
    truth = [0.05, 0.1, 0.1, 0.2, 0.05]
    draws = [[(int(k), 4) for k in rng.binomial(4, truth)] for _ in range(800)]
    ours = [stats.average(c) for c in draws]
    boot = [stats.bootstrap_average(c, seed=s, draws=1000) for s, c in enumerate(draws)]
    assert ours[0].method.startswith("Wilson") and ours[0].n == 20
    assert _coverage(ours, np.mean(truth)) >= 0.93
    assert _coverage(boot, np.mean(truth)) < 0.9


def test_the_stratified_bootstrap_covers_an_equal_weight_average_of_unequal_datasets():
    rng = np.random.default_rng(3)
    sizes, truth = np.array([30, 60, 120]), np.array([0.2, 0.5, 0.75])
    found = [stats.average(list(zip(rng.binomial(sizes, truth).tolist(), sizes.tolist())), seed=s) for s in range(200)]
    assert found[0].method == "stratified bootstrap" and found[0].n == 210
    assert 0.92 <= _coverage(found, truth.mean()) <= 0.99
    # Equal weights: the small dataset counts as much as the large one (a pooled mean would be 0.56).
    counts = [(6, 30), (30, 60), (90, 120)]
    assert stats.average(counts).estimate == pytest.approx((0.2 + 0.5 + 0.75) / 3)


def test_a_bootstrap_is_the_same_for_the_same_seed():
    counts = [(6, 30), (30, 60), (90, 120)]
    assert stats.bootstrap_average(counts, seed=7) == stats.bootstrap_average(counts, seed=7)
    other = stats.bootstrap_average(counts, seed=8)
    assert abs(other.low - stats.bootstrap_average(counts, seed=7).low) < 0.01


def _pairs(rng, n, p_a, p_b, overlap):
    """Two models on the same n images: B is right where A is with probability `overlap` (correlated)."""
    a = rng.random(n) < p_a
    keep = rng.random(n) < overlap
    b = np.where(keep, a, rng.random(n) < p_b)
    return a.astype(int).tolist(), b.astype(int).tolist()


def test_the_paired_difference_covers_and_mcnemar_holds_its_level():
    rng = np.random.default_rng(4)
    n, sims = 60, 600
    # Under no difference (B's answers drawn from the same accuracy), the exact test rejects at most 5%.
    null = [stats.paired(*[[x] for x in _pairs(rng, n, 0.4, 0.4, 0.7)]) for _ in range(sims)]
    assert np.mean([p.p_value < 0.05 for p in null]) <= 0.05
    # With a difference, Newcombe's interval holds the true one.
    found, truths = [], []
    for _ in range(sims):
        a, b = _pairs(rng, n, 0.5, 0.3, 0.5)
        found.append(stats.paired([a], [b]).difference)
    truth = 0.5 * (0.3 - 0.5)  # B differs from A only where it was redrawn
    assert 0.93 <= _coverage(found, truth) <= 0.99


def test_the_paired_bootstrap_covers_an_equal_weight_difference_over_unequal_datasets():
    rng = np.random.default_rng(5)
    sizes = (40, 80, 160)
    found = []
    for s in range(200):
        pairs = [_pairs(rng, m, 0.6, 0.4, 0.6) for m in sizes]
        found.append(stats.paired([p[0] for p in pairs], [p[1] for p in pairs], seed=s).difference)
    assert found[0].method == "paired stratified bootstrap" and found[0].n == 280
    assert 0.92 <= _coverage(found, 0.4 * (0.4 - 0.6)) <= 0.99


def test_a_difference_of_a_few_images_is_not_a_finding_and_a_clear_one_is():
    a = [1] * 30 + [0] * 30
    three = stats.paired([a], [[0, 0, 0] + a[3:]])  # B loses 3 images: p = 0.25
    assert not three.detected and three.difference.holds(0) and three.p_value == 0.25
    twelve = stats.paired([a], [[0] * 12 + a[12:]])
    assert twelve.detected and twelve.difference.high < 0 and twelve.p_value < 0.001


def test_bad_counts_are_refused_in_one_sentence():
    with pytest.raises(UserError, match="0 <= right <= n"):
        stats.wilson(5, 4)
    with pytest.raises(UserError, match="the same images"):
        stats.paired([[1, 0]], [[1]])
