"""What the committed benchmarks found, in sentences for people (the app's About and Leaderboard tabs,
board.md and board.html).

Every number is read from the JSON in benchmarks/ (the seed study and the robustness cards of
docs/BENCHMARK.md), never typed in, so the app says what the files say; a missing file means no
sentence rather than a stale one. A sentence built from cards compares on the same images: "B is
ahead of A" or "a defense costs a model" is a paired test (pmg_core/leaderboard/stats.py, exact McNemar with its
interval), and reads "no detectable difference at n = ..." when the data cannot tell; cards without
per-image results say that no paired test can be made and give each side's own interval.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from . import card_stats
from .card_stats import Comparison

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
DEFENSE_NAMES = {"ttc": "test-time counterattacks (TTC)", "clipure": "CLIPure (this project's variant)"}


def _runs(pattern: str, method: str, root: Path) -> list[dict]:
    """The seed study's runs of `method` in the files matching `pattern` (a study split over files)."""
    runs = []
    for path in sorted((root / "seed_study").glob(pattern)):
        try:
            runs += [r for r in json.loads(path.read_text()).get("runs", []) if r.get("method") == method]
        except (OSError, ValueError):
            continue
    return runs


def _mean(runs: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in runs)


def pmg_aft_vs_tecoa(root: Path | None = None) -> str | None:
    """One paragraph: PMG-AFT (alpha = beta = 1) against TeCoA at eps 8/255, and what the ablations found."""
    root = Path(root) if root else BENCHMARKS
    tecoa, pmg = _runs("tecoa.json", "tecoa", root), _runs("pmg-aft.json", "pmg-aft", root)
    if not tecoa or not pmg:
        return None
    behind = _mean(pmg, "robust") < _mean(tecoa, "robust")
    text = (f"On the embedded world's mini benchmark (eps 8/255, PGD-10, {len(pmg)} seeds), PMG-AFT as the paper "
            f"writes it (alpha = beta = 1) is {'behind' if behind else 'ahead of'} TeCoA: "
            f"{_mean(pmg, 'clean'):.1f}% clean and {_mean(pmg, 'robust'):.1f}% robust average accuracy against "
            f"TeCoA's {_mean(tecoa, 'clean'):.1f}% and {_mean(tecoa, 'robust'):.1f}%.")
    no_clean, alpha0 = _runs("beta0*.json", "pmg-aft", root), _runs("alpha0*.json", "pmg-aft", root)
    if no_clean:
        text += (f" The ablations say why: without its clean term (beta = 0) it reaches {_mean(no_clean, 'clean'):.1f}% "
                 f"clean and {_mean(no_clean, 'robust'):.1f}% robust, so the original-model term helps and the clean "
                 "term hurts at this radius")
        text += (f" (the clean term alone, alpha = 0, gives {_mean(alpha0, 'clean'):.1f}% clean)." if alpha0 else ".")
    eps4_tecoa, eps4_pmg = _runs("eps4-tecoa*.json", "tecoa", root), _runs("eps4-pmg*.json", "pmg-aft", root)
    if eps4_tecoa and eps4_pmg:
        text += (f" At eps 4/255 the full method is ahead on robust accuracy: {_mean(eps4_pmg, 'robust'):.1f}% against "
                 f"{_mean(eps4_tecoa, 'robust'):.1f}% ({_mean(eps4_pmg, 'clean'):.1f}% and "
                 f"{_mean(eps4_tecoa, 'clean'):.1f}% clean).")
    return text + " Details: docs/BENCHMARK.md."


def _both(runs: list[dict]) -> str:
    return f"{_mean(runs, 'clean'):.1f}% clean and {_mean(runs, 'robust'):.1f}% robust"


def _seeds(runs: list[dict]) -> str:
    return f"{len(runs)} seed{'s' * (len(runs) > 1)}"


def tga_zsr_vs_tecoa(root: Path | None = None) -> str | None:
    """One sentence: TGA-ZSR's seeds against TeCoA's and PMG-AFT's, the same study and evaluation."""
    root = Path(root) if root else BENCHMARKS
    tga, tecoa, pmg = (_runs(f"{m}.json", m, root) for m in ("tga-zsr", "tecoa", "pmg-aft"))
    if not tga or not tecoa or not pmg:
        return None
    text = (f"TGA-ZSR, fine-tuned the same way ({_seeds(tga)}), reaches {_both(tga)} "
            f"(TeCoA {_mean(tecoa, 'clean'):.1f}% and {_mean(tecoa, 'robust'):.1f}%, "
            f"PMG-AFT {_mean(pmg, 'clean'):.1f}% and {_mean(pmg, 'robust'):.1f}%).")
    if len(tga) > 1 and len(tecoa) > 1:
        for key in ("clean", "robust"):
            gap = _mean(tga, key) - _mean(tecoa, key)
            # A gap within the seeds' own spread (the two stdevs added) is not a finding; say which it is.
            spread = statistics.stdev(r[key] for r in tga) + statistics.stdev(r[key] for r in tecoa)
            if abs(gap) <= spread:
                text += (f" Its {key} gap to TeCoA ({gap:+.1f} points) is within the spread between seeds, "
                         "so neither is ahead there.")
            else:
                text += (f" Its {key} {'lead over' if gap > 0 else 'deficit to'} TeCoA ({gap:+.1f} points) is beyond "
                         "the spread between seeds.")
    tga4, tecoa4, pmg4 = (_runs(pattern, m, root) for pattern, m in (
        ("eps4-tga-zsr*.json", "tga-zsr"), ("eps4-tecoa*.json", "tecoa"), ("eps4-pmg*.json", "pmg-aft")))
    if tga4 and tecoa4 and pmg4:
        text += (f" At eps 4/255 it reaches {_both(tga4)} (TeCoA {_mean(tecoa4, 'clean'):.1f}% and "
                 f"{_mean(tecoa4, 'robust'):.1f}%, PMG-AFT {_mean(pmg4, 'clean'):.1f}% and "
                 f"{_mean(pmg4, 'robust'):.1f}%; {_seeds(tga4)}).")
    return text


