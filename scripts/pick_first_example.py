"""Pick the Attack tab's first example from the embedded world, not by tuning the models.

    python scripts/pick_first_example.py [--limit N]

Every single-shape scene (shape x colour x fill x size medium/large x background; held-out pairs
excluded; scene k drawn with seed 2000 + k as assets/make_examples.py draws its examples) is judged
by the embedded models on the synth-shape labels. On each scene that the original clip-tiny and
pmg-aft-tiny both get right, the tab's default attack runs (explore.starting_attack: the `mini`
protocol's PGD, with the tab's early stop), exactly as the tab runs it. Printed: every scene that
fools clip-tiny and leaves at least two robust fine-tunes right, most fine-tunes right first, then
by clip-tiny's confidence on the clean image. The first example (blue-triangle.png, seed 2422) is
one of the scenes that leaves all four right; tests/test_attack_tab_results.py checks it holds.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "assets"))

from make_examples import scene  # noqa: E402
from pmg_core.core import env  # noqa: E402
from pmg_core.data import synthetic as S  # noqa: E402
from pmg_core.evaluation.explore import AttackSettings, compare, starting_attack  # noqa: E402
from pmg_core.core.units import from_255  # noqa: E402
from pmg_core.models.zoo import load_default_models  # noqa: E402
from studio.one_image import STOP_MARGIN  # noqa: E402

FIRST_SEED = 2000


def scenes() -> list[tuple[int, dict]]:
    """(seed, attributes) of every single-shape scene searched, in a fixed order."""
    combos = [dict(shape=shape, colour=colour, pattern=pattern, size=size, background=background)
              for shape, colour, pattern, size, background in itertools.product(
                  range(len(S.SHAPES)), range(len(S.COLOUR_NAMES)), range(len(S.PATTERNS)), (1, 2),
                  range(len(S.BACKGROUNDS)))
              if (S.COLOUR_NAMES[colour], S.SHAPES[shape]) not in S.HELDOUT_COMBOS]
    return [(FIRST_SEED + k, c) for k, c in enumerate(combos)]


def describe(attributes: dict) -> str:
    return (f"{S.SIZES[attributes['size']]} {S.PATTERNS[attributes['pattern']]} {S.COLOUR_NAMES[attributes['colour']]} "
            f"{S.SHAPES[attributes['shape']]} on {S.BACKGROUNDS[attributes['background']]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="search only the first N scenes (default: all)")
    args = p.parse_args()
    models, _ = load_default_models(env.SHIPPED_CHECKPOINTS)
    names = [m.name for m in models]
    original, robust = "clip-tiny", [n for n in names if n != "clip-tiny"]
    classes = list(S.SHAPES)
    start = starting_attack(real_clip=False)
    settings = AttackSettings(eps=from_255(start.eps_255), steps=start.steps, step_size=from_255(start.step_255),
                              stop_margin=STOP_MARGIN)
    searched = scenes()[: args.limit]
    images = torch.stack([S.to_float(S.render(scene(seed, **a)))[0] for seed, a in searched])
    truth = torch.tensor([a["shape"] for _, a in searched])
    with torch.no_grad():
        right = {m.name: m.classifier(classes).eval()(images).argmax(1) == truth for m in models}
    candidates = (right[original] & right["pmg-aft-tiny"]).nonzero().flatten().tolist()
    print(f"{len(searched)} scenes; {len(candidates)} right for clip-tiny and pmg-aft-tiny; attacking them "
          f"(eps {start.eps_255:g}/255, PGD-{start.steps}, step {start.step_255:g}/255)", file=sys.stderr)
    found = []
    for k in candidates:
        seed, attributes = searched[k]
        comp = compare(models, images[k], classes, classes[attributes["shape"]], settings)
        verdicts = {v.model: v for v in comp.verdicts}
        held = [n for n in robust if verdicts[n].clean.correct and verdicts[n].adversarial.correct]
        if not verdicts[original].adversarial.correct and len(held) >= 2:
            found.append((len(held), verdicts[original].clean.true_prob, seed, attributes, held))
    for held_count, clip_clean, seed, attributes, held in sorted(found, key=lambda f: (-f[0], -f[1])):
        print(f"seed {seed}: {describe(attributes)}; clip-tiny {100 * clip_clean:.0f}% right on the clean image, "
              f"fooled; still right: {', '.join(held)}")


if __name__ == "__main__":
    main()
