"""Robustness cards: one model's result under one protocol (pmg_core/evaluation/protocols.py), with provenance.

`run_cards` evaluates cells, one per (model, dataset, threat model, eps), and writes each to
``DIR/cells/<model>/<dataset>__<norm>-<eps>.json`` atomically as it finishes. A run that is
killed and started again skips every cell already on disk, so nothing finished is recomputed.
Under torchrun each process takes every world-th cell of the same ordered list; no process waits
on another, and whichever finds all of a model's cells on disk writes its card (when it finishes
that model's last cell of its share, and at the end), so one process
and many give the same files. Every process computes a cell the same way (a cell's random starts
depend only on its samples), which is why the cards agree.

A cell holds, per image of its manifest (aligned by position): `samples` (the manifest's test
indices), `clean_right` (right on the clean image; behind a randomised defense, as judged: on every
judge draw), `robust_right` (still right after the whole menu, best-of, by the protocol's rule) and
`robust_right_by_attack` (one list per attack of the menu); `convergence`, the doubled-budget check
run on every image still robust (at most max(convergence_samples, 20) of them): `checked`,
`samples`, `robust_right`, `robust_right_doubled`, `informative` (images still robust before the
doubled run), `flipped` and `change_points`, or `checked: false` and `why` when no image was still
robust; `settings`, the evaluation config that ran (after validation: EOT and judge draws as run,
the menu a task's classes allowed) and `defense_settings`, the defense's own (defenses.describe);
its counts and accuracies; the code version, device and time.

A card (``DIR/<model>.json``) holds the weights' sha256 (of the checkpoint file, or of the state
dict for a model open_clip loads), base, method, trainer and paper (from the zoo or the
checkpoint's metadata), the protocol's name, version, definition hash, settings and manifest
hashes, one code version (a folder of cells from another code version is refused) and the
device, per-dataset clean and robust accuracy at each eps with n, each one's 95% interval and the
per-image results that paired tests read (pmg_core/leaderboard/card_stats.py), the convergence check (the menu
again at twice the steps and EOT draws on every image still robust: robust accuracy must move by
at most 0.5 points, else the card says it did not converge; "not checked" when no image could
move), the time, and the authors' published numbers beside ours with the difference and what
differs in protocol.

Provenance: cards come from a commit. A run from a source tree with uncommitted changes (code,
configs or checkpoints) is refused unless `allow_dirty` (`--allow-dirty`, for local runs), and
then its cells and card say `allowed_dirty` and carry the `-dirty` code version.

Models are written as people type them: a zoo id, a checkpoint name or file, `MODEL+ttc` (behind
test-time counterattacks at their published threshold), `MODEL+ttc@calibrated` (the threshold
set to the median tau of the clean images) or `MODEL+ttc@0.05`.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch.utils.data import Subset

from .. import __version__
from . import card_stats
from ..data.datasets import ZeroShotDataset, get_dataset
from ..attacks.defenses import list_defenses
from ..training.distributed import Dist
from ..core.errors import UserError, check
from ..evaluation.accuracy import EvalConfig, evaluate_model
from ..models.clip import ClipModel, checkpoint_path
from ..evaluation.protocols import Manifest, Protocol, ThreatModel, check_manifest, eval_settings, manifest_for
from ..models.zoo import ZOO, load_entry, load_sharing_bases

CARD_VERSION = 2  # 2: per-image lists in every cell, convergence on the still-robust images, one code version
CONVERGED_POINTS = 0.5  # the most robust accuracy may move when the attack's budget doubles
MIN_CHECKED = 20  # the convergence check runs on every still-robust image of a cell, or at least this many
ROOT = Path(__file__).resolve().parents[2]


# --- what people type --------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """One entry of --models: the model, and the test-time defense in front of it."""

    text: str  # as typed: the card's name
    model: str
    defense: str = "none"
    threshold: float | str | None = None  # None: the defense's published one

    @property
    def slug(self) -> str:
        """A file name for the card: the typed text with anything but letters, digits and ._+@- replaced."""
        stem = Path(self.model).stem if self.model.endswith(".safetensors") else self.model
        text = stem + (self.text[len(self.model):] if self.text.startswith(self.model) else "")
        return re.sub(r"[^A-Za-z0-9._+@-]", "_", text)


def parse_model(text: str) -> ModelSpec:
    """'tecoa-tiny+ttc@calibrated' -> the model, the defense and its threshold."""
    text = text.strip()
    model, plus, defended = text.partition("+")
    if not plus:
        return ModelSpec(text, text)
    defense, at, threshold = defended.partition("@")
    check(defense in list_defenses() and defense != "none",
          f"Unknown test-time defense '{defense}' in '{text}': write MODEL+{'|'.join(d for d in list_defenses() if d != 'none')}.")
    if not at:
        return ModelSpec(text, model, defense)
    if threshold == "calibrated":
        return ModelSpec(text, model, defense, "calibrated")
    try:
        value = float(threshold)
    except ValueError:
        raise UserError(f"The threshold in '{text}' must be a number or 'calibrated'; got '{threshold}'.") from None
    check(value >= 0, f"The threshold in '{text}' must be at least 0; got {value:g}.")
    return ModelSpec(text, model, defense, value)


def parse_models(text: str | Sequence[str]) -> list[ModelSpec]:
    items = [s for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    check(bool(items), "Give at least one model (--models a,b,...).")
    specs = [parse_model(s) for s in items]
    slugs = [s.slug for s in specs]
    check(len(set(slugs)) == len(slugs), f"Two models would share a card file: {', '.join(slugs)}.")
    return specs


# --- cells -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    spec: ModelSpec
    dataset: str
    threat: ThreatModel
    eps_255: float

    @property
    def key(self) -> str:
        return f"{self.threat.norm} {self.eps_255:g}/255"

    def path(self, out: Path) -> Path:
        return out / "cells" / self.spec.slug / f"{self.dataset}__{self.threat.norm}-{self.eps_255:g}.json"


def cells_of(protocol: Protocol, specs: Sequence[ModelSpec]) -> list[Cell]:
    """Every cell of a run, in one order all processes agree on."""
    return [Cell(spec, ds, threat, eps) for spec in specs for ds in protocol.dataset_names()
            for threat in protocol.threats for eps in threat.eps_255]


def write_json(path: Path, doc: dict) -> None:
    """Write atomically: a reader (or a resumed run) sees the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _run_id(protocol: Protocol, limit: int | None) -> dict:
    return {"protocol": protocol.name, "version": protocol.version, "limit": limit}


