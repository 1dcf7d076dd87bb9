"""Attacks a test-time defense cannot hide from, and the rule that judges their images.

A defended model (defenses.DefendedClassifier) is randomised and may have a gate, so an attack that
ignores it, or follows one noisy draw of it, flatters it. Following Athalye, Carlini & Wagner (ICML
2018) and Tramer, Carlini, Brendel & Madry (NeurIPS 2020), the suite attacks the whole defended
pipeline, each attack registered by name with one signature:

    build(defended, settings) -> attack(images, labels, starts, seed) -> adversarial images

- `unaware`: the configured attack (EvalConfig.attack) on the undefended classifier; its image is
  then shown to the defended model. Always run: it is what a defense is usually reported against,
  and an adaptive attacker may ignore the defense too.
- `bpda-eot`: the configured attack through the defense: BPDA gradients (defenses.py), each step
  following the mean of `eot` gradients over fresh draws of the defense (PGD / CW: attacks.EOTPGD;
  AutoAttack: APGD's eot_iter). The default suite, and what evaluation ran before this module.
- `apgd-ce`, `apgd-dlr`: APGD (Croce & Hein 2020) with the cross-entropy and with the scale-free DLR
  loss, through the defense, `eot` gradients a step.
- `gate`: for a defense with a gate (TTC's tau, below whose threshold it counterattacks): EOT PGD
  ascending CE + GATE_WEIGHT * min(tau / threshold, GATE_CAP), tau measured as the defense
  measures it (the original CLIP's encoder for a fine-tune), with its gradient, from a fresh random
  start per draw. Past GATE_CAP times the threshold the gate term stops pulling and the
  cross-entropy alone drives the image: an image whose tau clears the threshold is not
  counterattacked, so it meets the classifier with only TTC's random noise added. It returns its
  final iterate (a best iterate would be chosen on one noisy draw).

Restarts: every attack runs `restarts` times, restart r from its own seeded start (PGD family: per
sample noise from the caller; torchattacks: seed + r). Best-of: a sample is robust only if no
image of any attack at any restart fools the defended model.

The judging rule: each returned image is shown to the defended model on `judge_draws` fresh draws
of its randomness, and the sample counts as robust only if the model is right on every draw. An
attacker may submit the same image as often as they like, and a defense that errs on one draw in
three fails that often; a majority vote would call such an image harmless. The all-draws rule
also only ever lowers the number as draws are added, so judge_draws is a budget to raise like
steps and EOT draws. The clean prediction is judged on one draw, as the reported clean accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .attacks import EOTPGD, PGD, _autocast, get_attack, make_attack
from .defenses import DefendedClassifier
from .errors import check

# The gate term's weight beside the per-sample cross-entropy, and how far past the threshold it
# pushes tau (a margin, so that tau also clears it on the judge's fresh draws).
GATE_WEIGHT = 1.0
GATE_CAP = 1.25


@dataclass
class SuiteSettings:
    """What every attack of the suite shares (pixel units)."""

    attack: str = "pgd"  # the configured attack (attacks.ATTACKS): what `unaware` and `bpda-eot` run
    eps: float = 1 / 255
    steps: int = 10
    step_size: float | None = 1 / 255
    norm: str = "Linf"
    eot: int = 4  # gradients per step, each through a fresh draw of the defense
    restarts: int = 1
    judge_draws: int = 1  # fresh draws each returned image is judged on (right on all = robust)
    dtype: torch.dtype | str | None = None  # the preset's attack numerics (attacks._autocast)


Attack = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class AdaptiveEntry:
    name: str
    build: Callable[[DefendedClassifier, SuiteSettings], Attack]
    description: str
    needs_gate: bool = False  # only for a defense with a gate (a `relative_shift` to ascend)


ADAPTIVE: dict[str, AdaptiveEntry] = {}
DEFAULT_SUITE = ("bpda-eot",)
FULL_SUITE = ("bpda-eot", "apgd-ce", "apgd-dlr", "gate")


def register_adaptive(name: str, description: str, needs_gate: bool = False):
    def deco(build):
        ADAPTIVE[name] = AdaptiveEntry(name, build, description, needs_gate)
        return build

    return deco


def has_gate(defended: DefendedClassifier) -> bool:
    return defended.defense.gated


def check_suite(names, defense_has_gate: bool) -> tuple[str, ...]:
    """The adaptive attacks named, checked: known, and a gate attack only where there is a gate."""
    names = tuple(names)
    choices = [n for n in ADAPTIVE if n != "unaware"]
    for n in names:
        check(n in choices, f"Unknown adaptive attack '{n}': choose from {', '.join(choices)}.")
        check(not ADAPTIVE[n].needs_gate or defense_has_gate,
              f"The adaptive attack '{n}' needs a defense with a gate (ttc).")
    check(len(set(names)) == len(names), "Name each adaptive attack once.")
    return names


def _configured(model, s: SuiteSettings, eot: int) -> Attack:
    """The configured attack on `model`; PGD-family attacks start from the caller's `starts`."""
    entry = get_attack(s.attack)
    if entry.pgd_loss is not None:
        kind, extra = (PGD, {}) if eot == 1 else (EOTPGD, {"eot": eot})
        return lambda x, y, starts, seed: kind(model, s.eps, s.step_size, s.steps, s.norm, entry.pgd_loss,
                                               random_start=False, dtype=s.dtype, **extra).run(x, y, init=starts).adv
    eot = eot if entry.eot else 1
    return lambda x, y, starts, seed: make_attack(s.attack, model, s.eps, s.steps, s.step_size, s.norm, seed=seed,
                                                  eot=eot)(x, y)


