"""The leaderboard: robustness cards (pmg_core/leaderboard/cards.py) side by side, nothing typed by hand.

`rows(cards)` flattens the cards into one row per (card, threat model and eps): every accuracy as a
95% interval with its n (pmg_core/leaderboard/card_stats.py), the convergence in words, the published difference,
and the row's band. Rows are ordered in bands, not by rank: band 1 is the row with the best robust
accuracy and every row whose interval overlaps that row's; the next band starts at the first row
whose interval lies wholly below it, and so on. Within a band the order is by name, since the
numbers do not tell those rows apart. Only cards measured on the same images share bands.

`write_board(folder)` writes board.md, board.csv and board.html beside the cards. board.html is
self-contained and readable offline (no script or style from elsewhere): the table (a click on a
row opens its card right under it), the clean-against-robust scatter with its error bars as inline
SVG, and per-dataset heatmaps as tables. The Leaderboard tab shows the same table and heatmaps
(`table_html`, `heatmap_html`, `card_html`, `BOARD_CSS`, `OPEN_CARD_JS`), so the two never differ.
"""
from __future__ import annotations

import csv
import html
import io
import json
import re
from pathlib import Path
from typing import Sequence

from . import card_stats
from .cards import read_cards
from ..core.errors import check
from .stats import Interval

COLUMNS = ("model", "protocol", "threat", "band", "n", "clean", "clean_low", "clean_high", "robust", "robust_low",
           "robust_high", "robust_unaware", "robust_unaware_low", "robust_unaware_high", "convergence",
           "max_change_points", "published_difference", "published_difference_low", "published_difference_high",
           "method", "defense", "trainer", "seconds")
BANDS = ("Rows are grouped in bands, not ranked: band 1 holds the best robust accuracy and every row whose 95% "
         "interval overlaps it; the next band starts at the first row whose interval lies wholly below that one. "
         "Within a band the rows are listed by name, since these numbers do not tell them apart.")
NUMBERS = ("Each accuracy is a percentage with its 95% interval in brackets (Wilson for one dataset; for the average "
           "over datasets, Wilson on the pooled images when every dataset has the same n, else a seeded bootstrap "
           "over images); n is the number of images behind it.")


def threats(cards: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(t for c in cards for t in c["averages"]["robust_acc"]))


def published_difference(card: dict, metric: str, ours: Interval) -> Interval | None:
    """Ours minus the authors' published number (in [-1, 1]), with our interval shifted by theirs (their
    number taken as given: no n is published with it); None where they published none for `metric`."""
    name = "clean" if metric == "clean" else f"robust {metric}"
    for row in (card.get("published") or {}).get("averages", []):
        if row["metric"] == name:
            theirs = row["theirs"] / 100
            return Interval(ours.estimate - theirs, ours.low - theirs, ours.high - theirs, ours.n,
                            f"ours minus theirs ({ours.method})")
    return None


def _signed(value: Interval | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value.estimate:+.1f} [{100 * value.low:+.1f}, {100 * value.high:+.1f}]"


def defense_label(card: dict) -> str:
    """'none', 'ttc', 'ttc (calibrated)', 'clipure', 'ttc (0.05)'."""
    defense = card.get("defense")
    if not defense:
        return "none"
    threshold = defense.get("threshold")
    return defense["name"] if threshold in (None, "published") else f"{defense['name']} ({threshold})"


def rows(cards: Sequence[dict]) -> list[dict]:
    """One row per card and threat, in bands (module docstring): accuracies as Intervals in [0, 1]."""
    out = []
    for card in cards:
        found = card_stats.intervals(card)
        for threat in card["averages"]["robust_acc"]:
            out.append({
                "card": card, "model": card["name"], "protocol": card_stats.protocol_label(card), "threat": threat,
                "n": found["clean"].n, "clean": found["clean"], "robust": found[threat],
                "robust_unaware": found.get(card_stats.UNAWARE + threat),
                "convergence": card_stats.convergence_words(card),
                "max_change_points": round(card["convergence"]["max_change_points"], 2),
                "published_difference": published_difference(card, threat, found[threat]),
                "method": card.get("method") or "",
                "defense": defense_label(card), "trainer": card.get("trainer", ""), "seconds": card.get("seconds")})
    return _in_bands(out)


