"""Draw the app's example images from the embedded world (run: python assets/make_examples.py).

Each image is one scene of pmg_core.synthetic, rendered at the world's native 32x32 and saved as
PNG. Which files there are, the task whose labels each goes with and its true label are the app's
(studio/assets.py EXAMPLES); SCENES here says how each is drawn.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pmg_core import synthetic as S  # noqa: E402
from pmg_core.images import save_png  # noqa: E402
from studio.assets import EXAMPLES  # noqa: E402

HERE = Path(__file__).resolve().parent / "examples"

# file name -> scene attributes as indices into the world's vocabulary
SCENES = {
    "example.png": dict(shape=S.SHAPES.index("circle"), colour=S.COLOUR_NAMES.index("green"), pattern=0, size=2,
                        background=S.BACKGROUNDS.index("white")),
    "purple-star.png": dict(shape=S.SHAPES.index("star"), colour=S.COLOUR_NAMES.index("purple"), pattern=0, size=2,
                            background=S.BACKGROUNDS.index("gray")),
    "striped-diamond.png": dict(shape=S.SHAPES.index("diamond"), colour=S.COLOUR_NAMES.index("cyan"),
                                pattern=S.PATTERNS.index("striped"), size=2, background=S.BACKGROUNDS.index("black")),
    "digit-seven.png": dict(kind=S.KIND_DIGIT, digit=7, background=S.BACKGROUNDS.index("black"),
                            colour=S.COLOUR_NAMES.index("yellow")),
}


def scene(seed: int, kind: int = S.KIND_SHAPES, **attrs) -> S.Scenes:
    restrict = {k: (v,) for k, v in attrs.items()}
    return S.sample_scenes(np.random.default_rng(seed), 1, kind=(kind,), count=(1,), heldout="exclude", **restrict)


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for i, (name, _, _) in enumerate(EXAMPLES):
        image = S.to_float(S.render(scene(1000 + i, **SCENES[name])))[0]
        print(save_png(image, HERE / name))


if __name__ == "__main__":
    main()
