"""Handler of the Train tab: a short fine-tune whose checkpoint joins the model lists.

The run goes on in a thread of its own and the stream only relays its steps. Gradio's cancels=
closes a stream on its event loop; were the run inside the stream, the last step, the checkpoint
save and the rescan would run there and hold up every session. So closing the stream only sets
the stop flag, and the run's thread saves, rescans and ends the job. A Train that arrives while
that thread is still saving is refused in a sentence: no handler sleeps waiting for the slot.
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Iterator

import gradio as gr

from pmg_core.data import inputs
from pmg_core.evaluation import plots
from pmg_core.data.datasets import list_datasets
from pmg_core.core.errors import UserError
from pmg_core.training.methods import list_methods
from pmg_core.training.loop import Trainer, TrainConfig, state_path
from pmg_core.core.units import from_255

from . import policy
from .jobs import Job
from .state import Studio
from .turns import in_turns

REDRAW_S = 0.5  # the loss curve is redrawn at most this often (the last step always)
STILL_STOPPING = ("The previous training run is still finishing its last step and saving; press Train again in a few "
                  "seconds.")


def train(studio: Studio, base_name, method, dataset, eps_255, attack_steps, lr, max_steps, batch_size, alpha, beta,
          name, request: gr.Request | None = None) -> Iterator[tuple]:
    """Yields (status, loss/accuracy figure) while a short fine-tune runs; the checkpoint lands in checkpoints/."""
    limits = studio.limits
    (base,) = studio.pick([base_name])
    method = inputs.parse_choice("method", method, list_methods())
    cfg = TrainConfig(
        model=base.spec, method=method, dataset=inputs.parse_choice("dataset", dataset, [d.name for d in list_datasets()]),
        eps=from_255(inputs.parse_number("eps (/255)", eps_255, 0, limits.train_eps_255)),
        attack_steps=inputs.parse_number("PGD steps", attack_steps, 0, limits.train_attack_steps, integer=True,
                                         where=limits.where),
        lr=inputs.parse_number("learning rate", lr, *limits.lr), epochs=1000,
        max_steps=inputs.parse_number("training steps", max_steps, 1, limits.train_steps, integer=True,
                                      where=limits.where),
        batch_size=inputs.parse_number("batch size", batch_size, 1, limits.batch_size, integer=True, where=limits.where),
        alpha=inputs.parse_number("alpha", alpha, 0, limits.loss_weight),
        beta=inputs.parse_number("beta", beta, 0, limits.loss_weight),
        warmup=0, device=str(base.device), download=False if studio.public else None,
        extra_metadata={"trained_in": "PMG-AFT Studio app", "base_name": base.name,
                        **({"made_by": policy.VISITOR_MARK} if studio.public else {})})
    policy.check_train(limits, base, cfg.max_steps, cfg.batch_size, cfg.attack_steps)
    out = studio.reserve_checkpoint(name)
    # Two trainers never overlap: a run closed by Gradio still finishes its step and saves in its own
    # thread while the jobs lane moves on. Its successor is refused then, never kept waiting in a thread.
    if not studio.job_slot.acquire(blocking=False):
        studio.release_checkpoint(out)
        raise UserError(STILL_STOPPING)
    try:
        cfg.out = str(out)
        studio.forget(policy.make_room(studio.checkpoint_dir, limits, policy.checkpoint_mb(base)))
        trainer = Trainer(cfg, model=base.fork(out.stem, base.spec))
        job = studio.jobs.start("train", request)
    except BaseException:
        studio.job_slot.release()
        studio.release_checkpoint(out)
        raise
    intro = f"Training {method} from {base.name} on {cfg.dataset} ({len(trainer.data)} images)..."
    updates: queue.Queue = queue.Queue()
    # The thread takes the only reference (out of the list), so the run's memory goes when it ends.
    threading.Thread(target=_run, args=(studio, [trainer], out, job, updates, studio.gate(request)), daemon=True,
                     name=f"train {out.stem}").start()
    del trainer
    yield from _relay(intro, job, updates)


def _run(studio: Studio, handed: list[Trainer], out: Path, job: Job, updates: queue.Queue, gate=None) -> None:
    """The run itself, in a thread of its own: however the stream ends (done, Cancel, Gradio closing
    it), the last step, the save and the rescan happen here. Puts ("step", event, skipped) per step,
    then ("end", error or None, skipped)."""
    trainer = handed.pop()
    skipped, ending, reason, error = 0, "Stopped", "", None
    try:
        for ev in in_turns(trainer.run(should_stop=job.stop.is_set), gate):  # each step in its visitor's turn
            if ev["event"] == "skipped":
                skipped = ev["bad_steps"]
            elif ev["event"] == "done":
                ending = "Done"
            elif ev["event"] == "step":
                updates.put(("step", ev, skipped))
    except UserError as e:  # too many non-finite steps: the trainer kept its last good checkpoint
        reason = str(e)
    except Exception as e:  # noqa: BLE001 - raised again in the stream, where safe() words it
        error = e
    finally:
        steps = trainer.step
        del trainer
        try:
            # The app never resumes a run, so its optimizer state would only fill the disk.
            state_path(out).unlink(missing_ok=True)
            studio.release_checkpoint(out)
            studio.rescan()  # what it saved joins the model lists
        finally:
            job.final = _final_status(ending, steps, skipped, out, reason)
            policy.release_memory()
            studio.job_slot.release()  # before the job ends: whoever saw it end may train at once
            studio.jobs.end(job)
            updates.put(("end", error, skipped))


def _relay(intro: str, job: Job, updates: queue.Queue) -> Iterator[tuple]:
    """Streams the run's steps (redraws throttled) and its final status."""
    history: list[dict] = []
    last_plot = 0.0
    try:
        yield intro, plots.train_figure(history)
        while (update := updates.get())[0] == "step":
            _, ev, skipped = update
            history.append(ev)
            if time.time() - last_plot > REDRAW_S or ev["step"] == ev["total"]:
                last_plot = time.time()
                yield _step_status(ev, skipped), plots.train_figure(history)
    finally:
        job.stop.set()  # closed by Gradio's Cancel: the run stops after its step and saves
    _, error, _ = update
    if error is not None:
        raise error
    yield job.final, plots.train_figure(history)


def _step_status(ev: dict, skipped: int) -> str:
    bad = f" ({skipped} step(s) skipped: non-finite loss)" if skipped else ""
    return f"Step {ev['step']} / {ev['total']}: loss {ev['loss']:.4f}{bad}"


def _final_status(ending: str, steps: int, skipped: int, out: Path, reason: str = "") -> str:
    """The last word on a run: how it ended and why, skipped steps, and where its checkpoint is (if any)."""
    bad = f" {reason}" if reason else (f" {skipped} step(s) were skipped (non-finite loss)." if skipped else "")
    saved = (f" Checkpoint **{out.stem}** saved to {out.parent.name}/ and added to the model lists."
             if out.is_file() else " No checkpoint was saved: no training step finished.")
    return f"**{ending}** after {steps} step{'s' if steps != 1 else ''}.{bad}{saved}"
