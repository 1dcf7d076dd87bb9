"""How much a protocol's cells cost: encoder passes per image for each part of a cell, and its time.

    python scripts/suite_passes.py --protocol mini --models tecoa-tiny,tecoa-tiny+ttc \
        --datasets synth-shape,synth-colour [--out /tmp/passes.json]

Each cell is computed exactly as `cards run` computes it (cards.compute_cell), with every image an
encoder sees counted (forward hooks on the model's image encoder and on the original CLIP's, which
TTC's gate reads for a fine-tune) and charged to what asked for it: the clean judgement, the tau
calibration, each attack of the menu, the judging of the attacks' images, and the convergence
check (the menu again at twice the budget on the images still robust). A pass that builds a graph
for an input gradient (forward and backward) is counted apart from a plain forward. Per part it
prints images per image of the cell, then the cell's process CPU time and wall time, and the load
average beside them (a loaded machine stretches wall time, not the passes).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pmg_core.attacks import adaptive  # noqa: E402
from pmg_core.leaderboard import cards  # noqa: E402
from pmg_core.evaluation import accuracy as evaluate  # noqa: E402
from pmg_core.leaderboard.cards import Cell, _subset, parse_models  # noqa: E402
from pmg_core.data.datasets import get_dataset  # noqa: E402
from pmg_core.evaluation.protocols import get_protocol, manifest_for  # noqa: E402
from pmg_core.models.zoo import ZOO, load_entry, load_sharing_bases  # noqa: E402

COUNTS: dict[str, dict[str, int]] = defaultdict(lambda: {"forward": 0, "gradient": 0})
PART: list[str] = ["other"]


@contextlib.contextmanager
def charged_to(name: str):
    PART.append(name if PART[-1] != "convergence" else f"convergence/{name}")
    try:
        yield
    finally:
        PART.pop()


def _hook(_module, args, _output):
    kind = "gradient" if torch.is_grad_enabled() and args[0].requires_grad else "forward"
    COUNTS[PART[-1]][kind] += args[0].shape[0]


def _charging(fn, name: str):
    def wrapped(*args, **kwargs):
        with charged_to(name):
            return fn(*args, **kwargs)

    return wrapped


def instrument() -> None:
    """Charge every encoder pass to the part of a cell that asked for it."""
    for name, entry in list(adaptive.ADAPTIVE.items()):
        def build(defended, s, _build=entry.build, _name=name):
            return _charging(_build(defended, s), _name)

        adaptive.ADAPTIVE[name] = adaptive.AdaptiveEntry(entry.name, build, entry.description, entry.needs_gate,
                                                         entry.classes, entry.transfers)
    adaptive.right_on_every_draw = _charging(adaptive.right_on_every_draw, "judge")
    evaluate.judge_clean = _charging(evaluate.judge_clean, "clean")
    evaluate.clean_tau = _charging(evaluate.clean_tau, "calibration")
    cards.convergence_check = _charging(cards.convergence_check, "convergence")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="mini")
    parser.add_argument("--models", required=True)
    parser.add_argument("--datasets", default=None, help="comma-separated; default the protocol's")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    protocol = get_protocol(args.protocol)
    datasets = args.datasets.split(",") if args.datasets else protocol.dataset_names()
    instrument()
    loaded, report = [], []
    for spec in parse_models(args.models):
        model = next((m for m in loaded if m.spec == spec.model), None)
        if model is None:
            model = load_entry(spec.model, "cpu") if spec.model in ZOO else load_sharing_bases(spec.model, "cpu", loaded)
            loaded.append(model)
        encoders = {id(model.visual): model.visual, id(model.clip.visual): model.clip.visual}
        for name in datasets:
            full = get_dataset(name, split="test", prompts=protocol.prompts)
            data = _subset(full, manifest_for(full, protocol).indices)
            COUNTS.clear()
            handles = [e.register_forward_hook(_hook) for e in encoders.values()]
            cpu, wall = time.process_time(), time.time()
            try:
                row = cards.compute_cell(model, data, Cell(spec, name, protocol.threats[0], protocol.threats[0].eps_255[0]),
                                         protocol)
            finally:
                for h in handles:
                    h.remove()
            cpu, wall = time.process_time() - cpu, time.time() - wall
            n = row["n"]
            parts = {k: {kind: round(v / n, 1) for kind, v in c.items()} for k, c in sorted(COUNTS.items())}
            total = {kind: round(sum(c[kind] for c in COUNTS.values()) / n, 1) for kind in ("forward", "gradient")}
            load = os.getloadavg()
            report.append({"model": spec.text, "dataset": name, "n": n, "clean_right": row["clean_correct"],
                           "robust_right": row["robust_correct"],
                           "still_robust_checked": row["convergence"].get("informative", 0),
                           "images_per_image": parts, "total_per_image": total, "cpu_seconds": round(cpu, 2),
                           "wall_seconds": round(wall, 2), "load_average": [round(x, 2) for x in load]})
            print(f"{spec.text:28s} {name:16s} clean {row['clean_correct']:2d}/{n} robust {row['robust_correct']:2d} "
                  f"checked {row['convergence'].get('informative', 0):2d}  images/image fwd {total['forward']:7.1f} "
                  f"grad {total['gradient']:7.1f}  cpu {cpu:6.1f}s wall {wall:6.1f}s load {load[0]:.1f}", flush=True)
            for part, c in parts.items():
                print(f"    {part:28s} fwd {c['forward']:7.1f}  grad {c['gradient']:7.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
