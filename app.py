"""PMG-AFT Studio: attack CLIP live and compare the original model with its robust fine-tunes.

`python app.py [--host H] [--port P] [--share] [--models SPEC,...]`. Every handler is a thin call into
pmg_core; this file only loads models, checks inputs (pmg_core.inputs), and formats results for Gradio.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import html
import inspect
import logging
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import gradio as gr
import numpy as np
import torch

from pmg_core import analysis, inputs, plots
from pmg_core.data import expand_names, list_datasets, list_groups
from pmg_core.errors import UserError, first_line
from pmg_core.evaluate import EvalConfig, iter_evaluate
from pmg_core.explore import AttackSettings, Comparison, compare, label_presets, prepare_image
from pmg_core.images import load_image, new_output_folder, save_png, to_uint8
from pmg_core.models import CHECKPOINT_DIR, ClipModel
from pmg_core.train import Trainer, TrainConfig
from pmg_core.zoo import finetunes_of, load_default_models, order_key, parse_model_specs

log = logging.getLogger("pmg_studio")
ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
EACH_MODEL = "each model attacks itself"
NORMS = ["Linf", "L2"]
LOSSES = {"cross-entropy": "ce", "CW margin": "margin"}
METHODS = ["pmg-aft", "tecoa", "fare", "clean"]
INTERACTIVE_GPU_S, JOB_GPU_S = 120, 300  # ZeroGPU time per call: one attack/plot; one capped Evaluate/Train
CANCEL_WAIT_S = 10.0  # Cancel waits this long for the run to save, so it can report the checkpoint
ATTACK_SIDE = AttackSettings().max_side
SEEN_BY_MODELS = (f"What the models see: the image is center-cropped to a square and scaled to at most "
                  f"{ATTACK_SIDE} px before it is attacked.")

PMG_AFT_IN_PLAIN_WORDS = """
**PMG-AFT in plain words.** CLIP recognises almost anything you name, but an invisible change of a
few grey levels per pixel (an *adversarial perturbation*) can make it say something else.
Adversarial fine-tuning (TeCoA) retrains CLIP's image encoder on such attacked images, which makes
it robust but also makes it forget part of what it knew about other kinds of images.
**PMG-AFT** (Wang et al., CVPR 2024) adds two reminders to that training: keep the answers on
attacked images close to what the *original* CLIP says about them (so general knowledge is kept),
and keep the answers on clean and attacked images consistent with each other. The text encoder
never changes. **FARE** instead keeps the attacked image's embedding where the original model put
the clean one, without using labels.
"""


def gpu(seconds: int) -> Callable[[Callable], Callable]:
    """Hugging Face ZeroGPU: run the handler on a GPU borrowed for up to `seconds`; a no-op elsewhere."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=seconds)


def image_upload(**kw) -> gr.Image:
    """gr.Image that hands our handlers the uploaded file's path undecoded.

    gr.Image(type="filepath") opens every upload with PIL before any handler runs, so a file that
    is not an image, is cut short or is a decompression bomb fails inside Gradio with a traceback
    instead of reaching pmg_core.images, which refuses it in one sentence. Upload, paste and the
    browser's preview stay gr.Image's own. (An instance override: a subclass would make Gradio
    write an app.pyi stub next to this file.)
    """
    component = gr.Image(type="filepath", **kw)
    component.preprocess = lambda payload: None if payload is None else payload.path
    return component


@dataclass
class Job:
    """One running Evaluate or Train of one session: Cancel sets `stop`; `final` is its last status."""

    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    final: str = ""


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


