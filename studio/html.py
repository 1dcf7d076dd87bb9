"""The verdict table of the Attack tab as HTML: clean vs adversarial top-5 bars per model.

Every label and model name is escaped: labels are typed by whoever uses the app. The classes used
here (pmg-bar, pmg-true, ...) are styled in assets/studio.css.
"""
from __future__ import annotations

import html

from pmg_core.explore import AttackSettings, Comparison, Prediction


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
                    f"<br><small>attacked via {html.escape(v.attacked_by)}</small>{_precision(v)}"
                    f"{_stopped(v, settings.steps)}</td>"
                    f"<td>{_mark(v.clean)}{_top5(v.clean, comp.true_label, target)}</td>"
                    f"<td>{_mark(v.adversarial)}{_top5(v.adversarial, comp.true_label, target)}</td>"
                    f"<td class='pmg-drop'>{change}</td></tr>")
        if v.defended:
            rows.append(_defended_row(v, comp.true_label, target))
    return (head + "<table class='pmg-verdicts'><tr><th>model</th><th>clean top-5</th><th>adversarial top-5</th>"
            f"<th>{change_head}</th></tr>" + "".join(rows) + "</table>")
