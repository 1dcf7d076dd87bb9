"""What several test files share: tiny models for the app, its example inputs, ports and waiting."""
import contextlib
import ctypes
import gc
import os
from pathlib import Path

import pytest
import torch

from pmg_core.models.clip import load_model
from studio.one_image import EACH_MODEL as EACH  # noqa: F401 - re-exported: "each model attacks itself"
from studio.visitors import TRUSTED_PROXIES_ENV
from public_server import EXAMPLE, ROOT, free_port, wait_for  # noqa: F401 - light, shared with scripts/public_load.py

LABELS = "circle, square, triangle, diamond, cross, star"


def tiny_models():
    """Three models sharing one text side: 'clip' and two differently perturbed image encoders."""
    torch.manual_seed(0)
    base = load_model("pmg-test")
    base.name = "clip"
    out = [base]
    for i, name in enumerate(("tecoa", "pmg-aft")):
        m = base.fork(name, name)
        with torch.no_grad():
            for p in m.visual.parameters():
                p.add_(0.05 * (i + 1) * torch.randn_like(p))
        out.append(m)
    return out


def first_step_shown(job) -> bool:
    """Whether a streamed Train job (gradio_client Job) has shown a training step yet."""
    return any("Step" in str(o[0]) for o in job.outputs())


def rss_mb() -> float:
    """This process's resident memory (the server runs in it), after handing freed heap back to the system."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed arenas of finished threads otherwise
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this system")


@contextlib.contextmanager
def behind_loopback_proxy():
    """An app built inside believes X-Forwarded-For from 127.0.0.1: test clients there stand for
    visitors from the addresses they name, as a Space's proxy's clients do."""
    before = os.environ.get(TRUSTED_PROXIES_ENV)
    os.environ[TRUSTED_PROXIES_ENV] = "127.0.0.1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRUSTED_PROXIES_ENV, None)
        else:
            os.environ[TRUSTED_PROXIES_ENV] = before


def hand_card(name: str, clean: dict, robust: dict, *, threat: str = "Linf 8/255", defense: str | None = None,
              threshold: str = "published", unaware: dict | None = None, method: str = "tecoa", version: int = 2,
              limit: int | None = None, manifests: dict | None = None, samples: int | None = None,
              per_image: bool = True, convergence: dict | None = None) -> dict:
    """A robustness card made by hand, shaped as pmg_core/leaderboard/cards.py writes one. `clean`, `robust` (and
    `unaware`): dataset -> 0/1 per image, the same images in the same order for every card of a test;
    `per_image=False` leaves out the per-image lists, as cards written before cells kept them do."""
    results = {}
    for ds, right in clean.items():
        entry = {"n": len(right), "clean_acc": sum(right) / len(right),
                 "robust": {threat: {"robust_acc": sum(robust[ds]) / len(robust[ds])}}}
        if unaware is not None:
            entry["robust"][threat]["robust_acc_unaware"] = sum(unaware[ds]) / len(unaware[ds])
        if per_image:
            entry.update(samples=list(range(len(right))), clean_right=list(right))
            entry["robust"][threat]["robust_right"] = list(robust[ds])
        results[ds] = entry

    def mean(values):
        values = list(values)
        return sum(values) / len(values)

    averages = {"clean_acc": mean(e["clean_acc"] for e in results.values()),
                "robust_acc": {threat: mean(e["robust"][threat]["robust_acc"] for e in results.values())}}
    if unaware is not None:
        averages["robust_acc_unaware"] = {threat: mean(e["robust"][threat]["robust_acc_unaware"]
                                                       for e in results.values())}
    return {
        "card_version": 1, "model": name, "name": name,
        "defense": None if defense is None else {"name": defense, "threshold": threshold},
        "weights_sha256": "ab" * 32, "base": "clip-tiny", "method": method,
        "trainer": "by hand", "paper": "", "eps_255_trained": None, "preset": "paper",
        "protocol": {"name": "mini", "version": version, "title": "a protocol made by hand", "limit": limit,
                     "manifests": manifests or {ds: f"sha-{ds}" for ds in clean},
                     "settings": {"samples": samples or max(len(r) for r in clean.values()), "pinned": {}}},
        "code_version": ["0.1.0+git.test"], "device": ["cpu (test)"], "results": results, "averages": averages,
        "convergence": convergence or {"rule": "by hand", "status": "converged", "converged": True,
                                       "cells_checked": len(clean), "cells": len(clean), "informative": 3,
                                       "max_change_points": 0.0,
                                       "max_change": {"cell": "d at t", "change_points": 0.0,
                                                      "interval_points": [-5.0, 5.0]},
                                       "not_converged": [], "not_checked": []},
        "seconds": 1.0, "published": None}


def write_cards(folder: Path, cards: list[dict]) -> Path:
    """Each card as <name>.json in `folder`, as a run leaves them."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for card in cards:
        (folder / f"{card['name']}.json").write_text(json.dumps(card))
    return folder
