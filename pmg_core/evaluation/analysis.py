"""What the app's figures show, as plain data: eps sweeps, feature distances, 2-D projections.

Every function returns lists of dicts or tensors (no plotting here; see plots.py), so the app's
handlers stay thin and the numbers are testable on their own.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.errors import check
from .explore import AttackSettings, Comparison, compare
from ..models.clip import ClipModel


def amplify_perturbation(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """(adv - clean) mapped to [0,1] around mid-grey, stretched so the largest change is full range."""
    delta = adv - clean
    scale = delta.abs().amax().clamp_min(1 / 255)
    return (0.5 + 0.5 * delta / scale).clamp(0, 1)


def eps_sweep(models: Sequence[ClipModel], image: torch.Tensor, classes: Sequence[str], true_label: str | None,
              eps_values: Sequence[float], settings: AttackSettings) -> list[Comparison]:
    """One comparison per eps (pixel units), each with the same attack settings otherwise."""
    check(len(eps_values) > 0, "Give at least one eps value for the sweep.")
    return [compare(models, image, classes, true_label, dataclasses.replace(settings, eps=float(e)))
            for e in eps_values]


def sweep_rows(comparisons: Sequence[Comparison], eps_values: Sequence[float], target: str | None = None) -> list[dict]:
    """Per model and eps: the adversarial true-class (and target-class) probability, correctness, top-1 answer."""
    rows = []
    for eps, comp in zip(eps_values, comparisons):
        for v in comp.verdicts:
            rows.append({"model": v.model, "eps_255": round(eps * 255, 4), "true_prob": v.adversarial.true_prob,
                         "correct": v.adversarial.correct, "top1": v.adversarial.labels[0],
                         "target": target, "target_prob": v.adversarial.target_prob,
                         "hit": None if target is None else v.adversarial.labels[0] == target})
    return rows


@torch.no_grad()
def _embed(model: ClipModel, classes: Sequence[str], x: torch.Tensor) -> torch.Tensor:
    """Unnormalised image embedding of one image [3,H,W] -> [D] (float32, on the CPU)."""
    clf = model.classifier(classes).eval()
    return clf.encode(x[None].to(model.device), normalize=False)[0].float().cpu()


def _distances(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return 1.0 - float(F.cosine_similarity(a, b, dim=0)), float((a - b).norm())


def feature_distances(models: Sequence[ClipModel], comparisons: Sequence[Comparison], eps_values: Sequence[float],
                      reference: str | None = None) -> list[dict]:
    """Per model and eps, how far the adversarial embedding moves.

    - cosine / l2: the model's embedding of its adversarial image vs of the clean image;
    - ref_cosine / ref_l2: the model's embedding of its adversarial image vs the reference model's
      (the original CLIP's) embedding of the clean image: FARE's objective, so at eps 0 it is
      how far fine-tuning moved the model's clean embeddings away from the original's.
    L2 is measured on unnormalised embeddings, cosine distance is 1 - cos.
    """
    by_name = {m.name: m for m in models}
    reference = reference or models[0].name
    check(reference in by_name, f"The reference model '{reference}' is not loaded.")
    rows = []
    for eps, comp in zip(eps_values, comparisons):
        ref_clean = _embed(by_name[reference], comp.classes, comp.image)
        for v in comp.verdicts:
            m = by_name[v.model]
            clean, adv = _embed(m, comp.classes, comp.image), _embed(m, comp.classes, v.adv_image)
            cos, l2 = _distances(adv, clean)
            rcos, rl2 = _distances(adv, ref_clean)
            rows.append({"model": v.model, "eps_255": round(eps * 255, 4), "cosine": cos, "l2": l2,
                         "ref_cosine": rcos, "ref_l2": rl2, "reference": reference})
    return rows


def projection(models: Sequence[ClipModel], comparison: Comparison) -> dict:
    """2-D PCA of the class text embeddings and each model's clean and adversarial image embeddings.

    All embeddings are L2-normalised (what the zero-shot classifier compares) and projected on the
    two principal axes of all the points together. Fine-tunes share their base's text side, so the
    text points are those of the first model.
    """
    by_name = {m.name: m for m in models}
    classes = comparison.classes
    first = by_name[comparison.verdicts[0].model]
    text = first.text_features(classes).float().cpu()
    points = [{"kind": "text", "model": "", "label": c} for c in classes]
    feats = [text]
    for v in comparison.verdicts:
        m = by_name[v.model]
        check(m.clip is first.clip or m.base == first.base,
              "The projection needs models that share one text encoder (fine-tunes of one base).")
        for kind, x, pred in (("clean", comparison.image, v.clean), ("adversarial", v.adv_image, v.adversarial)):
            feats.append(F.normalize(_embed(m, classes, x), dim=0)[None])
            points.append({"kind": kind, "model": v.model, "label": pred.labels[0]})
    all_feats = torch.cat(feats)
    centered = all_feats - all_feats.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centered, full_matrices=False)
    coords = centered @ vh[:2].T
    if coords.shape[1] < 2:  # a single direction of variation: pad the second axis
        coords = torch.cat([coords, torch.zeros(len(coords), 2 - coords.shape[1])], 1)
    var = (s**2 / (s**2).sum().clamp_min(1e-12))[:2].tolist()
    for p, (x, y) in zip(points, coords.tolist()):
        p["x"], p["y"] = x, y
    return {"points": points, "explained_variance": var}
