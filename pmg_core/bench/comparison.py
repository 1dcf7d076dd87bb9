"""The app's live comparison (`bench --parts app`): today's path against the streamed one.

Four random-init CLIP models (nothing downloaded; timing does not need trained weights) and one
224 px image, attacked as the Attack tab attacks them. Today's path is the comparison as it ran
before streaming, written out here as a yardstick: each model in turn, PGD judging the clean image
itself, then the clean and adversarial verdicts, and nothing on the page until every model is done.
The streamed path is `explore.iter_compare`, timed to its first verdict and to its last, without a
stop margin (the same verdicts, checked), with the app's margin, and with the margin in the app's
lanes (`explore.cpu_lanes`: on a CPU, one model per torch thread at once, each on one thread), and
that again with the Attack tab's extras on (maps and every model's robustness radius, which come
after the verdicts: the first verdict should not move, the last update does).
Those rows run fp32 passes, as the app did before its precision policy; the last row is the app's
default settings (margin, lanes and the precision precision.py picks: bf16 passes on a CPU with bf16
instructions), its right/wrong marks counted against today's path (a bf16-made image need not be
the same image), beside the time of one gradient pass in each precision. Every row is run once per
repeat, in turn, and the load average before and after says how busy the machine was.

Random weights need one adjustment to show what the margin does: a model's logits can only move
as far as its logit scale lets them, and at the init scale (1/0.07) the attack never leads by a
logit. The first model, the stand-in for the non-robust original CLIP, gets CLIP's trained scale
(100) and is labelled with its own clean prediction; the other three keep the init scale, so the
margin never stops them and they run every step, as robust fine-tunes do.
"""
from __future__ import annotations

import math
import os
import statistics
import time

import torch

from ..core.units import to_255
from .config import BenchConfig, class_names
from .instruments import sync

STOP_MARGIN = 1.0  # the app's default (studio's Attack tab)


def bench_models(cfg: BenchConfig, device: torch.device) -> list:
    from ..models.clip import load_model

    models = []
    for i in range(cfg.app_models):
        torch.manual_seed(cfg.seed + i)
        m = load_model(cfg.app_arch, device=device)
        m.name = f"{'original' if i == 0 else 'robust'}-{i}"
        models.append(m)
    with torch.no_grad():
        models[0].clip.logit_scale.fill_(math.log(100.0))  # CLIP's trained scale: see the module docstring
    return models


def todays_path(models, image: torch.Tensor, classes: list[str], true_label: str, settings) -> list:
    """The comparison as it ran before streaming: -> [(model, clean Prediction, adversarial Prediction, image)]."""
    from ..attacks.pgd import PGD
    from ..evaluation.explore import predict, prepare_image, quantize_in_ball

    x = prepare_image(image, settings.max_side)
    t = classes.index(true_label)
    out = []
    for m in models:
        clf = m.classifier(classes).eval()
        xb, y = x[None].to(m.device), torch.tensor([t], device=m.device)
        res = PGD(clf, settings.eps, settings.step_size, settings.steps, settings.norm, settings.loss,
                  random_start=False).run(xb, y)  # judges the clean image a second time
        adv = quantize_in_ball(x, res.adv[0].cpu(), settings.eps, settings.norm)
        out.append((m.name, predict(clf, x.to(m.device), classes, t), predict(clf, adv.to(m.device), classes, t), adv))
    return out


def _comparison(streamed: dict, image, classes, true_label, settings):
    """The Comparison a streamed run ended with (its verdicts, the image as attacked)."""
    from ..evaluation.explore import Comparison, prepare_image

    return Comparison(prepare_image(image, settings.max_side), classes, true_label, streamed["verdicts"])


