"""Attack one image and compare models on it: the logic behind `pmg_core attack` and the app's
first tab. Adversarial images are quantized to 8 bits inside the eps-ball before they are judged,
so what a person downloads as PNG is exactly what the models were shown, and a valid attack.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .attacks import EOTPGD, PGD
from .defenses import defend, get_defense
from .data import list_groups
from .errors import check, check_number
from .images import center_square, quantize
from .models import ClipModel
from .presets import DEFAULT_TEMPLATES
from .paper_datasets import imagenet_names
from .units import to_255

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Prediction:
    labels: list[str]  # top-k labels, best first
    probs: list[float]
    true_prob: float | None
    correct: bool | None  # top-1 == true label
    target_prob: float | None = None  # probability of the target class of a targeted attack


@dataclass
class DefendedVerdict:
    """The same model behind a test-time defense (settings.defense)."""

    defense: str
    clean: Prediction  # on the clean image
    adversarial: Prediction  # on the verdict's adversarial image: an attack unaware of the defense
    adaptive: Prediction  # on an image attacked through the defense (BPDA + EOT), its own
    adaptive_image: torch.Tensor  # [3,H,W], quantized


@dataclass
class ModelVerdict:
    model: str
    clean: Prediction
    adversarial: Prediction
    attacked_by: str  # the model whose gradients made the adversarial image
    adv_image: torch.Tensor  # [3,H,W], quantized
    defended: DefendedVerdict | None = None

    @property
    def confidence_drop(self) -> float | None:
        if self.clean.true_prob is None:
            return None
        return self.clean.true_prob - self.adversarial.true_prob

    @property
    def target_gain(self) -> float | None:
        """How much a targeted attack raised the target class's probability."""
        if self.clean.target_prob is None:
            return None
        return self.adversarial.target_prob - self.clean.target_prob


@dataclass
class AttackSettings:
    eps: float = 4 / 255  # pixel units
    steps: int = 10
    step_size: float | None = None
    norm: str = "Linf"
    loss: str = "ce"
    target: str | None = None  # a class name for a targeted attack
    source: str | None = None  # attack this model and transfer to all; None: each attacked itself
    max_side: int = 224  # attack at most at this resolution (the models see 224 px or less)
    defense: str = "none"  # also judge each model behind this test-time defense (pmg_core.defenses)
    eot: int = 4  # the attack through the defense: gradients per step, each through a fresh draw

    def validate(self, classes: Sequence[str], model_names: Sequence[str]) -> None:
        check_number("eps", self.eps, low=0, high=1 if self.norm == "Linf" else 100)
        check_number("steps", self.steps, low=0, high=500, integer=True)
        if self.step_size is not None:
            check_number("step size", self.step_size, low=0, high=1)
        check(self.target is None or self.target in classes, f"The target class '{self.target}' is not among the labels.")
        check(self.source is None or self.source in model_names,
              f"The source model '{self.source}' is not loaded; choose one of {', '.join(model_names)}.")
        get_defense(self.defense)
        check_number("EOT samples", self.eot, low=1, high=64, integer=True)


@dataclass
class Comparison:
    image: torch.Tensor  # the clean image as attacked, [3,H,W]
    classes: list[str]
    true_label: str | None
    verdicts: list[ModelVerdict] = field(default_factory=list)

    def to_dict(self, settings: AttackSettings) -> dict:
        """The comparison as plain JSON data (no images): the app's details and `attack --json` write this."""
        return {"eps_255": to_255(settings.eps), "steps": settings.steps, "norm": settings.norm,
                "true_label": self.true_label, "target": settings.target,
                "defense": settings.defense,
                "verdicts": [{"model": v.model, "attacked_by": v.attacked_by, "clean": vars(v.clean),
                              "adversarial": vars(v.adversarial), "confidence_drop": v.confidence_drop,
                              "target_gain": v.target_gain,
                              **({"defended": {k: vars(p) for k, p in vars(v.defended).items()
                                               if isinstance(p, Prediction)}} if v.defended else {})}
                             for v in self.verdicts]}


