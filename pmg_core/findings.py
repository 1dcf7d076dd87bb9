"""What the committed benchmarks found, in sentences for people (the app's About and Attack tabs).

Every number is read from the JSON in benchmarks/ (the seed study and the robustness cards of
docs/BENCHMARK.md), never
typed in, so the app says what the files say; a missing file means no sentence rather than a
stale one.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


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


def _span(values: list[float]) -> str:
    return f"{min(values):+.1f} to {max(values):+.1f}"


def _ttc_effect(plain: dict, defended: dict, threat: str) -> tuple[str, str]:
    """One threshold's effect over the models that have both cards: the head and the ranges, in words."""
    gain = {b: 100 * (d["averages"]["robust_acc"][threat] - plain[b]["averages"]["robust_acc"][threat])
            for b, d in defended.items()}
    unaware = [100 * (d["averages"]["robust_acc_unaware"][threat] - plain[b]["averages"]["robust_acc"][threat])
               for b, d in defended.items() if "robust_acc_unaware" in d["averages"]]
    clean = [100 * (d["averages"]["clean_acc"] - plain[b]["averages"]["clean_acc"]) for b, d in defended.items()]
    best = max(gain, key=gain.get)
    head = ("gives no model more robust accuracy" if gain[best] <= 0 else
            f"gives at most {gain[best]:+.1f} points of robust accuracy ({best})")
    ranges = (f"{_span(list(gain.values()))} points across {len(gain)} model{'s' * (len(gain) > 1)}"
              + (f"; {_span(unaware)} under the attack unaware of it" if unaware else "")
              + f"; clean accuracy {_span(clean)}")
    return head, ranges


def ttc_verdict(root: Path | None = None) -> str | None:
    """What test-time counterattacks changed, per the committed `mini` robustness cards (benchmarks/cards/mini):
    each model behind TTC at its published threshold and at a calibrated one, against itself undefended."""
    from .cards import read_cards

    folder = (Path(root) if root else BENCHMARKS) / "cards" / "mini"
    try:
        cards = read_cards(folder)
    except Exception:  # noqa: BLE001 - no folder or unreadable cards: no sentence rather than a stale one
        return None
    plain = {c["name"]: c for c in cards if not c.get("defense")}
    ttc = [c for c in cards if (c.get("defense") or {}).get("name") == "ttc"]  # not the other defenses' cards
    published = {c["name"].split("+")[0]: c for c in ttc if c["defense"]["threshold"] == "published"}
    calibrated = {c["name"].split("+")[0]: c for c in ttc if c["defense"]["threshold"] == "calibrated"}
    published = {b: c for b, c in published.items() if b in plain}
    calibrated = {b: c for b, c in calibrated.items() if b in plain}
    if not published:
        return None
    threat = list(next(iter(published.values()))["averages"]["robust_acc"])[-1]
    p = next(iter(published.values()))["protocol"]
    head, ranges = _ttc_effect(plain, published, threat)
    text = (f"Under the committed mini cards ({p['name']} v{p['version']}, {threat}, an adaptive attack through the "
            f"defense), test-time counterattacks (TTC) at its published threshold {head} ({ranges})")
    if calibrated:
        head, ranges = _ttc_effect(plain, calibrated, threat)
        text += f"; at a threshold calibrated on the clean images (their median tau) TTC {head} ({ranges})"
    defended = list(published.values()) + list(calibrated.values())
    unsettled = sum(not c["convergence"]["converged"] for c in defended)
    text += "." if not unsettled else (
        f". {unsettled} of the {len(defended)} defended cards did not converge (a bigger attack still lowered them), "
        "so their robust accuracy is an upper bound.")
    return text
