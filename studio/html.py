"""The Attack tab's results as HTML: a one-line summary over the verdict table (clean vs adversarial
top-5 bars per model), and the maps as a grid (rows: models; columns: clean and adversarial image x
attention to the true class, to the predicted class, saliency), headers once.

Every label and model name is escaped: labels are typed by whoever uses the app. The classes used
here (pmg-bar, pmg-true, ...) are styled in assets/studio.css. The maps are inline PNGs (data URIs):
a few kilobytes each at the display size, so the grid needs no file route of its own.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Sequence

from PIL import Image

from pmg_core.evaluation.explore import AttackSettings, Comparison, Prediction, Radius
from pmg_core.data.images import to_uint8
from pmg_core.evaluation.maps import KINDS, ModelMaps, overlay

MAP_SIDE = 112  # the grid's maps are shown at most this many pixels wide (the zip keeps them full size)


def _top5(pred: Prediction, true_label: str | None, target: str | None) -> str:
    items = []
    for label, p in zip(pred.labels, pred.probs):
        cls = "pmg-true" if label == true_label else ("pmg-target" if label == target else "")
        items.append(f"<div class='pmg-bar {cls}'><span style='width:{100 * p:.1f}%'></span>"
                     f"<b>{html.escape(label)}</b> {100 * p:.1f}%</div>")
    return "".join(items)


def _points(change: float | None) -> str:
    """A probability change as signed percentage points (a typographic minus, which HTML keeps)."""
    return "-" if change is None else f"{100 * change:+.1f} pts".replace("-", "&minus;", 1)


def _mark(pred: Prediction) -> str:
    if pred.correct is None:
        return ""
    return "<span class='pmg-ok'>&#10004; right</span>" if pred.correct else "<span class='pmg-bad'>&#10008; wrong</span>"


def progress_html(event: dict) -> str:
    """The line above the verdicts while a comparison streams (an explore.iter_compare event)."""
    line = f"{event['done']} of {event['total']} models done"
    if event["event"] == "step":
        line += f"; attacking <b>{html.escape(event['model'])}</b>: step {event['step']} of {event['steps']}"
    return f"<p class='pmg-progress'>{line}&hellip;</p>"


def _stopped(v, steps: int) -> str:
    """Says when the margin stopped a model's attack before its last step (shown in its verdict)."""
    if v.stop_margin is None or v.steps_taken is None or v.steps_taken >= steps:
        return ""
    return (f"<br><small>stopped after {v.steps_taken} step{'s' if v.steps_taken != 1 else ''}: fooled by a margin of "
            f"{v.stop_margin:g} logit{'s' if v.stop_margin != 1 else ''}</small>")


def _precision(v) -> str:
    """Which precision made the model's adversarial image (its verdict is fp32 either way), and why."""
    if v.precision is None:
        return ""
    return (f"<br><small class='pmg-precision' title='{html.escape(v.precision.reason)}'>made with "
            f"{v.precision.name} passes, judged in fp32</small>")


def _defended_row(v, true_label: str | None, target: str | None) -> str:
    """The same model behind its test-time defense: on the clean image, on the same adversarial
    image, and the verdict of an attack through the defense (the number that counts)."""
    d = v.defended
    name = html.escape(d.defense.upper())
    adaptive = html.escape(d.adaptive.labels[0])
    return (f"<tr class='pmg-model pmg-defended' data-model='{html.escape(v.model)}+{html.escape(d.defense)}'>"
            f"<td><b>{html.escape(v.model)} + {name}</b><br><small>defended at test time</small></td>"
            f"<td>{_mark(d.clean)}{_top5(d.clean, true_label, target)}</td>"
            f"<td>{_mark(d.adversarial)}{_top5(d.adversarial, true_label, target)}"
            f"<small>the same adversarial image, made without knowing the defense</small></td>"
            f"<td class='pmg-drop'>attacked through {name} (adaptive): {_mark(d.adaptive)}<br>"
            f"<small>top: {adaptive} {100 * d.adaptive.probs[0]:.1f}%</small></td></tr>")


