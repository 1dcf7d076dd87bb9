"""Zero-shot clean and robust accuracy of several models over several datasets -> tables.

Robust accuracy, rule "ever" (the default): a sample counts as robust only if it is classified
correctly clean and at every PGD iterate ("ever fooled" is the stronger criterion). Rule "final"
scores only the last iterate, as the public PMG-AFT code does; a sample fooled mid-attack may then
count as robust. Attacks that are not our PGD (AutoAttack, pgd-public-code) are judged on the
images they return. Every report names its protocol in one line (`protocol`), the robust rule
included, and says when an attack ran fewer iterations than its name promises.

Behind a test-time defense (`defense`, pmg_core/attacks/defenses.py), and for every model when `menu` is
set (the protocols' one menu for every row), a model is attacked by the menu of
pmg_core/attacks/adaptive.py (`adaptive`), and its row carries `robust_acc_by_attack` (each attack on its
own, over its restarts) and `robust_acc`, best-of: a sample counts as robust only if no attack
fools the model. Behind a defense the row also carries `robust_acc_unaware`, the usual attack on
the undefended model with its adversarial image then shown to the defended one, which counts in
the best-of too. A deterministic model (undefended, or behind CLIPure) is judged "ever fooled"
like PGD on a plain model; a randomised one (TTC) on the attacks' returned images, each judged on
`judge_draws` fresh draws and right on all of them (adaptive.py says why), and its clean images by
the same rule: only samples right when judged are attacked. A randomised defense's random starts
come from one seeded stream per batch, so its rows, unlike the others, depend on the batch size.
`per_sample=True` adds each sample's flags to the row (`per_sample`: positions in the dataset,
clean_right, robust_right, robust_right_by_attack), what a robustness card's cell keeps. Behind TTC the row also gives the tau
threshold used (`defense_threshold`: the published 0.2, a number, or "calibrated", the median tau
of the clean images evaluated) and `gate_open`, the share of clean images whose tau reaches it,
which TTC passes on without a counterattack. Samples misclassified clean are not attacked, and under "ever"
samples fooled mid-attack stop being attacked (early stop): both change time, not the result.
PGD's random start is drawn per sample from (seed, sample index), so results do not depend on
the batch size. `attack_amp`: PGD's gradient passes under bf16 autocast where the device runs bf16
(precision.amp_attack_dtype; a CPU without bf16 instructions stays fp32), its verdicts still fp32
(PGD's judge_fp32); each row names the precision of its attack passes (`attack_precision`).
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from ..attacks.adaptive import DEFAULT_SUITE, SuiteSettings, check_suite, clean_tau, has_gate, judge_clean, menu_for, run_suite
from ..attacks.pgd import APGD_TARGETS, ATTACKS, PGD, check_eot, check_norm, get_attack, make_attack, random_start
from ..attacks.defenses import DefendedClassifier, DefenseSettings, defend, get_defense
from ..data.datasets import ZeroShotDataset, expand_names, get_dataset
from ..training.distributed import Dist, all_reduce_sum
from ..core.errors import check, check_number
from ..core.env import check_device, default_device
from ..models.clip import ClipModel, ZeroShotClassifier
from ..data.paper_prompts import check_prompts
from ..core.precision import amp_attack_dtype
from ..data.presets import Preset, get_preset
from ..models.zoo import load_models
from ..core.units import to_255


ROBUST_RULES = ("ever", "final")


@dataclass
class EvalConfig:
    models: list[str] = field(default_factory=lambda: ["clip-tiny"])
    datasets: list[str] = field(default_factory=lambda: ["mini"])
    eps: float = 1 / 255  # pixel units
    steps: int | None = None  # None: the attack's standard count (PGD 10, AutoAttack 100)
    step_size: float | None = 1 / 255
    attack: str = "pgd"  # a name in attacks.ATTACKS: pgd | cw | autoattack | autoattack-standard | pgd-public-code
    norm: str = "Linf"
    random_start: bool = True
    early_stop: bool = True
    robust_rule: str = "ever"  # ever: fooled at no iterate; final: the last iterate only (the public code's)
    limit: int | None = None  # samples per dataset (a fixed seeded subset)
    batch_size: int = 128
    seed: int = 0
    preset: str | None = None  # None: each model's own (the one it was fine-tuned with), else `paper`
    prompts: str = "public-code"  # class names and templates of the paper's datasets (paper_prompts.py)
    data_root: str | None = None
    download: bool | None = None  # fetch a missing dataset (None: when online; the public app: never)
    device: str | None = None
    num_workers: int = 0  # data-loading processes (decoding JPEGs of the paper's sets is the bottleneck)
    defense: str = "none"  # a test-time defense (pmg_core/attacks/defenses.py): ttc
    eot: int = 4  # the adaptive attacks' gradients per step, each through a fresh draw of the defense
    adaptive: list[str] = field(default_factory=lambda: list(DEFAULT_SUITE))  # attacks through a defense (adaptive.ADAPTIVE), best-of with the unaware one
    restarts: int = 1  # runs of PGD / CW and of every attack behind a defense from fresh starts, best-of
    judge_draws: int = 1  # behind a defense: fresh draws each attack's image is judged on (right on all = robust)
    defense_threshold: float | str | None = None  # TTC's tau threshold: None the published, a number, or "calibrated"
    attack_amp: bool = False  # PGD's passes in bf16 autocast where the device runs bf16 (verdicts stay fp32)
    menu: bool = False  # an undefended model faces `adaptive` too (best-of), as a defended one does (protocols)
    apgd_targets: int = APGD_TARGETS  # apgd-t's target classes: the likeliest wrong ones

    def __post_init__(self) -> None:
        if self.steps is None and self.attack in ATTACKS:
            self.steps = ATTACKS[self.attack].standard_steps

    def validate(self) -> None:
        check(len(self.models) > 0, "Give at least one model to evaluate.")
        check_device(self.device)
        check(self.robust_rule in ROBUST_RULES,
              f"robust rule must be one of {', '.join(ROBUST_RULES)}; got {self.robust_rule!r}.")
        check_number("eps", self.eps, low=0, high=1 if self.norm == "Linf" else None)
        check_norm(self.norm)
        if self.steps is None:
            self.steps = get_attack(self.attack).standard_steps
        check_number("attack steps", self.steps, low=0, integer=True)
        if self.step_size is not None:
            check_number("step size", self.step_size, low=0)
        check(get_attack(self.attack).pgd_loss is not None or self.steps >= 1,
              f"{self.attack} needs at least 1 iteration (attack steps); got {self.steps}.")
        check_number("batch size", self.batch_size, low=1, integer=True)
        check_number("seed", self.seed, low=0, high=2**32 - 1, integer=True)  # torch seeds overflow beyond int64
        if self.limit is not None:
            check_number("limit", self.limit, low=1, integer=True)
        check_number("data-loading workers", self.num_workers, low=0, integer=True)
        if self.preset is not None:
            get_preset(self.preset)
        check_prompts(self.prompts)
        defense = get_defense(self.defense)
        check_eot(self.eot)
        if not defense.randomised:  # equal inputs, equal outputs: one draw is the expectation and the verdict
            self.eot, self.judge_draws = 1, 1
        # Without a defense and without `menu` the suite is not run, so any list passes.
        self.adaptive = list(check_suite(self.adaptive, defense.gated or (self.defense == "none" and not self.menu)))
        check_number("APGD-T targets", self.apgd_targets, low=1, integer=True)
        check_number("restarts", self.restarts, low=1, integer=True)
        check_number("judge draws", self.judge_draws, low=1, integer=True)
        if isinstance(self.defense_threshold, str) and self.defense_threshold != "calibrated":
            self.defense_threshold = _number(self.defense_threshold)
        if self.defense_threshold is not None and self.defense_threshold != "calibrated":
            check_number("defense threshold", self.defense_threshold, low=0)


def _number(text: str) -> float:
    """A threshold typed as text (the command line's) as a number, or one sentence refusing it."""
    try:
        return float(text)
    except ValueError:
        check(False, f"defense threshold must be a number or 'calibrated'; got {text!r}.")


def model_preset(model: ClipModel, cfg: EvalConfig) -> Preset:
    """The numerics a model is judged with: the config's if set, else the model's own."""
    return get_preset(cfg.preset or model.own_preset)


def sample_noise(indices: Sequence[int], shape: tuple, eps: float, norm: str, seed: int) -> torch.Tensor:
    """Random-start perturbations drawn per sample from (seed, index): batching-independent."""
    out = [random_start(torch.empty((1, *shape)), eps, norm, torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
           for i in indices]
    return torch.cat(out)


@torch.no_grad()
def _clean_logits(clf: ZeroShotClassifier, x: torch.Tensor) -> torch.Tensor:
    return clf(x)


def attack_dtype(cfg: EvalConfig, preset: Preset, device) -> torch.dtype | None:
    """The dtype of PGD's passes: the preset's own (public-code's fp16), else bf16 with attack_amp
    where the device runs it, else None (fp32). `device`: a device, or a callable giving it (asked
    only with attack_amp: a classifier need not say where it runs otherwise)."""
    if preset.attack_dtype is None and cfg.attack_amp:
        return amp_attack_dtype(device() if callable(device) else device)
    return preset.attack_dtype


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def _pgd(clf: ZeroShotClassifier, cfg: EvalConfig, preset: Preset) -> PGD:
    final = cfg.robust_rule == "final"  # the last iterate counts: every sample runs every step
    dtype = attack_dtype(cfg, preset, lambda: clf.text_features.device)
    return PGD(clf, cfg.eps, cfg.step_size, cfg.steps, cfg.norm, get_attack(cfg.attack).pgd_loss,
               random_start=False, select="last" if final else "best", early_stop=cfg.early_stop and not final,
               dtype=dtype, judge_fp32=dtype is not None and dtype != preset.attack_dtype)


# Restart r > 0 draws its starts from seed + RESTART_SEED * r: far from the seeds people type.
RESTART_SEED = 7919


def _starts(idx: torch.Tensor, x: torch.Tensor, cfg: EvalConfig, restart: int = 0) -> torch.Tensor:
    """Each sample's PGD starting point: seeded per sample index (and restart), or none on the first."""
    if (not cfg.random_start and restart == 0) or len(idx) == 0:
        return torch.zeros_like(x)
    return sample_noise(idx.tolist(), tuple(x.shape[1:]), cfg.eps, cfg.norm, cfg.seed + RESTART_SEED * restart).to(x)


def _streams(cfg: EvalConfig) -> bool:
    """PGD with early stop attacks a whole dataset as one stream (PGD.fooled_stream), so its passes
    stay full while fooled samples leave; other attacks go batch by batch (evaluate_batch)."""
    return (get_attack(cfg.attack).pgd_loss is not None and cfg.early_stop and cfg.robust_rule == "ever"
            and cfg.eps > 0 and cfg.steps > 0 and not _suite(cfg) and cfg.restarts == 1)


def _suite(cfg: EvalConfig) -> bool:
    """Whether models face the menu of adaptive.py: behind a defense, or every model with `menu`."""
    return cfg.defense != "none" or cfg.menu


def evaluate_batch(clf: ZeroShotClassifier, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                   cfg: EvalConfig, preset: Preset | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample clean-correct and robust-correct flags for one batch (`preset`: the attack's numerics)."""
    logits = _clean_logits(clf, x)
    clean = logits.argmax(1) == y
    robust = clean.clone()
    todo = clean.nonzero().squeeze(1)
    pgd_loss = get_attack(cfg.attack).pgd_loss
    if todo.numel() == 0 or cfg.eps == 0 or cfg.steps == 0 and pgd_loss is not None:
        return clean, robust
    xs, ys = x[todo], y[todo]
    preset = preset or get_preset(cfg.preset or "paper")
    if pgd_loss is not None:
        for r in range(cfg.restarts):  # each from its own per-sample start; robust only if none fools it
            res = _pgd(clf, cfg, preset).run(xs, ys, init=_starts(idx[todo.cpu()], xs, cfg, r),
                                             clean_logits=logits[todo])
            robust[todo] &= ~res.fooled if cfg.robust_rule == "ever" else res.adv_pred == ys
    else:
        adv = make_attack(cfg.attack, clf, cfg.eps, cfg.steps, cfg.step_size, cfg.norm, seed=cfg.seed)(xs, ys)
        robust[todo] = _clean_logits(clf, adv).argmax(1) == ys
    return clean, robust


def suite_settings(cfg: EvalConfig, preset: Preset) -> SuiteSettings:
    return SuiteSettings(cfg.attack, cfg.eps, cfg.steps, cfg.step_size, cfg.norm, cfg.eot, cfg.restarts,
                         cfg.judge_draws, preset.attack_dtype, cfg.apgd_targets)


def evaluate_defended_batch(defended: DefendedClassifier, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                            cfg: EvalConfig, preset: Preset) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample flags for one batch facing the menu (behind a defense, or any model with `menu`):
    clean-correct as judged, robust to every attack (best-of), and robust to each attack of the
    menu, `unaware` first behind a defense (module docstring)."""
    defended.reseed(cfg.seed * 1_000_003 + int(idx[0]))
    clean, clean_logits = judge_clean(defended, x, y, cfg.judge_draws)
    by_attack = {n: clean.clone() for n in menu_for(defended, cfg.adaptive)}
    todo = clean.nonzero().squeeze(1)
    loss = get_attack(cfg.attack).pgd_loss
    if todo.numel() == 0 or cfg.eps == 0 or cfg.steps == 0 and loss is not None:
        return clean, clean.clone(), by_attack
    xs, ys, todo_idx = x[todo], y[todo], idx[todo.cpu()]
    verdicts = run_suite(defended, xs, ys, list(by_attack), suite_settings(cfg, preset),
                         lambda r: _starts(todo_idx, xs, cfg, r), seed=cfg.seed, clean_logits=clean_logits[todo])
    for n, right in verdicts.items():
        by_attack[n][todo] = right
    robust = torch.stack(list(by_attack.values())).all(0)  # best-of: no attack's image may fool it
    return clean, robust, by_attack


def defense_threshold(defended: DefendedClassifier, data: ZeroShotDataset, cfg: EvalConfig) -> tuple[float, float]:
    """For a gated defense: (the tau threshold to use, the share of the data's clean images whose tau
    reaches it). Every image of `data` is measured (on every rank alike), each from its own seeded
    noise, so the calibrated threshold does not depend on batching or sharding."""
    s = defended.defense.settings
    loader = DataLoader(_Indexed(data.data), batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    device = next(defended.classifier.parameters()).device
    taus = torch.cat([clean_tau(defended, x.to(device), sample_noise(idx.tolist(), tuple(x.shape[1:]), s.eps, "Linf",
                                                                      cfg.seed).to(device)).cpu()
                      for x, _, idx in loader])
    if cfg.defense_threshold == "calibrated":
        threshold = float(taus.quantile(0.5))
    elif cfg.defense_threshold is not None:
        threshold = float(cfg.defense_threshold)
    else:
        threshold = s.tau_threshold
    return threshold, float((taus >= threshold).float().mean())


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x, y, i


def iter_evaluate_model(model: ClipModel, data: ZeroShotDataset, cfg: EvalConfig,
                        ctx: Dist | None = None, per_sample: bool = False) -> Iterator[dict]:
    """Events for one model on one dataset: progress after each batch, then the result row.

    Under torchrun (`ctx` of several ranks) each rank takes every world-th sample, a disjoint
    shard with no padding, and the result row holds the exact counts summed over all ranks.
    `per_sample`: the row also holds every sample's flags (module docstring), gathered from all ranks.
    """
    ctx = ctx or Dist()
    start = time.time()
    preset = model_preset(model, cfg)
    clf = model.classifier(data.classes, data.templates, preset, exact=True).eval()
    # Indices stay global, so each sample's random start is the same whoever evaluates it.
    shard = Subset(_Indexed(data.data), range(ctx.rank, len(data), ctx.world)) if ctx.enabled else _Indexed(data.data)
    loader = DataLoader(shard, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    counts = [0, 0, 0, 0]  # samples, clean-correct, robust-correct (adaptive behind a defense), unaware so far
    defended = (defend(model, clf, cfg.defense, DefenseSettings(seed=cfg.seed)) if _suite(cfg) else None)
    menu = menu_for(defended, cfg.adaptive) if defended is not None else ()
    by_attack = dict.fromkeys(menu, 0)  # robust-correct per attack of the menu
    name = model.name if cfg.defense == "none" else f"{model.name}+{cfg.defense}"
    # Per sample (positions in `data`), filled where this rank evaluated them: clean, robust, then one per attack.
    flags = torch.zeros(2 + len(menu), len(data), dtype=torch.long)
    gate = None
    if defended is not None and has_gate(defended):
        gate = defense_threshold(defended, data, cfg)
        defended.defense.settings.tau_threshold = gate[0]

    def progress() -> dict:
        return {"event": "progress", "model": name, "dataset": data.name, "done": counts[0], "total": len(shard)}

    if _streams(cfg):
        attacked = []  # positions of the samples handed to the attack, in stream order

        def clean_correct():  # the clean pass, batch by batch; what it gets right goes on to the attack
            for x, y, idx in loader:
                x, y = x.to(model.device), y.to(model.device)
                todo = (_clean_logits(clf, x).argmax(1) == y).nonzero().squeeze(1)
                counts[0], counts[1], counts[2] = counts[0] + len(y), counts[1] + len(todo), counts[2] + len(todo)
                attacked.append(idx[todo.cpu()])
                flags[0:2, attacked[-1]] = 1
                yield x[todo], y[todo], _starts(idx[todo.cpu()], x[todo], cfg)

        shown = 0
        for positions, fooled in _pgd(clf, cfg, preset).fooled_stream(clean_correct(), pool=cfg.batch_size):
            counts[2] -= int(fooled.sum())
            flags[1, torch.cat(attacked)[positions[fooled]]] = 0
            if counts[0] > shown:
                shown = counts[0]
                yield progress()
    else:
        for x, y, idx in loader:
            x, y = x.to(model.device), y.to(model.device)
            if defended is None:
                clean, robust = evaluate_batch(clf, x, y, idx, cfg, preset)
                unaware = robust
            else:
                clean, robust, verdicts = evaluate_defended_batch(defended, x, y, idx, cfg, preset)
                unaware = verdicts.get("unaware", robust)
                by_attack = {k: by_attack[k] + int(v.sum()) for k, v in verdicts.items()}
                flags[2:, idx] = torch.stack([verdicts[k].long().cpu() for k in menu])
            flags[0, idx], flags[1, idx] = clean.long().cpu(), robust.long().cpu()
            counts = [c + v for c, v in zip(counts, (len(y), int(clean.sum()), int(robust.sum()), int(unaware.sum())))]
            yield progress()
    if ctx.enabled:
        summed = [int(v) for v in all_reduce_sum(torch.tensor(counts + list(by_attack.values())), ctx)]
        counts, by_attack = summed[:4], dict(zip(by_attack, summed[4:]))
        if per_sample:
            flags = all_reduce_sum(flags, ctx)
    n, clean_n, robust_n, unaware_n = counts
    row = {"event": "result", "model": name, "dataset": data.name, "n": n, "clean_correct": clean_n,
           "robust_correct": robust_n, "clean_acc": clean_n / max(n, 1), "robust_acc": robust_n / max(n, 1),
           "preset": preset.name, "attack_precision": precision_name(attack_dtype(cfg, preset, model.device)),
           "seconds": round(time.time() - start, 3)}
    if defended is not None:
        row.update(robust_correct_by_attack=by_attack, robust_acc_by_attack={k: v / max(n, 1) for k, v in by_attack.items()},
                   defense_settings=defended.defense.describe())
    if cfg.defense != "none":
        row.update(defense=cfg.defense, robust_correct_unaware=unaware_n, robust_acc_unaware=unaware_n / max(n, 1))
        if gate is not None:
            row.update(tau_threshold=gate[0], gate_open=gate[1])
    if per_sample:
        row["per_sample"] = {"samples": list(range(len(data))), "clean_right": flags[0].tolist(),
                             "robust_right": flags[1].tolist(),
                             "robust_right_by_attack": {k: flags[2 + i].tolist() for i, k in enumerate(menu)}}
    yield row


def evaluate_model(model: ClipModel, data: ZeroShotDataset, cfg: EvalConfig, per_sample: bool = False) -> dict:
    """Clean and robust accuracy of one model on one dataset (one result row)."""
    *_, row = iter_evaluate_model(model, data, cfg, per_sample=per_sample)
    return {k: v for k, v in row.items() if k != "event"}


def iter_evaluate(cfg: EvalConfig, models: Sequence[ClipModel] | None = None,
                  ctx: Dist | None = None) -> Iterator[dict]:
    """Progress and result events over every model x dataset (stop by closing the generator).

    Under torchrun pass this process's `ctx`: every rank must run the same evaluation.
    """
    cfg.validate()
    device = ctx.device if ctx is not None and ctx.enabled else torch.device(cfg.device or default_device())
    names = expand_names(cfg.datasets)
    datasets = [get_dataset(n, split="test", root=cfg.data_root, prompts=cfg.prompts, download=cfg.download).limited(cfg.limit, cfg.seed) for n in names]
    models = list(models) if models is not None else load_models(cfg.models, device)
    for model in models:
        for data in datasets:
            yield from iter_evaluate_model(model, data, cfg, ctx)


def evaluate(cfg: EvalConfig, models: Sequence[ClipModel] | None = None, progress: bool = False,
             ctx: Dist | None = None) -> dict:
    """Run the whole evaluation; returns {"config": ..., "results": [...]} (accuracies as fractions).

    Under torchrun every rank gets the same full report; only rank 0 shows progress.
    """
    results = []
    bar = None
    progress = progress and (ctx is None or ctx.is_main)
    for ev in iter_evaluate(cfg, models, ctx):
        if progress and bar is None:  # at the first event: models and datasets loaded without error
            from tqdm.auto import tqdm

            # With a total, tqdm shows how far along the run is and how long is left.
            total = len(models if models is not None else cfg.models) * len(expand_names(cfg.datasets))
            bar = tqdm(desc="evaluating", unit="model x dataset", total=total)
        if ev["event"] == "result":
            results.append({k: v for k, v in ev.items() if k != "event"})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(model=ev["model"], dataset=ev["dataset"], robust=f"{ev['robust_acc']:.3f}")
    if bar is not None:
        bar.close()
    config = asdict(cfg)
    config["eps_255"] = to_255(cfg.eps)
    return {"config": config, "protocol": describe_protocol(cfg), "results": results}


def describe_protocol(cfg: EvalConfig) -> str:
    """One line naming what a report's numbers mean: attack, strength, robust rule, prompts."""
    entry = get_attack(cfg.attack)
    step = f", step {cfg.step_size * 255:g}/255" if cfg.step_size is not None and entry.pgd_loss else ""
    rule = (f"robust = {'never fooled at any iterate' if cfg.robust_rule == 'ever' else 'right at the final iterate'} "
            f"(--robust-rule {cfg.robust_rule})" if entry.pgd_loss else "robust = right on the returned image")
    if _suite(cfg) and not get_defense(cfg.defense).randomised:  # deterministic: "ever fooled" (adaptive.py)
        rule = "robust = never fooled at any iterate of any attack of the menu (the unaware one: its returned image)"
    elif cfg.defense != "none":  # a randomised model: judged on each attack's returned image (adaptive.py)
        rule = ("robust = right on each attack's returned image (a fresh draw of the defense)" if cfg.judge_draws == 1
                else f"robust = right on the clean image and each attack's returned image on all of {cfg.judge_draws} "
                     "fresh draws of the defense")
    line = (f"{cfg.attack}, {cfg.steps} iterations, {cfg.norm} eps {cfg.eps * 255:g}/255{step}; {rule}; "
            f"prompts {cfg.prompts}.")
    if cfg.attack_amp and entry.pgd_loss:
        line += " PGD's passes in bf16 autocast where the device runs bf16 (--attack-amp), its verdicts in fp32."
    if cfg.steps < entry.standard_steps:
        line += f" Fewer iterations than {cfg.attack}'s standard {entry.standard_steps}: a weaker attack."
    if cfg.defense != "none":
        line += (f" Behind {cfg.defense}{_threshold_words(cfg)}: right on the clean image and on the image of the "
                 f"attack unaware of the defense; adaptive (best-of): also on those of "
                 f"{', '.join(_adaptive_words(n, cfg) for n in cfg.adaptive)}")
        line += f"; best of {cfg.restarts} restarts each." if cfg.restarts > 1 else "."
    elif cfg.menu:
        line += (f" Menu (best-of): {', '.join(_adaptive_words(n, cfg) for n in cfg.adaptive)}"
                 + (f"; best of {cfg.restarts} restarts each." if cfg.restarts > 1 else "."))
    elif cfg.restarts > 1 and entry.pgd_loss:
        line += f" Best of {cfg.restarts} restarts."
    return line


def _adaptive_words(name: str, cfg: EvalConfig) -> str:
    entry = get_attack(cfg.attack)
    if cfg.defense == "none":
        return (cfg.attack if name == "bpda-eot" else
                f"APGD-T toward the {cfg.apgd_targets} likeliest wrong classes" if name == "apgd-t" else name.upper())
    if name == "bpda-eot":
        through = (f"EOT-{cfg.eot} {cfg.attack} through it ({_gradient_words(cfg)})" if entry.pgd_loss or entry.eot
                   else f"{cfg.attack} through it ({_gradient_words(cfg)})")
        return through + (", EOT in its gradient attacks (APGD)" if entry.eot and not entry.pgd_loss else "")
    if name == "gate":
        return f"EOT-{cfg.eot} gate-aware PGD through it (its loss plus tau pushed past the threshold)"
    what = f"APGD-T toward the {cfg.apgd_targets} likeliest wrong classes" if name == "apgd-t" else name.upper()
    return f"EOT-{cfg.eot} {what} through it ({_gradient_words(cfg)})"


def _gradient_words(cfg: EvalConfig) -> str:
    """How gradients pass the defense: a latent one is differentiated exactly, an image-space one by BPDA."""
    return "exact gradients" if get_defense(cfg.defense).latent else "BPDA"


def _threshold_words(cfg: EvalConfig) -> str:
    if not get_defense(cfg.defense).gated:
        return ""
    if cfg.defense_threshold == "calibrated":
        return " (tau threshold calibrated: the median tau of the clean images evaluated)"
    if cfg.defense_threshold is None:
        return f" (tau threshold {DefenseSettings().tau_threshold:g}, the published one)"
    return f" (tau threshold {float(cfg.defense_threshold):g})"


# --- tables --------------------------------------------------------------------------------------

def _pivot(results: list[dict]) -> tuple[list[str], list[str], dict]:
    models = list(dict.fromkeys(r["model"] for r in results))
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    cell = {(r["model"], r["dataset"]): r for r in results}
    return models, datasets, cell


def _preset_of(row: dict) -> str:
    return row.get("preset") or "-"  # reports written before rows named their preset


def mixed_presets(results: list[dict]) -> str | None:
    """One line saying that a table judges its models with different presets, or None when it does not."""
    presets = list(dict.fromkeys(_preset_of(r) for r in results))
    if len(presets) < 2:
        return None
    return (f"Note: this table mixes presets ({', '.join(presets)}): each model is judged with its own "
            "logits, normalisation and attack numerics, so its rows were not attacked alike (--preset sets one for all).")


def to_markdown(results: list[dict]) -> str:
    """The paper's table layout: one row per model and metric, one column per dataset, plus Average;
    each model's preset in its own column, and a note under the table when presets are mixed."""
    models, datasets, cell = _pivot(results)
    preset = {r["model"]: _preset_of(r) for r in results}
    lines = ["| model | preset | metric | " + " | ".join(datasets) + " | Average |",
             "|---|---|---|" + "---:|" * (len(datasets) + 1)]
    for m in models:
        for metric, key in _metrics(m, results):
            vals = [cell[(m, d)][key] * 100 if (m, d) in cell else None for d in datasets]
            known = [v for v in vals if v is not None]
            avg = sum(known) / len(known) if known else float("nan")
            row = " | ".join("-" if v is None else f"{v:.2f}" for v in vals)
            lines.append(f"| {m} | {preset[m]} | {metric} | {row} | {avg:.2f} |")
    note = mixed_presets(results)
    return "\n".join(lines + ([f"\n{note}"] if note else [])) + "\n"


def _metrics(model: str, results: list[dict]) -> tuple[tuple[str, str], ...]:
    """(label, key) of a model's rows: a defended model shows both of its robust accuracies."""
    if any("robust_acc_unaware" in r for r in results if r["model"] == model):
        return (("robust, adaptive attack", "robust_acc"), ("robust, attack unaware of the defense", "robust_acc_unaware"),
                ("clean", "clean_acc"))
    return (("robust", "robust_acc"), ("clean", "clean_acc"))


def to_csv(results: list[dict]) -> str:
    buf = io.StringIO()
    cols = ["model", "preset", "dataset", "n", "clean_correct", "robust_correct", "clean_acc", "robust_acc",
            "robust_acc_unaware", "tau_threshold", "gate_open", "seconds"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows({**r, "preset": _preset_of(r)} for r in results)
    return buf.getvalue()


def averages(results: list[dict]) -> dict[str, dict[str, float]]:
    models, datasets, cell = _pivot(results)
    out = {}
    for m in models:
        rows = [cell[(m, d)] for d in datasets if (m, d) in cell]
        out[m] = {k: sum(r[k] for r in rows) / len(rows) for _, k in _metrics(m, results)}
    return out


def write_report(report: dict, path: str) -> list[str]:
    """Write FILE.json plus FILE.csv and FILE.md beside it; returns the paths written."""
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(report, indent=2))
    csv_p, md_p = p.with_suffix(".csv"), p.with_suffix(".md")
    csv_p.write_text(to_csv(report["results"]))
    md_p.write_text((f"{report['protocol']}\n\n" if report.get("protocol") else "") + to_markdown(report["results"]))
    return [str(p), str(csv_p), str(md_p)]