# --- from the robustness cards: paired tests on the same images (pmg_core/leaderboard/card_stats.py) -------------

def _effect(c: Comparison, gain: str, loss: str, a_words: str, b_words: str) -> str:
    """A paired comparison in words: '{gain|loss} X points (evidence)', 'no detectable difference at n = ...'
    when the interval holds 0, or 'borderline' when the interval excludes 0 but the exact test does not reject."""
    p = c.paired
    evidence = p.evidence(a_words, b_words)
    if p.detected:
        d = 100 * p.difference.estimate
        return f"{gain if d > 0 else loss} {abs(d):.1f} points ({evidence})"
    if p.difference.holds(0.0):
        return f"no detectable difference at n = {p.n} ({evidence})"
    return f"borderline at n = {p.n}: the interval excludes 0 but the exact test does not reject ({evidence})"


def _unpaired(pairs: list[tuple[dict, dict]], metric: str, arrow: str) -> str:
    """Each side's own interval, where no paired test can be made: 'a 55.0 [34.2, 74.2] -> 30.0 [14.5, 51.9]'."""
    found = [(a, card_stats.average_interval(a, metric), card_stats.average_interval(b, metric)) for a, b in pairs]
    ns = {i.n for _, ia, ib in found for i in (ia, ib)}
    if len(ns) == 1:
        return f"(%, 95% interval, n = {ns.pop()} images each) " + "; ".join(
            f"{a['name']} {ia.points()} {arrow} {ib.points()}" for a, ia, ib in found)
    return "(%, 95% interval) " + "; ".join(
        f"{a['name']} {ia.points()} (n = {ia.n}) {arrow} {ib.points()} (n = {ib.n})" for a, ia, ib in found)


def versus(cards: list[dict], a: str, b: str, threat: str | None = None) -> str | None:
    """'Is B ahead of A?' on the cards' robust and clean accuracy, paired image by image."""
    found = {c["name"]: c for c in cards}
    if a not in found or b not in found:
        return None
    ca, cb = found[a], found[b]
    threat = threat or list(ca["averages"]["robust_acc"])[-1]
    if threat not in cb["averages"]["robust_acc"]:
        return None
    where = f"{b} against {a} ({card_stats.protocol_label(ca)}, {threat})"
    robust, clean = card_stats.compare(ca, cb, threat), card_stats.compare(ca, cb, "clean")
    if robust.paired is None or clean.paired is None:
        sides = {m: (card_stats.average_interval(cb, m).text(), card_stats.average_interval(ca, m).text())
                 for m in (threat, "clean")}
        return (f"{where}: no paired test, since {robust.why_not or clean.why_not}; robust accuracy {b} "
                f"{sides[threat][0]}, {a} {sides[threat][1]}; clean accuracy {b} {sides['clean'][0]}, {a} "
                f"{sides['clean'][1]}.")
    words = ("ahead by", "behind by", f"for {a}", f"for {b}")
    return (f"{where}, paired on the same images: robust accuracy {_effect(robust, *words)}; "
            f"clean accuracy {_effect(clean, *words)}.")


def _threshold_words(card: dict) -> str:
    from ..attacks.defenses import get_defense

    if not get_defense(card["defense"]["name"]).gated:
        return ""  # no threshold to speak of (its card records none)
    threshold = card["defense"]["threshold"]
    return (" at its published threshold" if threshold == "published" else
            " at a threshold calibrated on the clean images (their median tau)" if threshold == "calibrated"
            else f" at threshold {threshold}")


