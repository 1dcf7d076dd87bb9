"""Yardsticks our steps are set against: the public code's way of computing them, and the floor.

- reference: the same step computed the way the public PMG-AFT code computes it: the text
  encoder re-run on all class prompts inside every forward and every PGD iteration, separate
  forward passes for f_t(x_adv), f_t(x) and f_o(x_adv), fp32, no early stop. It is written here
  from that description, as a baseline only; tests/test_bench.py checks it gives our losses and
  gradients.
- floor: the passes no implementation can avoid, timed in isolation: K image-encoder
  forward + input-gradient passes for the attack, one forward + backward over the batch(es) the
  loss trains on, one forward of the frozen model.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Reference:
    """Clean / TeCoA / PMG-AFT steps as the public PMG-AFT code computes them (FARE: see below).

    What that code does, and this class reproduces: every zero-shot forward re-encodes all class
    prompts with the text encoder; f_t(x_adv), f_t(x) and f_o(x_adv) are three separate
    forwards; everything runs in fp32 here; PGD attacks every sample for every step with
    loss.backward(). Its CLIP models come from clip.load with every parameter trainable (only
    the optimizer is limited to the image encoder), and f_o runs outside no_grad, so each
    backward also runs through the text encoder, and the training backward through f_o (the KL
    target carries gradient). One defect is not reproduced: the attack's parameter gradients
    are cleared before the training backward, so the update equals ours. The math (logit scale,
    normalisation, KL reduction, PGD update, random start) is the same as ours: the losses and
    gradients agree, only the cost differs.

    FARE is not part of the PMG-AFT code and has no text side; its reference only runs the
    passes separately, without our fused attack loop.
    """

    def __init__(self, trainer):
        clf = trainer.classifier
        self.clip = trainer.model.clip
        self.visual, self.params = clf.visual, trainer.params
        self.original = trainer.original.visual if trainer.original is not None else None
        self.scale, self.mean, self.std = clf.logit_scale, clf.mean, clf.std
        data = trainer.data
        prompts = [t.format(c) for c in data.classes for t in data.templates]
        self.tokens = trainer.model.tokenizer(prompts).to(trainer.device)  # tokenised once, encoded every forward
        self.n_classes, self.n_templates = len(data.classes), len(data.templates)
        self.method, self.settings, self.preset = trainer.method.name, trainer.method.settings, trainer.method.preset
        self.optimizer = torch.optim.SGD(self.params, lr=trainer.cfg.lr, momentum=trainer.cfg.momentum)
        visual_ids = {id(p) for p in self.visual.parameters()}
        self.frozen = [p for p in self.clip.parameters() if id(p) not in visual_ids]
        if self.original is not None:
            self.frozen += list(self.original.parameters())
        self.trainable_everywhere = self.method != "fare"

    @contextlib.contextmanager
    def _public_code_gradients(self):
        # The public code leaves the text encoder and f_o trainable; ours freezes them.
        flip = self.trainable_everywhere
        for p in self.frozen if flip else ():
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p in self.frozen if flip else ():
                p.requires_grad_(False)
                p.grad = None

    def text_features(self) -> torch.Tensor:
        feats = F.normalize(self.clip.encode_text(self.tokens).float(), dim=-1)
        feats = feats.view(self.n_classes, self.n_templates, -1).mean(1)
        return F.normalize(feats, dim=-1)

    def encode(self, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return visual((x - self.mean) / self.std)

    def logits(self, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
        text = self.text_features()  # re-run inside every forward, as the public code does
        feats = F.normalize(self.encode(visual, x).float(), dim=-1)
        return self.scale * feats @ text.t()

    def _pgd(self, x: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor], steps: int) -> torch.Tensor:
        eps, alpha = self.settings.eps, self.settings.step_size if self.settings.step_size is not None else self.settings.eps
        u = torch.rand(x.shape, device=x.device)  # the same uniform random start as ours (attacks.random_start)
        delta = (x + (2 * u - 1) * eps).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            if self.trainable_everywhere:  # backward into every trainable parameter, as the public code
                loss_of(x + delta).backward()
                grad = delta.grad
            else:
                (grad,) = torch.autograd.grad(loss_of(x + delta), delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        return (x + delta).detach()

    def _attack(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
        return self._pgd(x, lambda z: F.cross_entropy(self.logits(self.visual, z), y, reduction="sum"), steps)

    def attack(self, x: torch.Tensor, y: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        with self._public_code_gradients():
            x_adv = self._attack(x, y, self.settings.steps if steps is None else steps)
        self.optimizer.zero_grad(set_to_none=True)
        return x_adv

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from ..training.methods import fare_loss, pmg_aft_loss

        if self.method == "clean":
            return F.cross_entropy(self.logits(self.visual, x), y)
        if self.method == "fare":
            with torch.no_grad():
                target = self.encode(self.original, x).float()
            x_adv = self._pgd(x, lambda z: (self.encode(self.visual, z).float() - target).pow(2).sum(),
                              self.settings.steps)
            return fare_loss(self.encode(self.visual, x_adv), target)
        x_adv = self._attack(x, y, self.settings.steps)
        self.optimizer.zero_grad(set_to_none=True)  # drop the attack's parameter gradients (a public-code leak)
        logits_adv = self.logits(self.visual, x_adv)
        if self.method == "tecoa":
            return F.cross_entropy(logits_adv, y)
        logits_clean = self.logits(self.visual, x)
        logits_orig = self.logits(self.original, x_adv)
        s = self.settings
        return pmg_aft_loss(logits_adv, logits_clean, logits_orig, y, s.alpha, s.beta, self.preset.kl_reduction,
                            self.preset.kl_direction)[0]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.visual.train()
        with self._public_code_gradients():
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(x, y)
            loss.backward()
            self.optimizer.step()
        return loss.item()

    def robust_eval(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
        """Robust-correct flags: clean forward, PGD on every sample for every step, final forward."""
        self.visual.eval()
        with torch.no_grad():
            clean = self.logits(self.visual, x).argmax(1) == y
        x_adv = self.attack(x, y, steps)
        with torch.no_grad():
            return clean & (self.logits(self.visual, x_adv).argmax(1) == y)


def floor_passes(method: str, visual: nn.Module, original: nn.Module | None, x: torch.Tensor, attack_steps: int,
                 autocast, attack_autocast) -> Callable[[], None]:
    """K attack passes (forward + input gradient) in the attack's precision, then forward +
    backward over what the loss trains on (x_adv and x for PMG-AFT) and one frozen forward
    (PMG-AFT, FARE) in the step's, on normalised inputs."""
    adversarial = method != "clean"
    train_x = torch.cat([x, x]) if method == "pmg-aft" else x
    params = [p for p in visual.parameters() if p.requires_grad]
    attack = input_grad_passes(visual, x, attack_steps if adversarial else 0, autocast=attack_autocast)

    def run() -> None:
        visual.train()
        attack()
        with autocast():
            if original is not None:
                with torch.no_grad():
                    original(x)
            for p in params:
                p.grad = None
            out = visual(train_x).float().sum()
        out.backward()

    return run


def input_grad_passes(visual: nn.Module, x: torch.Tensor, steps: int, forwards: int = 0,
                       autocast: Callable = contextlib.nullcontext) -> Callable[[], None]:
    """`steps` forward + input-gradient passes, plus `forwards` gradient-free forwards, under
    `autocast` (the attack's precision: fp32, or the step's bf16 with attack_amp)."""

    def run() -> None:
        with autocast():
            with torch.no_grad():
                for _ in range(forwards):
                    visual(x)
            for _ in range(steps):
                xi = x.detach().requires_grad_(True)
                torch.autograd.grad(visual(xi).float().sum(), xi)

    return run
