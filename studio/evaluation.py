"""Handler of the Evaluate tab: zero-shot clean/robust accuracy, streamed one model x dataset at a time.

The run is `pmg_core.evaluation.accuracy.iter_evaluate`'s event stream; it runs in the handler's own thread,
so Cancel (studio/jobs.py) only sets a flag that the stream reads between events. The status line
ends with a per-model summary over every image evaluated so far (accuracy, n and a 95% Wilson
interval), above the per-dataset table.
"""
from __future__ import annotations

from typing import Iterator

import gradio as gr

from pmg_core.data import inputs
from pmg_core.evaluation import plots
from pmg_core.leaderboard import stats
from pmg_core.data.datasets import expand_names
from pmg_core.evaluation.accuracy import EvalConfig, iter_evaluate
from pmg_core.core.units import from_255

from . import policy
from .jobs import Job
from .state import Studio
from .turns import in_turns

EVAL_BATCH = 64  # images per forward pass: small enough for a shared CPU, large enough for a GPU


def evaluate(studio: Studio, model_names, dataset, folder, eps_255, steps, step_size_255, limit,
             request: gr.Request | None = None, progress=gr.Progress()) -> Iterator[tuple]:
    """Yields (status, result rows, bar chart) after each model x dataset; stops when cancelled."""
    limits = studio.limits
    models = studio.pick(model_names)
    if isinstance(folder, str) and folder.strip():
        datasets = [inputs.folder_path(folder, studio.allow_folders)]
    else:
        datasets = expand_names([inputs.parse_choice("dataset", dataset, studio.dataset_choices())])
    cfg = EvalConfig(models=[m.name for m in models], datasets=datasets,
                     eps=from_255(inputs.parse_number("eps (/255)", eps_255, 0, limits.eps_255)),
                     steps=inputs.parse_number("steps", steps, 0, limits.attack_steps, integer=True, where=limits.where),
                     step_size=inputs.parse_step_size(step_size_255, limits.eval_step_size_255),
                     limit=inputs.parse_number("sample limit", limit, 1, limits.eval_samples, integer=True,
                                               where=limits.where),
                     batch_size=EVAL_BATCH, device=str(models[0].device), download=False if studio.public else None)
    # Each dataset gives at most `limit` images; the public cap counts them all, before any is built.
    policy.check_evaluate(limits, len(models), cfg.limit * len(datasets), cfg.steps)
    with studio.jobs.running("evaluate", request) as job:
        yield from _stream(cfg, models, datasets, job, progress, studio.gate(request))


def _stream(cfg: EvalConfig, models, datasets, job: Job, progress, gate=None) -> Iterator[tuple]:
    total, results = len(models) * len(datasets), []
    yield f"Evaluating {len(models)} model(s) on {len(datasets)} dataset(s)...", [], None
    events = iter_evaluate(cfg, models)
    try:
        for ev in in_turns(events, gate):  # each batch in its visitor's turn on a public server
            if job.stop.is_set():
                job.final = f"**Cancelled** after {len(results)} of {total} model x dataset runs." + summary(results)
                yield job.final, _table(results), plots.eval_figure(results) if results else None
                return
            if ev["event"] == "progress":
                progress((len(results) + ev["done"] / max(ev["total"], 1)) / total,
                         desc=f"{ev['model']} on {ev['dataset']}")
            else:
                results.append({**ev, "robust_interval": _wilson(round(ev["robust_acc"] * ev["n"]), ev["n"])})
                yield f"{len(results)} of {total} done" + summary(results), _table(results), plots.eval_figure(results)
    finally:
        events.close()
    step = "auto step" if cfg.step_size is None else f"step {cfg.step_size * 255:g}/255"
    job.final = (f"**Done**: {total} model x dataset runs, eps {cfg.eps * 255:g}/255, PGD-{cfg.steps} ({step})."
                 + summary(results))
    yield job.final, _table(results), plots.eval_figure(results)


def _table(results: list[dict]) -> list[list]:
    return [[r["model"], r["dataset"], r["n"], round(100 * r["clean_acc"], 2), round(100 * r["robust_acc"], 2),
             r["seconds"]] for r in results]


def _wilson(right: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of right out of n images, as a pair (pmg_core.leaderboard.stats computes it)."""
    if n == 0:
        return 0.0, 1.0
    found = stats.wilson(right, n)
    return found.low, found.high


def summary(results: list[dict]) -> str:
    """Per model, over every image of every dataset it was evaluated on: clean and robust accuracy
    with n and their 95% Wilson intervals (a Markdown table under the status line)."""
    if not results:
        return ""
    rows = ["", "", "| model | datasets | images (n) | clean % (95% interval) | robust % (95% interval) |",
            "|---|---:|---:|---:|---:|"]
    for model in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == model]
        n = sum(r["n"] for r in rs)
        cells = []
        for key in ("clean_acc", "robust_acc"):
            right = sum(round(r[key] * r["n"]) for r in rs)
            low, high = _wilson(right, n)
            cells.append(f"{100 * right / max(n, 1):.1f} ({100 * low:.1f}-{100 * high:.1f})")
        rows.append(f"| {model} | {len(rs)} | {n} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)
