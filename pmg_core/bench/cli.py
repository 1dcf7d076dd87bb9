"""`python -m pmg_core bench`: the benchmark's command line (flags -> BenchConfig -> report)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..core.env import check_device
from ..core.errors import check, check_number
from ..core.units import from_255, to_255
from .config import DEFAULT_PARTS, METHODS, BenchConfig
from .report import to_markdown
from .run import run_bench

DESCRIPTION = ("How fast training and evaluation steps run, against the public code's way of computing them "
               "and the floor of unavoidable passes. eps in /255 units.")

QUICK = {"repeats": 1, "warmup": 0, "eval_limit": 32, "eval_datasets": "synth-shape,synth-colour", "eval_steps": 3}


def add_parser(sub) -> None:
    d = BenchConfig()
    p = sub.add_parser("bench", help="time training / attack / evaluation steps against the public code's way and the floor",
                       description=DESCRIPTION)
    p.add_argument("--arch", default=d.arch, help="architecture, random init, nothing downloaded (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step (default %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("--method", default="all", help=f"all or one of {', '.join(METHODS)}")
    p.add_argument("--pgd-steps", type=int, default=d.pgd_steps, help="PGD steps of the training attack")
    p.add_argument("--eval-steps", type=int, default=None, help=f"PGD steps of robust evaluation (default {d.eval_steps})")
    p.add_argument("--eps", type=float, default=1.0, help="Linf radius in /255 (default 1)")
    p.add_argument("--classes", type=int, default=d.classes, help="number of class prompts (default %(default)s)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed repeats, median kept (default {d.repeats})")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed warm-up rounds (default {d.warmup})")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    p.add_argument("--attack-amp", action="store_true",
                   help="the training attack in bf16 autocast (train --attack-amp: the step's on a GPU, its own on a "
                        "CPU with bf16 instructions); default fp32")
    p.add_argument("--attack-tf32", action="store_true",
                   help="the training attack's fp32 passes with TF32 matmuls on CUDA (train --attack-tf32); default off")
    p.add_argument("--compile", action="store_true",
                   help="also run each method's step torch.compile'd and check it against the eager one (steps part)")
    p.add_argument("--eval-eps", type=float, default=None, help="eps of the early-stop study in /255 (default: --eps)")
    p.add_argument("--eval-step-size", type=float, default=None,
                   help="PGD step of the early-stop study in /255 (default: its eps)")
    p.add_argument("--eval-model", default=d.eval_model, help="model of the early-stop study (default %(default)s)")
    p.add_argument("--eval-datasets", default=None, help=f"datasets of the early-stop study (default {d.eval_datasets})")
    p.add_argument("--eval-limit", type=int, default=None, help=f"samples per dataset there (default {d.eval_limit})")
    p.add_argument("--app-arch", default=d.app_arch, help="architecture of the live-comparison timing (default %(default)s)")
    p.add_argument("--app-models", type=int, default=d.app_models, help="models compared there (default %(default)s)")
    p.add_argument("--app-steps", type=int, default=d.app_steps, help="PGD steps there (default %(default)s)")
    p.add_argument("--app-eps", type=float, default=to_255(d.app_eps), help="eps there in /255 (default %(default)s)")
    p.add_argument("--app-stop-margin", type=float, default=d.app_stop_margin,
                   help="the streamed path's stop margin in logits (default %(default)s, the app's)")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help="what to run, comma-separated: steps (training step per method), attack (PGD alone and "
                        "robust eval), study (early-stop study), app (the app's live comparison: today's path vs "
                        "streamed); default %(default)s")
    p.add_argument("--quick", action="store_true", help="one repeat, no warm-up, a small early-stop study (smoke test)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the random weights and images (default %(default)s)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--markdown", default=None, help="write the Markdown summary here")
    p.set_defaults(func=run_cli)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    d = BenchConfig()
    check(args.method == "all" or args.method in METHODS,
          f"Unknown method '{args.method}' for bench: choose all or one of {', '.join(METHODS)}.")
    check_number("eps", args.eps, low=0, high=255)
    check_device(args.device)
    picked = {k: getattr(args, k) for k in ("repeats", "warmup", "eval_limit", "eval_datasets", "eval_steps")}
    resolved = {k: v if v is not None else (QUICK[k] if args.quick else getattr(d, k)) for k, v in picked.items()}
    return BenchConfig(arch=args.arch, batch_size=args.batch_size, device=args.device,
                       methods=list(METHODS) if args.method == "all" else [args.method], pgd_steps=args.pgd_steps,
                       eps=from_255(args.eps), eval_eps=None if args.eval_eps is None else from_255(args.eval_eps),
                       eval_step_size=None if args.eval_step_size is None else from_255(args.eval_step_size),
                       classes=args.classes, amp=args.amp, attack_amp=args.attack_amp, attack_tf32=args.attack_tf32,
                       compile=args.compile, seed=args.seed,
                       parts=[p.strip() for p in args.parts.split(",") if p.strip()], eval_model=args.eval_model,
                       app_arch=args.app_arch, app_models=args.app_models, app_steps=args.app_steps,
                       app_eps=from_255(args.app_eps), app_stop_margin=args.app_stop_margin,
                       **resolved)


def run_cli(args) -> int:
    import sys

    cfg = config_from_args(args)
    report = run_bench(cfg, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(to_markdown(report))
    print(to_markdown(report) if args.out else text)
    return 0
