"""The Leaderboard tab: the committed robustness cards (benchmarks/cards/<protocol>/) side by side.

A sortable table (one row per card and eps), the clean-vs-robust scatter and a per-dataset
heatmap; selecting a row opens that card (Markdown and its JSON). Everything is read from the
card files by pmg_core.board, nothing typed here.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pmg_core import board
from pmg_core.plots import leaderboard_heatmap, leaderboard_scatter

from .reported_view import build_reported
from .safety import safe

HEADERS = ["model", "threat", "clean %", "robust %", "robust % (attack unaware of the defense)", "converged",
           "max change (points)", "published difference (points)"]
KEYS = ("model", "threat", "clean", "robust", "robust_unaware", "converged", "max_change_points", "published_difference")


@dataclass
class LeaderboardTab:
    table: gr.Dataframe


def table_rows(cards: list[dict]) -> list[list]:
    return [[("yes" if r[k] else "no") if k == "converged" else ("-" if r[k] is None else r[k]) for k in KEYS]
            for r in board.rows(cards)]


def build() -> LeaderboardTab:
    found = board.committed()
    names = list(found)
    first = found[names[0]] if names else []
    threats = board.threats(first)
    with gr.Tab("Leaderboard") as tab:
        if not names:
            gr.Markdown("No committed robustness cards (`python -m pmg_core cards run --out benchmarks/cards/NAME`).")
        with gr.Row():
            protocol = gr.Dropdown(names, value=names[0] if names else None, label="Protocol (committed cards)")
            threat = gr.Dropdown(threats, value=threats[-1] if threats else None, label="Heatmap at")
        summary = gr.Markdown(_summary(first), elem_id="pmg-board-summary")
        table = gr.Dataframe(table_rows(first), headers=HEADERS, interactive=False, elem_id="pmg-leaderboard",
                             label="Cards (click a header to sort, a row to open its card)")
        with gr.Row():
            # Drawn when the tab opens: plotly sizes a figure to its container, which a hidden tab has not got.
            scatter = gr.Plot(label="Clean against robust", elem_id="pmg-board-scatter")
            heatmap = gr.Plot(label="Per dataset", elem_id="pmg-board-heatmap")
        card_md = gr.Markdown("Select a row to open its card.", elem_id="pmg-card")
        card_json = gr.JSON(label="The card file", visible=False)
        build_reported(found)

    def show_protocol(name: str):
        cards = found.get(name, [])
        options = board.threats(cards)
        return (_summary(cards), table_rows(cards), leaderboard_scatter(board.rows(cards)),
                gr.update(choices=options, value=options[-1] if options else None),
                leaderboard_heatmap(cards, options[-1]) if options else None)

    def show_heatmap(name: str, at: str):
        cards = found.get(name, [])
        return leaderboard_heatmap(cards, at) if cards and at else None

    def open_card(name: str, evt: gr.SelectData):
        model = (evt.row_value or [None])[0]
        card = next((c for c in found.get(name, []) if c["name"] == model), None)
        if card is None:
            return "Select a row to open its card.", gr.update(visible=False)
        return board.card_markdown(card), gr.update(value=card, visible=True)

    views = [summary, table, scatter, threat, heatmap]
    protocol.change(safe(show_protocol), protocol, views, queue=False)
    tab.select(safe(show_protocol), protocol, views, queue=False)
    threat.change(safe(show_heatmap), [protocol, threat], heatmap, queue=False)
    table.select(safe(open_card), protocol, [card_md, card_json], queue=False)
    return LeaderboardTab(table)


def _summary(cards: list[dict]) -> str:
    if not cards:
        return ""
    p = cards[0]["protocol"]
    return (f"**{p['name']} v{p['version']}**: {p['title']}. {len(cards)} cards; robust accuracy of a model behind a "
            "test-time defense is the adaptive attacker's (best of every attack per image). Each card names its "
            "weights' sha256, the manifest hashes, the code version and device; `python -m pmg_core cards board` "
            "writes the same table.")
