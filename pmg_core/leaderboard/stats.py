"""Uncertainty for every accuracy this project shows: 95% intervals and paired tests on the same images.

- `wilson(k, n)`: one proportion (the Wilson score interval; it keeps its coverage at the small n and
  the accuracies near 0 or 1 that robustness cards are full of, where the textbook normal interval
  does not).
- `average(counts)`: an equal-weight average of per-dataset accuracies, as a card's average is.
  When every dataset has the same n that average is the pooled proportion, and the Wilson interval
  of the pooled count is used (it covers at 4 images a dataset, where a bootstrap's percentiles are
  too narrow: measured in tests/test_stats.py); otherwise a seeded bootstrap over images,
  stratified by dataset: resampling a dataset's n images with replacement draws its count from
  Binomial(n, k/n), so the draws are made that way, exactly and fast.
- `paired(a, b)`: two models (or one with and without a defense) judged on the same images, one list
  of 0/1 per dataset each. The exact McNemar test (a binomial test on the discordant images) gives
  the p-value; the difference b - a of the equal-weight averages gets Newcombe's score interval for
  paired proportions (his method 10, Statistics in Medicine 1998) when the datasets have one n, and
  a seeded paired bootstrap stratified by dataset otherwise. A difference counts as detected only
  when the interval excludes 0 and the exact test rejects at 5%: the two can disagree at the margin
  and a claim that A beats B should survive both.

Every result carries its n. Seeds are fixed, so the same cards always give the same intervals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import binomtest, norm

from ..core.errors import check

CONFIDENCE = 0.95
DRAWS = 10_000  # bootstrap resamples: the percentiles move by well under 0.5 points between seeds
SEED = 0
_Z = float(norm.ppf(0.5 + CONFIDENCE / 2))


@dataclass(frozen=True)
class Interval:
    """An estimate in [0, 1] (or a difference in [-1, 1]) with its 95% interval and the images behind it."""

    estimate: float
    low: float
    high: float
    n: int
    method: str

    def holds(self, value: float) -> bool:
        return self.low <= value <= self.high

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high

    def points(self) -> str:
        """'45.0 [25.8, 65.8]', in percent."""
        return f"{100 * self.estimate:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    def text(self) -> str:
        """'45.0% [25.8, 65.8] (n = 20)': what a sentence shows."""
        return f"{100 * self.estimate:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] (n = {self.n})"

    def to_json(self) -> dict:
        return {"estimate": round(self.estimate, 6), "low": round(self.low, 6), "high": round(self.high, 6),
                "n": self.n, "method": self.method}


def wilson(k: int, n: int) -> Interval:
    """The Wilson score interval of k right out of n."""
    check(n > 0 and 0 <= k <= n, f"A proportion needs 0 <= right <= n and n > 0; got {k} of {n}.")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return Interval(k / n, float(ci.low), float(ci.high), int(n), "Wilson")


def _percentiles(draws: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_average(counts: Sequence[tuple[int, int]], seed: int = SEED, draws: int = DRAWS) -> Interval:
    """The equal-weight average of k/n over datasets, with a seeded bootstrap over images stratified by dataset."""
    _check_counts(counts)
    rng = np.random.default_rng(seed)
    k, n = np.array([c[0] for c in counts]), np.array([c[1] for c in counts])
    resampled = rng.binomial(n, k / n, size=(draws, len(counts))) / n
    low, high = _percentiles(resampled.mean(axis=1))
    return Interval(float(np.mean(k / n)), low, high, int(n.sum()), "stratified bootstrap")


def average(counts: Sequence[tuple[int, int]], seed: int = SEED) -> Interval:
    """The equal-weight average of per-dataset accuracies (k right of n each) and its 95% interval."""
    _check_counts(counts)
    if len({n for _, n in counts}) == 1:  # the average is the pooled proportion
        pooled = wilson(sum(k for k, _ in counts), sum(n for _, n in counts))
        return Interval(pooled.estimate, pooled.low, pooled.high, pooled.n, "Wilson (pooled; one n per dataset)")
    return bootstrap_average(counts, seed)


def _check_counts(counts: Sequence[tuple[int, int]]) -> None:
    check(bool(counts), "An average needs at least one dataset.")
    for k, n in counts:
        check(n > 0 and 0 <= k <= n, f"A proportion needs 0 <= right <= n and n > 0; got {k} of {n}.")


# --- paired ----------------------------------------------------------------------------------------

def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the discordant images split as a fair coin would (1.0 with none)."""
    m = only_a + only_b
    return 1.0 if m == 0 else float(binomtest(only_b, m, 0.5).pvalue)


