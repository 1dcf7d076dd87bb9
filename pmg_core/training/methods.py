"""Fine-tuning objectives, one small unit each, registered by name.

Every method has one signature: ``method(model, original, x, y) -> StepOutput`` where `model` is
the ZeroShotClassifier being trained (f_t), `original` a frozen copy of the pre-trained one (f_o;
None for methods that do not need it), x images in [0,1] and y labels. Adding a method is one
class with ``@register_method("name")``.

Under DDP the trainer sets `method.shard = (rank, world)`: x is then rows rank::world of the global
batch, and a method must make the average of its per-process gradients equal the gradient one
process would take on the whole batch (attacks draw the global batch's random start; terms summed
over the batch are scaled by `world`, since DDP averages).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..attacks.pgd import OUTER_AUTOCAST, PGD, TF32, FeatureAttack
from ..core.errors import check, check_number
from ..models.clip import ZeroShotClassifier
from ..core.precision import amp_attack_dtype
from ..data.presets import KL_DIRECTIONS, Preset, get_preset
from ..core.registry import Registry
from ..attacks.text_attention import image_tokens, text_guided_attention, tga_zsr_loss


@dataclass
class MethodSettings:
    eps: float = 1 / 255  # pixel units
    steps: int = 2  # PGD steps of the inner attack
    step_size: float | None = None  # default: 1/255 in the paper's recipe; here eps if None
    alpha: float = 1.0  # PMG-AFT: weight of KL(f_o(x_adv) || f_t(x_adv))
    beta: float = 1.0  # PMG-AFT: weight of KL(f_t(x) || f_t(x_adv))
    preset: str = "paper"
    # Run the inner attack under the training step's autocast (bf16 on CUDA), or on a CPU under its own
    # bf16 autocast where the CPU has bf16 instructions (fp32 on others), instead of fp32: faster, but
    # not the paper's numerics. Presets with their own attack dtype keep it.
    attack_amp: bool = False
    # Run the inner attack's fp32 passes with TF32 matrix products on CUDA (attacks.TF32): faster on
    # a GPU, a change of numerics; off by default.
    attack_tf32: bool = False
    tga_alpha: float = 0.08  # TGA-ZSR: weight of its attention refinement term (its code's default)
    tga_beta: float = 0.05  # TGA-ZSR: weight of its attention-based model constraint (its code's default)

    def validate(self) -> None:
        check_number("eps", self.eps, low=0, high=1)
        check_number("PGD steps", self.steps, low=0, integer=True)
        if self.step_size is not None:
            check_number("step size", self.step_size, low=0)
        check_number("alpha", self.alpha, low=0)
        check_number("beta", self.beta, low=0)
        check_number("TGA-ZSR alpha", self.tga_alpha, low=0)
        check_number("TGA-ZSR beta", self.tga_beta, low=0)
        check(isinstance(self.attack_amp, bool), f"attack_amp must be true or false; got {self.attack_amp!r}.")
        check(not (self.attack_amp and self.attack_tf32), "Choose attack_amp (bf16 attacks) or attack_tf32 "
                                                          "(TF32 attacks), not both.")
        get_preset(self.preset)


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to minimise
    logits: torch.Tensor  # logits on the inputs the method trains on (adversarial for AT), detached
    metrics: dict[str, float] = field(default_factory=dict)


_METHODS = Registry("method")
register_method = _METHODS.register


def list_methods() -> list[str]:
    return list(_METHODS)


def get_method(name: str, settings: MethodSettings | None = None, **kwargs) -> "Method":
    found = _METHODS.find(name)
    settings = settings or MethodSettings(**kwargs)
    settings.validate()
    return found(settings)


class Method:
    name = "base"
    needs_original = False  # whether the frozen pre-trained model f_o is used
    adversarial = True

    def __init__(self, settings: MethodSettings):
        self.settings = settings
        self.preset: Preset = get_preset(settings.preset)
        self.shard: tuple[int, int] = (0, 1)  # (rank, world) of this process's share of the global batch

    @property
    def attack_dtype(self) -> torch.dtype | str | None:
        if self.preset.attack_dtype is None and self.settings.attack_amp:
            return OUTER_AUTOCAST
        if self.preset.attack_dtype is None and self.settings.attack_tf32:
            return TF32
        return self.preset.attack_dtype

    def attack_dtype_on(self, device: torch.device) -> torch.dtype | str | None:
        """attack_dtype on `device`. A CPU step runs no autocast for attack_amp to reuse: there the
        attack takes its own bf16 autocast where the CPU has bf16 instructions, else fp32."""
        dtype = self.attack_dtype
        if dtype == OUTER_AUTOCAST and device.type == "cpu":
            return amp_attack_dtype(device)
        return dtype

    def pgd(self, model: ZeroShotClassifier) -> PGD:
        s = self.settings
        return PGD(model, s.eps, s.step_size if s.step_size is not None else s.eps, s.steps, "Linf", "ce",
                   random_start=True, select="last", dtype=self.attack_dtype_on(model.text_features.device))

    def attack(self, model: ZeroShotClassifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_adv: the training PGD against `model`, its random start drawn for the global batch."""
        return self.pgd(model).perturb(x, y, shard=self.shard)

    def __call__(self, model: ZeroShotClassifier, original: ZeroShotClassifier | None, x: torch.Tensor,
                 y: torch.Tensor) -> StepOutput:
        raise NotImplementedError


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor, reduction: str) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) as torch's KLDivLoss(input=log_softmax(q), target=softmax(p))."""
    return F.kl_div(F.log_softmax(q_logits.float(), 1), F.softmax(p_logits.float(), 1), reduction=reduction)


