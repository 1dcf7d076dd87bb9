"""The numerics presets: the paper done right, and the public PMG-AFT code's numerics.

- ``paper`` (the default): CLIP's logit scale and normalisation, KL averaged per sample
  ("batchmean"), attacks in fp32.
- ``public-code``: the public PMG-AFT code (github.com/serendipity1122/Pre-trained-Model-Guided-
  Fine-Tuning-for-Zero-Shot-Adversarial-Robustness) at its HEAD, commit a53fdd8 of 2024-05-29:
  plain-cosine logits (it re-normalises the scaled text features), KL summed over batch and
  classes, ImageNet's mean/std, attack passes under fp16 autocast. Its KL terms run in the
  paper's direction: ``KLDivLoss(log_softmax(f_t(x_adv)), softmax(f_o(x_adv)))`` and the same
  with f_t(x), i.e. KL(f_o(x_adv) || f_t(x_adv)) and KL(f_t(x) || f_t(x_adv)).
- ``public-code-4baf55d``: the same numerics with the KL direction of the code's first commit,
  4baf55d (2024-04-24), which called ``KLDivLoss(log_softmax(f_o(x_adv)), softmax(f_t(x_adv)))``,
  i.e. KL(f_t(x_adv) || f_o(x_adv)) and KL(f_t(x_adv) || f_t(x)); a53fdd8 reversed it. Only for
  comparing with numbers made by the code before that commit.

What no preset copies: the public code scores its evaluation PGD as a batch-mean CE under fp16
autocast without loss scaling, where the input gradients of cosine logits underflow; every
preset's PGD here ascends the summed CE with fp32 gradients, a stronger attack. The defect is
reproduced on request by evaluation's ``pgd-public-code`` attack.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import UserError

DEFAULT_TEMPLATES = ("This is a photo of a {}",)  # the paper's single prompt template
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# "ref||adv": KL(reference || f_t(x_adv)), the paper's and the public code's since a53fdd8;
# "adv||ref": KL(f_t(x_adv) || reference), the public code's first commit 4baf55d.
KL_DIRECTIONS = ("ref||adv", "adv||ref")


@dataclass(frozen=True)
class Preset:
    name: str
    logits: str  # "scaled": exp(logit_scale) * cosine; "cosine": plain cosine in [-1, 1]
    normalization: str  # "model": the CLIP model's own mean/std; "imagenet": ImageNet's
    kl_reduction: str  # torch KLDivLoss reduction for the PMG-AFT KL terms
    kl_direction: str  # one of KL_DIRECTIONS
    attack_fp16: bool  # run attack forward/backward passes under fp16 autocast

    @property
    def attack_dtype(self) -> torch.dtype | None:
        return torch.float16 if self.attack_fp16 else None


PRESETS = {
    "paper": Preset("paper", logits="scaled", normalization="model", kl_reduction="batchmean",
                    kl_direction="ref||adv", attack_fp16=False),
    "public-code": Preset("public-code", logits="cosine", normalization="imagenet", kl_reduction="sum",
                          kl_direction="ref||adv", attack_fp16=True),
    "public-code-4baf55d": Preset("public-code-4baf55d", logits="cosine", normalization="imagenet",
                                  kl_reduction="sum", kl_direction="adv||ref", attack_fp16=True),
}


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise UserError(f"Unknown preset '{preset}': choose one of {', '.join(PRESETS)}.")
    return PRESETS[preset]
