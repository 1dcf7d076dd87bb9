"""Two models on the same images, image by image: each one's clean and robust accuracy with its 95%
interval, and B against A as a paired test (exact McNemar with Newcombe's interval; pmg_core/leaderboard/stats.py).

    python scripts/paired_eval.py --models tecoa-tiny,pmg-aft-tiny --datasets mini --eps 8 --steps 10 --step-size 2

The attack is `eval`'s (PGD, a sample robust only if no iterate fools it, random starts seeded per
sample), so the counts equal `eval`'s on the same settings; what this adds is the per-image pairing
that `eval`'s table, which keeps counts only, cannot give.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pmg_core.leaderboard import stats  # noqa: E402
from pmg_core.data.datasets import expand_names, get_dataset  # noqa: E402
from pmg_core.core.env import default_device  # noqa: E402
from pmg_core.evaluation.accuracy import EvalConfig, evaluate_model  # noqa: E402
from pmg_core.core.units import from_255  # noqa: E402
from pmg_core.models.zoo import load_models  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="two models, A,B (B is compared against A)")
    parser.add_argument("--datasets", default="mini", help="datasets or a group, as for eval")
    parser.add_argument("--eps", type=float, default=8, help="radius in /255")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-size", type=float, default=2, help="in /255")
    parser.add_argument("--limit", type=int, default=None, help="images per dataset (default: every test image)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    models = load_models(args.models.split(","), default_device())
    if len(models) != 2:
        parser.error("--models takes exactly two models")
    cfg = EvalConfig(eps=from_255(args.eps), steps=args.steps, step_size=from_255(args.step_size), seed=args.seed,
                     limit=args.limit)
    right = {m.name: {"clean": [], "robust": []} for m in models}
    for name in expand_names(args.datasets):
        data = get_dataset(name, split="test", prompts=cfg.prompts).limited(cfg.limit, cfg.seed)  # as eval reads it
        for model in models:
            flags = evaluate_model(model, data, cfg, per_sample=True)["per_sample"]
            right[model.name]["clean"].append(flags["clean_right"])
            right[model.name]["robust"].append(flags["robust_right"])
    a, b = (m.name for m in models)
    for metric in ("clean", "robust"):
        for model in (a, b):
            counts = [(sum(x), len(x)) for x in right[model][metric]]
            print(f"{model} {metric}: {stats.average(counts).text()}")
        paired = stats.paired(right[a][metric], right[b][metric])
        print(f"{b} against {a}, {metric}: {paired.evidence(a, b)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