def _in_bands(table: list[dict]) -> list[dict]:
    """Band numbers per (protocol, threat): each band is a leader and the rows whose interval overlaps it."""
    out = []
    groups = list(dict.fromkeys((r["protocol"], r["threat"]) for r in table))
    for group in groups:
        members = sorted((r for r in table if (r["protocol"], r["threat"]) == group),
                         key=lambda r: (-r["robust"].estimate, -r["clean"].estimate, r["model"]))
        band, leader = 0, None
        for r in members:
            if leader is None or not r["robust"].overlaps(leader["robust"]):
                band, leader = band + 1, r
            r["band"] = band
        out += sorted(members, key=lambda r: (r["band"], r["model"]))
    return out


# --- text ------------------------------------------------------------------------------------------

def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, Interval):
        return value.points()
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def to_markdown(cards: Sequence[dict]) -> str:
    from .findings import board_findings

    table = rows(cards)
    head = ("band", "model", "threat", "n", "clean % [95% CI]", "robust % [95% CI]",
            "robust %, attack unaware of the defense [95% CI]", "convergence",
            "robust % minus the authors' published number (points) [95% CI]")
    keys = ("band", "model", "threat", "n", "clean", "robust", "robust_unaware", "convergence", "published_difference")
    protocols = list(dict.fromkeys(r["protocol"] for r in table))
    lines = [f"Protocol: {', '.join(protocols)}. Averages over the protocol's datasets; per dataset in each card "
             "(`<model>.json`).", "", NUMBERS, "", BANDS, "",
             "| " + " | ".join(head) + " |", "|---:|---|---|" + "---:|" * (len(head) - 3)]
    lines += ["| " + " | ".join(_signed(r[k]) if k == "published_difference" else _cell(r[k]) for k in keys) + " |"
              for r in table]
    found = board_findings(cards)
    if found:
        lines += ["", "What the cards show, from paired tests on the same images:", ""] + [f"- {s}" for s in found]
    return "\n".join(lines) + "\n"


