"""Handlers of the Attack & compare and Feature distances tabs: one uploaded image, attacked live.

Each takes the app's state and the raw values of the tab's fields, checks them (pmg_core.data.inputs)
and makes one call into pmg_core.evaluation.explore or pmg_core.evaluation.analysis; what it returns is ready for the
tab's components. The comparison's JSON comes from pmg_core (Comparison.to_dict), so the app's
details and `python -m pmg_core attack --json` are the same document.
"""
from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import math
import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from pmg_core.evaluation import analysis, plots
from pmg_core.data import inputs
from pmg_core.attacks.pgd import NORMS
from pmg_core.attacks.defenses import get_defense
from pmg_core.core.errors import check
from pmg_core.evaluation.explore import (AttackSettings, Comparison, cpu_lanes, iter_compare, prepare_image, radius_attacks,
                              robustness_radius)
from pmg_core.evaluation.maps import MAP_PASSES, comparison_maps, save_maps
from pmg_core.data.images import load_image, new_output_folder, save_png, slug, to_uint8
from pmg_core.models.clip import ClipModel
from pmg_core.core.units import from_255, to_255

from . import policy, sessions
from .html import maps_html, progress_html, verdict_html
from .state import Studio

EACH_MODEL = "each model attacks itself"
LOSSES = {"cross-entropy": "ce", "CW margin": "margin"}
ATTACK_SIDE = AttackSettings().max_side
# The Attack tab's early stop: a model is done once the wrong class (or the target) leads by this many
# logits, e times as likely, and its 8-bit image still fools it.
STOP_MARGIN = 1.0
REDRAW_S = 0.1  # the progress line is redrawn at most this often (a verdict always shows at once)
UNCHANGED = object()  # an output a streamed update leaves as it is (the tab turns it into gr.skip())
# The Attack tab's "defend at test time" choice: what people read -> pmg_core.attacks.defenses' name.
DEFENSES = {"no": "none", "TTC (test-time counterattacks)": "ttc", "CLIPure (latent purification)": "clipure"}


def defense_name(defend) -> str:
    """The Attack tab's defense choice (a label of DEFENSES or a defense's name; True: TTC, as the
    tab's first toggle had it) -> the name pmg_core.attacks.defenses knows."""
    if defend is True:
        return "ttc"
    if defend in (False, None, ""):
        return "none"
    return DEFENSES.get(defend) or inputs.parse_choice("test-time defense", defend, list(DEFENSES.values()))


def preview(studio: Studio, image, request: gr.Request | None = None) -> np.ndarray | None:
    """The uploaded image as the models will see it (a bad file is refused here, right after upload). An
    upload (Gradio fills `request`) is charged to its visitor's budget and read in their turn on a public
    server, as an attack's passes are; the app's own examples (no request) are small and free."""
    if image is None:
        return None
    path = inputs.upload_path(image)
    gate = None
    if request is not None:
        studio.budget.charge(studio.visitor(request), policy.PREVIEW_PASSES, studio.limits.where)
        gate = studio.gate(request)
    with gate() if gate is not None else contextlib.nullcontext():
        return to_uint8(prepare_image(load_image(path), ATTACK_SIDE))


def attack_inputs(studio: Studio, image, labels, true_label, norm, eps_255, steps, step_size_255, loss, target, source,
                  model_names, request=None) -> tuple[list[ClipModel], str, list[str], str | None, AttackSettings]:
    """The first tab's fields, checked -> (models, the image's file, classes, true label, attack settings);
    on a public server each model pass of the attack waits for `request`'s visitor's turn. The image is
    read by `read_image`, once the request is charged."""
    limits = studio.limits
    models = studio.pick(model_names)
    path = inputs.upload_path(image)
    classes = inputs.parse_labels(labels)
    norm = inputs.parse_choice("norm", norm, NORMS)
    loss = LOSSES[inputs.parse_choice("loss", loss, list(LOSSES))]
    eps = from_255(inputs.parse_number("eps (/255)", eps_255, 0, limits.eps_max_255(norm)))
    steps = inputs.parse_number("steps", steps, 0, limits.attack_steps, integer=True, where=limits.where)
    step = inputs.parse_step_size(step_size_255, limits.step_size_255)
    true_label = inputs.parse_choice("true label", true_label, classes, optional=target not in (None, ""))
    target = inputs.parse_choice("target class", target, classes, optional=True)
    source = None if source in (None, "", EACH_MODEL) else inputs.parse_choice("attack source", source, [m.name for m in models])
    # On a CPU, several models are attacked at once (one per core): the same verdicts, sooner.
    return models, path, classes, true_label, AttackSettings(eps, steps, step, norm, loss, target, source,
                                                             lanes=cpu_lanes(models), gate=studio.gate(request))


