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

from ..errors import check, check_number

METHODS = ("clean", "tecoa", "pmg-aft", "fare")
PARTS = ("steps", "attack", "study")  # training steps per method; PGD alone + robust eval; early-stop study
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
    attack_amp: bool = False  # the training attack under that autocast too (TrainConfig.attack_amp); else fp32
    seed: int = 0
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    eval_model: str = "clip-tiny"  # model of the early-stop study
    eval_datasets: str = "mini"
    eval_limit: int = 200  # samples per dataset in the early-stop study
    eval_batch_size: int = 128

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
        check(len(self.parts) > 0 and all(p in PARTS for p in self.parts),
              f"Choose the parts to run among {', '.join(PARTS)}; got {', '.join(self.parts) or 'none'}.")
        check("steps" not in self.parts or len(self.methods) > 0, "Give at least one method to benchmark.")
        for m in self.methods:
            check(m in METHODS, f"Unknown method '{m}' for bench: choose all or one of {', '.join(METHODS)}.")


def class_names(n: int) -> list[str]:
    return [f"object {i}" for i in range(n)]


def random_data(classes: int, image_size: int, n: int):
    """`n` random images of the model's size with labels among `classes` prompts: all timing needs."""
    from ..data import ZeroShotDataset

    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, image_size, image_size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return ZeroShotDataset("bench-random", torch.utils.data.TensorDataset(x, y), class_names(classes))


def make_trainer(model, method: str, cfg: BenchConfig, device: torch.device):
    """The real training setup (Trainer) for `method` on random data with `cfg.classes` classes."""
    from ..train import TrainConfig, Trainer

    data = random_data(cfg.classes, model.image_size, cfg.batch_size)
    tcfg = TrainConfig(model=model.spec, method=method, dataset=data.name, eps=cfg.eps, attack_steps=cfg.pgd_steps,
                       step_size=cfg.eps, batch_size=cfg.batch_size, max_steps=1_000_000, warmup=1, lr=1e-6,
                       device=str(device), amp=cfg.amp, attack_amp=cfg.attack_amp, seed=cfg.seed)
    return Trainer(tcfg, model=model, data=data)


def attack_autocast(trainer, cfg: BenchConfig) -> Callable:
    """The precision our training attack runs in: the step's autocast with attack_amp, else fp32."""
    return trainer.autocast if cfg.attack_amp else contextlib.nullcontext


def fixed_batch(trainer, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, size = trainer.cfg.batch_size, trainer.classifier.image_size
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.randint(0, trainer.classifier.num_classes, (n,), generator=g)
    return x.to(trainer.device), y.to(trainer.device)