def _names(names: Sequence[str], radii: dict[str, Radius], originals: Sequence[str]) -> str:
    """Model names for the summary, the original CLIP marked, each with its robustness radius when known."""
    out = []
    for name in names:
        text = f"<b>{html.escape(name)}</b>" + (" (the original CLIP)" if name in originals else "")
        r = radii.get(name)
        if r is not None and r.radius_255:
            text += f" at {r.radius_255:g}/255"
        out.append(text)
    return ", ".join(out)


def verdict_summary(comp: Comparison, settings: AttackSettings, radii: Sequence[Radius] = (),
                    originals: Sequence[str] = ()) -> str:
    """One line over the table: how many models the attack left right (or, targeted, how many it
    pushed to the target), who fell (at their robustness radius when it is known), who was wrong
    before it; behind a test-time defense, the same count for the attack through it."""
    verdicts, by_model = comp.verdicts, {r.model: r for r in radii}
    n = len(verdicts)
    if settings.target:
        hit = [v.model for v in verdicts if v.adversarial.labels[0] == settings.target]
        line = (f"<b>{len(hit)} of {n} model{'s' if n != 1 else ''} pushed to the target "
                f"{html.escape(settings.target)}</b>" + (f": {_names(hit, {}, originals)}" if hit else ""))
        return f"<p class='pmg-summary' data-held='{n - len(hit)}' data-models='{n}'>{line}.</p>"
    held = [v.model for v in verdicts if v.clean.correct and v.adversarial.correct]
    fell = [v.model for v in verdicts if v.clean.correct and not v.adversarial.correct]
    before = [v.model for v in verdicts if not v.clean.correct]
    line = f"<b>{len(held)} of {n} model{'s' if n != 1 else ''} still right after the attack</b>"
    if fell:
        line += f"; fooled: {_names(fell, by_model, originals)}"
    if before:
        line += f"; wrong before it: {_names(before, {}, originals)}"
    defended = [v.defended for v in verdicts if v.defended]
    if defended:
        through = sum(bool(d.adaptive.correct) for d in defended)
        line += (f"; behind {html.escape(defended[0].defense.upper())}, attacked through it: {through} of "
                 f"{len(defended)} still right")
    return f"<p class='pmg-summary' data-held='{len(held)}' data-models='{n}'>{line}.</p>"


def verdict_html(comp: Comparison, settings: AttackSettings, radii: Sequence[Radius] = (),
                 originals: Sequence[str] = (), summary: bool = True) -> str:
    """Clean vs adversarial top-5 per model, a right/wrong mark and the confidence change: of the true
    class (untargeted), or of the target class (targeted; the true class's too when it is given);
    `summary`: the one-line verdict_summary over it (left out while the verdicts still arrive)."""
    target = settings.target
    head = (verdict_summary(comp, settings, radii, originals) if summary and comp.verdicts else "") + (
        f"<p>Attack: PGD-{settings.steps} {settings.norm}, eps {settings.eps * 255:g}/255, "
            f"{'targeted at <b>' + html.escape(target) + '</b>' if target else 'untargeted'}; "
            f"true label: <b>{html.escape(comp.true_label or '-')}</b>.</p>")
    change_head = f"target-class ({html.escape(target)}) confidence change" if target else "true-class confidence change"
    rows = []
    for v in comp.verdicts:
        change = _points(v.target_gain) if target else _points(None if v.confidence_drop is None else -v.confidence_drop)
        if target and v.confidence_drop is not None:
            change += f"<br><small>true class: {_points(-v.confidence_drop)}</small>"
        rows.append(f"<tr class='pmg-model' data-model='{html.escape(v.model)}'><td><b>{html.escape(v.model)}</b>"
                    f"<br><small>attacked via {html.escape(v.attacked_by)}</small>{_precision(v)}"
                    f"{_stopped(v, settings.steps)}</td>"
                    f"<td>{_mark(v.clean)}{_top5(v.clean, comp.true_label, target)}</td>"
                    f"<td>{_mark(v.adversarial)}{_top5(v.adversarial, comp.true_label, target)}</td>"
                    f"<td class='pmg-drop'>{change}</td></tr>")
        if v.defended:
            rows.append(_defended_row(v, comp.true_label, target))
    return (head + "<table class='pmg-verdicts'><tr><th>model</th><th>clean top-5</th><th>adversarial top-5</th>"
            f"<th>{change_head}</th></tr>" + "".join(rows) + "</table>")