def read_image(path: str, settings: AttackSettings) -> torch.Tensor:
    """A visitor's image, read in their turn once their request is charged: a refused request reads
    nothing, and a large file's decode shares the machine like a model pass."""
    with settings.turn():
        return load_image(path)


def charge(studio: Studio, request, passes: int, models: list[ClipModel], classes: list[str]) -> None:
    """Count a request's model-passes and its label text against its visitor's budget, before any work."""
    studio.budget.charge(studio.visitor(request), passes + policy.text_passes(models, len(classes)),
                         studio.limits.where)


def attack(studio: Studio, image, labels, true_label, norm, eps_255, steps, step_size_255, loss, target, source,
           model_names, defend: bool | str = False, stop_early: bool = False, result: dict | None = None,
           request: gr.Request | None = None):
    """-> (adversarial images, amplified perturbations, verdict HTML, PNG files, details): the
    stream's last outputs. defend: also judge every model behind a test-time defense (defense_name);
    result: see attack_stream."""
    for outputs in attack_stream(studio, image, labels, true_label, norm, eps_255, steps, step_size_255, loss, target,
                                 source, model_names, defend, stop_early, result, request):
        pass
    return outputs


def attack_stream(studio: Studio, image, labels, true_label, norm, eps_255, steps, step_size_255, loss, target, source,
                  model_names, defend: bool | str = False, stop_early: bool = True, result: dict | None = None,
                  request: gr.Request | None = None):
    """attack() as it happens: the verdict table grows by each model's verdict as it arrives, under a
    progress line that moves with every attack step; the images, files and details (UNCHANGED until
    then) come with the last update.
    stop_early: stop attacking a model once it is fooled by STOP_MARGIN (see explore.iter_compare).
    result: filled at the end with what `extras` needs (comparison, settings, model names, folder)."""
    models, path, classes, true_label, settings = attack_inputs(
        studio, image, labels, true_label, norm, eps_255, steps, step_size_255, loss, target, source, model_names,
        request)
    settings.defense = defense_name(defend)
    if settings.defense != "none" and not get_defense(settings.defense).randomised:
        settings.eot = 1  # a deterministic defense: one draw is the expectation
    passes = policy.check_attack(studio.limits, len(models), settings.steps,
                                 defended_eot=settings.eot if settings.defense != "none" else 0)
    charge(studio, request, passes, models, classes)
    x = read_image(path, settings)
    settings.stop_margin = STOP_MARGIN if stop_early else None
    folder = new_output_folder(studio.out_dir)
    order = [m.name for m in models]
    originals = [m.name for m in models if m.spec == m.base]  # the summary names the original CLIP as such
    shown = Comparison(prepare_image(x, settings.max_side), classes, true_label)
    redrawn = -math.inf
    for event in iter_compare(models, x, classes, true_label, settings):
        if event["event"] != "done":
            if event["event"] == "verdict":  # in the models' order, as at the end
                shown.verdicts = sorted([*shown.verdicts, event["verdict"]], key=lambda v: order.index(v.model))
            elif time.monotonic() - redrawn < REDRAW_S:
                continue
            redrawn = time.monotonic()
            yield (UNCHANGED,) * 2 + (progress_html(event) + verdict_html(shown, settings, summary=False),) + (UNCHANGED,) * 2
            continue
        shown = event["comparison"]
        advs = _distinct_adversarials(shown)
        # Named by the model whose gradients made it, first, so a list that cuts long names still tells them apart.
        files = [str(save_png(adv, folder / sessions.adversarial_file(name))) for name, adv in advs]
        if result is not None:  # what the extras (maps, radius, zip) start from: the session keeps no tensors
            result.update(sessions.keep(shown, settings, order, folder, originals))
        gallery = [(to_uint8(adv), name) for name, adv in advs]
        perturb = [(to_uint8(analysis.amplify_perturbation(shown.image, adv)), name) for name, adv in advs]
        yield gallery, perturb, verdict_html(shown, settings, originals=originals), files, shown.to_dict(settings)


def no_image_hint(image) -> str:
    """The sentence beside the Attack button when there is nothing to attack (the outputs stay as they are)."""
    return "" if image else "<p class='pmg-hint'>Pick an example below the image, or upload one, then press Attack.</p>"


