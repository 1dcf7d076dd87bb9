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
EXAMPLES = (("blue-triangle.png", "synth-shape", "triangle"), ("example.png", "synth-shape", "circle"), ("purple-star.png", "synth-shape", "star"),
            ("striped-diamond.png", "synth-pattern", "striped shape"), ("digit-seven.png", "synth-digit", "digit 7"))


# Real photos for a real CLIP, from a dependency (scikit-learn's load_sample_images), with ImageNet
# class names that fit them: (file name there, labels, true label).
PHOTOS = (("china.jpg", ("palace", "monastery", "stupa", "church", "mosque", "castle", "boathouse", "bell tower",
                         "pier", "lakeshore"), "palace"),
          ("flower.jpg", ("daisy", "vase", "cauliflower", "artichoke", "orange", "strawberry", "bee", "pinwheel",
                          "corn", "rose hip"), "daisy"))
PHOTO_CREDITS = ("Photos: `china.jpg` (danielbuechele) and `flower.jpg` (vultilion) from Flickr, CC BY 2.0, as "
                 "shipped with scikit-learn (`sklearn.datasets.load_sample_images`); labels are ImageNet class names.")


def photo_paths() -> dict[str, str]:
    """The sample photos scikit-learn ships, read where it installed them (not copied here)."""
    try:
        from sklearn.datasets import load_sample_images

        return {Path(p).name: str(p) for p in load_sample_images().filenames}
    except Exception:  # noqa: BLE001 - without them the app simply shows no photo examples
        return {}


def examples(presets: dict[str, list[str]]) -> list[list]:
    """[image path, labels, true label] for each example image whose task is among the label presets,
    and, when ImageNet is (real CLIP), the photos."""
    drawn = [[str(EXAMPLES_DIR / f), ", ".join(presets[task]), true] for f, task, true in EXAMPLES
             if (EXAMPLES_DIR / f).is_file() and task in presets]
    if not any(name.startswith("ImageNet") for name in presets):
        return drawn
    paths = photo_paths()
    return [[paths[f], ", ".join(labels), true] for f, labels, true in PHOTOS if f in paths] + drawn
