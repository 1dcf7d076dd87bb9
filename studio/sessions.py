"""What a browser session keeps between events, and for how long.

- **The small result.** A session keeps its last comparison in gr.State for the Attack tab's extras
  (maps, radius, zip). `keep` builds that object, the only one stored there: the comparison's
  predictions, settings and model names, and the name of its output folder, where its clean and
  adversarial images are written as PNGs (lossless: both lie on the 8-bit grid). `restore` reads them
  back. No tensor or full image stays in a session (a comparison of five models at 224 px held
  3.6 MB of them, and Gradio kept 10,000 sessions).
- **A lifetime.** Gradio forgets a session only when more than its capacity exist (CAPACITY, which
  every launch passes). `bound_sessions` also forgets any session unused for LIFETIME_S that has
  nothing queued or running; a page open longer than that starts afresh at its next event (its
  extras then ask for a new Attack).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Sequence

from pmg_core.core.errors import check
from pmg_core.data.images import load_image, save_png, slug
from pmg_core.evaluation.explore import AttackSettings, Comparison

from . import policy

log = logging.getLogger("pmg_studio")
CAPACITY = 1000  # sessions kept at once: each holds Gradio's copy of the page's config (0.2-0.5 MB)
LIFETIME_S = 1800.0  # a session unused this long is forgotten
LIFETIME_ENV = "PMG_SESSION_LIFETIME_S"  # a Space with little memory (or a test) may shorten it
SWEEP_S = 60.0  # how often the sweep looks, at most
CLEAN = "clean.png"
EXPIRED = "This comparison's images are gone (kept for an hour at most); press Attack again."


def adversarial_file(model: str) -> str:
    """The name of the PNG of the adversarial image a model's gradients made, in the comparison's folder:
    the model first, so a list that cuts long names still tells them apart."""
    return f"{slug(model)}-adversarial.png"


def keep(comparison: Comparison, settings: AttackSettings, models: list[str], folder: Path,
         originals: Sequence[str] = ()) -> dict:
    """What a session keeps of a finished comparison: no tensors (its images are written to `folder`).
    `originals`: the models the verdicts' summary names as the original CLIP."""
    folder = Path(folder)
    save_png(comparison.image, folder / CLEAN)
    verdicts = []
    for v in comparison.verdicts:
        image = folder / adversarial_file(v.attacked_by)
        if not image.is_file():
            save_png(v.adv_image, image)
        defended = dataclasses.replace(v.defended, adaptive_image=None) if v.defended else None
        verdicts.append(dataclasses.replace(v, adv_image=None, defended=defended))
    return {"comparison": dataclasses.replace(comparison, image=None, verdicts=verdicts),
            "settings": dataclasses.replace(settings, gate=None), "models": list(models), "folder": str(folder),
            "originals": list(originals)}


def restore(kept: dict) -> tuple[Comparison, AttackSettings, list[str], Path]:
    """A kept comparison with its images read back -> (comparison, settings, model names, folder)."""
    folder = Path(kept["folder"])
    comparison = kept["comparison"]
    check((folder / CLEAN).is_file() and all((folder / adversarial_file(v.attacked_by)).is_file()
                                              for v in comparison.verdicts), EXPIRED)
    verdicts = [dataclasses.replace(v, adv_image=load_image(folder / adversarial_file(v.attacked_by)))
                for v in comparison.verdicts]
    return (dataclasses.replace(comparison, image=load_image(folder / CLEAN), verdicts=verdicts), kept["settings"],
            list(kept["models"]), folder)


def bound_sessions(demo, lifetime_s: float | None = None) -> float:
    """No session unused for longer than `lifetime_s` (default: $PMG_SESSION_LIFETIME_S, else LIFETIME_S;
    module docstring): a thread sweeps a few times a lifetime while the app is alive. Returns the lifetime."""
    if lifetime_s is None:
        try:
            lifetime_s = float(os.environ.get(LIFETIME_ENV, LIFETIME_S))
        except ValueError:
            log.warning("%s is not a number of seconds; sessions live %g s", LIFETIME_ENV, LIFETIME_S)
            lifetime_s = LIFETIME_S
    sweep_s = min(SWEEP_S, max(1.0, lifetime_s / 3))
    app = weakref.ref(demo)

    def sweep() -> None:
        while True:
            time.sleep(sweep_s)
            blocks = app()
            if blocks is None:
                return
            holder = getattr(blocks, "state_holder", None)
            if holder is not None:
                forget_idle(holder, getattr(blocks, "_queue", None), lifetime_s)
            del blocks

    threading.Thread(target=sweep, daemon=True, name="session sweep").start()
    return lifetime_s


def forget_idle(holder, queue, lifetime_s: float) -> int:
    """Forget the sessions of Gradio's state holder unused for `lifetime_s` with no event waiting or
    running. Returns how many were forgotten."""
    pending = dict(getattr(queue, "pending_event_ids_session", None) or {})
    busy = {sid for sid, events in pending.items() if events}
    busy |= {getattr(e, "session_hash", None) for jobs in list(getattr(queue, "active_jobs", None) or []) if jobs
             for e in jobs}
    now = time.time()
    forgotten = 0
    with holder.lock:
        for sid, last in list(holder.time_last_used.items()):
            if now - last.timestamp() > lifetime_s and sid not in busy:
                holder.session_data.pop(sid, None)
                holder.time_last_used.pop(sid, None)
                forgotten += 1
    if forgotten:
        log.info("forgot %d idle session(s); %d kept", forgotten, len(holder.session_data))
        policy.release_memory()  # what they held goes back to the system, not only to the heap
    return forgotten
