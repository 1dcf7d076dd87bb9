"""The files the app reads at start: its style sheet, the method in plain words, the example images.

Kept as files in assets/ so that what a person reads or sees can be edited without touching code.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
EXAMPLES_DIR = ASSETS / "examples"
CSS = (ASSETS / "studio.css").read_text(encoding="utf-8")
METHOD_IN_PLAIN_WORDS = (ASSETS / "about.md").read_text(encoding="utf-8")

# (file, task whose labels it goes with, true label): drawn by assets/make_examples.py
EXAMPLES = (("example.png", "synth-shape", "circle"), ("purple-star.png", "synth-shape", "star"),
            ("striped-diamond.png", "synth-pattern", "striped shape"), ("digit-seven.png", "synth-digit", "digit 7"))


def examples(presets: dict[str, list[str]]) -> list[list]:
    """[image path, labels, true label] for each example image whose task is among the label presets."""
    return [[str(EXAMPLES_DIR / f), ", ".join(presets[task]), true] for f, task, true in EXAMPLES
            if (EXAMPLES_DIR / f).is_file() and task in presets]