def bench_app(cfg: BenchConfig, device: torch.device) -> dict:
    from dataclasses import replace

    from ..evaluation.explore import AttackSettings, cpu_lanes, iter_compare

    models = bench_models(cfg, device)
    classes = class_names(cfg.classes)
    image = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():  # the first model's own clean prediction is the true label
        true_label = classes[int(models[0].classifier(classes).eval()(image[None].to(device)).argmax())]
    load_before = os.getloadavg()
    plain = AttackSettings(eps=cfg.app_eps, steps=cfg.app_steps, step_size=cfg.app_step_size, precision="fp32")
    margin = replace(plain, stop_margin=cfg.app_stop_margin)
    laned = replace(margin, lanes=cpu_lanes(models))
    app_default = replace(laned, precision=None)  # $PMG_ATTACK_DTYPE, auto unless set
    for m in models:  # the app's models are warm: text features cached per (model, labels), kernels run once
        xi = image[None].to(device).requires_grad_(True)
        torch.autograd.grad(m.classifier(classes).eval()(xi).sum(), xi)

    def today() -> dict:
        t0 = time.perf_counter()
        verdicts = todays_path(models, image, classes, true_label, plain)
        sync(device)
        end = time.perf_counter() - t0
        return {"first": end, "all": end, "verdicts": verdicts}  # the page shows nothing before the end

    def streamed(settings) -> dict:
        t0, first, order = time.perf_counter(), None, []
        for event in iter_compare(models, image, classes, true_label, settings):
            if event["event"] == "verdict":
                sync(device)
                first = first if first is not None else time.perf_counter() - t0
                order.append(event["verdict"].model)
        return {"first": first, "all": time.perf_counter() - t0, "verdicts": event["comparison"].verdicts,
                "order": order}

    def with_extras() -> dict:
        """The app's path with its extras on: maps and every model's robustness radius after the verdicts."""
        from ..evaluation.explore import robustness_radius
        from ..evaluation.maps import comparison_maps

        t0 = time.perf_counter()
        out = streamed(laned)
        comparison_maps(models, _comparison(out, image, classes, true_label, laned))
        for m in models:
            robustness_radius(m, image, classes, true_label, laned)
        sync(device)
        return {**out, "all": time.perf_counter() - t0}

    variants = {"todays_path": today, "streamed": lambda: streamed(plain), "streamed_with_margin": lambda: streamed(margin),
                "streamed_in_lanes": lambda: streamed(laned), "in_lanes_with_maps_and_radius": with_extras,
                "app_default": lambda: streamed(app_default)}
    times: dict[str, dict[str, list[float]]] = {k: {"first": [], "all": []} for k in variants}
    last: dict[str, dict] = {}
    for r in range(cfg.warmup + cfg.repeats):
        for name, fn in variants.items():
            last[name] = fn()
            if r >= cfg.warmup:
                for k in ("first", "all"):
                    times[name][k].append(last[name][k])
    out: dict = {"arch": cfg.app_arch, "models": [m.name for m in models], "classes": cfg.classes,
                 "steps": cfg.app_steps, "eps_255": to_255(cfg.app_eps),
                 "stop_margin": cfg.app_stop_margin, "threads": torch.get_num_threads(), "lanes": laned.lanes,
                 "pass_s": pass_seconds(models[1], image, classes, cfg.warmup + cfg.repeats)}
    for name in variants:
        out[name] = {f"{k}_verdict_s" if k == "first" else "all_verdicts_s": round(statistics.median(v), 3)
                     for k, v in times[name].items()}
        out[name]["seconds_all"] = [round(t, 3) for t in times[name]["all"]]
        if "order" in last[name]:
            out[name]["order"] = last[name]["order"]
            out[name]["steps_taken"] = {v.model: v.steps_taken for v in last[name]["verdicts"]}
    base = out["todays_path"]["all_verdicts_s"]
    for name in [k for k in variants if k != "todays_path"]:
        out[name]["first_verdict_speedup"] = round(base / out[name]["first_verdict_s"], 3)
        out[name]["all_verdicts_speedup"] = round(base / out[name]["all_verdicts_s"], 3)
    before = last["todays_path"]["verdicts"]
    out["same_verdicts"] = all(
        (v.model, v.clean, v.adversarial) == (name, clean, adv) and torch.equal(v.adv_image, image_)
        for v, (name, clean, adv, image_) in zip(last["streamed"]["verdicts"], before))
    # With the margin a model may stop at a weaker adversarial image: the right/wrong marks must hold.
    out["same_right_wrong_with_margin"] = all(
        v.adversarial.correct == adv.correct for v, (_, _, adv, _) in zip(last["streamed_with_margin"]["verdicts"], before))
    # Lanes run each model's attack on fewer threads per pass: the same right/wrong marks too.
    out["same_right_wrong_in_lanes"] = all(
        v.adversarial.correct == adv.correct for v, (_, _, adv, _) in zip(last["streamed_in_lanes"]["verdicts"], before))
    defaults = last["app_default"]["verdicts"]
    out["app_default"]["precision"] = sorted({v.precision.name for v in defaults})
    out["app_default"]["right_wrong_as_today"] = sum(
        v.adversarial.correct == adv.correct for v, (_, _, adv, _) in zip(defaults, before))
    out["load_average"] = {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]}
    return out


def pass_seconds(model, image: torch.Tensor, classes: list[str], repeats: int) -> dict[str, float]:
    """The median time of one gradient pass (forward and backward, one 224 px image) of `model`'s
    classifier in fp32 and under bf16 autocast, the two taken in turn."""
    from ..attacks.pgd import PGD

    clf = model.classifier(classes).eval()
    x, y = image[None].to(model.device), torch.zeros(1, dtype=torch.long, device=model.device)
    attacks = {"fp32": PGD(clf, 1 / 255, steps=1), "bf16": PGD(clf, 1 / 255, steps=1, dtype=torch.bfloat16)}
    times: dict[str, list[float]] = {k: [] for k in attacks}
    for _ in range(max(3, repeats)):
        for name, pgd in attacks.items():
            sync(model.device)
            t0 = time.perf_counter()
            pgd._grad(x, y, False)  # noqa: SLF001 - exactly one of the attack's gradient passes
            sync(model.device)
            times[name].append(time.perf_counter() - t0)
    return {k: round(statistics.median(v), 4) for k, v in times.items()}
