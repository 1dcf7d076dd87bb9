"""The two numerics presets of DESIGN.md: the paper done right, and the public code's numerics.

The KL direction differs between them. The paper writes KL(f_o(x_adv) || f_t(x_adv)) and
KL(f_t(x) || f_t(x_adv)): the reference distribution is the target, f_t(x_adv) the input. The
public code calls ``KLDivLoss(log_softmax(output_ori), softmax(output))`` with output = f_t(x_adv),
i.e. KL(f_t(x_adv) || f_o(x_adv)) and KL(f_t(x_adv) || f_t(x)); to reproduce its numbers the
`public-code` preset keeps that direction (gradients then flow through f_t(x_adv) as the target
distribution, and through f_t(x) as the input).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError

DEFAULT_TEMPLATES = ("This is a photo of a {}",)  # the paper's single prompt template
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KL_DIRECTIONS = ("ref||adv", "adv||ref")


@dataclass(frozen=True)
class Preset:
    name: str
    logits: str  # "scaled": exp(logit_scale) * cosine; "cosine": plain cosine in [-1, 1]
    normalization: str  # "model": the CLIP model's own mean/std; "imagenet": ImageNet's
    kl_reduction: str  # torch KLDivLoss reduction for the PMG-AFT KL terms
    kl_direction: str  # "ref||adv": KL(reference || f_t(x_adv)) (the paper); "adv||ref": the public code's
    attack_fp16: bool  # run attack forward/backward passes under fp16 autocast

    @property
    def attack_dtype(self) -> torch.dtype | None:
        return torch.float16 if self.attack_fp16 else None


PRESETS = {
    "paper": Preset("paper", logits="scaled", normalization="model", kl_reduction="batchmean",
                    kl_direction="ref||adv", attack_fp16=False),
    "public-code": Preset("public-code", logits="cosine", normalization="imagenet", kl_reduction="sum",
                          kl_direction="adv||ref", attack_fp16=True),
}


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise UserError(f"Unknown preset '{preset}': choose one of {', '.join(PRESETS)}.")
    return PRESETS[preset]
