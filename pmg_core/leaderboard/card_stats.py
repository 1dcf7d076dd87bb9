"""What a robustness card's numbers can claim: each accuracy's 95% interval, paired comparisons between
cards, and what the convergence check found (pmg_core/leaderboard/stats.py does the arithmetic).

A card (pmg_core/leaderboard/cards.py) holds, per dataset, n and each accuracy; cards written since cells carry
per-image results also hold, aligned with the manifest's `samples`, `clean_right` and, per threat,
`robust_right` (0/1 per image). Intervals come from the counts, so older cards get them too; a
paired comparison needs the per-image lists of both cards, on the same images (same protocol,
version and manifests), and says why not otherwise instead of guessing.

Metrics are named as people read them: "clean", or a threat ("Linf 8/255") for robust accuracy,
or "unaware <threat>" for the attack unaware of a defense.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import stats
from .stats import Interval, Paired

UNAWARE = "unaware "


def _threat_entry(entry: dict, metric: str) -> tuple[dict, str]:
    threat = metric[len(UNAWARE):] if metric.startswith(UNAWARE) else metric
    key = "robust_acc_unaware" if metric.startswith(UNAWARE) else "robust_acc"
    return entry["robust"].get(threat, {}), key


def _accuracy(entry: dict, metric: str) -> float | None:
    if metric == "clean":
        return entry["clean_acc"]
    robust, key = _threat_entry(entry, metric)
    return robust.get(key)


def right_list(entry: dict, metric: str) -> list[int] | None:
    """A dataset's per-image 0/1 results for `metric`, when the card carries them."""
    if metric == "clean":
        return entry.get("clean_right")
    robust, key = _threat_entry(entry, metric)
    return robust.get("robust_right") if key == "robust_acc" else None


def right_count(entry: dict, metric: str) -> tuple[int, int] | None:
    """(right, n) of one dataset: summed from the per-image list, else rounded from the accuracy."""
    right = right_list(entry, metric)
    if right is not None:
        return int(sum(right)), len(right)
    acc = _accuracy(entry, metric)
    return None if acc is None else (round(acc * entry["n"]), int(entry["n"]))


def dataset_interval(entry: dict, metric: str) -> Interval | None:
    count = right_count(entry, metric)
    return None if count is None else stats.wilson(*count)


def average_interval(card: dict, metric: str) -> Interval | None:
    """The card's average over its datasets (equal weights, as cards.py averages) with its interval."""
    counts = [right_count(entry, metric) for entry in card["results"].values()]
    return None if not counts or None in counts else stats.average(counts)


def metrics(card: dict) -> list[str]:
    threats = list(card["averages"]["robust_acc"])
    unaware = list(card["averages"].get("robust_acc_unaware", {}))
    return ["clean", *threats, *(UNAWARE + t for t in unaware)]


def intervals(card: dict) -> dict[str, Interval]:
    """Every average the card shows, by metric."""
    found = {m: average_interval(card, m) for m in metrics(card)}
    return {m: i for m, i in found.items() if i is not None}


# --- the same images ------------------------------------------------------------------------------

def same_images(a: dict, b: dict) -> str | None:
    """None when two cards were measured on the same images; else why not, in a few words."""
    pa, pb = a["protocol"], b["protocol"]
    if (pa["name"], pa["version"]) != (pb["name"], pb["version"]):
        return f"they follow different protocols ({pa['name']} v{pa['version']}, {pb['name']} v{pb['version']})"
    if pa["manifests"] != pb["manifests"]:
        return "they were measured on different images (their manifests differ)"
    return None


@dataclass(frozen=True)
class Comparison:
    """B against A on one metric: the paired test when it can be made, else the reason it cannot."""

    a: str
    b: str
    metric: str
    paired: Paired | None
    why_not: str | None = None


def compare(a: dict, b: dict, metric: str) -> Comparison:
    """B's card against A's on `metric`, image by image."""
    why = same_images(a, b)
    if why is None and set(a["results"]) != set(b["results"]):
        why = "they cover different datasets"
    lists_a, lists_b = [], []
    for ds in a["results"] if why is None else ():
        ea, eb = a["results"][ds], b["results"][ds]
        xs, ys = right_list(ea, metric), right_list(eb, metric)
        if xs is None or ys is None:
            why = "the cards carry no per-image results (they were written before cells kept them)"
            break
        if ea.get("samples") != eb.get("samples"):
            why = f"their images of {ds} differ"
            break
        lists_a.append(xs)
        lists_b.append(ys)
    if why is not None:
        return Comparison(a["name"], b["name"], metric, None, why)
    return Comparison(a["name"], b["name"], metric, stats.paired(lists_a, lists_b))


# --- comparable numbers ---------------------------------------------------------------------------