def prepare_image(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """Center-square crop and downscale to max_side, then quantize: the exact clean input."""
    x = center_square(image)
    if x.shape[-1] > max_side:
        x = torch.nn.functional.interpolate(x[None], size=(max_side, max_side), mode="bicubic",
                                            antialias=True, align_corners=False)[0]
    return quantize(x)


def quantize_in_ball(clean: torch.Tensor, adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Round `adv` to the 8-bit grid without leaving the eps-ball around `clean` (itself on the grid).

    Plain rounding can step out of the ball when eps is not a whole number of levels (eps 1.5/255
    rounds a 1.5-level change up to 2). Linf: each change is rounded, then clipped to
    floor(eps * 255) levels. L2: rounded if that stays inside, else scaled into the ball and
    truncated toward the clean image, which only shrinks every change.
    """
    levels = eps * 255 + 1e-6  # the budget in grey levels; the slack absorbs float error in eps itself
    base = torch.round(clean * 255)
    delta = torch.round(adv * 255) - base
    if norm == "Linf":
        delta = delta.clamp(-math.floor(levels), math.floor(levels))
    elif delta.double().norm() > levels:
        raw = (adv * 255 - base).double()
        delta = torch.trunc(raw * min(1.0, levels / float(raw.norm().clamp_min(1e-12)))).to(delta.dtype)
    return (base + delta).clamp(0, 255) / 255  # clipping to the pixel range only shrinks a change


@torch.no_grad()
def predict(clf, x: torch.Tensor, classes: Sequence[str], true_idx: int | None, k: int = 5,
            target_idx: int | None = None) -> Prediction:
    probs = clf(x[None]).softmax(1)[0]
    top = probs.topk(min(k, len(classes)))
    return Prediction([classes[i] for i in top.indices.tolist()], [round(float(p), 6) for p in top.values],
                      None if true_idx is None else float(probs[true_idx]),
                      None if true_idx is None else int(top.indices[0]) == true_idx,
                      None if target_idx is None else float(probs[target_idx]))


def compare(models: Sequence[ClipModel], image: torch.Tensor, classes: Sequence[str], true_label: str | None,
            settings: AttackSettings, templates: Sequence[str] = DEFAULT_TEMPLATES) -> Comparison:
    """Attack `image` (each model itself, or one source model transferred) and collect top-k verdicts."""
    check(len(models) > 0, "Load at least one model.")
    classes = [c.strip() for c in classes]
    names = [m.name for m in models]
    settings.validate(classes, names)
    check(true_label is not None or settings.target is not None,
          "Give the true label (untargeted attack) or a target class (targeted attack).")
    check(true_label is None or true_label in classes, f"The true label '{true_label}' is not among the labels.")
    x = prepare_image(image, settings.max_side)
    true_idx = classes.index(true_label) if true_label is not None else None
    target_idx = classes.index(settings.target) if settings.target is not None else None
    clfs = {m.name: m.classifier(classes, templates).eval() for m in models}

    def attack(clf, eot: int | None = None) -> torch.Tensor:
        device = next(clf.parameters()).device
        xb = x[None].to(device)
        kind, extra = (PGD, {}) if eot is None else (EOTPGD, {"eot": eot})
        pgd = kind(clf, settings.eps, settings.step_size, settings.steps, settings.norm, settings.loss,
                   random_start=False, **extra)
        y = torch.tensor([true_idx if target_idx is None else target_idx], device=device)
        res = pgd.run(xb, y, target=None if target_idx is None else y)
        return quantize_in_ball(x, res.adv[0].cpu(), settings.eps, settings.norm)

    def behind_defense(m: ClipModel, adv: torch.Tensor) -> DefendedVerdict:
        defended, dev = defend(m, clfs[m.name], settings.defense), m.device
        through = attack(defended, settings.eot)
        defended.reseed()  # the verdicts' draws do not depend on how many the attack took
        judge = [predict(defended, img.to(dev), classes, true_idx, target_idx=target_idx) for img in (x, adv, through)]
        return DefendedVerdict(settings.defense, *judge, through)

    out = Comparison(x, classes, true_label)
    shared = attack(clfs[settings.source]) if settings.source else None
    for m in models:
        clf = clfs[m.name]
        adv = shared if shared is not None else attack(clf)
        dev = m.device
        out.verdicts.append(ModelVerdict(m.name, predict(clf, x.to(dev), classes, true_idx, target_idx=target_idx),
                                         predict(clf, adv.to(dev), classes, true_idx, target_idx=target_idx),
                                         settings.source or m.name, adv,
                                         behind_defense(m, adv) if settings.defense != "none" else None))
    return out


def label_presets(real_clip: bool) -> dict[str, list[str]]:
    """Label presets for one image: the embedded world's tasks, plus common sets for a real CLIP."""
    from . import synthetic

    out = {name: list(synthetic.TASKS[name].classes) for name in list_groups().get("mini", [])
           if name in synthetic.TASKS}
    if real_clip:
        imagenet = list(imagenet_names().values())
        out = {"CIFAR-10": CIFAR10, "ImageNet (1000 classes)": imagenet,
               "ImageNet (first 20 classes)": imagenet[:20], **out}
    return out