@dataclass
class Studio:
    """The app's state: loaded models (the one global cache) and each session's running jobs."""

    models: dict[str, ClipModel]
    mode: str
    checkpoint_dir: Path = CHECKPOINT_DIR
    public: bool = False  # serving beyond this machine: no server folders, shorter jobs
    out_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pmg_studio_")))
    jobs: dict[str, Job] = field(default_factory=dict)  # "kind:session" -> the job running now
    lock: threading.Lock = field(default_factory=threading.Lock)  # the model lists (rescan loads under it)
    jobs_lock: threading.Lock = field(default_factory=threading.Lock)  # `jobs`: a Cancel never waits on a load

    @classmethod
    def create(cls, models: Sequence[ClipModel] | None = None, checkpoint_dir: Path | None = None,
               extra_models: Sequence[str] = (), **kw) -> "Studio":
        directory = Path(checkpoint_dir or CHECKPOINT_DIR)
        if models is None:
            models, mode = load_default_models(directory, extra_models)
        else:
            mode = "**Custom models** given by the caller: " + ", ".join(m.name for m in models) + "."
        ordered = sorted(models, key=order_key)
        return cls({m.name: m for m in ordered}, mode, directory, **kw)

    @property
    def names(self) -> list[str]:
        return list(self.models)

    @property
    def allow_folders(self) -> bool:
        """ImageFolder paths on the server's disk: only for the machine's owner, never in public."""
        return not self.public

    @property
    def limits(self) -> inputs.Limits:
        return inputs.PUBLIC if self.public else inputs.LOCAL

    def pick(self, names) -> list[ClipModel]:
        names = [names] if isinstance(names, str) else list(names or [])
        if not names:
            raise UserError("Choose at least one model.")
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise UserError(f"The model '{unknown[0]}' is not loaded; press 'Refresh model lists'.")
        return [self.models[n] for n in names]

    def rescan(self) -> list[str]:
        """Load fine-tunes that appeared in the checkpoint folder since start; returns the new names."""
        added = []
        with self.lock:
            for base in [m for m in self.models.values() if m.spec == m.base]:
                for m in finetunes_of(base, self.checkpoint_dir, skip=self.names):
                    self.models[m.name] = m
                    added.append(m.name)
            self.models = {m.name: m for m in sorted(self.models.values(), key=order_key)}
        return added

    # -- jobs: one Evaluate/Train per session and kind, cancellable ------------------------------
    def _start_job(self, request: gr.Request | None, kind: str) -> tuple[str, Job]:
        key, job = f"{kind}:{_session(request)}", Job()
        with self.jobs_lock:
            self.jobs[key] = job
        return key, job

    def _end_job(self, key: str, job: Job) -> None:
        with self.jobs_lock:
            if self.jobs.get(key) is job:
                del self.jobs[key]
        job.done.set()

    @contextlib.contextmanager
    def _job(self, request: gr.Request | None, kind: str) -> Iterator[Job]:
        key, job = self._start_job(request, kind)
        try:
            yield job
        finally:
            self._end_job(key, job)

    def cancel(self, kind: str, request: gr.Request | None = None, wait: float = CANCEL_WAIT_S) -> str:
        """Stop this session's running `kind` job after its current step; returns its final status if it ends in time.

        A job still waiting in the queue is not here: the Cancel buttons also take it off Gradio's
        queue (cancels=[...]), so it never starts.
        """
        with self.jobs_lock:
            job = self.jobs.get(f"{kind}:{_session(request)}")
        if job is None:
            return f"No {kind} run of yours is running now."
        job.stop.set()
        if job.done.wait(wait):
            return job.final or f"**Cancelled** the {kind} run."
        return f"Stopping the {kind} run after its current step..."

    # -- attack & compare ----------------------------------------------------------------------
    def preview(self, image) -> np.ndarray | None:
        """The uploaded image as the models will see it (a bad file is refused here, right after upload)."""
        if image is None:
            return None
        return to_uint8(prepare_image(load_image(inputs.upload_path(image)), ATTACK_SIDE))

    def _attack_inputs(self, image, labels, true_label, norm, eps_255, steps, step_size_255, loss, target, source,
                       model_names) -> tuple[list[ClipModel], torch.Tensor, list[str], str | None, AttackSettings]:
        models = self.pick(model_names)
        x = load_image(inputs.upload_path(image))
        classes = inputs.parse_labels(labels)
        norm = inputs.parse_choice("norm", norm, NORMS)
        loss = LOSSES[inputs.parse_choice("loss", loss, list(LOSSES))]
        eps = inputs.parse_number("eps (/255)", eps_255, 0, 64 if norm == "Linf" else 2550) / 255
        steps = inputs.parse_number("steps", steps, 0, 200, integer=True)
        step = inputs.parse_step_size(step_size_255, 255)
        true_label = inputs.parse_choice("true label", true_label, classes, optional=target not in (None, ""))
        target = inputs.parse_choice("target class", target, classes, optional=True)
        source = None if source in (None, "", EACH_MODEL) else inputs.parse_choice("attack source", source, [m.name for m in models])
        return models, x, classes, true_label, AttackSettings(eps, steps, step, norm, loss, target, source)

    def attack(self, image, labels, true_label, norm, eps_255, steps, step_size_255, loss, target, source, model_names):
        """-> (adversarial images, amplified perturbations, verdict HTML, PNG files, details)."""
        models, x, classes, true_label, settings = self._attack_inputs(
            image, labels, true_label, norm, eps_255, steps, step_size_255, loss, target, source, model_names)
        comp = compare(models, x, classes, true_label, settings)
        advs = _distinct_adversarials(comp)
        folder = new_output_folder(self.out_dir)
        files = [str(save_png(adv, folder / f"adversarial-{_slug(name)}.png")) for name, adv in advs]
        gallery = [(to_uint8(adv), f"via {name}") for name, adv in advs]
        perturb = [(to_uint8(analysis.amplify_perturbation(comp.image, adv)), f"via {name}") for name, adv in advs]
        return gallery, perturb, verdict_html(comp, settings), files, comparison_data(comp, settings)

    def eps_sweep(self, image, labels, true_label, norm, eps_list, steps, step_size_255, loss, target, source,
                  model_names):
        """-> (plotly figure of true-class, or target-class, confidence vs eps; rows)."""
        models, x, classes, true_label, settings = self._attack_inputs(
            image, labels, true_label, norm, 0, steps, step_size_255, loss, target, source, model_names)
        eps = [e / 255 for e in inputs.parse_number_list("eps (/255)", eps_list, 0, 64 if settings.norm == "Linf" else 2550)]
        comps = analysis.eps_sweep(models, x, classes, true_label, eps, settings)
        rows = analysis.sweep_rows(comps, eps, settings.target)
        return plots.sweep_figure(rows), rows

    def distances(self, image, labels, true_label, norm, eps_list, steps, step_size_255, loss, model_names,
                  reference):
        """-> (displacement figure, distance-from-original figure, PCA projection figure, rows)."""
        models, x, classes, true_label, settings = self._attack_inputs(
            image, labels, true_label, norm, 0, steps, step_size_255, loss, None, None, model_names)
        eps = [e / 255 for e in inputs.parse_number_list("eps (/255)", eps_list, 0, 64 if settings.norm == "Linf" else 2550)]
        reference = inputs.parse_choice("reference model", reference, [m.name for m in models], optional=True)
        comps = analysis.eps_sweep(models, x, classes, true_label, eps, settings)
        rows = analysis.feature_distances(models, comps, eps, reference)
        proj = analysis.projection(models, comps[-1])
        return (plots.distance_figure(rows), plots.reference_figure(rows), plots.projection_figure(proj),
                {"distances": rows, "projection_eps_255": round(eps[-1] * 255, 4), **proj})

    # -- evaluate ------------------------------------------------------------------------------
    def dataset_choices(self) -> list[str]:
        return list(list_groups()) + [d.name for d in list_datasets()]

    def evaluate(self, model_names, dataset, folder, eps_255, steps, step_size_255, limit,
                 request: gr.Request | None = None, progress=gr.Progress()) -> Iterator[tuple]:
        """Yields (status, result rows, bar chart) after each model x dataset; stops when cancelled."""
        models = self.pick(model_names)
        if isinstance(folder, str) and folder.strip():
            datasets = [inputs.folder_path(folder, self.allow_folders)]
        else:
            datasets = expand_names([inputs.parse_choice("dataset", dataset, self.dataset_choices())])
        cfg = EvalConfig(models=[m.name for m in models], datasets=datasets,
                         eps=inputs.parse_number("eps (/255)", eps_255, 0, 64) / 255,
                         steps=inputs.parse_number("steps", steps, 0, 200, integer=True),
                         step_size=inputs.parse_step_size(step_size_255, 64),
                         limit=inputs.parse_number("sample limit", limit, 1, self.limits.eval_samples, integer=True,
                                                   where=self.limits.where),
                         batch_size=64, device=str(models[0].device))
        with self._job(request, "evaluate") as job:
            yield from self._evaluation(cfg, models, datasets, job, progress)

    def _evaluation(self, cfg: EvalConfig, models, datasets, job: Job, progress) -> Iterator[tuple]:
        total, results = len(models) * len(datasets), []
        yield f"Evaluating {len(models)} model(s) on {len(datasets)} dataset(s)...", [], None
        events = iter_evaluate(cfg, models)
        try:
            for ev in events:
                if job.stop.is_set():
                    job.final = f"**Cancelled** after {len(results)} of {total} model x dataset runs."
                    yield job.final, _table(results), plots.eval_figure(results) if results else None
                    return
                if ev["event"] == "progress":
                    progress((len(results) + ev["done"] / max(ev["total"], 1)) / total,
                             desc=f"{ev['model']} on {ev['dataset']}")
                else:
                    results.append(ev)
                    yield f"{len(results)} of {total} done", _table(results), plots.eval_figure(results)
        finally:
            events.close()
        step = "auto step" if cfg.step_size is None else f"step {cfg.step_size * 255:g}/255"
        job.final = f"**Done**: {total} model x dataset runs, eps {cfg.eps * 255:g}/255, PGD-{cfg.steps} ({step})."
        yield job.final, _table(results), plots.eval_figure(results)

    # -- train ---------------------------------------------------------------------------------
    def train(self, base_name, method, dataset, eps_255, attack_steps, lr, max_steps, batch_size, alpha, beta, name,
              request: gr.Request | None = None) -> Iterator[tuple]:
        """Yields (status, loss/accuracy figure) while a short fine-tune runs; the checkpoint lands in checkpoints/."""
        (base,) = self.pick([base_name])
        method = inputs.parse_choice("method", method, METHODS)
        out = inputs.new_checkpoint_path(name, self.checkpoint_dir)
        cfg = TrainConfig(
            model=base.spec, method=method, dataset=inputs.parse_choice("dataset", dataset, [d.name for d in list_datasets()]),
            eps=inputs.parse_number("eps (/255)", eps_255, 0, 32) / 255,
            attack_steps=inputs.parse_number("PGD steps", attack_steps, 0, 20, integer=True),
            lr=inputs.parse_number("learning rate", lr, 1e-8, 1.0), epochs=1000,
            max_steps=inputs.parse_number("training steps", max_steps, 1, self.limits.train_steps, integer=True,
                                          where=self.limits.where),
            batch_size=inputs.parse_number("batch size", batch_size, 1, 512, integer=True),
            alpha=inputs.parse_number("alpha", alpha, 0, 100), beta=inputs.parse_number("beta", beta, 0, 100),
            warmup=0, out=str(out), device=str(base.device),
            extra_metadata={"trained_in": "PMG-AFT Studio app", "base_name": base.name})
        trainer = Trainer(cfg, model=base.fork(out.stem, base.spec))
        intro = f"Training {method} from {base.name} on {cfg.dataset} ({len(trainer.data)} images)..."
        key, job = self._start_job(request, "train")
        updates: queue.Queue = queue.Queue()
        threading.Thread(target=self._train_worker, args=(trainer, out, key, job, updates), daemon=True,
                         name=f"train {out.stem}").start()
        yield from self._training(intro, job, updates)

    def _train_worker(self, trainer: Trainer, out: Path, key: str, job: Job, updates: queue.Queue) -> None:
        """The run itself, in a thread of its own: however the stream ends (done, Cancel, Gradio
        closing it, which it does on its event loop), the last step, the save and the rescan happen
        here and never hold up other sessions. Puts ("step", event, skipped) per step, then
        ("end", error or None, skipped)."""
        skipped, ending, reason, error = 0, "Stopped", "", None
        try:
            for ev in trainer.run(should_stop=job.stop.is_set):
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
            try:
                self.rescan()  # what it saved joins the model lists
            finally:
                job.final = _train_status(ending, trainer.step, skipped, out, reason)
                self._end_job(key, job)
                updates.put(("end", error, skipped))

    def _training(self, intro: str, job: Job, updates: queue.Queue) -> Iterator[tuple]:
        """Streams the worker's steps (redraws throttled) and its final status."""
        history: list[dict] = []
        last_plot = 0.0
        try:
            yield intro, plots.train_figure(history)
            while (update := updates.get())[0] == "step":
                _, ev, skipped = update
                history.append(ev)
                if time.time() - last_plot > 0.5 or ev["step"] == ev["total"]:
                    last_plot = time.time()
                    yield _step_status(ev, skipped), plots.train_figure(history)
        finally:
            job.stop.set()  # closed by Gradio's Cancel: the worker stops after its step and saves
        _, error, _ = update
        if error is not None:
            raise error
        yield job.final, plots.train_figure(history)

    # -- about ---------------------------------------------------------------------------------
    def about(self) -> str:
        rows = ["| model | kind | base | method | eps (/255) | steps | data | file |", "|---|---|---|---|---|---|---|---|"]
        for m in self.models.values():
            meta = m.metadata or {}
            kind = meta.get("kind", "base" if m.spec == m.base else "finetune")
            rows.append("| " + " | ".join(html.escape(str(v)) for v in (
                m.name, kind, m.base, meta.get("method", "-"), meta.get("eps_255", "-"), meta.get("steps", "-"),
                _short(meta.get("data", "-")), Path(m.spec).name if m.spec.endswith(".safetensors") else m.spec)) + " |")
        details = "\n".join(f"<details><summary>{html.escape(m.name)} metadata</summary>\n\n```json\n"
                            f"{_json(m.metadata)}\n```\n</details>" for m in self.models.values() if m.metadata)
        return (f"### Mode\n{self.mode}\n\nDevice: `{next(iter(self.models.values())).device}`.\n\n"
                f"### Loaded models\n" + "\n".join(rows) + "\n\n" + details + "\n\n### What this is\n" + PMG_AFT_IN_PLAIN_WORDS)

    def presets(self) -> dict[str, list[str]]:
        """Label presets: the embedded world's tasks, plus CIFAR-10 and ImageNet when a real-size CLIP is loaded."""
        return label_presets(real_clip=any(m.image_size >= 128 for m in self.models.values()))


