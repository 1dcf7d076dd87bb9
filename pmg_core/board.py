"""The leaderboard: robustness cards (pmg_core/cards.py) side by side, nothing typed by hand.

`rows(cards)` flattens the cards into one row per (card, threat model and eps): the averages, the
convergence verdict and the published difference; `write_board(folder)` writes board.md, board.csv
and board.html (plotly: the clean-vs-robust scatter and one per-dataset heatmap per eps) beside
the cards. The HTML loads plotly.js from its CDN, so the committed file stays small.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from .cards import read_cards
from .errors import check

COLUMNS = ("model", "protocol", "threat", "clean", "robust", "robust_unaware", "converged", "max_change_points",
           "published_difference", "method", "trainer", "seconds")


def threats(cards: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(t for c in cards for t in c["averages"]["robust_acc"]))


def _published_difference(card: dict, threat: str) -> float | None:
    for row in (card.get("published") or {}).get("averages", []):
        if row["metric"] == f"robust {threat}":
            return row["difference"]
    return None


def rows(cards: Sequence[dict]) -> list[dict]:
    """One row per card and threat: accuracies in %, best robust first within a threat."""
    out = []
    for card in cards:
        avg, p = card["averages"], card["protocol"]
        for threat in avg["robust_acc"]:
            unaware = avg.get("robust_acc_unaware", {}).get(threat)
            out.append({
                "model": card["name"], "protocol": f"{p['name']} v{p['version']}" + (f" (limit {p['limit']})" if p["limit"] else ""),
                "threat": threat, "clean": round(100 * avg["clean_acc"], 2), "robust": round(100 * avg["robust_acc"][threat], 2),
                "robust_unaware": None if unaware is None else round(100 * unaware, 2),
                "converged": card["convergence"]["converged"],
                "max_change_points": round(card["convergence"]["max_change_points"], 2),
                "published_difference": _published_difference(card, threat), "method": card.get("method", ""),
                "trainer": card.get("trainer", ""), "seconds": card.get("seconds")})
    order = {t: i for i, t in enumerate(threats(cards))}
    return sorted(out, key=lambda r: (order[r["threat"]], -r["robust"], -r["clean"]))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def to_markdown(cards: Sequence[dict]) -> str:
    table = rows(cards)
    head = ("model", "threat", "clean %", "robust %", "robust %, attack unaware of the defense", "converged",
            "max change (points)", "published difference (points)")
    keys = ("model", "threat", "clean", "robust", "robust_unaware", "converged", "max_change_points", "published_difference")
    protocols = sorted({r["protocol"] for r in table})
    lines = [f"Protocol: {', '.join(protocols)}. Averages over the protocol's datasets; per dataset in each card "
             "(`<model>.json`).", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    lines += ["| " + " | ".join(_cell(r[k]) for k in keys) + " |" for r in table]
    return "\n".join(lines) + "\n"


def to_csv(cards: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows(cards))
    return buf.getvalue()


def to_html(cards: Sequence[dict]) -> str:
    from .plots import leaderboard_heatmap, leaderboard_scatter

    figures = [leaderboard_scatter(rows(cards))] + [leaderboard_heatmap(cards, t) for t in threats(cards)]
    body = "\n".join(f.to_html(full_html=False, include_plotlyjs="cdn" if i == 0 else False)
                     for i, f in enumerate(figures))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Robustness leaderboard</title></head>"
            f"<body><h1>Robustness leaderboard</h1>{body}</body></html>\n")


def write_board(folder: str | Path) -> list[Path]:
    """board.md, board.csv and board.html from the cards in `folder`; returns the paths written."""
    folder = Path(folder)
    cards = read_cards(folder)
    check(bool(cards), f"'{folder}' holds no cards (`python -m pmg_core cards run --out {folder}` makes them).")
    written = []
    for name, text in (("board.md", to_markdown(cards)), ("board.csv", to_csv(cards)), ("board.html", to_html(cards))):
        (folder / name).write_text(text)
        written.append(folder / name)
    return written


def committed(root: str | Path | None = None) -> dict[str, list[dict]]:
    """The committed cards (benchmarks/cards/<protocol>/), by folder; empty when there are none."""
    from .findings import BENCHMARKS

    base = Path(root) if root else BENCHMARKS / "cards"
    if not base.is_dir():
        return {}
    found = {p.name: read_cards(p) for p in sorted(base.iterdir()) if p.is_dir()}
    return {name: cards for name, cards in found.items() if cards}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def card_markdown(card: dict) -> str:
    """One card for people: provenance, protocol, averages, convergence, published numbers, per dataset."""
    p, avg, conv = card["protocol"], card["averages"], card["convergence"]
    defense = card.get("defense")
    behind = (f" behind {defense['name']} (threshold {defense['threshold']})" if defense else "")
    lines = [f"#### {card['name']}{behind}", f"- evaluated as `{card['model']}`",
             f"- weights sha256 `{card['weights_sha256']}`; base `{card['base']}`; method {card.get('method') or '-'}; "
             f"trainer {card.get('trainer') or '-'}; paper {card.get('paper') or '-'}; preset `{card.get('preset')}`",
             f"- protocol **{p['name']} v{p['version']}** ({p['title']})" + (f", limited to {p['limit']} samples" if p["limit"] else "")
             + f"; manifests {', '.join(f'{d} `{h[:12]}`' for d, h in p['manifests'].items())}",
             f"- code {', '.join(card['code_version'])}; device {', '.join(card['device'])}; {card['seconds']:.0f} s",
             f"- average clean {_pct(avg['clean_acc'])}; robust " + ", ".join(
                 f"{_pct(v)} at {t}" + (f" ({_pct(avg['robust_acc_unaware'][t])} under the attack unaware of the defense)"
                                        if "robust_acc_unaware" in avg else "") for t, v in avg["robust_acc"].items()),
             f"- convergence: {'converged' if conv['converged'] else '**did not converge**'} "
             f"(largest change {conv['max_change_points']:.2f} points; {conv['rule']})"
             + (f": {'; '.join(conv['not_converged'])}" if conv["not_converged"] else "")]
    pub = card.get("published")
    if pub:
        lines.append(f"- published ({pub['where']}): " + "; ".join(
            f"{r['metric']} theirs {r['theirs']:.1f}, ours {r['ours']:.1f} ({r['difference']:+.1f})" for r in pub["averages"])
            + f". What differs: {'; '.join(pub['what_differs'])}")
    else:
        lines.append("- published: no numbers by its authors are recorded")
    threats_of = list(avg["robust_acc"])
    lines += ["", "| dataset | n | clean % | " + " | ".join(f"robust % {t}" for t in threats_of) + " |",
              "|---|---:|---:|" + "---:|" * len(threats_of)]
    for ds, r in card["results"].items():
        lines.append(f"| {ds} | {r['n']} | {100 * r['clean_acc']:.1f} | "
                     + " | ".join(f"{100 * r['robust'][t]['robust_acc']:.1f}" for t in threats_of) + " |")
    return "\n".join(lines) + "\n"
