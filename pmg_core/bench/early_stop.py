"""The early-stop study: robust evaluation with per-sample early stop on and off, and attacking
every sample for every step, on one (by default the embedded tiny) CLIP; the reported accuracy
must be the same for all three, and the pass counts say what speed-up the work itself allows.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict

import torch

from ..core.units import to_255
from .config import BenchConfig
from .instruments import best_seconds, count_passes, sync


def eval_early_stop_study(cfg: BenchConfig, device: torch.device) -> dict:
    """Robust evaluation of the embedded tiny CLIP with early stop on / off / attacking everything.

    The datasets are built once before timing (rendering them is the same for every variant and no
    part of the attack); each timed run is the evaluation proper: text features, batches, attack."""
    from ..data.datasets import expand_names, get_dataset
    from ..evaluation.accuracy import EvalConfig, evaluate_model
    from ..models.clip import checkpoint_path, load_model

    spec = cfg.eval_model
    note = None
    if spec == "clip-tiny" and checkpoint_path(spec) is None:
        spec, note = "pmg-tiny", "checkpoints/clip-tiny.safetensors is missing: a random-init pmg-tiny stood in"
    model = load_model(spec, device=device)
    eps = cfg.eval_eps if cfg.eval_eps is not None else cfg.eps
    step = cfg.eval_step_size if cfg.eval_step_size is not None else eps
    base = EvalConfig(models=[spec], datasets=[n.strip() for n in cfg.eval_datasets.split(",") if n.strip()], eps=eps,
                      steps=cfg.eval_steps, step_size=step, limit=cfg.eval_limit, batch_size=cfg.eval_batch_size,
                      seed=cfg.seed, device=str(device))
    datasets = [get_dataset(n, split="test", root=base.data_root).limited(base.limit, base.seed)
                for n in expand_names(base.datasets)]
    variants = {"early_stop": dict(early_stop=True), "no_early_stop": dict(early_stop=False)}
    times: dict[str, list[float]] = {k: [] for k in (*variants, "attack_all")}
    rows: dict[str, list[dict]] = {}
    passes: dict[str, dict[str, int]] = {}

    def run(name: str) -> list[dict]:
        if name == "attack_all":
            return attack_everything(model, base, datasets)
        ecfg = EvalConfig(**{**asdict(base), **variants[name]})
        return [evaluate_model(model, data, ecfg) for data in datasets]

    for r in range(cfg.warmup + cfg.repeats):
        for name in times:
            # The first round also counts the work: images the encoder sees (a hook, microseconds).
            counting = count_passes(model.visual) if r == 0 else contextlib.nullcontext()
            sync(device)
            t0 = time.perf_counter()
            with counting as counted:
                rows[name] = run(name)
            sync(device)
            if r == 0:
                passes[name] = counted
            if r >= cfg.warmup:
                times[name].append(time.perf_counter() - t0)
    n = sum(row["n"] for row in rows["early_stop"])
    out: dict = {"model": spec, "datasets": cfg.eval_datasets, "samples": n, "steps": cfg.eval_steps,
                 "eps_255": to_255(eps), "step_size_255": to_255(step), "batch_size": cfg.eval_batch_size}
    if note:
        out["note"] = note
    for name, ts in times.items():
        robust = sum(row["robust_correct"] for row in rows[name])
        clean = sum(row["clean_correct"] for row in rows[name])
        out[name] = {"seconds": round(statistics.median(ts), 4), "seconds_all": [round(t, 4) for t in ts],
                     "robust_correct": robust, "clean_correct": clean, "robust_acc": robust / max(n, 1),
                     "images_per_s": round(n / statistics.median(ts), 2), **passes[name]}
    es = out["early_stop"]["seconds"]
    out["speedup_vs_attack_all"] = round(out["attack_all"]["seconds"] / es, 3)
    out["speedup_vs_no_early_stop"] = round(out["no_early_stop"]["seconds"] / es, 3)
    # What the pass counts allow: the speed-up if time were just passes, a gradient pass costing
    # `grad_pass_cost` forwards (measured on one full batch of this model).
    out["grad_pass_cost"] = round(gradient_pass_cost(model, datasets[0], base, device), 3)
    work = {k: out[k]["forward_images"] + out["grad_pass_cost"] * out[k]["gradient_images"] for k in times}
    out["pass_speedup_vs_attack_all"] = round(work["attack_all"] / max(work["early_stop"], 1e-9), 3)
    out["same_accuracy"] = len({out[k]["robust_correct"] for k in times}) == 1 and \
        len({out[k]["clean_correct"] for k in times}) == 1
    return out


def gradient_pass_cost(model, data, cfg, device: torch.device, repeats: int = 5) -> float:
    """Time of one forward + input-gradient pass over a full batch, in forwards of that batch."""
    from ..evaluation.accuracy import model_preset

    clf = model.classifier(data.classes, data.templates, model_preset(model, cfg)).eval()
    x = torch.stack([data.data[i][0] for i in range(min(len(data), cfg.batch_size))]).to(device)

    def forward():
        with torch.no_grad():
            clf(x)

    def gradient():
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(clf(xi).logsumexp(1).sum(), xi)

    return best_seconds(gradient, device, repeats) / best_seconds(forward, device, repeats)


def attack_everything(model, cfg, datasets) -> list[dict]:
    """The plain baseline: PGD on every sample (clean-wrong ones too) for every step, same
    per-sample random starts as evaluate(); robust = correct at every iterate."""
    from torch.utils.data import DataLoader

    from ..attacks.pgd import PGD
    from ..evaluation.accuracy import model_preset, sample_noise

    rows = []
    for data in datasets:
        clf = model.classifier(data.classes, data.templates, model_preset(model, cfg)).eval()
        attack = PGD(clf, cfg.eps, cfg.step_size, cfg.steps, cfg.norm, "ce", random_start=False, early_stop=False)
        n = clean_n = robust_n = start = 0
        for x, y in DataLoader(data.data, batch_size=cfg.batch_size, shuffle=False):
            x, y = x.to(model.device), y.to(model.device)
            idx = list(range(start, start + len(y)))
            start += len(y)
            with torch.no_grad():
                logits = clf(x)
            clean = logits.argmax(1) == y
            init = sample_noise(idx, tuple(x.shape[1:]), cfg.eps, cfg.norm, cfg.seed).to(x)
            robust = clean & ~attack.run(x, y, init=init, clean_logits=logits).fooled
            n, clean_n, robust_n = n + len(y), clean_n + int(clean.sum()), robust_n + int(robust.sum())
        rows.append({"dataset": data.name, "n": n, "clean_correct": clean_n, "robust_correct": robust_n})
    return rows