def finished(cell: Cell, out: Path, run_id: dict, version: str | None = None) -> bool:
    """Whether a cell is on disk from a run of the same protocol, version and limit, made by the
    code version `version` when one is given (else refuse to mix: one card, one code version)."""
    path = cell.path(out)
    if not path.is_file():
        return False
    try:
        doc = json.loads(path.read_text())
        found = doc["run"]
    except (OSError, ValueError, KeyError):
        return False  # unreadable: computed again
    check(found == run_id, f"{out} holds results of another run ({found}); give a new folder for {run_id}.")
    made_by = doc.get("code_version")
    check(version is None or made_by == version,
          f"{out} holds cells made by code version {made_by}, and this is {version}: a card holds one code version, so "
          "give a new folder (or resume with the code that made them).")
    return True


def eval_config(settings: dict, cell: Cell) -> EvalConfig:
    """An EvalConfig from a protocol's settings by field name; one this build lacks is refused."""
    known = {f.name for f in fields(EvalConfig)}
    missing = sorted(set(settings) - known)
    check(not missing, f"This build's evaluation has no setting {', '.join(missing)} (needed by {cell.spec.text}).")
    cfg = EvalConfig(models=[cell.spec.model], datasets=[cell.dataset], **settings)
    cfg.validate()
    return cfg


def _subset(data: ZeroShotDataset, indices: Sequence[int]) -> ZeroShotDataset:
    return ZeroShotDataset(data.name, Subset(data.data, list(indices)), data.classes, data.templates, data.info)


