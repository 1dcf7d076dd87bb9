"""`run_bench`: every requested part of the benchmark in one run, as one JSON-ready report."""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import torch

from ..core.units import to_255
from .comparison import bench_app
from .config import BenchConfig
from .early_stop import eval_early_stop_study
from .instruments import PeakMemory, device_info
from .steps import bench_attack_and_eval, bench_method


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run every requested measurement; returns the JSON-ready report."""
    from ..core.env import default_device
    from ..models.clip import load_model

    cfg.validate()
    say = progress or (lambda _msg: None)
    device = torch.device(cfg.device or default_device())
    info = device_info(device)
    peaks = {k: info[f] for k, f in (("peak", "peak_bf16_tflops"), ("matmul", "matmul_bf16_tflops")) if info.get(f)}
    memory = PeakMemory(device)
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.arch, device=device) if {"steps", "attack"} & set(cfg.parts) else None
    report: dict = {"config": {**asdict(cfg), "eps_255": to_255(cfg.eps)}, "device": info,
                    "memory_kind": memory.kind, "training_attack": training_attack_precision(cfg, device),
                    "methods": {}}
    for method in cfg.methods if "steps" in cfg.parts else ():
        say(f"timing {method} (ours / reference / floor)")
        report["methods"][method] = bench_method(model, method, cfg, device, memory, peaks)
    if "attack" in cfg.parts:
        say("timing PGD alone and robust evaluation")
        report.update(bench_attack_and_eval(model, cfg, device, memory, peaks))
    report["memory_kind"] = memory.kind
    if "study" in cfg.parts:
        say(f"robust evaluation early-stop study on {cfg.eval_model}")
        report["eval_early_stop"] = eval_early_stop_study(cfg, device)
    if "app" in cfg.parts:
        say(f"the app's live comparison: {cfg.app_models} x {cfg.app_arch}, today's path vs streamed")
        report["app"] = bench_app(cfg, device)
    return report


def training_attack_precision(cfg: BenchConfig, device: torch.device) -> str:
    """The precision of our training attack's passes (Method.attack_dtype_on), in words."""
    from ..core.precision import amp_attack_dtype

    if cfg.attack_tf32 and device.type == "cuda":
        return "tf32"
    if not cfg.attack_amp:
        return "fp32"
    if device.type != "cpu":
        return "the step's autocast (bf16)" if cfg.amp else "fp32 (the step runs no autocast)"
    return "bf16" if amp_attack_dtype(device) else "fp32 (this CPU has no bf16 instructions)"
