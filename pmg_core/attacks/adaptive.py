"""The attack menu every row faces, defended or not, and the rule that judges its images.

A protocol names one menu for all models, so what a defense adds is measured per image on the same
images under the same attacks. A defended model (defenses.DefendedClassifier) may be randomised and
may have a gate, so an attack that ignores it, or follows one noisy draw of it, flatters it.
Following Athalye, Carlini & Wagner (ICML 2018) and Tramer, Carlini, Brendel & Madry (NeurIPS 2020),
every attack of the menu goes through the whole pipeline (an undefended model is wrapped in the
defense `none`, so one code path serves every row). Each attack is registered by name with one
signature:

    build(model, settings) -> attack(images, labels, starts, seed, clean_logits) -> [Found, ...]

- `bpda-eot`: the configured attack (EvalConfig.attack, PGD in the built-in protocols) through the
  model: BPDA gradients through a defense (defenses.py), each step following the mean of `eot`
  gradients over fresh draws of a randomised one (attacks.EOTPGD); on an undefended model, the
  configured attack itself. Returns its highest-loss iterate (on a randomised model, the loss
  averaged over the draws), never the clean image.
- `apgd-ce`, `apgd-dlr`, `apgd-t`: this project's APGD (attacks.APGD) with the cross-entropy, the
  scale-free DLR loss (3 classes or more), and the targeted DLR loss toward each of the
  `targets` likeliest wrong classes on the clean image (APGD-T, 4 classes or more; a task with
  fewer classes skips it). Each returns its highest-loss iterate.
- `unaware` (behind a defense only): the configured attack on the undefended classifier, its
  image then shown to the defended model: what a defense is usually reported against.
- `gate` (behind a defense with a gate: TTC's tau, below whose threshold it counterattacks): EOT
  PGD ascending CE + GATE_WEIGHT * min(tau / threshold, GATE_CAP), tau measured as the defense
  measures it (the original CLIP's encoder for a fine-tune), with its gradient, from a fresh random
  start per draw. Past GATE_CAP times the threshold the gate term stops pulling and the
  cross-entropy alone drives the image: an image whose tau clears the threshold is not
  counterattacked, so it meets the classifier with only TTC's random noise added. It returns its
  final iterate (its loss mixes two terms, so no iterate is "best" by one of them).

Restarts: every attack runs `restarts` times, restart r from its own seeded start (per-sample
noise from the caller; torchattacks: seed + r). Best-of: a sample is robust only if no image of any
attack at any restart fools the model.

The judging rule. A deterministic model (an undefended one, or a deterministic defense such as
CLIPure) is judged "ever fooled", like PGD on a plain model: a sample counts as robust only if no
iterate of an attack that attacked that very model was misclassified (`unaware` attacked another
model, so its image is judged). A randomised model (TTC) is judged on the returned images: each
is shown to the model on `judge_draws` fresh draws of its randomness, and the sample counts as
robust only if the model is right on every draw. An attacker may submit the same image as often
as they like, and a defense that errs on one draw in three fails that often; a majority vote
would call such an image harmless. The all-draws rule also only ever lowers the number as draws
are added, so judge_draws is a budget to raise like steps and EOT draws. The clean image is judged
by the same rule (`clean_right`), and only samples right when judged are attacked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .pgd import (APGD, APGD_TARGETS, EOTPGD, PGD, STACKED_IMAGES, _autocast, get_attack, likeliest_wrong,
                      logits_over_draws, make_attack)
from .defenses import DefendedClassifier
from ..core.errors import check

# The gate term's weight beside the per-sample cross-entropy, and how far past the threshold it
# pushes tau (a margin, so that tau also clears it on the judge's fresh draws).
GATE_WEIGHT = 1.0
GATE_CAP = 1.25


@dataclass
class SuiteSettings:
    """What every attack of the menu shares (pixel units)."""

    attack: str = "pgd"  # the configured attack (attacks.ATTACKS): what `unaware` and `bpda-eot` run
    eps: float = 1 / 255
    steps: int = 10
    step_size: float | None = 1 / 255
    norm: str = "Linf"
    eot: int = 4  # gradients per step, each through a fresh draw of a randomised model (1 otherwise)
    restarts: int = 1
    judge_draws: int = 1  # fresh draws each returned image is judged on (right on all = robust)
    dtype: torch.dtype | str | None = None  # the preset's attack numerics (attacks._autocast)
    targets: int = APGD_TARGETS  # APGD-T's target classes, at most the task's classes - 1


@dataclass
class Found:
    """What one run of an attack hands the judge: an image per sample, and per sample whether any
    iterate fooled the model it attacked (None: the attack does not say, so its image is judged)."""

    adv: torch.Tensor
    fooled: torch.Tensor | None = None


# attack(images, labels, starts, seed, clean_logits=None): clean_logits, the judged model's on the clean
# images, save a forward where an attack needs them (APGD-T's targets, PGD's clean verdict).
Attack = Callable[..., list[Found]]


@dataclass(frozen=True)
class AdaptiveEntry:
    name: str
    build: Callable[[DefendedClassifier, SuiteSettings], Attack]
    description: str
    needs_gate: bool = False  # only for a defense with a gate (a `relative_shift` to ascend)
    classes: int = 2  # the fewest classes of a task it runs on
    transfers: bool = False  # it attacks another model than the one judged, so its images are judged


ADAPTIVE: dict[str, AdaptiveEntry] = {}
DEFAULT_SUITE = ("bpda-eot",)
MENU = ("bpda-eot", "apgd-ce", "apgd-dlr", "apgd-t")  # the menu of the built-in protocols that run PGD
FULL_SUITE = (*MENU, "gate")


def register_adaptive(name: str, description: str, needs_gate: bool = False, classes: int = 2,
                      transfers: bool = False):
    def deco(build):
        ADAPTIVE[name] = AdaptiveEntry(name, build, description, needs_gate, classes, transfers)
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


def menu_for(defended: DefendedClassifier, names) -> tuple[str, ...]:
    """The attacks a model faces: `unaware` first behind a defense, then those of `names` its task has
    classes for (APGD-DLR needs 3, APGD-T 4)."""
    extra = ("unaware",) if defended.defense.name != "none" else ()
    return extra + tuple(n for n in names if defended.num_classes >= ADAPTIVE[n].classes)


def _deterministic(model) -> bool:
    defense = getattr(model, "defense", None)
    return defense is None or not defense.randomised


def _eot(model, s: SuiteSettings) -> int:
    return 1 if _deterministic(model) else s.eot


def _configured(model, s: SuiteSettings, judged: bool) -> Attack:
    """The configured attack on `model`; PGD-family attacks start from the caller's `starts`, stop
    on a sample fooled already on a deterministic model (its verdict is final) and say which were.
    `judged`: `model` is the one judged, so the clean logits the caller has are its own."""
    entry, eot = get_attack(s.attack), _eot(model, s)
    if entry.pgd_loss is not None:
        kind, extra = (PGD, {}) if eot == 1 else (EOTPGD, {"eot": eot})
        early = _deterministic(model)

        def pgd(x, y, starts, seed, clean_logits=None):
            res = kind(model, s.eps, s.step_size, s.steps, s.norm, entry.pgd_loss, random_start=False,
                       early_stop=early, dtype=s.dtype, **extra).run(x, y, init=starts,
                                                                     clean_logits=clean_logits if judged else None)
            return [Found(res.adv, res.fooled)]

        return pgd
    eot = eot if entry.eot else 1
    return lambda x, y, starts, seed, clean_logits=None: [Found(make_attack(s.attack, model, s.eps, s.steps, s.step_size,
                                                                       s.norm, seed=seed, eot=eot)(x, y))]


@register_adaptive("unaware", "the configured attack on the undefended classifier", transfers=True)
def _unaware(defended, s):
    return _configured(defended.classifier, s, judged=False)


@register_adaptive("bpda-eot", "the configured attack through the model (BPDA and EOT gradients behind a defense)")
def _bpda_eot(defended, s):
    return _configured(defended, s, judged=True)


def _apgd(loss: str):
    def build(defended, s):
        def attack(x, y, starts, seed, clean_logits=None):
            apgd = APGD(defended, s.eps, s.steps, s.norm, loss, _eot(defended, s), early_stop=_deterministic(defended),
                        dtype=s.dtype)
            if loss != "dlr-targeted":
                res = apgd.run(x, y, init=starts)
                return [Found(res.adv, res.fooled)]
            if clean_logits is None:
                clean_logits = judge_clean(defended, x, y, 1)[1]
            found = []
            for target in likeliest_wrong(clean_logits, y, min(s.targets, defended.num_classes - 1)):
                res = apgd.run(x, y, init=starts, target=target)
                found.append(Found(res.adv, res.fooled))
            return found

        return attack

    return build


register_adaptive("apgd-ce", "APGD-CE through the model (BPDA, EOT gradients)")(_apgd("ce"))
register_adaptive("apgd-dlr", "APGD-DLR through the model (BPDA, EOT gradients; 3 classes or more)",
                  classes=3)(_apgd("dlr"))
register_adaptive("apgd-t", "APGD-T through the model toward the likeliest wrong classes (BPDA, EOT gradients; "
                            "4 classes or more)", classes=4)(_apgd("dlr-targeted"))


class GateAwarePGD(EOTPGD):
    """EOT PGD through a gated defense that also pushes the gate's statistic past its threshold
    (module docstring). `model` is the DefendedClassifier."""

    def _grad(self, x: torch.Tensor, y: torch.Tensor, targeted: bool):
        grad, loss, logits = super()._grad(x, y, targeted)
        return grad + GATE_WEIGHT * self._gate_grad(x), loss, logits

    def _gate_grad(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over `eot` draws of the gradient of min(tau / threshold, GATE_CAP), the draws'
        random starts stacked in one batch and the given image's embedding taken once."""
        defended: DefendedClassifier = self.model
        defense = defended.defense
        threshold = defense.settings.tau_threshold
        if threshold <= 0:  # no image is ever counterattacked: nothing to switch off
            return torch.zeros_like(x)
        encoder = defense.tau_encoder(defended.classifier, defended.reference)
        per, total = max(1, STACKED_IMAGES // max(x.shape[0], 1)), torch.zeros_like(x)
        for done in range(0, self.eot, per):
            c = min(per, self.eot - done)
            z = x.detach().requires_grad_(True)
            with _autocast(z, self.dtype):
                clean = encoder.encode(z, normalize=False).float().repeat(c, 1)
                moved = encoder.encode(defense.start(z.repeat(c, 1, 1, 1), defended.generator),
                                       normalize=False).float()
                tau = (moved - clean).norm(dim=-1) / clean.norm(dim=-1)
                (g,) = torch.autograd.grad((tau / threshold).clamp(max=GATE_CAP).sum(), z)
            total += g
        return total / self.eot


@register_adaptive("gate", "EOT PGD on the cross-entropy plus a term raising the gate's tau past its threshold",
                   needs_gate=True)
def _gate(defended, s):
    loss = get_attack(s.attack).pgd_loss or "ce"

    def attack(x, y, starts, seed, clean_logits=None):
        res = GateAwarePGD(defended, s.eps, s.step_size, s.steps, s.norm, loss, random_start=False, select="last",
                           dtype=s.dtype, eot=s.eot).run(x, y, init=starts)
        return [Found(res.adv)]

    return attack


@torch.no_grad()
def right_on_every_draw(defended: DefendedClassifier, images: torch.Tensor, labels: torch.Tensor,
                        draws: int) -> torch.Tensor:
    """Per sample: the model is right on `draws` fresh draws of its randomness (the rule above)."""
    return (logits_over_draws(defended, images, draws).argmax(-1) == labels).all(0)


@torch.no_grad()
def judge_clean(defended: DefendedClassifier, x: torch.Tensor, y: torch.Tensor,
                draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(right on every one of `draws` fresh draws, the draws' mean logits) on the clean images."""
    logits = logits_over_draws(defended, x, draws)
    return (logits.argmax(-1) == y).all(0), logits.float().mean(0)


def run_suite(defended: DefendedClassifier, x: torch.Tensor, y: torch.Tensor, names, s: SuiteSettings,
              starts: Callable[[int], torch.Tensor], seed: int = 0,
              clean_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per attack of `names` (menu_for's): robust flags per sample over all restarts, by the rule above.

    `starts(r)`: restart r's starting perturbations. `clean_logits`: the model's (mean) logits on
    the clean images, from which APGD-T picks its targets. All attacks run before any image is
    judged, so a randomised defense's draws come in one fixed order."""
    if clean_logits is None:
        clean_logits = judge_clean(defended, x, y, 1)[1]
    attacks = {n: ADAPTIVE[n].build(defended, s) for n in names}
    found: dict[str, list[Found]] = {n: [] for n in attacks}
    for r in range(s.restarts):
        init = starts(r)
        for n, attack in attacks.items():
            found[n] += attack(x, y, init, seed + r, clean_logits)
    deterministic = _deterministic(defended)
    verdicts = {}
    for n, runs in found.items():
        right = torch.ones_like(y, dtype=torch.bool)
        for f in runs:
            if deterministic and f.fooled is not None and not ADAPTIVE[n].transfers:
                right &= ~f.fooled
            else:
                right &= right_on_every_draw(defended, f.adv, y, s.judge_draws)
        verdicts[n] = right
    return verdicts


@torch.no_grad()
def clean_tau(defended: DefendedClassifier, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The gate's tau of clean images, measured as the defense measures it, from the given noise."""
    defense = defended.defense
    encoder = defense.tau_encoder(defended.classifier, defended.reference)
    return defense.tau(encoder, x, (x + noise).clamp(0, 1))