def pmg_aft_loss(logits_adv: torch.Tensor, logits_clean: torch.Tensor, logits_orig_adv: torch.Tensor,
                 y: torch.Tensor, alpha: float, beta: float, reduction: str = "batchmean",
                 direction: str = "ref||adv", kl_scale: float = 1.0):
    """L = CE(f_t(x_adv), y) + alpha KL(f_o(x_adv) || f_t(x_adv)) + beta KL(f_t(x) || f_t(x_adv)).

    direction "adv||ref" swaps each KL's arguments, as the public code's first commit 4baf55d did
    (preset public-code-4baf55d): KL(f_t(x_adv) || f_o(x_adv)) and KL(f_t(x_adv) || f_t(x)).
    kl_scale multiplies both KL terms (the trainer's DDP correction for sum-reduced KL; see the
    module docstring). The KL terms and CE are computed in fp32 from the logits, which the
    classifier computes in fp32 too, even under the training step's bf16 autocast.
    """
    check(direction in KL_DIRECTIONS, f"KL direction must be one of {', '.join(KL_DIRECTIONS)}; got {direction!r}.")
    ce = F.cross_entropy(logits_adv.float(), y)
    if direction == "ref||adv":
        kl_gen, kl_clean = kl(logits_orig_adv, logits_adv, reduction), kl(logits_clean, logits_adv, reduction)
    else:
        kl_gen, kl_clean = kl(logits_adv, logits_orig_adv, reduction), kl(logits_adv, logits_clean, reduction)
    kl_gen, kl_clean = kl_scale * kl_gen, kl_scale * kl_clean
    return ce + alpha * kl_gen + beta * kl_clean, ce, kl_gen, kl_clean


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


@register_method("clean")
class CleanFineTune(Method):
    """Cross-entropy on clean images (no attack)."""

    adversarial = False

    def __call__(self, model, original, x, y):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        return StepOutput(loss, logits.detach(), {"ce": loss.item(), "acc": _acc(logits, y)})


@register_method("tecoa")
class TeCoA(Method):
    """Text-guided contrastive adversarial training: CE of the zero-shot logits on x_adv."""

    def __call__(self, model, original, x, y):
        x_adv = self.attack(model, x, y)
        logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y)
        return StepOutput(loss, logits.detach(), {"ce": loss.item(), "adv_acc": _acc(logits, y)})