def extras(studio: Studio, result: dict | None, with_maps: bool, with_radius: bool,
           request: gr.Request | None = None):
    """After a comparison: where each model looks, each model's robustness radius, one zip of it all.

    -> a stream of (maps grid HTML, radius chart, zip file, details, verdict HTML): the verdicts keep a
    progress line while the radius is searched, and their summary gains each model's radius. Each part is checked against the public policy before
    any work, as an attack is (the radius's bisection counted like a sweep's radii)."""
    if not result:
        return
    comp, settings, names, folder = sessions.restore(result)
    settings = dataclasses.replace(settings, gate=studio.gate(request))  # each pass in its visitor's turn
    originals = result.get("originals", ())
    models = studio.pick(names)
    rounds = radius_attacks() if with_radius else 0
    if with_radius:
        check(comp.true_label is not None, "The robustness radius needs the true label; choose it under the labels.")
    passes = policy.check_attack_extras(studio.limits, len(models), settings.steps, rounds,
                                        MAP_PASSES if with_maps else 0)
    charge(studio, request, passes, models, comp.classes)
    grid, files, radii, chart = "", [], [], None
    if with_maps:
        maps = comparison_maps(models, comp, gate=settings.gate)
        files += save_maps(maps, comp, folder / "maps")
        grid = maps_html(maps, comp)
    if with_radius:
        for i, m in enumerate(models):
            line = (f"<p class='pmg-progress'>Robustness radius: {i} of {len(models)} models done; bisecting "
                    f"<b>{html.escape(m.name)}</b>&hellip;</p>")
            yield grid, UNCHANGED, UNCHANGED, UNCHANGED, line + verdict_html(comp, settings, radii, originals)
            radii.append(robustness_radius(m, comp.image, comp.classes, comp.true_label, settings))
        chart = plots.radius_chart([dataclasses.asdict(r) for r in radii])
        chart.savefig(folder / "radius.png")
        files.append(folder / "radius.png")
    details = comp.to_dict(settings, radii)
    yield grid, chart, str(_comparison_zip(comp, details, files, folder)), details, verdict_html(comp, settings, radii,
                                                                                                originals)


def _comparison_zip(comp: Comparison, details: dict, files: list[Path], folder: Path) -> Path:
    """One zip of the comparison: details.json, the clean and adversarial PNGs, the maps, the radius chart."""
    path = folder / "comparison.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("details.json", json.dumps(details, indent=2) + "\n")
        z.write(save_png(comp.image, folder / "clean.png"), "clean.png")
        for name, adv in _distinct_adversarials(comp):
            z.write(save_png(adv, folder / f"adversarial-{slug(name)}.png"), f"adversarial-{slug(name)}.png")
        for f in files:
            z.write(f, str(Path(f).relative_to(folder)))
    return path


def _sweep_eps(studio: Studio, eps_list, settings: AttackSettings, models: list[ClipModel], classes: list[str],
               request) -> list[float]:
    """The sweep's radii, checked with the cost of attacking every model at each (counted against the budget)."""
    limits = studio.limits
    eps = inputs.parse_number_list("eps (/255)", eps_list, 0, limits.eps_max_255(settings.norm), limits.sweep_values)
    charge(studio, request, policy.check_attack(limits, len(models), settings.steps, len(eps)), models, classes)
    return [from_255(e) for e in eps]


def eps_sweep(studio: Studio, image, labels, true_label, norm, eps_list, steps, step_size_255, loss, target, source,
              model_names, request: gr.Request | None = None):
    """-> (plotly figure of true-class, or target-class, confidence vs eps; rows)."""
    models, path, classes, true_label, settings = attack_inputs(
        studio, image, labels, true_label, norm, 0, steps, step_size_255, loss, target, source, model_names, request)
    eps = _sweep_eps(studio, eps_list, settings, models, classes, request)
    comps = analysis.eps_sweep(models, read_image(path, settings), classes, true_label, eps, settings)
    rows = analysis.sweep_rows(comps, eps, settings.target)
    return plots.sweep_figure(rows), rows


def distances(studio: Studio, image, labels, true_label, norm, eps_list, steps, step_size_255, loss, model_names,
              reference, request: gr.Request | None = None):
    """-> (displacement figure, distance-from-original figure, PCA projection figure, rows)."""
    models, path, classes, true_label, settings = attack_inputs(
        studio, image, labels, true_label, norm, 0, steps, step_size_255, loss, None, None, model_names, request)
    eps = _sweep_eps(studio, eps_list, settings, models, classes, request)
    reference = inputs.parse_choice("reference model", reference, [m.name for m in models], optional=True)
    comps = analysis.eps_sweep(models, read_image(path, settings), classes, true_label, eps, settings)
    rows = analysis.feature_distances(models, comps, eps, reference)
    proj = analysis.projection(models, comps[-1])
    return (plots.distance_figure(rows), plots.distance_figure(rows, from_reference=True), plots.projection_figure(proj),
            {"distances": rows, "projection_eps_255": to_255(eps[-1]), **proj})


def _distinct_adversarials(comp: Comparison) -> list[tuple[str, torch.Tensor]]:
    seen: dict[str, torch.Tensor] = {}
    for v in comp.verdicts:
        seen.setdefault(v.attacked_by, v.adv_image)
    return list(seen.items())
