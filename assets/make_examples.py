"""Draw the app's example images from the embedded world (run: python assets/make_examples.py).

Each image is one scene of pmg_core.data.synthetic, rendered at the world's native 32x32 and saved as
PNG. Which files there are, the task whose labels each goes with and its true label are the app's
(studio/assets.py EXAMPLES); SCENES here says how each is drawn, with its own seed, so adding an
example never redraws the others.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pmg_core.data import synthetic as S  # noqa: E402
from pmg_core.data.images import save_png  # noqa: E402
from studio.assets import EXAMPLES  # noqa: E402

HERE = Path(__file__).resolve().parent / "examples"

# file name -> (seed, scene attributes as indices into the world's vocabulary). The first example was
# picked from the world, not drawn for the models: scripts/pick_first_example.py searched single shapes
# for one the original tiny CLIP gets right and the Attack tab's default attack fools, while the
# robust fine-tunes stay right.
SCENES = {
    "blue-triangle.png": (2422, dict(shape=S.SHAPES.index("triangle"), colour=S.COLOUR_NAMES.index("blue"), pattern=0,
                                     size=2, background=S.BACKGROUNDS.index("white"))),
    "example.png": (1000, dict(shape=S.SHAPES.index("circle"), colour=S.COLOUR_NAMES.index("green"), pattern=0, size=2,
                               background=S.BACKGROUNDS.index("white"))),
    "purple-star.png": (1001, dict(shape=S.SHAPES.index("star"), colour=S.COLOUR_NAMES.index("purple"), pattern=0,
                                   size=2, background=S.BACKGROUNDS.index("gray"))),
    "striped-diamond.png": (1002, dict(shape=S.SHAPES.index("diamond"), colour=S.COLOUR_NAMES.index("cyan"),
                                       pattern=S.PATTERNS.index("striped"), size=2,
                                       background=S.BACKGROUNDS.index("black"))),
    "digit-seven.png": (1003, dict(kind=S.KIND_DIGIT, digit=7, background=S.BACKGROUNDS.index("black"),
                                   colour=S.COLOUR_NAMES.index("yellow"))),
}


def scene(seed: int, kind: int = S.KIND_SHAPES, **attrs) -> S.Scenes:
    restrict = {k: (v,) for k, v in attrs.items()}
    return S.sample_scenes(np.random.default_rng(seed), 1, kind=(kind,), count=(1,), heldout="exclude", **restrict)


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for name, _, _ in EXAMPLES:
        seed, attributes = SCENES[name]
        image = S.to_float(S.render(scene(seed, **attributes)))[0]
        print(save_png(image, HERE / name))


if __name__ == "__main__":
    main()
