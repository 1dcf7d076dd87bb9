"""Which precision an attack's gradient passes run in: the policy, in one place.

The passes (the image tower's forward and backward) are what a person waits for. Under bf16
autocast they run 1.5-2.5x faster on a CPU with bf16 instructions (ViT-B/32, one 224 px image).
What stays fp32 whatever the passes run in: the logits product with the text features
(ZeroShotClassifier.logits_from_features), the attack's loss (attacks.attack_loss) and every
verdict, which is an fp32 judgement (of the 8-bit image in the app and `attack`; evaluation
re-judges in fp32 each sample a bf16 pass calls fooled, PGD's judge_fp32). The measured attack
strength of bf16 passes against fp32 ones (robust accuracy within 0.5 points or lower) is in
docs/PERFORMANCE.md.

The app and `attack` (explore.py) follow $PMG_ATTACK_DTYPE:
- ``auto`` (the default): bf16 on a CPU with bf16 instructions (env.cpu_bf16) for an image tower
  of at least BF16_MIN_PARAMS parameters, where matrix products are the time; fp32 elsewhere: a
  CPU without them emulates bf16 (slower than fp32), the embedded tiny models (0.5M parameters)
  spend their passes on overheads that bf16 adds to, and on a GPU the app's attacks stay fp32.
- ``fp32``: fp32 everywhere (the paper's numerics).
- ``bf16``: bf16 wherever asked, even where it is slower.
`train` and `eval` take --attack-amp instead (amp_attack_dtype): bf16 attack passes on a GPU and on
a CPU with bf16 instructions, fp32 on other CPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import env
from .errors import check

ATTACK_DTYPE_ENV = "PMG_ATTACK_DTYPE"
CHOICES = ("auto", "fp32", "bf16")
# Below this many image-tower parameters bf16 passes are no faster on a CPU (measured: the
# embedded clip-tiny, one image, 3.9 ms in bf16 against 3.1 ms in fp32; ViT-B/32, 88M: 2.5x faster).
BF16_MIN_PARAMS = 20_000_000


@dataclass(frozen=True)
class AttackPrecision:
    """The precision that makes an adversarial image, and why (one sentence people read)."""

    name: str  # "fp32" or "bf16"
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """What attacks take as their `dtype`: bf16 autocast, or None (fp32 passes)."""
        return torch.bfloat16 if self.name == "bf16" else None


def choice_from_env() -> str:
    """$PMG_ATTACK_DTYPE, checked: auto (unset or empty), fp32 or bf16."""
    value = os.environ.get(ATTACK_DTYPE_ENV, "").strip().lower() or "auto"
    check(value in CHOICES, f"{ATTACK_DTYPE_ENV} must be one of {', '.join(CHOICES)}; got {value!r}.")
    return value


def _params(visual: torch.nn.Module) -> int:
    return sum(p.numel() for p in visual.parameters())


def attack_precision(device: torch.device | str, visual: torch.nn.Module, choice: str | None = None,
                     bf16_cpu: str | None = None) -> AttackPrecision:
    """The precision of the app's attack on `visual` (an image tower) on `device`.

    `choice`: auto, fp32 or bf16 (None: $PMG_ATTACK_DTYPE); `bf16_cpu`: the CPU's bf16
    instructions (None: detected, env.cpu_bf16; "" for none).
    """
    choice = choice_from_env() if choice is None else choice
    check(choice in CHOICES, f"The attack precision must be one of {', '.join(CHOICES)}; got {choice!r}.")
    device = torch.device(device)
    told = f"{ATTACK_DTYPE_ENV}={choice}"
    if choice == "fp32":
        return AttackPrecision("fp32", f"fp32 passes ({told}).")
    if choice == "bf16":
        return AttackPrecision("bf16", f"bf16 autocast passes, fp32 logits and verdicts ({told}).")
    if device.type != "cpu":
        return AttackPrecision("fp32", f"fp32 passes: on a GPU the app attacks in fp32 ({told}).")
    bf16_cpu = env.cpu_bf16() if bf16_cpu is None else bf16_cpu
    if not bf16_cpu:
        return AttackPrecision("fp32", f"fp32 passes: this CPU has no bf16 instructions ({told}).")
    params = _params(visual)
    if params < BF16_MIN_PARAMS:
        return AttackPrecision("fp32", f"fp32 passes: a {params / 1e6:.1f}M-parameter image tower is no faster "
                                       f"in bf16 ({told}).")
    return AttackPrecision("bf16", f"bf16 autocast passes, fp32 logits and verdicts: this CPU has {bf16_cpu} ({told}).")


def amp_attack_dtype(device: torch.device | str, bf16_cpu: str | None = None) -> torch.dtype | None:
    """What --attack-amp gives an evaluation's attacks on `device`: bf16 autocast on a GPU and on a CPU
    with bf16 instructions (`bf16_cpu` as in attack_precision), else None (fp32 passes)."""
    device = torch.device(device)
    if device.type == "cpu":
        bf16_cpu = env.cpu_bf16() if bf16_cpu is None else bf16_cpu
        return torch.bfloat16 if bf16_cpu else None
    return torch.bfloat16