def to_csv(cards: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows(cards):
        flat = {k: r[k] for k in COLUMNS if k in r and not isinstance(r[k], Interval)}
        for key in ("clean", "robust", "robust_unaware", "published_difference"):
            i = r[key]
            flat.update({key: None if i is None else round(100 * i.estimate, 2),
                         f"{key}_low": None if i is None else round(100 * i.low, 2),
                         f"{key}_high": None if i is None else round(100 * i.high, 2)})
        w.writerow(flat)
    return buf.getvalue()


# --- html: one renderer for board.html and the Leaderboard tab ------------------------------------

BOARD_CSS = """
.pmg-board { font-family: system-ui, sans-serif; color: #1f2937; }
.pmg-board-table, .pmg-heat { border-collapse: collapse; font-size: 14px; }
.pmg-board-table { width: 100%; }
.pmg-board-table th, .pmg-board-table td { padding: 6px 8px; border-bottom: 1px solid #e5e7eb; text-align: right;
  vertical-align: top; }
.pmg-board-table th { background: #f3f4f6; font-weight: 600; }
.pmg-board-table .model, .pmg-board-table .text { text-align: left; }
.pmg-board-table .model { font-family: ui-monospace, monospace; white-space: nowrap; }
.pmg-board-table .model wbr { display: none; }
.pmg-board-table .nowrap { white-space: nowrap; }
.pmg-board-table .conv { font-size: 12px; min-width: 16em; }
.pmg-board-table tr.pmg-row { cursor: pointer; }
.pmg-board-table tr.pmg-row:hover, .pmg-board-table tr.pmg-row[aria-expanded=true] { background: #eef2ff; }
.pmg-board-table tbody.pmg-band + tbody.pmg-band tr:first-child td { border-top: 2px solid #6366f1; }
.pmg-board-table .ci { color: #4b5563; font-size: 12px; white-space: nowrap; }
.pmg-board-table .ci::before { content: " "; }
.pmg-card-row > td { text-align: left; background: #fafafa; }
.pmg-card { max-width: 100%; overflow-wrap: anywhere; }
.pmg-card code { overflow-wrap: anywhere; word-break: break-all; white-space: normal; }
.pmg-card table { border-collapse: collapse; }
.pmg-card td, .pmg-card th { padding: 2px 6px; border-bottom: 1px solid #e5e7eb; text-align: right; }
.pmg-card td:first-child, .pmg-card th:first-child { text-align: left; }
.pmg-heat-wrap { overflow-x: auto; max-width: 100%; }
.pmg-heat th, .pmg-heat td { padding: 4px 6px; text-align: center; border: 1px solid #fff; }
.pmg-heat th.model { text-align: right; font-family: ui-monospace, monospace; font-weight: 400; white-space: nowrap; }
.pmg-heat td small { display: block; font-size: 10px; opacity: 0.85; color: inherit; }
.pmg-heat caption { text-align: left; font-weight: 600; padding: 4px 0; }
@media (max-width: 640px) {
  .pmg-board-table .wide { display: none; }
  .pmg-board-table .model { white-space: normal; }
  .pmg-board-table .model wbr { display: inline; }
  .pmg-board-table th, .pmg-board-table td { padding: 5px 4px; font-size: 13px; }
  .pmg-board-table .ci { display: block; }
  .pmg-heat thead th.dataset { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; }
  .pmg-heat th.model { white-space: normal; max-width: 120px; font-size: 11px; }
}
"""

# A click (or Enter) on a row opens its card right under it and brings the two into view. `element`
# is the container: the Leaderboard tab's gr.HTML, or the document in board.html.
OPEN_CARD_JS = """
const toggle = (row) => {
  const card = row.nextElementSibling;
  const open = card.hidden;
  card.hidden = !open;
  row.setAttribute('aria-expanded', String(open));
  if (open) row.scrollIntoView({block: 'start'});
};
element.addEventListener('click', (event) => {
  const row = event.target.closest('tr.pmg-row');
  if (row && !event.target.closest('a')) toggle(row);
});
element.addEventListener('keydown', (event) => {
  const row = event.target.closest('tr.pmg-row');
  if (row && (event.key === 'Enter' || event.key === ' ')) { event.preventDefault(); toggle(row); }
});
"""


def _e(text) -> str:
    return html.escape(str(text))


def _name(model: str) -> str:
    """A model name that may break after '+', '@' or '-' on a narrow screen, never inside a word."""
    return re.sub(r"([+@-])", r"\1<wbr>", _e(model))


def _interval_html(value: Interval | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value.estimate:.1f}<span class='ci'>[{100 * value.low:.1f}, {100 * value.high:.1f}]</span>"


def table_html(cards: Sequence[dict], with_files: bool = False) -> str:
    """The board as an HTML table in bands; each row's card (card_html) sits hidden right under it.
    `with_files`: each card also shows its JSON (the Leaderboard tab; board.html sits beside the files)."""
    table = rows(cards)
    parts = [f"<div class='pmg-board'><p class='pmg-board-key'>{_e(NUMBERS)} {_e(BANDS)} Click a row to open its "
             "card.</p>"]
    head = ("<tr><th>band</th><th class='model'>model</th><th class='text wide'>threat</th><th>n</th>"
            "<th>clean % [95% CI]</th><th>robust % [95% CI]</th>"
            "<th class='wide'>robust %, attack unaware of the defense</th><th class='text wide'>convergence</th>"
            "<th class='wide'>robust %, ours minus the authors' published (points)</th></tr>")
    for protocol in dict.fromkeys(r["protocol"] for r in table):
        parts.append(f"<table class='pmg-board-table' data-protocol='{_e(protocol)}'><caption>{_e(protocol)}</caption>"
                     f"<thead>{head}</thead>")
        mine = [r for r in table if r["protocol"] == protocol]
        for band in dict.fromkeys((r["threat"], r["band"]) for r in mine):
            parts.append(f"<tbody class='pmg-band' data-band='{band[1]}'>")
            for r in (r for r in mine if (r["threat"], r["band"]) == band):
                parts.append(
                    f"<tr class='pmg-row' tabindex='0' aria-expanded='false' data-card='{_e(r['model'])}'>"
                    f"<td>{r['band']}</td><td class='model'>{_name(r['model'])}</td>"
                    f"<td class='text wide nowrap'>{_e(r['threat'])}</td>"
                    f"<td>{r['n']}</td><td class='acc'>{_interval_html(r['clean'])}</td>"
                    f"<td class='acc'>{_interval_html(r['robust'])}</td>"
                    f"<td class='acc wide'>{_interval_html(r['robust_unaware'])}</td>"
                    f"<td class='text wide conv'>{_e(r['convergence'])}</td>"
                    f"<td class='wide'>{_signed(r['published_difference'])}</td></tr>"
                    f"<tr class='pmg-card-row' hidden><td colspan='9'>{card_html(r['card'], with_files)}</td></tr>")
            parts.append("</tbody>")
        parts.append("</table>")
    return "\n".join(parts) + "</div>"


def _heat_colour(value: float) -> tuple[str, str]:
    """Background (viridis at value in [0, 1]) and a text colour that reads on it."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    rgba = colormaps["viridis"](value)
    light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.5
    return to_hex(rgba), "#111" if light else "#fff"


def heatmap_html(cards: Sequence[dict], threat: str) -> str:
    """Robust accuracy (%) per model (rows, in the board's order) and dataset (columns) at one threat, each
    cell with its n; the 95% interval on hover."""
    order = [r["card"] for r in rows(cards) if r["threat"] == threat]
    datasets = list(dict.fromkeys(d for c in order for d in c["results"]))
    parts = [f"<div class='pmg-heat-wrap'><table class='pmg-heat' data-threat='{_e(threat)}'>"
             f"<caption>Robust accuracy per dataset at {_e(threat)} (%; n images per cell; the 95% interval on "
             "hover)</caption><thead><tr><th></th>"
             + "".join(f"<th class='dataset'>{_e(d)}</th>" for d in datasets) + "</tr></thead><tbody>"]
    for card in order:
        cells = []
        for d in datasets:
            entry = card["results"].get(d)
            i = None if entry is None or threat not in entry["robust"] else card_stats.dataset_interval(entry, threat)
            if i is None:
                cells.append("<td>-</td>")
                continue
            bg, fg = _heat_colour(i.estimate)
            cells.append(f"<td style='background:{bg};color:{fg}' title='{_e(card['name'])}, {_e(d)}: robust "
                         f"{_e(i.text())}'>{100 * i.estimate:.0f}<small>n={i.n}</small></td>")
        parts.append(f"<tr><th class='model'>{_name(card['name'])}</th>{''.join(cells)}</tr>")
    return "".join(parts) + "</tbody></table></div>"


def _setting(value) -> str:
    """A defense setting as people read it: radii in /255, the rest as recorded."""
    return f"{value * 255:g}/255" if isinstance(value, float) and 0 < value < 1 and (value * 255) % 1 < 1e-6 else str(value)


def card_html(card: dict, with_file: bool = False) -> str:
    """One card for people: provenance, protocol, averages with their intervals, convergence, the authors'
    numbers, and each dataset's accuracies with n and intervals."""
    p, avg = card["protocol"], card["averages"]
    found = card_stats.intervals(card)
    defense = card.get("defense")
    behind = (f" behind {_e(defense['name'])}" + (f" (threshold {_e(defense['threshold'])})" if "threshold" in defense
                                                  else "")) if defense else ""
    robust = ", ".join(
        f"{_e(found[t].text())} at {_e(t)}"
        + (f" ({_e(found[card_stats.UNAWARE + t].text())} under the attack unaware of the defense)"
           if card_stats.UNAWARE + t in found else "") for t in avg["robust_acc"])
    items = [
        f"evaluated as <code>{_e(card['model'])}</code>",
        f"weights sha256 <code class='sha' style='word-break: break-all'>{_e(card['weights_sha256'])}</code>; "
        f"base <code>{_e(card['base'])}</code>; "
        f"method {_e(card.get('method') or '-')}; trainer {_e(card.get('trainer') or '-')}; paper "
        f"{_e(card.get('paper') or '-')}; preset <code>{_e(card.get('preset'))}</code>",
        f"protocol <b>{_e(card_stats.protocol_label(card))}</b> ({_e(p['title'])}); manifests "
        + ", ".join(f"{_e(d)} <code>{_e(h[:12])}</code>" for d, h in p["manifests"].items()),
        f"code {_e(', '.join(card['code_version']))}; device {_e(', '.join(card['device']))}; {card['seconds']:.0f} s",
        *([f"defense: {_e(defense.get('title', defense['name']))}; "
           + ", ".join(f"{_e(k)} {_e(_setting(v))}" for k, v in defense.get("settings", {}).items() if k != "name")]
          if defense else []),
        f"average clean {_e(found['clean'].text())}; robust {robust}",
        f"convergence: {_e(card_stats.convergence_words(card))} ({_e(card['convergence']['rule'])})"]
    pub = card.get("published")
    if pub:
        shown = []
        for r in pub["averages"]:
            metric = "clean" if r["metric"] == "clean" else r["metric"][len("robust "):]
            ours = found.get(metric)
            shown.append(f"{_e(r['metric'])} theirs {r['theirs']:.1f}, ours "
                         + (f"{_e(ours.text())}, difference {_signed(published_difference(card, metric, ours))} points"
                            if ours else f"{r['ours']:.1f}"))
        items.append(f"published ({_e(pub['where'])}): " + "; ".join(shown)
                     + f". What differs: {_e('; '.join(pub['what_differs']))}")
    else:
        items.append("published: no numbers by its authors are recorded")
    threats_of = list(avg["robust_acc"])
    rows_html = []
    for ds, entry in card["results"].items():
        accs = [card_stats.dataset_interval(entry, m) for m in ("clean", *threats_of)]
        rows_html.append(f"<tr><td>{_e(ds)}</td><td>{entry['n']}</td>"
                         + "".join(f"<td>{_e(a.points()) if a else '-'}</td>" for a in accs) + "</tr>")
    table = ("<table><thead><tr><th>dataset</th><th>n</th><th>clean % [95% CI]</th>"
             + "".join(f"<th>robust % {_e(t)} [95% CI]</th>" for t in threats_of) + "</tr></thead><tbody>"
             + "".join(rows_html) + "</tbody></table>")
    file = (f"<details><summary>The card file ({_e(card['name'])}.json)</summary><pre>"
            f"{_e(_compact_json(card))}</pre></details>" if with_file else "")
    return (f"<div class='pmg-card' data-card='{_e(card['name'])}'><h4>{_e(card['name'])}{behind}</h4><ul>"
            + "".join(f"<li>{i}</li>" for i in items) + f"</ul>{table}{file}</div>")


def _compact_json(doc: dict) -> str:
    """The card as indented JSON with each list of numbers on one line (the per-image lists run to hundreds)."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[(\s*-?[\d.]+,?)+\s*\]", lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text)


def to_html(cards: Sequence[dict]) -> str:
    """board.html: self-contained (inline style, script and SVG), readable offline and without script."""
    from .findings import board_findings
    from ..evaluation.plots import leaderboard_scatter_svg

    table = rows(cards)
    found = board_findings(cards)
    sentences = ("<h2>What the cards show</h2><ul>" + "".join(f"<li>{_e(s)}</li>" for s in found) + "</ul>"
                 if found else "")
    figures = "".join(f"<h2>Clean against robust accuracy, {_e(t)}</h2>"
                      + leaderboard_scatter_svg([r for r in table if r["threat"] == t]) for t in threats(cards))
    heat = "".join(heatmap_html(cards, t) for t in threats(cards))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'><title>Robustness leaderboard</title>"
            f"<style>body {{ margin: 16px; }} svg {{ max-width: 100%; height: auto; }}{BOARD_CSS}</style></head>"
            f"<body class='pmg-board'><h1>Robustness leaderboard</h1>{table_html(cards)}{sentences}{figures}"
            f"<h2>Per dataset</h2>{heat}<script>(function (element) {{{OPEN_CARD_JS}}})(document);</script>"
            "</body></html>\n")


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