@register_method("pmg-aft")
class PMGAFT(Method):
    """PMG-AFT: TeCoA's CE plus KL to the frozen original model and KL to its own clean output."""

    needs_original = True
    # An ablation outside the method (scripts/seed_study.py --detach-clean-target registers it):
    # no gradient through f_t(x), so the clean term can only pull f_t(x_adv) toward f_t(x).
    detach_clean_target = False

    def __call__(self, model, original, x, y):
        check(original is not None, "PMG-AFT needs the frozen original model.")
        x_adv = self.attack(model, x, y)
        # One forward of f_t over [x_adv; x]: gradients flow through both branches.
        logits_adv, logits_clean = model(torch.cat([x_adv, x])).split(x.shape[0])
        if self.detach_clean_target:
            logits_clean = logits_clean.detach()
        with torch.no_grad():
            logits_orig = original(x_adv)
        s, p = self.settings, self.preset
        # A KL summed over this process's rows, times world, averages over processes (as DDP's
        # gradients do) to the sum over the global batch; "batchmean" averages right as it is.
        scale = self.shard[1] if p.kl_reduction == "sum" else 1
        loss, ce, kl_gen, kl_clean = pmg_aft_loss(logits_adv, logits_clean, logits_orig, y, s.alpha, s.beta,
                                                  p.kl_reduction, p.kl_direction, scale)
        return StepOutput(loss, logits_adv.detach(), {
            "ce": ce.item(), "kl_original": kl_gen.item(), "kl_clean": kl_clean.item(),
            "adv_acc": _acc(logits_adv, y), "acc": _acc(logits_clean, y)})


@register_method("tga-zsr")
class TGAZSR(Method):
    """TGA-ZSR: TeCoA's CE plus text-guided attention terms (pmg_core/attacks/text_attention.py).

    Follows its public code (zhyblue424/TGA-ZSR, TGA-ZSR.py): x_adv from PGD on the CE (random
    start, last iterate); the target model's map on x_adv and on x both pulled toward the frozen
    original's map on x. Deviations: its attack's backward leaks into the model's .grad (ours
    uses autograd.grad); it trains under fp16 autocast (the paper preset runs fp32 here); its
    HEAD's training loop scales the text features by a misspelt, undefined `logit_scale` (the
    line it replaced used exp(logit_scale)), so CLIP's logit scale is used, as the paper preset does.
    """

    needs_original = True

    def __init__(self, settings: MethodSettings):
        super().__init__(settings)
        # Its code uses CLIP's normalisation and x100 logits: PMG-AFT's public-code numerics would
        # be a different method.
        check(self.preset.name == "paper", "TGA-ZSR runs with the paper preset only (its public code uses "
                                           f"CLIP's normalisation and logit scale); got preset {self.preset.name!r}.")

    def __call__(self, model, original, x, y):
        check(original is not None, "TGA-ZSR needs the frozen original model.")
        x_adv = self.attack(model, x, y)
        n = x.shape[0]
        # One forward of f_t over [x_adv; x] gives the logits on x_adv and both attention maps.
        pooled, tokens = image_tokens(model.visual, model.preprocess(torch.cat([x_adv, x])))
        text = model.text_features[y]
        map_adv, map_clean = text_guided_attention(tokens, torch.cat([text, text]), model.image_size).split(n)
        with torch.no_grad():
            map_orig = text_guided_attention(image_tokens(original.visual, original.preprocess(x))[1], text,
                                             original.image_size)
        logits = model.logits_from_features(pooled)
        s = self.settings
        loss, ce, refine, constraint = tga_zsr_loss(logits[:n], y, map_adv, map_clean, map_orig, s.tga_alpha,
                                                    s.tga_beta)
        return StepOutput(loss, logits[:n].detach(), {
            "ce": ce.item(), "attention_refine": refine.item(), "attention_constraint": constraint.item(),
            "adv_acc": _acc(logits[:n], y), "acc": _acc(logits[n:], y)})


def fare_loss(feats_adv: torch.Tensor, feats_orig_clean: torch.Tensor) -> torch.Tensor:
    """||phi_t(x_adv) - phi_o(x)||_2^2 on unnormalised embeddings: sum over dims, mean over batch."""
    return (feats_adv.float() - feats_orig_clean.float()).pow(2).sum(1).mean()


@register_method("fare")
class FARE(Method):
    """FARE: unsupervised; keep adversarial embeddings where the original model puts clean ones."""

    needs_original = True

    def __call__(self, model, original, x, y):
        check(original is not None, "FARE needs the frozen original model.")
        s = self.settings
        with torch.no_grad():
            target = original.encode(x, normalize=False).float()
        attack = FeatureAttack(lambda z: model.encode(z, normalize=False), s.eps,
                               s.step_size if s.step_size is not None else s.eps, s.steps,
                               dtype=self.attack_dtype_on(x.device))
        x_adv = attack(x, target, shard=self.shard)
        feats = model.encode(x_adv, normalize=False)
        loss = fare_loss(feats, target)
        logits = model.logits_from_features(feats.detach())
        return StepOutput(loss, logits, {"fare": loss.item(), "adv_acc": _acc(logits, y)})