# --- formatting ------------------------------------------------------------------------------------

def _short(text, limit: int = 48) -> str:
    """A table cell that does not squeeze the others (the full text is in the metadata below)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60]


def _json(d: dict) -> str:
    import json

    return json.dumps(d, indent=2, default=str)


def _distinct_adversarials(comp: Comparison) -> list[tuple[str, torch.Tensor]]:
    seen: dict[str, torch.Tensor] = {}
    for v in comp.verdicts:
        seen.setdefault(v.attacked_by, v.adv_image)
    return list(seen.items())


def _top5_html(pred, true_label: str | None, target: str | None) -> str:
    items = []
    for label, p in zip(pred.labels, pred.probs):
        cls = "pmg-true" if label == true_label else ("pmg-target" if label == target else "")
        items.append(f"<div class='pmg-bar {cls}'><span style='width:{100 * p:.1f}%'></span>"
                     f"<b>{html.escape(label)}</b> {100 * p:.1f}%</div>")
    return "".join(items)


def _points(change: float | None) -> str:
    """A probability change as signed percentage points (a typographic minus, which HTML keeps)."""
    return "-" if change is None else f"{100 * change:+.1f} pts".replace("-", "&minus;", 1)


def _mark(pred) -> str:
    if pred.correct is None:
        return ""
    return "<span class='pmg-ok'>&#10004; right</span>" if pred.correct else "<span class='pmg-bad'>&#10008; wrong</span>"


def verdict_html(comp: Comparison, settings: AttackSettings) -> str:
    """Clean vs adversarial top-5 per model, a right/wrong mark and the confidence change: of the true
    class (untargeted), or of the target class (targeted; the true class's too when it is given)."""
    target = settings.target
    head = (f"<p>Attack: PGD-{settings.steps} {settings.norm}, eps {settings.eps * 255:g}/255, "
            f"{'targeted at <b>' + html.escape(target) + '</b>' if target else 'untargeted'}; "
            f"true label: <b>{html.escape(comp.true_label or '-')}</b>.</p>")
    change_head = f"target-class ({html.escape(target)}) confidence change" if target else "true-class confidence change"
    rows = []
    for v in comp.verdicts:
        change = _points(v.target_gain) if target else _points(None if v.confidence_drop is None else -v.confidence_drop)
        if target and v.confidence_drop is not None:
            change += f"<br><small>true class: {_points(-v.confidence_drop)}</small>"
        rows.append(f"<tr class='pmg-model' data-model='{html.escape(v.model)}'><td><b>{html.escape(v.model)}</b>"
                    f"<br><small>attacked via {html.escape(v.attacked_by)}</small></td>"
                    f"<td>{_mark(v.clean)}{_top5_html(v.clean, comp.true_label, target)}</td>"
                    f"<td>{_mark(v.adversarial)}{_top5_html(v.adversarial, comp.true_label, target)}</td>"
                    f"<td class='pmg-drop'>{change}</td></tr>")
    return (head + "<table class='pmg-verdicts'><tr><th>model</th><th>clean top-5</th><th>adversarial top-5</th>"
            f"<th>{change_head}</th></tr>" + "".join(rows) + "</table>")


def comparison_data(comp: Comparison, settings: AttackSettings) -> dict:
    return {"eps_255": round(settings.eps * 255, 4), "steps": settings.steps, "norm": settings.norm,
            "true_label": comp.true_label, "target": settings.target,
            "verdicts": [{"model": v.model, "attacked_by": v.attacked_by, "clean": vars(v.clean),
                          "adversarial": vars(v.adversarial), "confidence_drop": v.confidence_drop,
                          "target_gain": v.target_gain}
                         for v in comp.verdicts]}


def _step_status(ev: dict, skipped: int) -> str:
    bad = f" ({skipped} step(s) skipped: non-finite loss)" if skipped else ""
    return f"Step {ev['step']} / {ev['total']}: loss {ev['loss']:.4f}{bad}"


def _train_status(ending: str, steps: int, skipped: int, out: Path, reason: str = "") -> str:
    """The last word on a run: how it ended and why, skipped steps, and where its checkpoint is (if any)."""
    bad = f" {reason}" if reason else (f" {skipped} step(s) were skipped (non-finite loss)." if skipped else "")
    saved = (f" Checkpoint **{out.stem}** saved to {out.parent.name}/ and added to the model lists."
             if out.is_file() else " No checkpoint was saved: no training step finished.")
    return f"**{ending}** after {steps} steps.{bad}{saved}"


def _table(results: list[dict]) -> list[list]:
    return [[r["model"], r["dataset"], r["n"], round(100 * r["clean_acc"], 2), round(100 * r["robust_acc"], 2),
             r["seconds"]] for r in results]


# --- turning handlers into safe Gradio callbacks ----------------------------------------------------

GENERIC_ERROR = "Something went wrong on the server while doing that; the details are in the server log."


def _as_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, UserError):
        return gr.Error(str(e), print_exception=False)
    log.exception("handler failed")
    return gr.Error(GENERIC_ERROR, print_exception=False)