def compute_cell(model: ClipModel, data: ZeroShotDataset, cell: Cell, protocol: Protocol) -> dict:
    """One cell: per image and in counts, clean and robust after the menu, each attack's verdict,
    the doubled-budget check on every image still robust, and the settings that ran (module docstring)."""
    spec = cell.spec
    cfg = eval_config(eval_settings(protocol, cell.threat, cell.eps_255, spec.defense, spec.threshold), cell)
    row = evaluate_model(model, data, cfg, per_sample=True)
    per = row.pop("per_sample")
    samples = list(data.data.indices)  # the manifest's test indices (run_cards hands a Subset of them)
    keep = ("n", "clean_correct", "robust_correct", "clean_acc", "robust_acc", "robust_acc_unaware",
            "robust_acc_by_attack", "tau_threshold", "gate_open", "preset", "defense", "seconds", "defense_settings")
    return {**{k: row[k] for k in keep if k in row},
            "samples": samples, "clean_right": per["clean_right"], "robust_right": per["robust_right"],
            "robust_right_by_attack": per["robust_right_by_attack"],
            "convergence": convergence_check(model, data, cell, protocol, row, per, samples),
            "settings": effective_settings(cfg, per["robust_right_by_attack"])}


# What an EvalConfig says about the machine or the run's bookkeeping, not about the numbers.
_MACHINE = ("models", "datasets", "device", "data_root", "download", "num_workers")


def effective_settings(cfg: EvalConfig, ran: dict) -> dict:
    """The evaluation config as it ran (validated), less where it ran; `adaptive`: the attacks that
    ran (`ran`: by name), those a task lacks the classes for left out."""
    out = {k: v for k, v in asdict(cfg).items() if k not in _MACHINE}
    out["adaptive"] = [n for n in ran if n != "unaware"]
    return out


def convergence_check(model: ClipModel, data: ZeroShotDataset, cell: Cell, protocol: Protocol, row: dict, per: dict,
                      samples: list[int]) -> dict:
    """The menu again at twice the steps and EOT draws on the images still robust (at most
    max(convergence_samples, MIN_CHECKED) of them), the tau threshold the cell used held fixed."""
    still = [i for i, right in enumerate(per["robust_right"]) if right]
    cap = protocol.convergence_samples
    chosen = still if cap is None else still[:max(cap, MIN_CHECKED)]
    if not chosen:
        return {"checked": False, "why": "no image was still robust after the attack menu, so none could fall "
                                         "to a bigger attack", "informative": 0, "seconds": 0.0}
    spec = cell.spec
    threshold = row.get("tau_threshold", spec.threshold)  # a calibrated threshold stays the cell's
    cfg = eval_config(eval_settings(protocol, cell.threat, cell.eps_255, spec.defense, threshold, doubled=True), cell)
    doubled = evaluate_model(model, _subset(data, chosen), cfg, per_sample=True)
    after = doubled["per_sample"]["robust_right"]
    flipped = len(after) - sum(after)
    return {"checked": True, "samples": [samples[i] for i in chosen], "robust_right": [1] * len(chosen),
            "robust_right_doubled": after, "informative": len(chosen), "flipped": flipped,
            "change_points": round(-100 * flipped / max(row["n"], 1), 4), "steps": cfg.steps, "eot": cfg.eot,
            "seconds": doubled["seconds"]}


# --- provenance ----------------------------------------------------------------------------------

# What a card's numbers depend on in the checkout: uncommitted changes there make a dirty tree.
SOURCE_PATHS = ("pmg_core", "checkpoints", "configs", "pyproject.toml", "requirements.txt")


def source_state() -> tuple[str, bool]:
    """(code version, dirty): `git describe` of the checkout, "-dirty" when code, configs or checkpoints
    have uncommitted changes (untracked files there included); the package version outside a checkout."""
    try:
        described = subprocess.run(["git", "describe", "--always", "--tags"], cwd=ROOT, capture_output=True,
                                   text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *SOURCE_PATHS],
                                cwd=ROOT, capture_output=True, text=True, timeout=30)
        if described.returncode == 0 and described.stdout.strip() and status.returncode == 0:
            dirty = bool(status.stdout.strip())
            return f"{__version__}+git.{described.stdout.strip()}{'-dirty' if dirty else ''}", dirty
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__, False


