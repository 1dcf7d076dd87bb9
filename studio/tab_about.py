"""The About tab: the weights loaded and every checkpoint's metadata; it refreshes every model list.

The lists change when a Train run saves a checkpoint or a file is copied into the checkpoint
folder: `build` wires the refresh to its button, to page load and after each Train run or Cancel.
They also change when a published model finishes loading in the background: a timer polls while
any is pending and shows the download progress.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .one_image import EACH_MODEL
from .safety import safe
from .state import Studio

POLL_S = 3.0


@dataclass
class ModelLists:
    """The other tabs' components that list the loaded models."""

    compared: gr.CheckboxGroup  # Attack: every model, all chosen
    source: gr.Dropdown  # Attack: 'each model attacks itself' or one model
    reference: gr.Dropdown  # Feature distances
    train_base: gr.Dropdown  # Train
    evaluated: gr.CheckboxGroup  # Evaluate: every model, all chosen


def build(studio: Studio, demo: gr.Blocks, lists: ModelLists, after_train: gr.events.Dependency,
          after_cancel: gr.events.Dependency, mode: gr.Markdown) -> None:
    """`mode`: the page's mode text, redrawn with the About tab (it changes when real CLIP's download ends)."""
    with gr.Tab("About"):
        about = gr.Markdown(studio.about())
        refresh_btn = gr.Button("Refresh model lists")
        # While published models download, each session looks every few seconds: the About tab shows
        # the progress, and the lists are redrawn only when a model joined (a person's choice stays otherwise).
        ticker = gr.Timer(POLL_S, active=studio.loader is not None)
        seen = gr.State(-1)  # the studio version this session's lists show

    def lists_now():
        names = studio.names
        return (gr.update(choices=names, value=names), gr.update(choices=[EACH_MODEL, *names]),
                gr.update(choices=names), gr.update(choices=names), gr.update(choices=names, value=names))

    def refresh():
        studio.rescan()
        return (*lists_now(), studio.mode, studio.about())

    def poll(shown: int):
        version, busy = studio.version, studio.loader is not None and studio.loader.busy
        lists_update = lists_now() if version != shown else (gr.skip(),) * 5
        return (*lists_update, studio.mode, studio.about(), version, gr.Timer(active=busy))

    outputs = [lists.compared, lists.source, lists.reference, lists.train_base, lists.evaluated, mode, about]
    ticker.tick(safe(poll), seen, [*outputs, seen, ticker], api_name="poll_models", queue=False, show_progress="hidden")
    after_train.then(safe(refresh), None, outputs, api_name="refresh_after_train", queue=False)
    after_cancel.then(safe(refresh), None, outputs, api_name="refresh_after_cancel", queue=False)
    refresh_btn.click(safe(refresh), None, outputs, api_name="refresh_models", queue=False)
    demo.load(safe(refresh), None, outputs, api_name="on_load", queue=False)