def safe(fn: Callable) -> Callable:
    """Bad input -> one readable sentence in the UI (gr.Error); anything else -> a generic sentence + log."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - the server keeps serving whatever happened
                raise _as_gr_error(e) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001
            raise _as_gr_error(e) from None
    return wrapper


# --- the UI ----------------------------------------------------------------------------------------

CSS = """
.pmg-verdicts {width: 100%; border-collapse: collapse;}
.pmg-verdicts td, .pmg-verdicts th {border-bottom: 1px solid #ddd; padding: 6px; vertical-align: top;}
.pmg-bar {position: relative; font-size: 0.85em; margin: 2px 0; padding: 1px 4px; z-index: 0;}
.pmg-bar span {position: absolute; left: 0; top: 0; bottom: 0; background: #cfe0f5; z-index: -1; border-radius: 3px;}
.pmg-bar.pmg-true span {background: #bfe6c2;}
.pmg-bar.pmg-target span {background: #f8d3a6;}
.pmg-ok {color: #1a7f37; font-weight: bold;} .pmg-bad {color: #c62828; font-weight: bold;}
.pmg-drop {font-weight: bold; white-space: nowrap;}
/* 32 px images: scaled up to the box, pixels kept sharp */
.pmg-pixelated img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;}
.pmg-gallery .caption-label {white-space: normal; overflow: visible; text-overflow: clip; max-width: none;}
#pmg-files .empty {min-height: 64px; height: 64px;}  /* no files yet: a slim box, not a tall placeholder */
"""


def _examples(presets: dict[str, list[str]]) -> list[list]:
    # (file, task whose labels it goes with, true label): see assets/make_examples.py
    known = [("example.png", "synth-shape", "circle"), ("purple-star.png", "synth-shape", "star"),
             ("striped-diamond.png", "synth-pattern", "striped shape"), ("digit-seven.png", "synth-digit", "digit 7")]
    return [[str(EXAMPLES_DIR / f), ", ".join(presets[t]), true] for f, t, true in known
            if (EXAMPLES_DIR / f).is_file() and t in presets]


def build_app(models: Sequence[ClipModel] | None = None, checkpoint_dir: str | Path | None = None,
              public: bool = False, queue_size: int = 16, extra_models: Sequence[str] = ()) -> gr.Blocks:
    """The whole UI. `models`: use these instead of loading the default ones (tests pass tiny models);
    `public`: serving beyond this machine (no server folders, capped jobs); `extra_models`: more specs."""
    studio = Studio.create(models, Path(checkpoint_dir) if checkpoint_dir else None, extra_models, public=public)
    presets = studio.presets()
    first_preset = next(iter(presets), None)
    default_labels = ", ".join(presets[first_preset]) if first_preset else "cat, dog, bird"
    all_classes = list(dict.fromkeys(c for classes in presets.values() for c in classes)) or default_labels.split(", ")
    limits = studio.limits
    # Two lanes, one run at a time each: short interactive work never waits behind a long Evaluate/Train.
    interactive = dict(concurrency_id="interactive", concurrency_limit=1)
    jobs = dict(concurrency_id="jobs", concurrency_limit=1)

    with gr.Blocks(title="PMG-AFT Studio", delete_cache=(3600, 3600)) as demo:
        demo.studio = studio  # tests reach the state through the app
        gr.Markdown("# PMG-AFT Studio\nAttack CLIP live and see how the original model and its robust "
                    "fine-tunes (TeCoA, PMG-AFT, FARE, yours) answer.")
        gr.Markdown(studio.mode)

        with gr.Tab("Attack & compare"):
            with gr.Row():
                with gr.Column(scale=1):
                    with gr.Row():
                        image = image_upload(label="Image", sources=["upload", "clipboard"], height=220,
                                             elem_classes="pmg-pixelated", elem_id="pmg-image")
                        seen = gr.Image(label="What the models see", format="png", interactive=False, height=220,
                                        elem_classes="pmg-pixelated", elem_id="pmg-preview", buttons=[])
                    gr.Markdown(SEEN_BY_MODELS)
                    preset = gr.Dropdown(list(presets), value=first_preset, label="Label preset")
                    labels = gr.Textbox(default_labels, label="Class labels (comma-separated)", lines=2, max_lines=6)
                    with gr.Row():
                        # every preset's classes, so examples from any task show their true label
                        true_label = gr.Dropdown(all_classes, value=default_labels.split(", ")[0],
                                                 allow_custom_value=True, label="True label")
                        target = gr.Dropdown(["", *default_labels.split(", ")], value="", allow_custom_value=True,
                                             label="Target class (optional: targeted attack)")
                    with gr.Row():
                        norm = gr.Radio(NORMS, value="Linf", label="Norm")
                        loss = gr.Radio(list(LOSSES), value="cross-entropy", label="Attack loss")
                    with gr.Row():
                        eps = gr.Number(4, label="eps (/255)", minimum=0)
                        steps = gr.Number(10, label="PGD steps", precision=0, minimum=0)
                        step_size = gr.Number(1, label="Step size (/255, 0 = auto)", minimum=0)
                    source = gr.Dropdown([EACH_MODEL, *studio.names], value=EACH_MODEL, label="Who is attacked",
                                         info="Each model white-box, or one model's adversarial image transferred to all.")
                    chosen = gr.CheckboxGroup(studio.names, value=studio.names, label="Models to compare")
                    attack_btn = gr.Button("Attack", variant="primary", elem_id="pmg-attack")
                with gr.Column(scale=2):
                    verdicts = gr.HTML(label="Predictions", elem_id="pmg-verdicts")
                    with gr.Row():
                        adv_gallery = gr.Gallery(label="Adversarial image(s)", format="png", columns=3, height=260,
                                                 elem_classes=["pmg-pixelated", "pmg-gallery"], object_fit="contain")
                        pert_gallery = gr.Gallery(label="Perturbation, amplified", format="png", columns=3,
                                                  height=260, elem_classes=["pmg-pixelated", "pmg-gallery"],
                                                  object_fit="contain")
                    adv_files = gr.File(label="Download adversarial PNG (bit-exact)", file_count="multiple",
                                        elem_id="pmg-files")
                    with gr.Accordion("Details (JSON)", open=False):
                        details = gr.JSON()
                    with gr.Row():
                        sweep_eps = gr.Textbox("0, 1, 2, 4, 8", label="eps sweep (/255)")
                        sweep_btn = gr.Button("Run eps sweep")
                    sweep_plot = gr.Plot(label="eps sweep")
                    sweep_rows = gr.JSON(visible=False)
            examples = _examples(presets)
            if examples:
                gr.Examples(examples, [image, labels, true_label], label="Examples from the embedded world")

        with gr.Tab("Feature distances"):
            gr.Markdown("Uses the image, labels and attack settings of the first tab. Each model is attacked "
                        "itself at every eps; the projection shows the largest eps.")
            with gr.Row():
                dist_eps = gr.Textbox("0, 1, 2, 4, 8", label="eps sweep (/255)")
                reference = gr.Dropdown(studio.names, value=studio.names[0], label="Reference (original) model")
                dist_btn = gr.Button("Compute distances", variant="primary")
            with gr.Row():
                dist_plot = gr.Plot(label="adversarial vs clean embedding")
                ref_plot = gr.Plot(label="distance from the original model")
            proj_plot = gr.Plot(label="2-D projection")
            dist_data = gr.JSON(visible=False)

        with gr.Tab("Evaluate"):
            with gr.Row():
                eval_models = gr.CheckboxGroup(studio.names, value=studio.names, label="Models")
                eval_data = gr.Dropdown(studio.dataset_choices(), value=_pick_default(studio.dataset_choices(), "mini"),
                                        label="Dataset (a registered task or group)")
                eval_folder = gr.Textbox("", label="...or an ImageFolder path on this machine",
                                         visible=studio.allow_folders, placeholder="/data/my_images (one folder per class)")
            with gr.Row():
                eval_eps = gr.Number(1, label="eps (/255)", minimum=0)
                eval_steps = gr.Number(10, label="PGD steps", precision=0, minimum=0)
                eval_step_size = gr.Number(1, label="Step size (/255, 0 = auto)", minimum=0)
                eval_limit = gr.Number(100, label="samples per dataset", precision=0, minimum=1,
                                       info=f"at most {limits.eval_samples:,}{limits.where}")
            with gr.Row():
                eval_btn = gr.Button("Evaluate", variant="primary")
                eval_cancel = gr.Button("Cancel", variant="stop")
            eval_status = gr.Markdown()
            eval_table = gr.Dataframe(headers=["model", "dataset", "n", "clean %", "robust %", "seconds"],
                                      label="Results", interactive=False)
            eval_plot = gr.Plot(label="Accuracy")

        with gr.Tab("Train"):
            with gr.Row():
                train_base = gr.Dropdown(studio.names, value=studio.names[0], label="Start from")
                train_method = gr.Dropdown(METHODS, value="pmg-aft", label="Method")
                train_data = gr.Dropdown([d.name for d in list_datasets()],
                                         value=_pick_default([d.name for d in list_datasets()], "synth-finetune"),
                                         label="Training set")
                train_name = gr.Textbox("my-pmg-aft", label="Checkpoint name (saved in checkpoints/)")
            with gr.Row():
                train_eps = gr.Number(1, label="eps (/255)", minimum=0)
                train_attack_steps = gr.Number(2, label="PGD steps", precision=0, minimum=0)
                train_lr = gr.Number(0.01, label="learning rate")
                train_steps = gr.Number(50, label="training steps", precision=0, minimum=1,
                                        info=f"at most {limits.train_steps:,}{limits.where}")
                train_batch = gr.Number(32, label="batch size", precision=0, minimum=1)
                train_alpha = gr.Number(1.0, label="alpha (stay near the original)")
                train_beta = gr.Number(1.0, label="beta (clean/adversarial consistency)")
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary")
                train_cancel = gr.Button("Cancel", variant="stop")
            train_status = gr.Markdown()
            train_plot = gr.Plot(label="Loss and accuracy")

        with gr.Tab("About"):
            about_md = gr.Markdown(studio.about())
            refresh_btn = gr.Button("Refresh model lists")

        # -- events ------------------------------------------------------------------------------
        def on_preset(name):
            classes = presets.get(name, [])
            return (", ".join(classes), gr.update(choices=classes, value=classes[0] if classes else None),
                    gr.update(choices=["", *classes], value=""))

        def on_labels(text):
            try:
                classes = inputs.parse_labels(text)
            except UserError:
                return gr.update(), gr.update()
            return gr.update(choices=classes), gr.update(choices=["", *classes])

        def refresh():
            studio.rescan()
            names = studio.names
            return (gr.update(choices=names, value=names), gr.update(choices=[EACH_MODEL, *names]),
                    gr.update(choices=names), gr.update(choices=names), gr.update(choices=names, value=names),
                    studio.about())

        def cancel_evaluate(request: gr.Request) -> str:
            return studio.cancel("evaluate", request)

        def cancel_train(request: gr.Request) -> str:
            return studio.cancel("train", request)

        refresh_outputs = [chosen, source, reference, train_base, eval_models, about_md]
        preset.change(on_preset, preset, [labels, true_label, target], api_name="preset", queue=False)
        labels.change(on_labels, labels, [true_label, target], api_name="labels", queue=False)
        image.change(safe(studio.preview), image, seen, api_name="preview", show_progress="minimal",
                     concurrency_id="preview", concurrency_limit=2)
        attack_inputs = [image, labels, true_label, norm, eps, steps, step_size, loss, target, source, chosen]
        attack_btn.click(gpu(INTERACTIVE_GPU_S)(safe(studio.attack)), attack_inputs,
                         [adv_gallery, pert_gallery, verdicts, adv_files, details], api_name="attack", **interactive)
        sweep_btn.click(gpu(INTERACTIVE_GPU_S)(safe(studio.eps_sweep)),
                        [image, labels, true_label, norm, sweep_eps, steps, step_size, loss, target, source, chosen],
                        [sweep_plot, sweep_rows], api_name="eps_sweep", **interactive)
        dist_btn.click(gpu(INTERACTIVE_GPU_S)(safe(studio.distances)),
                       [image, labels, true_label, norm, dist_eps, steps, step_size, loss, chosen, reference],
                       [dist_plot, ref_plot, proj_plot, dist_data], api_name="distances", **interactive)
        eval_event = eval_btn.click(
            gpu(JOB_GPU_S)(safe(studio.evaluate)),
            [eval_models, eval_data, eval_folder, eval_eps, eval_steps, eval_step_size, eval_limit],
            [eval_status, eval_table, eval_plot], api_name="evaluate", **jobs)
        # Cancel takes a waiting run off the queue (cancels=) and stops a running one after its step (the flag).
        eval_cancel.click(safe(cancel_evaluate), None, eval_status, api_name="cancel_evaluate", queue=False,
                          cancels=[eval_event])
        train_event = train_btn.click(
            gpu(JOB_GPU_S)(safe(studio.train)),
            [train_base, train_method, train_data, train_eps, train_attack_steps, train_lr, train_steps,
             train_batch, train_alpha, train_beta, train_name],
            [train_status, train_plot], api_name="train", **jobs)
        train_event.then(safe(refresh), None, refresh_outputs, api_name="refresh_after_train", queue=False)
        train_cancel.click(safe(cancel_train), None, train_status, api_name="cancel_train", queue=False,
                           cancels=[train_event]
                           ).then(safe(refresh), None, refresh_outputs, api_name="refresh_after_cancel", queue=False)
        refresh_btn.click(safe(refresh), None, refresh_outputs, api_name="refresh_models", queue=False)
        demo.load(safe(refresh), None, refresh_outputs, api_name="on_load", queue=False)
        demo.queue(max_size=queue_size)
    return demo


def launch_options() -> dict:
    """What every launch of the app passes (tests too): look, upload limit, error display."""
    return dict(theme=gr.themes.Soft(), css=CSS, max_file_size=inputs.MAX_UPLOAD_BYTES, show_error=True)


def _pick_default(choices: list[str], preferred: str) -> str | None:
    return preferred if preferred in choices else (choices[0] if choices else None)


def resolve_host(host: str | None, share: bool, environ: Mapping[str, str]) -> tuple[str, bool]:
    """-> (interface to bind, serving in public?): 127.0.0.1 unless asked for another or running on a Space."""
    on_space = bool(environ.get("SPACE_ID"))
    host = host or ("0.0.0.0" if on_space else "127.0.0.1")
    return host, share or on_space or host not in ("127.0.0.1", "localhost")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="PMG-AFT Studio: attack CLIP live and compare robust fine-tunes.")
    p.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1; 0.0.0.0 on a Space)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.add_argument("--models", default=os.environ.get("PMG_MODELS", ""), metavar="SPEC[,SPEC...]",
                   help="more models besides the default: checkpoint files or names, hf-hub:ORG/REPO, ARCH:TAG "
                        "(default: $PMG_MODELS)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, public = resolve_host(args.host, args.share, os.environ)
    start = time.time()
    demo = build_app(public=public, extra_models=parse_model_specs(args.models))
    log.info("models loaded in %.1f s: %s", time.time() - start, ", ".join(demo.studio.names))
    demo.launch(server_name=host, server_port=args.port, share=args.share, **launch_options())


if __name__ == "__main__":
    main()