def code_version() -> str:
    """The source tree's version (source_state)."""
    return source_state()[0]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def weights_sha256(model: ClipModel) -> str:
    """The checkpoint file's sha256; for a model open_clip loads, the state dict's (tensors in key order)."""
    path = checkpoint_path(model.spec) if ":" not in model.spec else None
    if path is not None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    h = hashlib.sha256()
    for name, tensor in sorted(model.clip.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "state-dict:" + h.hexdigest()


def provenance(model: ClipModel, spec: ModelSpec) -> dict:
    """Who made the model and how, from the zoo entry or the checkpoint's metadata."""
    meta = model.metadata or {}
    entry = ZOO.get(spec.model)
    own = meta.get("kind") in ("base", "finetune") and "trainer" not in meta
    return {"weights_sha256": weights_sha256(model), "base": model.base,
            "method": meta.get("method") or (entry.method if entry else "base"),
            "trainer": meta.get("trainer") or (entry.trainer if entry else "this project (pmg_core)" if own else ""),
            "paper": meta.get("paper") or (entry.paper if entry else ""),
            "eps_255_trained": meta.get("eps_255") or (entry.eps_255 if entry else None)}


# --- the run -----------------------------------------------------------------------------------

class _Loaded:
    """Models, datasets and manifests a process needs, each loaded once."""

    def __init__(self, protocol: Protocol, out: Path, limit: int | None, data_root: str | None, device):
        self.protocol, self.out, self.limit, self.data_root, self.device = protocol, out, limit, data_root, device
        self.models: dict[str, ClipModel] = {}
        self.data: dict[str, tuple[ZeroShotDataset, Manifest]] = {}
        self.origin: dict[str, dict] = {}

    def model(self, spec: ModelSpec) -> ClipModel:
        if spec.model not in self.models:
            loaded = list(self.models.values())
            self.models[spec.model] = (load_entry(spec.model, self.device) if spec.model in ZOO
                                       else load_sharing_bases(spec.model, self.device, loaded))
        if spec.text not in self.origin:
            self.origin[spec.text] = provenance(self.models[spec.model], spec)
        return self.models[spec.model]

    def dataset(self, name: str) -> tuple[ZeroShotDataset, Manifest]:
        if name not in self.data:
            full = get_dataset(name, split="test", root=self.data_root, prompts=self.protocol.prompts)
            manifest = manifest_for(full, self.protocol, self.limit)
            check_manifest(manifest, self.protocol, self.limit)
            write_json(self.out / "manifests" / f"{name}.json", manifest.to_json())
            self.data[name] = (_subset(full, manifest.indices), manifest)
        return self.data[name]


def run_cards(protocol: Protocol, models: Sequence[ModelSpec], out: str | Path, limit: int | None = None,
              data_root: str | None = None, device: str | None = None, ctx: Dist | None = None,
              progress: bool = False, allow_dirty: bool = False) -> list[Path]:
    """Compute this process's unfinished cells, then write the card of every model whose cells are
    all on disk; returns the cards written (module docstring). A dirty source tree is refused
    unless `allow_dirty`."""
    from ..core.env import default_device

    ctx = ctx or Dist(device=torch.device(device or default_device()))
    if limit is not None:
        check(limit >= 1, f"limit must be a positive number of samples; got {limit}.")
    version, dirty = source_state()
    check(not dirty or allow_dirty,
          f"The source tree has uncommitted changes ({version}): cards must come from a commit, so commit first, "
          "or pass --allow-dirty for a local run (its cards then say so).")
    out = Path(out)
    run_id = _run_id(protocol, limit)
    cells = cells_of(protocol, models)
    mine = [c for i, c in enumerate(cells) if i % ctx.world == ctx.rank and not finished(c, out, run_id, version)]
    loaded = _Loaded(protocol, out, limit, data_root, ctx.device)
    bar = None
    if progress and ctx.is_main and mine:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=f"cards {protocol.name}", unit="cell")
    for cell in mine:
        data, manifest = loaded.dataset(cell.dataset)
        model = loaded.model(cell.spec)
        result = compute_cell(model, data, cell, protocol)
        write_json(cell.path(out), {"run": run_id, "model": cell.spec.text, "dataset": cell.dataset,
                                    "threat": cell.key, "norm": cell.threat.norm, "eps_255": cell.eps_255,
                                    "manifest_sha256": manifest.sha256, "provenance": loaded.origin[cell.spec.text],
                                    "device": device_name(ctx.device), "code_version": version,
                                    "allowed_dirty": dirty, **result})
        theirs = [c for c in cells if c.spec == cell.spec]
        if cell == next(c for c in reversed(mine) if c.spec == cell.spec) and all(finished(c, out, run_id) for c in theirs):
            write_card(protocol, cell.spec, theirs, out, limit)  # a model's card as soon as its last cell is done
        if bar is not None:
            bar.update(1)
            bar.set_postfix(model=cell.spec.text, dataset=cell.dataset, eps=cell.eps_255,
                            robust=f"{result['robust_acc']:.2f}")
    if bar is not None:
        bar.close()
    written = []
    for spec in models:
        if all(finished(c, out, run_id) for c in cells if c.spec == spec):
            written.append(write_card(protocol, spec, [c for c in cells if c.spec == spec], out, limit))
    return written