def defense_verdicts(cards: list[dict], defense: str, name: str) -> list[str]:
    """What a test-time defense adds, per model against itself undefended on the same images: robust
    accuracy under the adaptive attack through it, and clean accuracy. One paragraph per threshold."""
    plain = {c["name"]: c for c in cards if not c.get("defense")}
    defended = [c for c in cards if (c.get("defense") or {}).get("name") == defense
                and c["name"].split("+")[0] in plain]
    sentences = []
    for words in dict.fromkeys(_threshold_words(c) for c in defended):
        group = [c for c in defended if _threshold_words(c) == words]
        threat = list(group[0]["averages"]["robust_acc"])[-1]
        pairs = [(plain[c["name"].split("+")[0]], c) for c in group]
        robust = [card_stats.compare(a, b, threat) for a, b in pairs]
        clean = [card_stats.compare(a, b, "clean") for a, b in pairs]
        where = (f"Behind {name}{words} ({card_stats.protocol_label(group[0])}, {threat}, an adaptive attack through "
                 "the defense), each model against itself undefended")
        if any(c.paired is None for c in robust + clean):
            why = next(c.why_not for c in robust + clean if c.paired is None)
            text = (f"{where}: no paired test can be made, since {why}. Robust accuracy undefended and behind it "
                    f"{_unpaired(pairs, threat, '->')}. Clean accuracy {_unpaired(pairs, 'clean', '->')}.")
        else:
            tested = [c.paired for c in robust]
            up = sum(p.detected and p.difference.estimate > 0 for p in tested)
            down = sum(p.detected and p.difference.estimate < 0 for p in tested)
            text = (f"{where}, paired on the same images: it adds robust accuracy detectably to {up} of {len(tested)} "
                    f"models, takes it detectably from {down}, and no difference is detectable for "
                    f"{len(tested) - up - down}. Robust accuracy: "
                    + "; ".join(f"{a['name']}: {_effect(r, 'gains', 'loses', 'undefended', 'behind it')}"
                                for (a, _), r in zip(pairs, robust))
                    + ". Clean accuracy: " + _clean_effects(pairs, clean) + ".")
        unsettled = sum(card_stats.convergence_status(c) == "not converged" for c in group)
        if unsettled:
            text += (f" {unsettled} of these {len(group)} defended cards did not converge (a bigger attack still "
                     "lowered them), so their robust accuracy is an upper bound.")
        sentences.append(text)
    return sentences


def defense_verdict(cards: list[dict], defense: str, name: str) -> str | None:
    """defense_verdicts as one paragraph; None when no card has the defense and its model undefended."""
    return " ".join(defense_verdicts(cards, defense, name)) or None


def _clean_effects(pairs: list[tuple[dict, dict]], clean: list[Comparison]) -> str:
    """Per model, or in one clause when no model's clean accuracy moved detectably (the largest change named)."""
    if any(c.paired.detected for c in clean):
        return "; ".join(f"{a['name']}: {_effect(c, 'gains', 'loses', 'undefended', 'behind it')}"
                         for (a, _), c in zip(pairs, clean))
    (a, _), c = max(zip(pairs, clean), key=lambda pc: abs(pc[1].paired.difference.estimate))
    return (f"no detectable difference for any of the {len(clean)} models; the largest, {a['name']}: "
            f"{_effect(c, 'gains', 'loses', 'undefended', 'behind it')}")


def _mini_cards(root: Path | None) -> list[dict] | None:
    from .cards import read_cards

    folder = (Path(root) if root else BENCHMARKS) / "cards" / "mini"
    try:
        return read_cards(folder)
    except Exception:  # noqa: BLE001 - no folder or unreadable cards: no sentence rather than a stale one
        return None


def ttc_verdict(root: Path | None = None) -> str | None:
    """What test-time counterattacks changed, per the committed `mini` robustness cards (benchmarks/cards/mini)."""
    cards = _mini_cards(root)
    return defense_verdict(cards, "ttc", DEFENSE_NAMES["ttc"]) if cards else None


def clipure_verdict(root: Path | None = None) -> str | None:
    """What CLIPure changed, per the committed `mini` robustness cards."""
    cards = _mini_cards(root)
    return defense_verdict(cards, "clipure", DEFENSE_NAMES["clipure"]) if cards else None


def pmg_aft_vs_tecoa_cards(root: Path | None = None) -> str | None:
    """The project's namesake against its baseline on the committed `mini` cards, paired."""
    cards = _mini_cards(root)
    return versus(cards, "tecoa-tiny", "pmg-aft-tiny") if cards else None


def board_findings(cards: list[dict]) -> list[str]:
    """The board's sentences: the two best undefended models against each other, and what each
    test-time defense adds, every one a paired test on the same images (or why it cannot be)."""
    found = []
    for threat in dict.fromkeys(t for c in cards for t in c["averages"]["robust_acc"]):
        plain = sorted((c for c in cards if not c.get("defense") and threat in c["averages"]["robust_acc"]),
                       key=lambda c: (-card_stats.intervals(c)[threat].estimate, c["name"]))
        if len(plain) >= 2:
            found.append(versus(cards, plain[1]["name"], plain[0]["name"], threat))
    for defense in dict.fromkeys((c.get("defense") or {}).get("name") for c in cards):
        if defense:
            found += defense_verdicts(cards, defense, DEFENSE_NAMES.get(defense, defense))
    return [s for s in found if s]
