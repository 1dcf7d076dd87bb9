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
