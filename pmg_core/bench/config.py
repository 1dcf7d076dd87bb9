"""What the benchmark measures: its config, and the setup every training-step timing shares.

The setup is the real training path (`Trainer`) on random images with `classes` class prompts:
timing needs neither trained weights nor real data, and the Trainer is handed the dataset object
(nothing is registered globally).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..core.errors import check, check_number

METHODS = ("clean", "tecoa", "pmg-aft", "fare")
PARTS = ("steps", "attack", "study", "app")  # training steps; PGD alone + robust eval; early-stop study; the live comparison
DEFAULT_PARTS = PARTS[:3]  # the live comparison loads four ViT-B-32 models: asked for by name
ROLES = ("ours", "reference", "floor")


@dataclass
class BenchConfig:
    arch: str = "ViT-B-32"
    batch_size: int = 8
    device: str | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    pgd_steps: int = 2
    eps: float = 1 / 255  # pixel units
    classes: int = 10  # class prompts the zero-shot head scores (the reference re-encodes all of them)
    eval_steps: int = 10  # PGD steps of the robust-evaluation timings
    eval_eps: float | None = None  # eps of the early-stop study (pixel units); None: eps
    eval_step_size: float | None = None  # its PGD step (pixel units); None: its eps
    repeats: int = 3
    warmup: int = 1
    amp: bool = True  # bf16 autocast on CUDA for our step (the reference stays fp32); CPU is fp32
    attack_amp: bool = False  # the training attack in bf16 (TrainConfig.attack_amp: the step's autocast on a GPU); else fp32
    attack_tf32: bool = False  # the training attack's fp32 passes with TF32 matmuls on CUDA (TrainConfig.attack_tf32)
    compile: bool = False  # also check each method's torch.compile'd step against the eager one (steps part)
    seed: int = 0
    parts: list[str] = field(default_factory=lambda: list(DEFAULT_PARTS))
    eval_model: str = "clip-tiny"  # model of the early-stop study
    eval_datasets: str = "mini"
    eval_limit: int = 200  # samples per dataset in the early-stop study
    eval_batch_size: int = 128
    app_arch: str = "ViT-B-32-quickgelu"  # models of the live-comparison timing (random init)
    app_models: int = 4
    app_steps: int = 10
    app_eps: float = 4 / 255  # pixel units
    app_step_size: float | None = None  # None: PGD's default rule (1/255 at eps 4/255, 10 steps)
    app_stop_margin: float = 1.0  # the app's default stop margin (logits)

    def validate(self) -> None:
        check_number("batch size", self.batch_size, low=1, integer=True)
        check_number("PGD steps", self.pgd_steps, low=0, integer=True)
        check_number("eval steps", self.eval_steps, low=1, integer=True)
        check_number("eps", self.eps, low=0, high=1)
        if self.eval_eps is not None:
            check_number("eval eps", self.eval_eps, low=0, high=1)
        if self.eval_step_size is not None:
            check_number("eval step size", self.eval_step_size, low=0, high=1)
        check_number("classes", self.classes, low=2, integer=True)
        check_number("repeats", self.repeats, low=1, integer=True)
        check_number("warm-up iterations", self.warmup, low=0, integer=True)
        check_number("eval limit", self.eval_limit, low=1, integer=True)
        check_number("eval batch size", self.eval_batch_size, low=1, integer=True)
        check_number("app models", self.app_models, low=1, high=16, integer=True)
        check_number("app steps", self.app_steps, low=0, integer=True)
        check_number("app eps", self.app_eps, low=0, high=1)
        check_number("app stop margin", self.app_stop_margin, low=0)
        check(len(self.parts) > 0 and all(p in PARTS for p in self.parts),
              f"Choose the parts to run among {', '.join(PARTS)}; got {', '.join(self.parts) or 'none'}.")
        check("steps" not in self.parts or len(self.methods) > 0, "Give at least one method to benchmark.")
        for m in self.methods:
            check(m in METHODS, f"Unknown method '{m}' for bench: choose all or one of {', '.join(METHODS)}.")


def class_names(n: int) -> list[str]:
    return [f"object {i}" for i in range(n)]


def random_data(classes: int, image_size: int, n: int):
    """`n` random images of the model's size with labels among `classes` prompts: all timing needs."""
    from ..data.datasets import ZeroShotDataset

    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, image_size, image_size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return ZeroShotDataset("bench-random", torch.utils.data.TensorDataset(x, y), class_names(classes))


def make_trainer(model, method: str, cfg: BenchConfig, device: torch.device):
    """The real training setup (Trainer) for `method` on random data with `cfg.classes` classes."""
    from ..training.loop import TrainConfig, Trainer

    data = random_data(cfg.classes, model.image_size, cfg.batch_size)
    tcfg = TrainConfig(model=model.spec, method=method, dataset=data.name, eps=cfg.eps, attack_steps=cfg.pgd_steps,
                       step_size=cfg.eps, batch_size=cfg.batch_size, max_steps=1_000_000, warmup=1, lr=1e-6,
                       device=str(device), amp=cfg.amp, attack_amp=cfg.attack_amp, attack_tf32=cfg.attack_tf32,
                       seed=cfg.seed)
    return Trainer(tcfg, model=model, data=data)


def attack_autocast(trainer, cfg: BenchConfig) -> Callable:
    """The precision our training attack runs in (Method.attack_dtype_on): with attack_amp the step's
    autocast on a GPU, bf16 autocast of its own on a CPU with bf16 instructions; else fp32."""
    if not cfg.attack_amp:
        return contextlib.nullcontext
    if trainer.device.type == "cpu":
        from ..core.precision import amp_attack_dtype

        dtype = amp_attack_dtype(trainer.device)
        return (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else contextlib.nullcontext
    return trainer.autocast


def fixed_batch(trainer, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, size = trainer.cfg.batch_size, trainer.classifier.image_size
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.randint(0, trainer.classifier.num_classes, (n,), generator=g)
    return x.to(trainer.device), y.to(trainer.device)