# --- the card ------------------------------------------------------------------------------------

def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def write_card(protocol: Protocol, spec: ModelSpec, cells: Sequence[Cell], out: Path, limit: int | None) -> Path:
    """Assemble one model's card from its cells on disk (the same whichever process computed them): the
    numbers, each with n and its 95% interval, the per-image results that paired tests read, and what
    the convergence check found (pmg_core/leaderboard/card_stats.py)."""
    done = [json.loads(c.path(out).read_text()) for c in cells]
    datasets = list(dict.fromkeys(d["dataset"] for d in done))
    threats = list(dict.fromkeys(d["threat"] for d in done))
    results: dict[str, dict] = {}
    for d in done:
        entry = results.setdefault(d["dataset"], {"n": d["n"], "clean_acc": d["clean_acc"], "robust": {}})
        entry.update({k: d[k] for k in ("samples", "clean_right") if k in d})
        entry["robust"][d["threat"]] = {k: d[k] for k in ("robust_acc", "robust_acc_unaware", "robust_acc_by_attack",
                                                          "robust_right", "tau_threshold", "gate_open") if k in d}
    averages = {"clean_acc": _mean(results[ds]["clean_acc"] for ds in datasets),
                "robust_acc": {t: _mean(results[ds]["robust"][t]["robust_acc"] for ds in datasets) for t in threats}}
    if any("robust_acc_unaware" in d for d in done):
        averages["robust_acc_unaware"] = {t: _mean(results[ds]["robust"][t]["robust_acc_unaware"] for ds in datasets)
                                          for t in threats}
    card = {
        "card_version": CARD_VERSION, "model": spec.text, "name": spec.slug,
        "defense": None if spec.defense == "none" else _defense_block(spec, done),
        **done[0]["provenance"], "preset": done[0].get("preset"),
        "protocol": {"name": protocol.name, "version": protocol.version, "title": protocol.title, "limit": limit,
                     "definition_sha256": protocol.definition_sha256(),
                     "manifests": {d: json.loads((out / "manifests" / f"{d}.json").read_text())["sha256"]
                                   for d in datasets},
                     "settings": protocol.describe()},
        "code_version": sorted({d["code_version"] for d in done}), "allowed_dirty": any(d.get("allowed_dirty") for d in done),
        "device": sorted({d["device"] for d in done}),
        "results": results, "averages": averages,
        "convergence": card_stats.convergence(done, CONVERGED_POINTS, (
            f"the menu again at twice the attack steps and EOT draws on every image still robust in a cell "
            f"({'all of them' if protocol.convergence_samples is None else f'at most {max(protocol.convergence_samples, MIN_CHECKED)}'}) "
            f"moves its robust accuracy by at most {CONVERGED_POINTS} points; a cell with none is not checked")),
        "seconds": round(sum(d["seconds"] + d["convergence"].get("seconds", 0.0) for d in done), 1),
        "published": published_beside(spec, protocol, averages),
    }
    _add_intervals(card)
    path = out / f"{spec.slug}.json"
    write_json(path, card)
    return path