def _png(picture) -> str:
    """A [3,H,W] picture as an inline PNG, at most MAP_SIDE pixels wide (a smaller one is scaled up by the page)."""
    image = Image.fromarray(to_uint8(picture))
    if image.width > MAP_SIDE:
        image = image.resize((MAP_SIDE, MAP_SIDE * image.height // image.width), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# The grid's column headers for each kind of map (maps.KINDS), short enough for a phone's columns.
_KIND_HEADS = {KINDS[0]: "true class", KINDS[1]: "predicted class", KINDS[2]: "saliency"}
_SOFT_HYPHENS = {"predicted": "pre&shy;dicted", "saliency": "sali&shy;ency"}  # where a phone's narrow column may break


def _hyphenated(text: str) -> str:
    for word, soft in _SOFT_HYPHENS.items():
        text = text.replace(word, soft)
    return text


def maps_html(maps: Sequence[ModelMaps], comp: Comparison) -> str:
    """Where each model looks, as one grid: a row per model; clean and adversarial image, each with
    its attention to the true class, to the predicted class (named under the map) and its saliency."""
    if not maps:
        return ""
    adversarial = {v.model: v.adv_image for v in comp.verdicts}
    images = list(maps[0].maps)
    kinds = list(maps[0].maps[images[0]])
    true = html.escape(comp.true_label) if comp.true_label is not None else ""
    first = lambda k: " class='pmg-group'" if k == 0 else ""  # noqa: E731 - a rule between clean and adversarial
    heads = "".join(f"<th colspan='{len(kinds)}' scope='colgroup' class='pmg-group'>{image} image</th>" for image in images)
    subheads = "".join(f"<th scope='col'{first(k)}>{_hyphenated(_KIND_HEADS[kind])}"
                       + (f"<br><small>{true}</small>" if kind == KINDS[0] else "") + "</th>"
                       for _ in images for k, kind in enumerate(kinds))
    rows = []
    for one in maps:
        cells = []
        for image in images:
            picture = comp.image if image == "clean" else adversarial[one.model]
            for k, kind in enumerate(kinds):
                what = _KIND_HEADS[kind] + (f" ({comp.true_label})" if kind == KINDS[0] else
                                            f" ({one.predicted[image]})" if kind == KINDS[1] else "")
                under = f"<small>{html.escape(one.predicted[image])}</small>" if kind == KINDS[1] else ""
                cells.append(f"<td{first(k)}><img src='{_png(overlay(picture, one.maps[image][kind]))}' "
                             f"alt='{html.escape(f'{one.model}, {image} image, {what}')}'>{under}</td>")
        rows.append(f"<tr data-model='{html.escape(one.model)}'><th scope='row'>{html.escape(one.model)}</th>"
                    + "".join(cells) + "</tr>")
    return ("<div class='pmg-maps-grid'><p><b>Where each model looks</b> (bright = more): text-guided attention to "
            "the true class and to the class the model predicts, and the saliency of its prediction (the gradient "
            "of its logit), on the clean and on the adversarial image.</p>"
            f"<table><thead><tr><th rowspan='2' scope='col'>model</th>{heads}</tr><tr>{subheads}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")
