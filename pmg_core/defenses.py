"""Test-time defenses: a classifier is defended at inference, with no training. Registered by name
(``none``, the default, and ``ttc``), one contract:

    defense = get_defense("ttc")
    defended = defense.wrap(classifier, reference)   # an nn.Module: images in [0,1] -> logits
    defended.purify(x)                               # the images the classifier then sees

`classifier` is a ZeroShotClassifier; `reference` an optional second one whose encoder a defense may
consult (TTC measures tau with the original CLIP's encoder when it defends a fine-tune, as its code
does); `original_reference(model, classifier)` builds it from a loaded model.

Gradients through a defended classifier (what an adaptive attack follows) are taken as BPDA: the
forward pass is the defended one exactly, and the backward treats the defense's change of the image
as a constant (d purify(x) / dx = I). For TTC this is also the exact derivative almost everywhere:
its counterattack moves by sign steps, whose derivative is zero wherever it is defined, its tau gate
is a threshold, and the step weights depend only on the gate; what is left is the identity (and the
[0,1] clamp). Its random start is averaged over by the attack (EOT, attacks.EOTPGD).

TTC (Xing, Zhao, Sebe, CVPR 2025; public code Sxing2/CLIP-Test-time-Counterattacks,
code/test_time_counterattack.py), as its code does it:
- a random start delta_0 uniform in the eps-ball (eps 4/255), clipped to the image range;
- tau = ||phi(x + delta_0) - phi(x)|| / ||phi(x)|| on unnormalised embeddings: how far the random
  start moves the embedding. phi is the defended model's encoder, or the original CLIP's when the
  defended model is a fine-tune (its code keeps a copy of CLIP's encoder for that);
- `steps` sign-gradient steps of size step_size (2 of 1/255) *up* ||phi(x + delta) - phi(x)||^2,
  each projected to the eps-ball and the image range: the counterattack pushes the embedding away
  from where the given image puts it;
- if tau < threshold (0.2; the image barely moves, so it is taken for adversarial) the result is
  x + sum_k w_k delta_k over delta_0..delta_steps with w_k proportional to exp(beta * k), beta 2;
  otherwise it is x + delta_0, the random start itself (not the unchanged image).
Deviations: noise is drawn from this defense's own seeded generator (on the CPU, so a seed gives
the same images on every device) instead of the global RNG; the passes run in fp32 (its code runs
under fp16 autocast).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attacks import ascend, random_start
from .errors import check_number
from .models import ClipModel, ZeroShotClassifier
from .registry import Registry


@dataclass
class DefenseSettings:
    eps: float = 4 / 255  # pixel units: the counterattack's budget
    steps: int = 2
    step_size: float = 1 / 255
    tau_threshold: float = 0.2
    beta: float = 2.0  # step weights exp(beta * k)
    seed: int = 0  # the random starts' generator

    def validate(self) -> None:
        check_number("defense eps", self.eps, low=0, high=1)
        check_number("defense steps", self.steps, low=0, high=1000, integer=True)
        check_number("defense step size", self.step_size, low=0, high=1)
        check_number("tau threshold", self.tau_threshold, low=0)
        check_number("defense beta", self.beta, low=0, high=50)
        check_number("defense seed", self.seed, low=0, high=2**63 - 1, integer=True)


_DEFENSES = Registry("defense")
register_defense = _DEFENSES.register


def list_defenses() -> list[str]:
    return list(_DEFENSES)


def get_defense(name: str, settings: DefenseSettings | None = None, **kwargs) -> "Defense":
    found = _DEFENSES.find(name)
    settings = settings or DefenseSettings(**kwargs)
    settings.validate()
    return found(settings)


class Defense:
    name = "base"

    def __init__(self, settings: DefenseSettings):
        self.settings = settings

    def purify(self, classifier: ZeroShotClassifier, x: torch.Tensor, reference: ZeroShotClassifier | None,
               generator: torch.Generator) -> torch.Tensor:
        """The images `classifier` sees in place of x (detached; x in [0,1], NCHW)."""
        raise NotImplementedError

    def wrap(self, classifier: ZeroShotClassifier, reference: ZeroShotClassifier | None = None) -> "DefendedClassifier":
        return DefendedClassifier(classifier, self, reference)


@register_defense("none")
class NoDefense(Defense):
    """The classifier as it is."""

    def purify(self, classifier, x, reference, generator):
        return x.detach()


@register_defense("ttc")
class TestTimeCounterattack(Defense):
    """TTC: counterattack an image whose embedding barely moves under random noise (module docstring)."""

    @staticmethod
    def tau_encoder(classifier: ZeroShotClassifier, reference: ZeroShotClassifier | None) -> ZeroShotClassifier:
        """The encoder tau is measured with: the original CLIP's when it defends a fine-tune, else its own."""
        return reference if reference is not None else classifier

    @staticmethod
    def relative_shift(encoder: ZeroShotClassifier, x: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        """tau with its gradient: how far the random start moves each image's embedding, relative to
        its length (what a gate-aware attack ascends)."""
        clean = encoder.encode(x, normalize=False).float()
        moved = encoder.encode(x_start, normalize=False).float()
        return (moved - clean).norm(dim=-1) / clean.norm(dim=-1)

    def tau(self, encoder: ZeroShotClassifier, x: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        """How far the random start moves each image's embedding, relative to its length."""
        with torch.no_grad():
            return self.relative_shift(encoder, x, x_start)

    def start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The random start: uniform in the eps-ball, clipped to the image range."""
        return (x + random_start(x, self.settings.eps, "Linf", generator)).clamp(0, 1)

    def purify(self, classifier, x, reference, generator):
        s = self.settings
        x = x.detach()
        start = self.start(x, generator)
        if s.steps == 0 or s.eps == 0:
            return start
        with torch.no_grad():
            anchor = classifier.encode(x, normalize=False).float()
        tau = self.tau(reference, x, start) if reference is not None else None
        iterates, current = [start], start
        with torch.enable_grad():  # callers judge under no_grad; the counterattack needs its gradients
            for k in range(s.steps):
                current = current.detach().requires_grad_(True)
                feats = classifier.encode(current, normalize=False).float()
                if tau is None:  # from the model's own first pass, at the random start
                    tau = (feats.detach() - anchor).norm(dim=-1) / anchor.norm(dim=-1)
                (grad,) = torch.autograd.grad((feats - anchor).pow(2).sum(), current)
                current = ascend(current.detach(), x, grad, s.step_size, s.eps, "Linf")
                iterates.append(current)
        weights = torch.softmax(s.beta * torch.arange(s.steps + 1, dtype=torch.float32), 0).to(x)
        averaged = torch.einsum("k,kbchw->bchw", weights, torch.stack(iterates))
        counter = (tau < s.tau_threshold).view(-1, 1, 1, 1)
        return torch.where(counter, averaged, start).detach()


class DefendedClassifier(nn.Module):
    """A classifier behind a test-time defense: images in [0,1] -> logits, like ZeroShotClassifier.

    Each call draws the defense's random start anew from its generator (seeded by the settings);
    `reseed()` starts the stream over, so equal calls after equal reseeds give identical logits.
    """

    def __init__(self, classifier: ZeroShotClassifier, defense: Defense, reference: ZeroShotClassifier | None = None):
        super().__init__()
        self.classifier, self.reference, self.defense = classifier, reference, defense
        self.generator = torch.Generator()
        self.reseed()

    def reseed(self, seed: int | None = None) -> None:
        self.generator.manual_seed(self.defense.settings.seed if seed is None else seed)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return self.defense.purify(self.classifier, x, self.reference, self.generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BPDA (module docstring): the defended forward, the defense's change held constant backward.
        return self.classifier(x + (self.purify(x) - x).detach())


def original_reference(model: ClipModel, classifier: ZeroShotClassifier) -> ZeroShotClassifier | None:
    """The original CLIP's encoder, with the model's own input size and CLIP normalisation, for a
    fine-tune (whose open_clip model keeps the base encoder); None for a base model."""
    if model.visual is model.clip.visual:
        return None
    return ZeroShotClassifier(model.clip.visual, classifier.text_features, classifier.logit_scale, model.image_size,
                              model.mean, model.std)


def defend(model: ClipModel, classifier: ZeroShotClassifier, name: str = "none",
           settings: DefenseSettings | None = None) -> DefendedClassifier:
    """`classifier` of `model` behind the defense `name`, with the original CLIP as its reference."""
    return get_defense(name, settings).wrap(classifier, original_reference(model, classifier))
