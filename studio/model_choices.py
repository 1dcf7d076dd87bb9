"""The components that list the loaded models (and the defense choice), accepting any value a request sends.

The lists grow after launch (a Train run's checkpoint, a published model joining in the background)
and a page redraws them when it loads. A client of the HTTP API that never loads the page would
still be held to the launch-time choices by Gradio's own check ("Value: 'tecoa-b32' is not in the
list of choices"), so these components leave that check to the handlers: they take models through
Studio.pick and inputs.parse_choice, against the models loaded now, and refuse any other name in a
sentence of their own.
"""
from __future__ import annotations

from typing import Sequence

import gradio as gr


class ModelChecklist(gr.CheckboxGroup):
    """A CheckboxGroup of model names whose values are checked by the handler, not against its choices."""

    is_template = True  # drawn by the page as the CheckboxGroup it is

    def preprocess(self, payload):
        if payload is None:
            return []
        return list(payload) if isinstance(payload, (list, tuple)) else [payload]  # one name sent bare is one name

    def api_info(self) -> dict:
        return {"items": {"type": "string"}, "title": "Model names", "type": "array"}  # no launch-time enum


def model_dropdown(choices: Sequence[str], value: str, label: str, **kw) -> gr.Dropdown:
    """A Dropdown of model names that passes any name on to its handler (allow_custom_value)."""
    return gr.Dropdown(list(choices), value=value, label=label, allow_custom_value=True, **kw)


class DefenseChoice(gr.Radio):
    """The Attack tab's test-time defense: a Radio whose value its handler checks (one_image.defense_name),
    so an API client may still send the first toggle's True/False, or a defense's own name."""

    is_template = True  # drawn by the page as the Radio it is

    def preprocess(self, payload):
        return payload

    def api_info(self) -> dict:
        return {"title": "Test-time defense: a choice's label, a defense's name, or true/false (TTC or none)",
                "anyOf": [{"type": "string"}, {"type": "boolean"}]}
