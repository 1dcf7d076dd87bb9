"""What the committed benchmarks found, in sentences for people (the app's About and Attack tabs).

Every number is read from the JSON in benchmarks/ (the seed study of docs/BENCHMARK.md), never
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


def _averages(path: Path) -> tuple[dict, dict[str, dict[str, float]]]:
    """One `eval --out` JSON's config and, per model, each metric averaged over its datasets; empty when unreadable."""
    try:
        doc = json.loads(path.read_text())
        config, results = doc["config"], doc["results"]
    except (OSError, ValueError, KeyError):
        return {}, {}
    out: dict[str, dict[str, float]] = {}
    for model in dict.fromkeys(r["model"] for r in results):
        mine = [r for r in results if r["model"] == model]
        out[model] = {k: 100 * statistics.fmean(r[k] for r in mine)
                      for k in ("clean_acc", "robust_acc", "robust_acc_unaware") if all(k in r for r in mine)}
    return config, out


def ttc_verdict(root: Path | None = None) -> str | None:
    """One sentence: what test-time counterattacks changed, per the committed all-model TTC run."""
    root = Path(root) if root else BENCHMARKS
    config, defended = _averages(root / "ttc" / "mini-ttc-limit20.json")
    _, plain = _averages(root / "ttc" / "mini-limit20-plain.json")
    pairs = [(base, plain[base], d) for name, d in defended.items()
             if (base := name.removesuffix("+ttc")) in plain and "robust_acc_unaware" in d]
    if not pairs:
        return None
    adaptive = {base: d["robust_acc"] - p["robust_acc"] for base, p, d in pairs}
    unaware = [d["robust_acc_unaware"] - p["robust_acc"] for _, p, d in pairs]
    clean = [d["clean_acc"] - p["clean_acc"] for _, p, d in pairs]
    best = max(adaptive, key=adaptive.get)
    head = ("give no model more robust accuracy" if adaptive[best] <= 0 else
            f"give at most {adaptive[best]:+.1f} points of robust accuracy ({best})")
    return (f"Test-time counterattacks (TTC) {head} under an attack that attacks through them "
            f"({min(adaptive.values()):+.1f} to {max(adaptive.values()):+.1f} points across {len(pairs)} "
            f"model{'s' * (len(pairs) > 1)}; {min(unaware):+.1f} to {max(unaware):+.1f} under an attack unaware "
            f"of them), while clean accuracy moves by {min(clean):+.1f} to {max(clean):+.1f}; "
            f"{config.get('limit') or 'all'} images per task.")
