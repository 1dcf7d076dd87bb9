"""Where each model looks: text-guided attention and gradient saliency on the clean and adversarial image.

For one comparison (explore.Comparison), per model and per image (clean, its adversarial one):
- **attention to the true class** and **attention to the predicted class**: the text-guided
  attention map TGA-ZSR trains on (text_attention.text_guided_attention: each patch's similarity to
  the class's text feature, min-max scaled over the patches), so a robust model's map on the
  adversarial image can be set beside its map on the clean one;
- **saliency**: |d logit(predicted class) / d pixel|, the largest over the colour channels, scaled
  so the largest is 1 (Simonyan et al. 2014), on the image as attacked.
Maps are [H, W] in [0, 1] at the image's own size; `overlay` lays one on the picture. Each costs
one forward for the attention maps and one forward and backward for the saliency, per image: what
the public policy counts (MAP_PASSES per model).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F

from .explore import Comparison
from ..data.images import save_png, slug
from ..models.clip import ClipModel
from ..data.presets import DEFAULT_TEMPLATES
from ..attacks.text_attention import image_tokens, text_guided_attention

KINDS = ("attention to true class", "attention to predicted class", "saliency")
MAP_PASSES = 4  # per model: (a forward for the attention maps + a forward and backward for the saliency) x 2 images


@dataclass
class ModelMaps:
    """One model's maps: maps[image][kind] -> [H, W] in [0, 1]; image is "clean" or "adversarial"."""

    model: str
    predicted: dict[str, str]  # image -> the model's top-1 class on it
    maps: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def attention_maps(model: ClipModel, clf, x: torch.Tensor, class_indices: list[int]) -> list[torch.Tensor]:
    """Text-guided attention of one image [3,H,W] to each class in `class_indices`, each [H, W]."""
    with torch.no_grad():
        _, tokens = image_tokens(model.visual, clf.preprocess(x[None].to(model.device)))
        text = clf.text_features[class_indices]
        flat = text_guided_attention(tokens.expand(len(class_indices), -1, -1), text, model.image_size)
    side = model.image_size
    grids = flat.view(-1, 1, side, side).float().cpu()
    return list(F.interpolate(grids, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0])


def saliency_map(clf, x: torch.Tensor, class_index: int, device) -> torch.Tensor:
    """|d logit(class) / d pixel| of one image [3,H,W], the largest over channels, scaled to max 1 -> [H, W]."""
    xi = x[None].to(device).requires_grad_(True)
    (grad,) = torch.autograd.grad(clf(xi)[0, class_index], xi)  # autograd.grad: nothing lands in the model's .grad
    sal = grad[0].abs().amax(0).float().cpu()
    return sal / sal.max().clamp_min(1e-12)


def comparison_maps(models: list[ClipModel], comp: Comparison, templates=DEFAULT_TEMPLATES,
                    gate: Callable[[], ContextManager] | None = None) -> list[ModelMaps]:
    """Every verdict's maps on the clean image and on its adversarial image, in the verdicts' order.
    `gate`: what each image's passes wait for first (AttackSettings.gate: a public server's turns)."""
    by_name = {m.name: m for m in models}
    true_idx = comp.classes.index(comp.true_label) if comp.true_label is not None else None
    out = []
    for v in comp.verdicts:
        m = by_name[v.model]
        if gate is not None:  # the labels' text features, batch by batch in turns, if no longer cached
            m.text_features(comp.classes, templates, turn=gate)
        clf = m.classifier(comp.classes, templates).eval()
        one = ModelMaps(v.model, {"clean": v.clean.labels[0], "adversarial": v.adversarial.labels[0]})
        for image, x, pred in (("clean", comp.image, v.clean), ("adversarial", v.adv_image, v.adversarial)):
            predicted = comp.classes.index(pred.labels[0])
            kinds = {}
            wanted = ([true_idx] if true_idx is not None else []) + [predicted]
            with gate() if gate is not None else contextlib.nullcontext():
                maps = attention_maps(m, clf, x, wanted)
                saliency = saliency_map(clf, x, predicted, m.device)
            if true_idx is not None:
                kinds[KINDS[0]] = maps[0]
            kinds[KINDS[1]] = maps[-1]
            kinds[KINDS[2]] = saliency
            one.maps[image] = kinds
        out.append(one)
    return out


def save_maps(maps: list[ModelMaps], comp: Comparison, folder: Path, min_side: int = 128) -> list[Path]:
    """Each map over its picture as a PNG in `folder` (MODEL-clean-saliency.png, ...), scaled up by whole
    pixels to at least `min_side` so a 32 px image stays readable; the files, in the maps' order."""
    folder.mkdir(parents=True, exist_ok=True)
    adv = {v.model: v.adv_image for v in comp.verdicts}
    files = []
    for one in maps:
        for image, kinds in one.maps.items():
            picture = comp.image if image == "clean" else adv[one.model]
            for kind, heat in kinds.items():
                shown = overlay(picture, heat)
                scale = max(1, -(-min_side // shown.shape[-1]))
                shown = shown.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
                name = f"{slug(one.model)}-{image}-{kind.replace(' ', '-')}.png"
                files.append(save_png(shown, folder / name))
    return files


def overlay(image: torch.Tensor, heat: torch.Tensor, weight: float = 0.55) -> torch.Tensor:
    """A map [H, W] in [0, 1] over the picture [3, H, W] (dimmed to grey), coloured black-red-yellow-white."""
    h = heat.clamp(0, 1)[None]
    colour = torch.cat([(3 * h).clamp(0, 1), (3 * h - 1).clamp(0, 1), (3 * h - 2).clamp(0, 1)])
    grey = image.mean(0, keepdim=True).expand(3, -1, -1)
    return ((1 - weight) * grey + weight * colour).clamp(0, 1)
