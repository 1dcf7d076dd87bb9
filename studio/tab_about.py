"""The About tab: the weights loaded and every checkpoint's metadata; it refreshes every model list.

The lists change when a Train run saves a checkpoint or a file is copied into the checkpoint
folder: `build` wires the refresh to its button, to page load and after each Train run or Cancel.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .one_image import EACH_MODEL
from .safety import safe
from .state import Studio


@dataclass
class ModelLists:
    """The other tabs' components that list the loaded models."""

    compared: gr.CheckboxGroup  # Attack: every model, all chosen
    source: gr.Dropdown  # Attack: 'each model attacks itself' or one model
    reference: gr.Dropdown  # Feature distances
    train_base: gr.Dropdown  # Train
    evaluated: gr.CheckboxGroup  # Evaluate: every model, all chosen


def build(studio: Studio, demo: gr.Blocks, lists: ModelLists, after_train: gr.events.Dependency,
          after_cancel: gr.events.Dependency) -> None:
    with gr.Tab("About"):
        about = gr.Markdown(studio.about())
        refresh_btn = gr.Button("Refresh model lists")

    def refresh():
        studio.rescan()
        names = studio.names
        return (gr.update(choices=names, value=names), gr.update(choices=[EACH_MODEL, *names]),
                gr.update(choices=names), gr.update(choices=names), gr.update(choices=names, value=names),
                studio.about())

    outputs = [lists.compared, lists.source, lists.reference, lists.train_base, lists.evaluated, about]
    after_train.then(safe(refresh), None, outputs, api_name="refresh_after_train", queue=False)
    after_cancel.then(safe(refresh), None, outputs, api_name="refresh_after_cancel", queue=False)
    refresh_btn.click(safe(refresh), None, outputs, api_name="refresh_models", queue=False)
    demo.load(safe(refresh), None, outputs, api_name="on_load", queue=False)