@register_adaptive("unaware", "the configured attack on the undefended classifier")
def _unaware(defended, s):
    return _configured(defended.classifier, s, eot=1)


@register_adaptive("bpda-eot", "the configured attack through the defense (BPDA, EOT gradients)")
def _bpda_eot(defended, s):
    return _configured(defended, s, eot=s.eot)


def _apgd(loss: str):
    def build(defended, s):
        return lambda x, y, starts, seed: make_attack(f"apgd-{loss}", defended, s.eps, s.steps, None, s.norm,
                                                      seed=seed, eot=s.eot)(x, y)

    return build


register_adaptive("apgd-ce", "APGD-CE through the defense (BPDA, EOT gradients)")(_apgd("ce"))
register_adaptive("apgd-dlr", "APGD-DLR through the defense (BPDA, EOT gradients)")(_apgd("dlr"))


class GateAwarePGD(EOTPGD):
    """EOT PGD through a gated defense that also pushes the gate's statistic past its threshold
    (module docstring). `model` is the DefendedClassifier."""

    def _grad(self, x: torch.Tensor, y: torch.Tensor, targeted: bool):
        grad, loss, logits = super()._grad(x, y, targeted)
        return grad + GATE_WEIGHT * self._gate_grad(x), loss, logits

    def _gate_grad(self, x: torch.Tensor) -> torch.Tensor:
        defended: DefendedClassifier = self.model
        defense = defended.defense
        threshold = defense.settings.tau_threshold
        if threshold <= 0:  # no image is ever counterattacked: nothing to switch off
            return torch.zeros_like(x)
        encoder = defense.tau_encoder(defended.classifier, defended.reference)
        total = torch.zeros_like(x)
        for _ in range(self.eot):
            z = x.detach().requires_grad_(True)
            with _autocast(z, self.dtype):
                tau = defense.relative_shift(encoder, z, defense.start(z, defended.generator))
                (g,) = torch.autograd.grad((tau / threshold).clamp(max=GATE_CAP).sum(), z)
            total += g
        return total / self.eot


@register_adaptive("gate", "EOT PGD on the cross-entropy plus a term raising the gate's tau past its threshold",
                   needs_gate=True)
def _gate(defended, s):
    loss = get_attack(s.attack).pgd_loss or "ce"
    return lambda x, y, starts, seed: GateAwarePGD(defended, s.eps, s.step_size, s.steps, s.norm, loss,
                                                   random_start=False, select="last", dtype=s.dtype,
                                                   eot=s.eot).run(x, y, init=starts).adv


@torch.no_grad()
def right_on_every_draw(defended: DefendedClassifier, images: torch.Tensor, labels: torch.Tensor,
                        draws: int) -> torch.Tensor:
    """Per sample: the defended model is right on `draws` fresh draws of its randomness (the rule above)."""
    right = torch.ones_like(labels, dtype=torch.bool)
    for _ in range(draws):
        right &= defended(images).argmax(1) == labels
    return right


def run_suite(defended: DefendedClassifier, x: torch.Tensor, y: torch.Tensor, names, s: SuiteSettings,
              starts: Callable[[int], torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Per attack (`unaware` first, then `names`): robust flags per sample, over all restarts.

    `starts(r)`: restart r's starting perturbations for the PGD family. All attacks run before any
    image is judged, so the defense's draws come in the order the evaluation always took them."""
    attacks = {n: ADAPTIVE[n].build(defended, s) for n in ("unaware", *names)}
    images: dict[str, list[torch.Tensor]] = {n: [] for n in attacks}
    for r in range(s.restarts):
        init = starts(r)
        for n, attack in attacks.items():
            images[n].append(attack(x, y, init, seed + r))
    return {n: torch.stack([right_on_every_draw(defended, adv, y, s.judge_draws) for adv in advs]).all(0)
            for n, advs in images.items()}


@torch.no_grad()
def clean_tau(defended: DefendedClassifier, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The gate's tau of clean images, measured as the defense measures it, from the given noise."""
    defense = defended.defense
    encoder = defense.tau_encoder(defended.classifier, defended.reference)
    return defense.tau(encoder, x, (x + noise).clamp(0, 1))