def protocol_label(card: dict) -> str:
    """'mini v1', with the limit only where it changed the images: a --limit at or above what the
    protocol draws gives the full run's manifests, so those numbers are the full run's."""
    p = card["protocol"]
    label = f"{p['name']} v{p['version']}"
    return label if not limited(card) else f"{label} (limit {p['limit']}: a subset of its images)"


def limited(card: dict) -> bool:
    """Whether a card's limit took fewer images than the protocol draws on some dataset."""
    p = card["protocol"]
    if not p.get("limit"):
        return False
    settings = p.get("settings") or {}
    pinned = settings.get("pinned") or {}
    if pinned and all(pinned.get(ds) == h for ds, h in p["manifests"].items()):
        return False
    samples = settings.get("samples")
    return samples is None or p["limit"] < samples


# --- convergence ----------------------------------------------------------------------------------

def cell_convergence(cell: dict, converged_points: float) -> dict:
    """One cell's check in the card's words: checked or not, informative images, the change (points of
    the cell's robust accuracy when the attack's budget doubles) and its paired interval."""
    conv = cell.get("convergence") or {}
    where = f"{cell['dataset']} at {cell['threat']}"
    n_cell = len(cell["samples"]) if "samples" in cell else int(cell["n"])
    if conv.get("checked") is False:
        return {"cell": where, "checked": False, "why": conv.get("why", "not run")}
    if "robust_right" in conv:
        before, doubled = conv["robust_right"], conv["robust_right_doubled"]
        informative = int(conv.get("informative", sum(before)))
        change = stats.paired([before], [doubled])
        scale = len(before) / n_cell  # the images outside the check keep their verdict
        points = 100 * change.difference.estimate * scale
        interval = [round(100 * change.difference.low * scale, 2), round(100 * change.difference.high * scale, 2)]
        fell = change.only_a
    else:  # a cell written before per-image results: counts only, no interval
        n = int(conv.get("n", n_cell))
        informative = round(conv.get("robust_acc", 0.0) * n)
        points = float(conv.get("change_points", 0.0))
        interval, fell = None, None
    if informative == 0 and points == 0:
        return {"cell": where, "checked": False, "why": "no image was still robust, so none could move"}
    return {"cell": where, "checked": True, "informative": informative, "fell": fell, "change_points": round(points, 2),
            "interval_points": interval, "converged": abs(points) <= converged_points}


def convergence(cells: list[dict], converged_points: float, rule: str) -> dict:
    """A card's convergence from its cells: "converged", "not converged" or "not checked", with how many
    images could move, the largest change and its interval."""
    found = [cell_convergence(c, converged_points) for c in cells]
    checked = [f for f in found if f["checked"]]
    unsettled = [f for f in checked if not f["converged"]]
    largest = max(checked, key=lambda f: abs(f["change_points"]), default=None)
    status = "not checked" if not checked else "not converged" if unsettled else "converged"
    return {
        "rule": rule, "status": status, "converged": status == "converged",
        "cells_checked": len(checked), "cells": len(found),
        "informative": sum(f["informative"] for f in checked),
        "max_change_points": abs(largest["change_points"]) if largest else 0.0,
        "max_change": None if largest is None else {
            k: largest[k] for k in ("cell", "change_points", "interval_points")},
        "not_converged": [f"{f['cell']}: {f['change_points']:+.2f} points" for f in unsettled],
        "not_checked": [f"{f['cell']}: {f['why']}" for f in found if not f["checked"]],
    }


def convergence_status(card: dict) -> str:
    """'converged', 'not converged' or 'not checked' (a card written before the third existed says one of the two)."""
    conv = card["convergence"]
    return conv.get("status") or ("converged" if conv["converged"] else "not converged")


def convergence_words(card: dict) -> str:
    """The convergence in one phrase for the board: 'converged: 37 informative images in 5 of 5 cells;
    largest change -3.3 points [-9.5, +1.7]', 'not checked: no image could move', or for a card written
    before cells kept per-image results 'converged (largest change 0.0 points; informative images not
    recorded)'."""
    conv, status = card["convergence"], convergence_status(card)
    if "informative" not in conv:
        return f"{status} (largest change {conv['max_change_points']:.1f} points; informative images not recorded)"
    if status == "not checked":
        return "not checked: no image could move" if conv["cells"] else "not checked"
    largest = conv["max_change"]
    interval = largest.get("interval_points")
    change = f"{largest['change_points']:+.1f} points" + (" [{:+.1f}, {:+.1f}]".format(*interval) if interval else "")
    informative = conv["informative"]
    return (f"{status}: {informative} informative image{'s' * (informative != 1)} in {conv['cells_checked']} of "
            f"{conv['cells']} cells; largest change {change}")