def newcombe_paired(both: int, first_only: int, second_only: int, neither: int) -> Interval:
    """Newcombe's method 10 interval for p_first - p_second on paired 0/1 results (the 2x2 table of pairs)."""
    n = both + first_only + second_only + neither
    check(n > 0, "A paired comparison needs at least one image.")
    k1, k2 = both + first_only, both + second_only
    p1, p2 = k1 / n, k2 / n
    w1, w2 = wilson(k1, n), wilson(k2, n)
    margins = (k1, n - k1, k2, n - k2)
    if 0 in margins:
        phi = 0.0
    else:
        a = both * neither - first_only * second_only
        # Newcombe's continuity adjustment of the correlation between the two margins.
        a = a - n / 2 if a > n / 2 else 0.0 if a >= 0 else a
        phi = a / math.sqrt(math.prod(margins))
    d1, e2 = p1 - w1.low, w2.high - p2
    e1, d2 = w1.high - p1, p2 - w2.low
    low = p1 - p2 - math.sqrt(max(0.0, d1 ** 2 - 2 * phi * d1 * e2 + e2 ** 2))
    high = p1 - p2 + math.sqrt(max(0.0, e1 ** 2 - 2 * phi * e1 * d2 + d2 ** 2))
    return Interval(p1 - p2, max(-1.0, low), min(1.0, high), n, "Newcombe paired score")


def paired_bootstrap(tables: Sequence[tuple[int, int, int, int]], seed: int = SEED, draws: int = DRAWS) -> Interval:
    """The equal-weight average over datasets of p_first - p_second, each dataset's pairs resampled with
    replacement (a multinomial draw of its 2x2 table), seeded. `tables`: (both, first_only, second_only, neither)."""
    rng = np.random.default_rng(seed)
    diffs = np.zeros(draws)
    estimate, total = 0.0, 0
    for both, first_only, second_only, neither in tables:
        n = both + first_only + second_only + neither
        check(n > 0, "A paired comparison needs at least one image per dataset.")
        cells = rng.multinomial(n, np.array([first_only, second_only, both + neither]) / n, size=draws)
        diffs += (cells[:, 0] - cells[:, 1]) / n
        estimate += (first_only - second_only) / n
        total += n
    diffs /= len(tables)
    low, high = _percentiles(diffs)
    return Interval(estimate / len(tables), low, high, total, "paired stratified bootstrap")


@dataclass(frozen=True)
class Paired:
    """B against A on the same images: the difference of B's and A's accuracies (points b - a) and the test."""

    difference: Interval
    p_value: float
    only_a: int  # images A gets right and B does not
    only_b: int

    @property
    def n(self) -> int:
        return self.difference.n

    @property
    def detected(self) -> bool:
        """Whether the data show a difference: the interval excludes 0 and the exact test rejects at 5%."""
        return not self.difference.holds(0.0) and self.p_value < 1 - CONFIDENCE

    def evidence(self, a: str, b: str) -> str:
        """'-10.0 points [-18.2, -2.1], exact McNemar p = 0.012; of 150 images, 19 right only for A, 4 only for B'."""
        d = self.difference
        return (f"{100 * d.estimate:+.1f} points [{100 * d.low:+.1f}, {100 * d.high:+.1f}], exact McNemar "
                f"{_p(self.p_value)}; of {self.n} images, {self.only_a} right only {a}, {self.only_b} only {b}")


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def paired(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]], seed: int = SEED) -> Paired:
    """B against A: one 0/1 list per dataset each, aligned image by image (the same manifest)."""
    check(len(a) == len(b) and len(a) > 0, "A paired comparison needs the same datasets on both sides.")
    tables = []
    for xs, ys in zip(a, b):
        check(len(xs) == len(ys) and len(xs) > 0, "A paired comparison needs the same images on both sides.")
        both = sum(1 for x, y in zip(xs, ys) if x and y)
        only_b = sum(1 for x, y in zip(xs, ys) if y and not x)
        only_a = sum(1 for x, y in zip(xs, ys) if x and not y)
        tables.append((both, only_b, only_a, len(xs) - both - only_a - only_b))
    if len({sum(t) for t in tables}) == 1:  # the equal-weight average is the pooled proportion
        pooled = tuple(sum(t[i] for t in tables) for i in range(4))
        difference = newcombe_paired(*pooled)
    else:
        difference = paired_bootstrap(tables, seed)
    only_b, only_a = sum(t[1] for t in tables), sum(t[2] for t in tables)
    return Paired(difference, mcnemar_exact(only_a, only_b), only_a, only_b)