def _add_intervals(card: dict) -> None:
    """Each accuracy's 95% interval beside it ([low, high] in [0, 1]), and n, for people reading the file."""
    for entry in card["results"].values():
        entry["clean_interval"] = _bounds(card_stats.dataset_interval(entry, "clean"))
        for threat, robust in entry["robust"].items():
            robust["robust_interval"] = _bounds(card_stats.dataset_interval(entry, threat))
            if "robust_acc_unaware" in robust:
                unaware = card_stats.dataset_interval(entry, card_stats.UNAWARE + threat)
                robust["robust_unaware_interval"] = _bounds(unaware)
    found = card_stats.intervals(card)
    avg = card["averages"]
    avg["n"] = sum(e["n"] for e in card["results"].values())
    avg["interval_method"] = found["clean"].method
    avg["clean_interval"] = _bounds(found["clean"])
    avg["robust_interval"] = {t: _bounds(found[t]) for t in avg["robust_acc"]}
    if "robust_acc_unaware" in avg:
        avg["robust_unaware_interval"] = {t: _bounds(found[card_stats.UNAWARE + t]) for t in avg["robust_acc_unaware"]}


def _bounds(interval: card_stats.Interval) -> list[float]:
    return [round(interval.low, 6), round(interval.high, 6)]


def _defense_block(spec: ModelSpec, done: Sequence[dict]) -> dict:
    """The defense a card's model ran behind, with the settings its cells ran (a threshold only where
    there is a gate: the one asked for; each cell's, calibrated or not, is in its results)."""
    ran = {k: v for k, v in done[0]["defense_settings"].items() if k != "tau_threshold"}
    out = {"name": spec.defense, "title": ran.pop("title"), "settings": ran}
    if ran.get("gated"):
        out["threshold"] = "published" if spec.threshold is None else spec.threshold
    return out


def published_beside(spec: ModelSpec, protocol: Protocol, averages: dict) -> dict | None:
    """The authors' own averages beside ours (a zoo entry's published numbers), and what differs."""
    entry = ZOO.get(spec.model)
    if entry is None or entry.published is None or spec.defense != "none":
        return None
    pub, theirs = entry.published, entry.published.protocol
    ours_robust = {t: v for t, v in averages["robust_acc"].items() if t.startswith("Linf ")}
    rows = [{"metric": "clean", "theirs": pub.clean, "ours": round(100 * averages["clean_acc"], 2)}]
    for eps, value in pub.robust.items():
        key = f"Linf {eps:g}/255"
        if key in ours_robust:
            rows.append({"metric": f"robust {key}", "theirs": value, "ours": round(100 * ours_robust[key], 2)})
    for r in rows:
        r["difference"] = round(r["ours"] - r["theirs"], 2)
    ours = set(protocol.dataset_names())
    differs = []
    if set(theirs.datasets) != ours:
        differs.append(f"datasets: only theirs {sorted(set(theirs.datasets) - ours) or 'none'}, "
                       f"only ours {sorted(ours - set(theirs.datasets)) or 'none'}")
    attack = protocol.threats[0]
    if (theirs.attack, theirs.steps) != (attack.attack, attack.steps):
        differs.append(f"attack: theirs {theirs.attack}-{theirs.steps}, ours {attack.attack}-{attack.steps}")
    if theirs.prompts != protocol.prompts:
        differs.append(f"prompts: theirs {theirs.prompts}, ours {protocol.prompts}")
    if theirs.samples != protocol.samples:
        differs.append(f"samples per dataset: theirs {theirs.samples or 'all'}, ours {protocol.samples or 'all'}")
    differs.append(theirs.note)
    return {"where": pub.where, "protocol": theirs.name, "averages": rows, "what_differs": differs}


def read_cards(folder: str | Path) -> list[dict]:
    """Every card in a folder (files with a card_version), in the order people read them."""
    folder = Path(folder)
    check(folder.is_dir(), f"'{folder}' is not a folder of cards (`python -m pmg_core cards run --out {folder}`).")
    cards = []
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "card_version" in doc:
            cards.append(doc)
    return cards
