"""The Leaderboard tab's block of the field's reported numbers, apart from the cards measured here.

One builder, called by the tab's own builder in one line: a heading that says what these numbers
are (reported by the authors, not measured here), then pmg_core.leaderboard.reported's groups, one per
protocol with its difference from ours in words and its rows with their sources. It reads the
zoo's data and the committed cards' names only; nothing here is typed by hand.
"""
from __future__ import annotations

import gradio as gr

from pmg_core.leaderboard import reported


def build_reported(committed: dict[str, list[dict]]) -> gr.Markdown:
    """The block, inside the caller's tab; `committed`: board.committed() (protocol -> its cards)."""
    measured = {name: [card["name"] for card in cards] for name, cards in committed.items()}
    text = reported.markdown(reported.groups(measured))
    with gr.Group(elem_id="pmg-reported-block"):
        gr.Markdown(f"### The field's numbers: {reported.MARK}", elem_id="pmg-reported-heading")
        return gr.Markdown(text, elem_id="pmg-reported")
