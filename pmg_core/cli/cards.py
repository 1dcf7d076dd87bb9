"""`python -m pmg_core cards run|board|protocols`: robustness cards on the command line.

- ``run --protocol NAME --models a,b,... --out DIR [--limit N] [--data-root D] [--allow-dirty]``: one
  cell per (model, dataset, eps), each written to DIR as it finishes; run again to resume; under
  torchrun the cells are shared among the processes; refused from a source tree with uncommitted
  changes unless --allow-dirty (pmg_core/leaderboard/cards.py).
- ``board DIR``: board.md, board.csv and board.html from the cards in DIR (pmg_core/leaderboard/board.py).
- ``protocols``: the registered protocols (pmg_core/evaluation/protocols.py); ``manifests NAME``: each
  dataset's manifest hash under one (computed from the data; the embedded world's are pinned).
"""
from __future__ import annotations

import json
import sys

from .commands import DEVICE_HELP


def add_parser(sub) -> None:
    p = sub.add_parser("cards", help="robustness cards under a named protocol: run, board, protocols",
                       description="Robustness cards: one model's results under one versioned protocol, with "
                                   "provenance; the board puts them side by side.")
    csub = p.add_subparsers(dest="cards_command", required=True)
    run = csub.add_parser("run", help="evaluate models under a protocol, one resumable cell at a time")
    run.add_argument("--protocol", required=True, help="a protocol name (`python -m pmg_core cards protocols`)")
    run.add_argument("--models", required=True, metavar="SPEC[,SPEC...]",
                     help="zoo ids, checkpoint names or files; MODEL+ttc behind test-time counterattacks at their "
                          "published threshold, MODEL+ttc@calibrated at the clean images' median tau, MODEL+ttc@0.05")
    run.add_argument("--out", required=True, help="the folder of cells and cards (run again to resume)")
    run.add_argument("--limit", type=int, default=None, help="samples per dataset, a prefix of the protocol's draw "
                                                             "(a different manifest: not comparable with full runs)")
    run.add_argument("--data-root", default=None, help="where the paper's datasets are (docs/REPRODUCE.md)")
    run.add_argument("--device", default=None, help=DEVICE_HELP)
    run.add_argument("--allow-dirty", action="store_true",
                     help="run from a source tree with uncommitted changes (a local run: its cards say so; cards for "
                          "the repository come from a commit)")
    run.set_defaults(func=_run)
    board = csub.add_parser("board", help="write board.md, board.csv and board.html from a folder of cards")
    board.add_argument("folder", help="a folder of cards (what `cards run --out` wrote)")
    board.set_defaults(func=_board)
    csub.add_parser("protocols", help="the registered protocols").set_defaults(func=_protocols)
    manifests = csub.add_parser("manifests", help="each dataset's manifest sha256 under a protocol (what it pins)")
    manifests.add_argument("protocol", help="a protocol name (`python -m pmg_core cards protocols`)")
    manifests.add_argument("--data-root", default=None, help="where the paper's datasets are (docs/REPRODUCE.md)")
    manifests.set_defaults(func=_manifests)


def _run(args) -> int:
    from ..training import distributed
    from ..leaderboard.cards import parse_models, run_cards
    from ..evaluation.protocols import get_protocol

    protocol = get_protocol(args.protocol)
    models = parse_models(args.models)
    _check_known(models)
    ctx = distributed.init(args.device)
    try:
        written = run_cards(protocol, models, args.out, args.limit, args.data_root, ctx=ctx, progress=True,
                            allow_dirty=args.allow_dirty)
    finally:
        distributed.cleanup()
    if ctx.is_main or written:
        for path in written:
            print(path)
    return 0


def _check_known(specs) -> None:
    """Every model named must exist before any cell runs: a misspelt last one would stop the run after the others'
    cells (minutes to hours) instead of at once. Only names are resolved here; nothing is loaded."""
    from ..core.errors import check
    from ..models.clip import ALIASES, checkpoint_path, list_architectures
    from ..models.zoo import ZOO

    for spec in specs:
        name = ALIASES.get(spec.model, spec.model)
        check(name in ZOO or checkpoint_path(name) is not None or ":" in name or name in list_architectures(),
              f"Unknown model '{spec.model}' in --models: use a zoo id (`python -m pmg_core zoo list`), a checkpoint "
              "(`python -m pmg_core models`), a .safetensors path, hf-hub:ORG/REPO, ARCH:TAG or an architecture name.")


def _board(args) -> int:
    from ..leaderboard.board import write_board

    for path in write_board(args.folder):
        print(path)
    return 0


def _protocols(args) -> int:
    from ..evaluation.protocols import list_protocols

    for p in list_protocols():
        threats = "; ".join(f"{t.attack}-{t.steps} {t.norm} eps {','.join(f'{e:g}' for e in t.eps_255)}/255"
                            for t in p.threats)
        print(f"{p.name} v{p.version}: {p.title}\n  {len(p.dataset_names())} datasets, "
              f"{p.samples or 'all'} samples each; {threats}; menu for every model: {', '.join(p.menu)} "
              f"(restarts {p.restarts}); prompts {p.prompts}; randomised defense: {json.dumps(p.defended)}; "
              f"definition sha256 {p.definition_sha256()[:12]}", file=sys.stdout)
    return 0


def _manifests(args) -> int:
    from ..data.datasets import get_dataset
    from ..evaluation.protocols import get_protocol, manifest_for

    protocol = get_protocol(args.protocol)
    for name in protocol.dataset_names():
        manifest = manifest_for(get_dataset(name, root=args.data_root, prompts=protocol.prompts), protocol)
        pinned = protocol.pinned.get(name)
        state = "" if not pinned else " (pinned)" if pinned == manifest.sha256 else f" (pinned: {pinned}: DIFFERS)"
        print(f"{name}: {manifest.sha256}{state}, {len(manifest.indices)} of {manifest.size} images")
    return 0
