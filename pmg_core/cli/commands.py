"""`python -m pmg_core <command>`: train, eval and attack; cards (robustness cards under a named
protocol) and zoo (published robust models); import a published checkpoint; pretrain the embedded
tiny CLIP; bench the steps' speed; list models and datasets. eps and step sizes are given in /255
units on the command line (checked in that unit) and converted to pixel units for the library."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Callable

from ..core.errors import UserError, check, check_number
from ..core.units import from_255, to_255

DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when there is one, else cpu)"


def _e(v: str) -> float:
    """/255 units -> pixel units."""
    try:
        return from_255(float(v))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of 1/255 steps, got {v!r}") from None


def _check_255(flag: str, value: float | None, high_255: float | None = 255) -> None:
    """A radius or step typed in /255, checked in the unit typed before the library sees it in pixel
    units (whose own check would answer a typed 300 with "got 1.1764705882352942")."""
    if value is not None:
        typed = to_255(value)
        check_number(f"{flag} (in /255)", int(typed) if typed.is_integer() else typed, low=0, high=high_255)


def _csv(v: str) -> list[str]:
    return [s.strip() for s in v.split(",") if s.strip()]


def _settings(args, cls, kind: str) -> dict:
    """Run settings: the recipe given with --config, then every flag given on the command line.

    The train and eval parsers default every option to argparse.SUPPRESS, so `args` holds exactly
    the flags that were typed, even one equal to its default; the rest come from the recipe or
    from the config class's defaults.
    """
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if args.config is None:
        return given
    from .recipes import load_recipe

    return {**load_recipe(args.config, kind), **given}


def _check_writable(path: str, what: str) -> None:
    """Refuse, before a long run, an output file whose folder cannot be made or written to."""
    import tempfile
    from pathlib import Path

    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError(f"The {what} path '{path}' is a folder; give a file name.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=target.parent).close()
    except OSError as e:
        raise UserError(f"Cannot write the {what} to '{path}': its folder '{target.parent}' cannot be created "
                        f"or written to ({e.strerror or e}).") from None


def _add_train(sub) -> None:
    from ..training.loop import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="fine-tune a CLIP image encoder (TeCoA, PMG-AFT, TGA-ZSR, FARE, clean)",
                       description="Fine-tune model.visual adversarially. eps/step sizes in /255 units.",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help="YAML/JSON recipe; flags given on the command line override it")
    p.add_argument("--model", help=f"base model spec (default {d.model})")
    p.add_argument("--method", help=f"clean | tecoa | pmg-aft | tga-zsr | fare (default {d.method})")
    p.add_argument("--dataset", help=f"registered dataset or ImageFolder path (default {d.dataset})")
    p.add_argument("--data-root", help="where on-disk datasets live (default $PMG_DATA_ROOT, else ./data)")
    p.add_argument("--eps", type=_e, help="Linf radius in /255 (default 1)")
    p.add_argument("--steps", dest="attack_steps", type=int, help=f"PGD steps (default {d.attack_steps})")
    p.add_argument("--step-size", type=_e, help="PGD step in /255 (default 1)")
    p.add_argument("--alpha", type=float, help=f"PMG-AFT weight of KL to the original model (default {d.alpha})")
    p.add_argument("--beta", type=float, help=f"PMG-AFT weight of KL to its clean output (default {d.beta})")
    p.add_argument("--tga-alpha", type=float, help=f"TGA-ZSR weight of its attention refinement term (default {d.tga_alpha})")
    p.add_argument("--tga-beta", type=float, help=f"TGA-ZSR weight of its attention constraint term (default {d.tga_beta})")
    p.add_argument("--preset", help=f"paper | public-code | public-code-4baf55d (the public code's first-commit "
                                    f"KL direction; docs/METHOD.md) (default {d.preset})")
    p.add_argument("--prompts", help=f"public-code | clip: class names and templates of the paper's datasets "
                                     f"(docs/METHOD.md; default {d.prompts})")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, help=f"global batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, help=f"default {d.lr}")
    p.add_argument("--momentum", type=float, help=f"default {d.momentum}")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay}")
    p.add_argument("--warmup", type=int, help=f"warm-up steps of the cosine schedule (default {d.warmup})")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--limit", type=int, help="use at most N training samples")
    p.add_argument("--train-last-n", type=int, help="train only the last N tensors of the encoder")
    p.add_argument("--out", help="checkpoint path (.safetensors)")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (with resume state)")
    p.add_argument("--resume", action="store_true", help="continue the run saved at --out")
    p.add_argument("--keep-state", action="store_true", help="keep the .state resume file after the run")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    p.add_argument("--attack-amp", action="store_true",
                   help="run the training attack under bf16 autocast: that of the step on a GPU, its own on a CPU "
                        "with bf16 instructions (fp32 on other CPUs); faster, not the paper's fp32")
    p.add_argument("--attack-tf32", action="store_true",
                   help="the training attack's fp32 passes with TF32 matrix products on CUDA (not the paper's fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the image encoders: the same step within float rounding, faster after a slow "
                        "first step (one process only; `bench --compile` checks it)")
    p.add_argument("--num-workers", type=int, help=f"data-loading processes (default {d.num_workers})")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from ..training.distributed import barrier
    from ..training.loop import TrainConfig, train

    cfg = TrainConfig(**_settings(args, TrainConfig, "train"))
    _check_255("--eps", cfg.eps)
    _check_255("--step-size", cfg.step_size)
    if cfg.out:
        _check_writable(cfg.out, "checkpoint")

    def run(ctx) -> int:
        if ctx.enabled:
            cfg.device = str(ctx.device)
        ev = train(cfg, progress=ctx.is_main, rank=ctx.rank, world=ctx.world)
        barrier(ctx)  # no rank reports done before rank 0's checkpoint is on disk
        if ctx.is_main:
            print(json.dumps({k: v for k, v in ev.items() if k != "event"}, indent=2))
        return 0

    return _under_torchrun(cfg.device, run)


def _under_torchrun(device: str | None, run: Callable) -> int:
    """Run `run(ctx)` in this process's place of a torchrun job (or alone, without torchrun).

    A collective that fails because another rank died becomes one sentence, not a traceback.
    """
    from ..training.distributed import cleanup, describe_failure, init, is_distributed_failure

    ctx = init(device)
    if ctx.enabled:
        backend = "nccl" if ctx.device.type == "cuda" else "gloo"
        print(f"[rank {ctx.rank}/{ctx.world}] pid {os.getpid()} on {ctx.device} ({backend})"
              + ("" if ctx.is_main else ": quiet; rank 0 shows progress and results"), file=sys.stderr, flush=True)
    try:
        code = run(ctx)
    except Exception as e:
        if ctx.enabled and is_distributed_failure(e):
            # Leave at once: tearing the process group down would wait on the dead peer.
            print(f"error: {describe_failure(ctx, e)}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(2)
        raise
    cleanup()
    return code


def _add_eval(sub) -> None:
    from ..attacks.adaptive import ADAPTIVE, FULL_SUITE
    from ..attacks.pgd import ATTACKS
    from ..evaluation.accuracy import EvalConfig

    d = EvalConfig()
    p = sub.add_parser("eval", help="zero-shot clean and robust accuracy over models x datasets",
                       description="Evaluate models on datasets under an attack. eps/step sizes in /255 units.",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help="YAML/JSON evaluation recipe; flags given on the command line override it")
    p.add_argument("--models", type=_csv, help=f"comma-separated model specs (default {','.join(d.models)})")
    p.add_argument("--datasets", type=_csv, help=f"comma-separated datasets or groups (default {','.join(d.datasets)})")
    p.add_argument("--data-root", help="where on-disk datasets live (default $PMG_DATA_ROOT, else ./data)")
    p.add_argument("--eps", type=_e, help="attack radius in /255 units, for L2 too (--norm L2 --eps 128 is 128/255 ≈ 0.5) "
                                         "(default 1)")
    p.add_argument("--steps", type=int, help="attack steps; AutoAttack's APGD/FAB iterations (default: the attack's "
                                             "standard count, PGD 10, AutoAttack 100)")
    p.add_argument("--step-size", type=_e, help="PGD step in /255 (default 1)")
    p.add_argument("--attack", help=f"{' | '.join(ATTACKS)} (default {d.attack}; pgd-public-code reproduces the "
                                    "public code's weaker fp16 batch-mean PGD: docs/METHOD.md)")
    p.add_argument("--norm", help=f"Linf | L2 (default {d.norm})")
    p.add_argument("--no-random-start", dest="random_start", action="store_false",
                   help="start PGD at the clean image instead of a random point of the eps-ball")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                   help="attack every sample for all steps (same result, slower)")
    p.add_argument("--robust-rule", choices=["ever", "final"],
                   help="ever: robust only if no PGD iterate fools it (default); final: the last iterate only, "
                        "as the public code scores")
    p.add_argument("--limit", type=int, help="samples per dataset (default all)")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--preset", help="paper | public-code | public-code-4baf55d (default: each model's own, else "
                                    "paper; the tables name each model's)")
    p.add_argument("--prompts", help="public-code | clip: class names and templates of the paper's datasets; "
                                     f"public-code as the paper's numbers were made (docs/METHOD.md; default {d.prompts})")
    p.add_argument("--defense", help="a test-time defense: none | ttc | clipure (default none); a defended model is "
                                     "reported under the usual attack and under an adaptive one through the defense")
    p.add_argument("--eot", type=int, help=f"the adaptive attack's gradients per step, each through a fresh draw of the defense (default {d.eot})")
    p.add_argument("--adaptive", type=_csv, help="attacks through the defense, best-of with the unaware one: "
                                                 f"{' | '.join(n for n in ADAPTIVE if n != 'unaware')} "
                                                 f"(default {','.join(d.adaptive)}; all four: {','.join(FULL_SUITE)})")
    p.add_argument("--restarts", type=int, help=f"runs of each attack from fresh random starts, best-of (default {d.restarts})")
    p.add_argument("--judge-draws", type=int, help="behind a defense: fresh draws each attack's image is judged on; "
                                                   f"robust only if right on all (default {d.judge_draws})")
    p.add_argument("--defense-threshold", help="TTC's tau threshold: a number, or 'calibrated' (the median tau of the "
                                               "clean images evaluated) (default: the published 0.2)")
    p.add_argument("--attack-amp", action="store_true",
                   help="PGD's passes under bf16 autocast on a GPU or a CPU with bf16 instructions (fp32 on other "
                        "CPUs); its verdicts stay fp32; faster, robust accuracy within 0.5 points (docs/PERFORMANCE.md)")
    p.add_argument("--num-workers", type=int, help=f"data-loading processes (default {d.num_workers})")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--out", default=None, help="FILE.json (CSV and Markdown written beside it)")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from ..evaluation.accuracy import EvalConfig, evaluate, to_markdown, write_report

    cfg = EvalConfig(**_settings(args, EvalConfig, "eval"))
    _check_255("--eps", cfg.eps, 255 if cfg.norm == "Linf" else None)
    _check_255("--step-size", cfg.step_size, None)
    if args.out:
        _check_writable(args.out, "report")

    def run(ctx) -> int:
        report = evaluate(cfg, progress=True, ctx=ctx)
        if ctx.is_main:
            print(report["protocol"] + "\n")
            print(to_markdown(report["results"]))
            if args.out:
                print("wrote " + ", ".join(write_report(report, args.out)))
        return 0

    return _under_torchrun(cfg.device, run)


def _add_attack(sub) -> None:
    p = sub.add_parser("attack", help="attack one image file and print clean vs adversarial predictions")
    p.add_argument("image", help="image file")
    p.add_argument("--models", type=_csv, default=["clip-tiny"], help="comma-separated model specs")
    p.add_argument("--labels", required=True, help="comma-separated class names (the app's rules: none empty or twice)")
    p.add_argument("--true", default=None, help="the true label (one of --labels)")
    p.add_argument("--target", default=None, help="target label for a targeted attack")
    p.add_argument("--eps", type=_e, default=None,
                   help="radius in /255 units, for L2 too (default: the benchmark's for the models: 8 for the embedded "
                        "32 px world, the paper's 1 for a real CLIP; pmg_core.evaluation.explore.starting_attack)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    p.add_argument("--step-size", type=_e, default=None, help="in /255 (default 2.5*eps/steps)")
    p.add_argument("--norm", default="Linf", help="Linf | L2 (default Linf)")
    p.add_argument("--loss", default="ce", help="ce | margin")
    p.add_argument("--source", default=None, help="attack this model only and transfer the image to all")
    p.add_argument("--defense", default="none", help="also judge each model behind a test-time defense: none | ttc | clipure "
                                                     "(its verdicts: the same adversarial image, and one attacked through the defense)")
    p.add_argument("--eot", type=int, default=4, help="the attack through the defense: gradients per step (default 4)")
    p.add_argument("--out", default=None, help="write the adversarial image (PNG, lossless) here")
    p.add_argument("--json", default=None, metavar="OUT",
                   help="write the comparison as JSON here (the document the app shows as its details)")
    p.add_argument("--maps", default=None, metavar="DIR",
                   help="write where each model looks (text-guided attention to the true and the predicted class, "
                        "gradient saliency) on the clean and the adversarial image, as PNG overlays, into DIR")
    p.add_argument("--radius", action="store_true",
                   help="also find each model's robustness radius: the smallest eps that changes its answer "
                        "(bisection over PGD with --steps steps, 0 to 16/255, to within 1/255)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.set_defaults(func=_run_attack)


def _run_attack(args) -> int:
    from pathlib import Path

    from ..evaluation.explore import AttackSettings, compare, cpu_lanes, is_real_clip, robustness_radius, starting_attack
    from ..data.images import load_image, save_png
    from ..evaluation.maps import comparison_maps, save_maps
    from ..data.inputs import parse_labels
    from ..core.env import check_device, default_device
    from ..models.zoo import load_models

    labels = parse_labels(args.labels)  # as the app reads its labels field: "cat,,dog" is refused, not read as two
    image = load_image(args.image)
    if args.out:
        _check_writable(args.out, "adversarial image")
    if args.json:
        _check_writable(args.json, "comparison JSON")
    check(not args.radius or args.true is not None, "--radius needs the true label (--true).")
    _check_255("--eps", args.eps, 255 if args.norm == "Linf" else 100 * 255)
    _check_255("--step-size", args.step_size)
    check_device(args.device)
    models = load_models(args.models, args.device or default_device())
    eps = args.eps if args.eps is not None else from_255(starting_attack(is_real_clip(models)).eps_255)
    source = None
    if args.source:
        source = next((m.name for m in models if args.source in (m.name, m.spec)), args.source)
    # As the app does: on a CPU several models are attacked at once, the same attacks sooner.
    settings = AttackSettings(eps, args.steps, args.step_size, args.norm, args.loss, args.target, source,
                              defense=args.defense, eot=args.eot, lanes=cpu_lanes(models))
    res = compare(models, image, labels, args.true, settings)
    radii = [robustness_radius(m, image, labels, args.true, settings) for m in models] if args.radius else []
    for v in res.verdicts:
        made = f", {v.precision.name} passes" if v.precision else ""
        print(f"{v.model}  (attacked with {v.attacked_by}'s gradients{made}; verdicts in fp32)")
        rows = [("clean", v.clean), ("adversarial", v.adversarial)]
        if v.defended:
            d = v.defended.defense
            rows += [(f"{d}, clean", v.defended.clean), (f"{d}, same adv.", v.defended.adversarial),
                     (f"{d}, adaptive", v.defended.adaptive)]
        for kind, pred in rows:
            mark = "" if pred.correct is None else ("  [right]" if pred.correct else "  [wrong]")
            top = ", ".join(f"{lab} {p:.1%}" for lab, p in zip(pred.labels, pred.probs))
            print(f"  {kind:>15}: {top}{mark}")
    for r in radii:
        print(f"{r.model}: " + ("wrong on the clean image" if r.radius_255 == 0 else
                                f"holds beyond {r.high_255:g}/255" if r.radius_255 is None else
                                f"fooled at {r.radius_255:g}/255") + f" (robustness radius, {r.attacks} PGD runs)")
    if args.maps:
        files = save_maps(comparison_maps(models, res), res, Path(args.maps).expanduser())
        print(f"wrote {len(files)} maps to {args.maps}")
    if args.out:
        print(f"wrote {save_png(res.verdicts[0].adv_image, args.out)}")
    if args.json:
        path = Path(args.json).expanduser()
        path.write_text(json.dumps(res.to_dict(settings, radii), indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list checkpoints and architectures")
    p.add_argument("--all", action="store_true", help="also list every open_clip architecture")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from ..models.checkpoints import read_metadata
    from ..models.clip import OPENAI_VIT_B32, list_architectures, list_checkpoints

    print("checkpoints:")
    for path in list_checkpoints():
        try:
            meta = read_metadata(path)
            desc = meta.get("method", "base") + (f" of {meta['base']}" if meta.get("base") else f" ({meta.get('arch')})")
        except UserError as e:
            desc = f"unreadable: {e}"
        print(f"  {path.stem:<20} {desc}")
    print(f"pretrained (needs network once): {OPENAI_VIT_B32}, hf-hub:ORG/REPO")
    archs = list_architectures()
    print("architectures: " + (", ".join(archs) if args.all else ", ".join(a for a in archs if a.startswith("pmg-"))
                               + f" (+{len(archs)} open_clip architectures: --all)"))
    return 0


def _add_datasets(sub) -> None:
    p = sub.add_parser("datasets", help="list registered datasets and groups")
    p.set_defaults(func=_run_datasets)


def _run_datasets(args) -> int:
    from ..data.datasets import list_datasets, list_groups

    for e in list_datasets():
        print(f"  {e.name:<24} {e.group:<10} {e.description}")
    for g, members in list_groups().items():
        print(f"group {g}: {', '.join(members)}")
    return 0


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="convert a published robust CLIP (.pth.tar, state dict, hf-hub id) to a checkpoint",
                       description="Import a robust image encoder (public PMG-AFT/TeCoA .pth.tar, RobustVLM state "
                                   "dicts, hf-hub:chs20/... ids) as a fine-tune checkpoint; optionally evaluate it.")
    p.add_argument("source", help="checkpoint file or hf-hub:ORG/REPO")
    p.add_argument("--base", default=None, help="base CLIP spec (default: an hf-hub model itself; for a file, the OpenAI "
                                                "CLIP its shapes match, e.g. ViT-B-32-quickgelu:openai)")
    p.add_argument("--out", default=None, help="output .safetensors (default checkpoints/<source name>.safetensors)")
    p.add_argument("--method", default=None, help="method recorded in the metadata (default: guessed from the name)")
    p.add_argument("--preset", default=None, help="numerics it was trained with, used when evaluating it (default "
                                                  "paper): paper for TeCoA, RobustVLM (TeCoA/FARE) and test-time-"
                                                  "counterattacks checkpoints (CLIP normalisation, x100 logits); "
                                                  "public-code only for checkpoints made by the public PMG-AFT code")
    p.add_argument("--eval", default=None, help="then evaluate on these datasets/groups (comma-separated)")
    p.add_argument("--eval-config", default=None, help="then evaluate with this eval recipe (its models replaced)")
    p.add_argument("--limit", type=int, default=None, help="samples per dataset for --eval")
    p.add_argument("--data-root", default=None, help="where on-disk datasets live, for --eval (default "
                                                       "$PMG_DATA_ROOT, else ./data)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.set_defaults(func=_run_import)


def _run_import(args) -> int:
    import json

    from ..core.env import default_device

    device = args.device or default_device()
    from ..models.importers import import_checkpoint

    path, model = import_checkpoint(args.source, args.out, args.base, args.method, device, args.preset)
    print(f"wrote {path} (fine-tune of {model.base}, method {model.metadata['method']})")
    if not (args.eval or args.eval_config):
        return 0
    from ..evaluation.accuracy import EvalConfig, evaluate, to_markdown

    values = {}
    if args.eval_config:
        from .recipes import load_recipe

        values = load_recipe(args.eval_config, "eval")
    if args.eval:
        values["datasets"] = [s.strip() for s in args.eval.split(",") if s.strip()]
    values.update(models=[str(path)], device=device,
                  **{k: v for k, v in (("limit", args.limit), ("data_root", args.data_root)) if v is not None})
    report = evaluate(EvalConfig(**values), models=[model], progress=True)
    print(to_markdown(report["results"]))
    print(json.dumps(report["results"], indent=2))
    return 0


OPTIONAL = ("training.pretrain", "bench", "cli.zoo", "cli.cards")  # modules that add their own sub-command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pmg_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_eval, _add_attack, _add_models, _add_datasets, _add_import):
        add(sub)
    for name in OPTIONAL:
        try:
            mod = importlib.import_module(f"pmg_core.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"pmg_core.{name}":
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..core.env import fit_threads

    fit_threads()
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
