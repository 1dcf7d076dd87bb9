"""The Leaderboard tab: the committed robustness cards (benchmarks/cards/<protocol>/) side by side.

The table in bands of overlapping intervals (every accuracy with its n and 95% interval; a click on a
row opens its card right under the row and scrolls the two into view, all in the browser), what the
cards show in paired tests (pmg_core/leaderboard/findings.py), the clean-against-robust scatter with both
intervals as error bars, and the per-dataset heatmap with each cell's n. Everything comes from the
card files through pmg_core.leaderboard.board, which writes board.html from the same table and heatmaps.

`build` adds the tab's sections in order; another self-contained section (e.g. numbers reported
elsewhere) is one more call inside its `with gr.Tab(...)` block.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pmg_core.leaderboard import board, findings
from pmg_core.evaluation.plots import leaderboard_scatter

from .reported_view import build_reported
from .safety import safe


@dataclass
class LeaderboardTab:
    table: gr.HTML


def build() -> LeaderboardTab:
    found = board.committed()
    with gr.Tab("Leaderboard") as tab:
        table = _measured_here(tab, found)
        build_reported(found)
    return LeaderboardTab(table)


def _measured_here(tab: gr.Tab, found: dict[str, list[dict]]) -> gr.HTML:
    """The committed cards: protocol choice, summary, table, paired findings, scatter and heatmap."""
    names = list(found)
    first = found[names[0]] if names else []
    threats = board.threats(first)
    if not names:
        gr.Markdown("No committed robustness cards (`python -m pmg_core cards run --out benchmarks/cards/NAME`).")
    with gr.Row():
        protocol = gr.Dropdown(names, value=names[0] if names else None, label="Protocol (committed cards)")
        threat = gr.Dropdown(threats, value=threats[-1] if threats else None, label="Scatter and heatmap at")
    summary = gr.Markdown(_summary(first), elem_id="pmg-board-summary")
    table = gr.HTML(board.table_html(first, with_files=True), css_template=board.BOARD_CSS,
                    js_on_load=board.OPEN_CARD_JS, elem_id="pmg-leaderboard")
    shown = gr.Markdown(_findings(first), elem_id="pmg-board-findings")
    with gr.Row():
        # Drawn when the tab opens: plotly sizes a figure to its container, which a hidden tab has not got.
        # At least a phone's width each, so on a phone they stack instead of squeezing side by side.
        scatter = gr.Plot(label="Clean against robust accuracy", elem_id="pmg-board-scatter", min_width=360)
        heatmap = gr.HTML(_heatmap(first, threats[-1] if threats else None), css_template=board.BOARD_CSS,
                          js_on_load=None, elem_id="pmg-board-heatmap", min_width=360)

    def show_protocol(name: str):
        cards = found.get(name, [])
        options = board.threats(cards)
        at = options[-1] if options else None
        return (_summary(cards), board.table_html(cards, with_files=True), _findings(cards), _scatter(cards, at),
                gr.update(choices=options, value=at), _heatmap(cards, at))

    def show_threat(name: str, at: str):
        cards = found.get(name, [])
        return _scatter(cards, at), _heatmap(cards, at)

    views = [summary, table, shown, scatter, threat, heatmap]
    protocol.change(safe(show_protocol), protocol, views, queue=False)
    tab.select(safe(show_threat), [protocol, threat], [scatter, heatmap], queue=False)
    threat.change(safe(show_threat), [protocol, threat], [scatter, heatmap], queue=False)
    return table


def _scatter(cards: list[dict], at: str | None):
    return leaderboard_scatter([r for r in board.rows(cards) if r["threat"] == at]) if cards and at else None


def _heatmap(cards: list[dict], at: str | None) -> str:
    return board.heatmap_html(cards, at) if cards and at else ""


def _findings(cards: list[dict]) -> str:
    found = findings.board_findings(cards)
    return ("#### What the cards show, from paired tests on the same images\n\n" + "\n".join(f"- {s}" for s in found)
            if found else "")


def _summary(cards: list[dict]) -> str:
    if not cards:
        return ""
    p = cards[0]["protocol"]
    return (f"**{p['name']} v{p['version']}**: {p['title']}. {len(cards)} cards; robust accuracy of a model behind a "
            "test-time defense is the adaptive attacker's (best of every attack per image). Each card names its "
            "weights' sha256, the manifest hashes, the code version and device; `python -m pmg_core cards board` "
            "writes the same table to board.md, board.csv and board.html.")
