"""Training steps, PGD alone and robust evaluation: ours against the reference and the floor.

For each method, one run on one device times the same fixed batch three ways (see yardsticks):
ours is the real code path (`Trainer.train_step`: the registered method with its PGD, backward,
optimizer step; the training attack; `evaluate_batch`), interleaved with the reference and the
floor; the FLOPs of our step give its achieved TFLOP/s against the device's peaks.
"""
from __future__ import annotations

import copy
import time

import torch

from .config import BenchConfig, attack_autocast, fixed_batch, make_trainer
from .instruments import PeakMemory, best_seconds, count_flops, sync, time_interleaved
from .yardsticks import Reference, floor_passes, input_grad_passes


def summarise(timed: dict[str, dict], batch: int, flops: int | None, peaks: dict[str, float]) -> dict:
    out = {}
    for role, t in timed.items():
        out[role] = {**t, "images_per_s": round(batch / t["seconds"], 3), "seconds": round(t["seconds"], 4)}
    if "reference" in timed:
        out["ratio_vs_reference"] = round(timed["reference"]["seconds"] / timed["ours"]["seconds"], 3)
    if "floor" in timed:
        out["efficiency_vs_floor"] = round(timed["floor"]["seconds"] / timed["ours"]["seconds"], 3)
    if flops:
        achieved = flops / timed["ours"]["seconds"] / 1e12
        out["flops_per_step"] = flops
        out["achieved_tflops"] = round(achieved, 4)
        for name, tflops in peaks.items():  # fraction_of_peak (datasheet), fraction_of_matmul (measured)
            out[f"fraction_of_{name}"] = round(achieved / tflops, 4)
    return out


def bench_method(model, method: str, cfg: BenchConfig, device: torch.device, memory: PeakMemory,
                 peaks: dict[str, float]) -> dict:
    trainer = make_trainer(model, method, cfg, device)
    ref = Reference(trainer)
    x, y = fixed_batch(trainer, cfg.seed)
    clf = trainer.classifier
    with torch.no_grad():
        xn = clf.preprocess(x)
    original = trainer.original.visual if trainer.original is not None else None
    floor = floor_passes(method, clf.visual, original, xn, cfg.pgd_steps, trainer.autocast,
                         attack_autocast(trainer, cfg))
    fns = {"ours": lambda: trainer.train_step(x, y), "reference": lambda: ref.step(x, y), "floor": floor}
    flops = count_flops(fns["ours"])  # doubles as one more warm-up of our step
    out = summarise(time_interleaved(fns, cfg.warmup, cfg.repeats, device, memory), cfg.batch_size, flops, peaks)
    if cfg.compile:
        out["eager_vs_compiled"] = eager_vs_compiled(model, method, cfg, device)
    return out


def bench_attack_and_eval(model, cfg: BenchConfig, device: torch.device, memory: PeakMemory,
                          peaks: dict[str, float]) -> dict[str, dict]:
    """PGD alone (training attack, K steps) and robust evaluation (PGD-eval_steps with early stop)."""
    from ..evaluation.accuracy import EvalConfig, evaluate_batch

    trainer = make_trainer(model, "tecoa", cfg, device)
    ref = Reference(trainer)
    clf = trainer.classifier
    x, _ = fixed_batch(trainer, cfg.seed)
    with torch.no_grad():
        xn = clf.preprocess(x)
        y = clf.eval()(x).argmax(1)  # label = clean prediction: every sample gets attacked
    pgd = trainer.method.pgd(clf)

    def ours_pgd():
        clf.train()
        with trainer.autocast():
            return pgd.perturb(x, y)

    floor_pgd = input_grad_passes(clf.visual, xn, cfg.pgd_steps, autocast=attack_autocast(trainer, cfg))
    timed = time_interleaved({"ours": ours_pgd, "reference": lambda: ref.attack(x, y), "floor": floor_pgd},
                             cfg.warmup, cfg.repeats, device, memory)
    out = {"pgd": summarise(timed, cfg.batch_size, count_flops(ours_pgd), peaks)}

    ecfg = EvalConfig(eps=cfg.eps, steps=cfg.eval_steps, step_size=cfg.eps, early_stop=True, seed=cfg.seed)
    idx = torch.arange(cfg.batch_size)

    def ours_eval():
        clf.eval()
        return evaluate_batch(clf, x, y, idx, ecfg)[1]

    floor_eval = input_grad_passes(clf.visual, xn, cfg.eval_steps, forwards=2)
    timed = time_interleaved({"ours": ours_eval, "reference": lambda: ref.robust_eval(x, y, cfg.eval_steps),
                              "floor": floor_eval}, cfg.warmup, cfg.repeats, device, memory)
    out["eval"] = summarise(timed, cfg.batch_size, count_flops(ours_eval), peaks)
    out["eval"]["steps"] = cfg.eval_steps
    return out


# What "the same step" means for torch.compile: float reassociation in fused kernels moves the last
# digits, so the loss must agree to LOSS_RTOL and every gradient entry to GRAD_RTOL * |g| + GRAD_ATOL
# (the tolerances of the reference check in tests/test_bench.py).
LOSS_RTOL, GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-3, 1e-6


def eager_vs_compiled(model, method: str, cfg: BenchConfig, device: torch.device) -> dict:
    """One training step eager and one torch.compile'd (TrainConfig.compile), from the same weights,
    batch and random start: their losses and gradients, the compiled first step (compilation
    included) and the best of a few further steps of each."""
    trainers = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        t = make_trainer(copy.deepcopy(model), method, cfg, device)
        if compiled:
            t._compile_encoders()  # noqa: SLF001 - what TrainConfig(compile=True) does in the Trainer
        trainers[name] = t
    x, y = fixed_batch(trainers["eager"], cfg.seed)
    out: dict = {}
    for name, t in trainers.items():
        torch.manual_seed(cfg.seed + 1)
        sync(device)
        t0 = time.perf_counter()
        out[f"loss_{name}"] = t.train_step(x, y)["loss"]
        sync(device)
        out[f"{name}_first_step_s"] = round(time.perf_counter() - t0, 3)
    pairs = [(a.grad, b.grad) for a, b in zip(trainers["eager"].params, trainers["compiled"].params)
             if a.grad is not None and b.grad is not None]
    excess = max(float(((e - c).abs() - GRAD_RTOL * e.abs()).max()) for e, c in pairs)
    out["loss_rel_diff"] = abs(out["loss_eager"] - out["loss_compiled"]) / max(abs(out["loss_eager"]), 1e-12)
    out["grad_max_abs_diff"] = max(float((e - c).abs().max()) for e, c in pairs)
    out["tolerance"] = {"loss_rtol": LOSS_RTOL, "grad_rtol": GRAD_RTOL, "grad_atol": GRAD_ATOL}
    out["same_step"] = out["loss_rel_diff"] <= LOSS_RTOL and excess <= GRAD_ATOL
    for name, t in trainers.items():
        out[f"{name}_step_s"] = round(best_seconds(lambda t=t: t.train_step(x, y), device, max(cfg.repeats, 1)), 4)
    return out
