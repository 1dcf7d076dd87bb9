"""Text-guided attention maps of a ViT image encoder, and the TGA-ZSR loss built on them.

TGA-ZSR (Yu, Zhang, Xu, NeurIPS 2024; public code zhyblue424/TGA-ZSR) fine-tunes CLIP's image
encoder with TeCoA's cross-entropy on x_adv plus two terms on text-guided attention maps:

    L = CE(f_t(x_adv), y)
      + alpha * mean_i || A_t(x_adv)_i - A_o(x)_i ||_2     # L_AR: attention refinement
      + beta  * mean_i || A_t(x)_i     - A_o(x)_i ||_2     # L_AMC: attention-based model constraint

with A(x) the map of one image against the text feature of its true class, flattened; alpha = 0.08
and beta = 0.05 in its code; f_o / A_o the frozen original model (no gradient reaches it).

How its code computes a map, and so how `text_guided_attention` does:
- every token of the last layer goes through ``ln_post`` and the projection (the class token as
  well as the patch tokens), as its patched CLIP ViT returns them all;
- the tokens are divided by their L2 norm taken over the *token* axis (``norm(dim=1)`` of a
  (batch, tokens, dim) tensor), class token included. It looks like a slip for the feature axis,
  but it is what the published numbers were made with, so it is kept;
- the patch tokens' dot products with the class's (unit) text feature, min-max scaled over the
  patches of each image, laid out on the patch grid and bilinearly resized to the model's input
  size (224 for ViT-B/32; its code resizes to ``--image_size``, the input size).
Deviation: the min-max division is guarded against a constant map (0/0 in the public code).
The L2 distances are over the resized map, so their size grows with the input size: on a 32 px
model the terms weigh 7 times less than on a 224 px one at the same alpha and beta.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import check


def image_tokens(visual: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled embedding, every token projected) of an open_clip ViT on preprocessed pixels.

    pooled equals ``visual(pixels)`` (one forward gives both, so the CE and the maps share it);
    tokens are (batch, 1 + patches, embed_dim), class token first, through ln_post and the projection.
    """
    from open_clip.transformer import VisionTransformer

    plain_vit = (isinstance(visual, VisionTransformer) and visual.attn_pool is None
                 and getattr(visual, "pool_type", "tok") == "tok" and not visual.final_ln_after_pool
                 and visual.proj is not None)
    check(plain_vit, "Text-guided attention needs a ViT image encoder with a class token and a projection "
                     f"(as CLIP's ViTs have); this model's encoder is a {type(visual).__name__}.")
    x = visual.transformer(visual._embeds(pixels))
    pooled, patches = visual._pool(x)  # ln_post applied to every token, class token split off
    tokens = torch.cat([pooled[:, None], patches], 1) @ visual.proj
    return tokens[:, 0], tokens


def text_guided_attention(tokens: torch.Tensor, text_features: torch.Tensor, size: int) -> torch.Tensor:
    """Per image, its patches' similarity to one text feature: (batch, size * size), each in [0, 1].

    tokens: (batch, 1 + patches, dim) as `image_tokens` gives them; text_features: (batch, dim),
    the unit text feature of each image's class. See the module docstring for the steps.
    """
    tokens = tokens.float()
    patches = (tokens / tokens.norm(dim=1, keepdim=True))[:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    check(side * side == patches.shape[1], f"Text-guided attention needs a square patch grid; got {patches.shape[1]} patches.")
    sim = (patches @ text_features.float().unsqueeze(-1)).squeeze(-1)  # (batch, patches)
    low, high = sim.amin(1, keepdim=True), sim.amax(1, keepdim=True)
    sim = (sim - low) / (high - low).clamp_min(torch.finfo(sim.dtype).tiny)
    grid = sim.view(-1, 1, side, side)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False).flatten(1)


def tga_zsr_loss(logits_adv: torch.Tensor, y: torch.Tensor, map_adv: torch.Tensor, map_clean: torch.Tensor,
                 map_orig_clean: torch.Tensor, alpha: float, beta: float):
    """(L, CE, alpha * L_AR, beta * L_AMC) with the maps flattened per image (module docstring)."""
    ce = F.cross_entropy(logits_adv.float(), y)
    refine = alpha * (map_adv - map_orig_clean).norm(dim=1).mean()
    constraint = beta * (map_clean - map_orig_clean).norm(dim=1).mean()
    return ce + refine + constraint, ce, refine, constraint
