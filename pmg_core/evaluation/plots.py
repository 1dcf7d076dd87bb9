"""Figures for the app, built from the plain data of analysis.py, accuracy.py, explore.py and training/loop.py.

Plotly, except the robustness-radius chart: it is a matplotlib figure, so the same chart the page shows
goes into the comparison's zip as a PNG (plotly writes images only through an extra package, kaleido).
"""
from __future__ import annotations

import html
from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

_LAYOUT = dict(template="plotly_white", height=380, margin=dict(l=50, r=20, t=50, b=45),
               legend=dict(orientation="h", y=-0.2))
MAX_TEXT_LABELS = 40  # class names written on the projection (more are shown on hover only)


def _by_model(rows: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["model"], []).append(r)
    return out


def sweep_figure(rows: Sequence[dict]) -> go.Figure:
    """Per model against eps: the target-class probability for a targeted attack, else the
    true-class probability; an x marks an eps where the attack succeeded."""
    target = rows[0].get("target") if rows else None
    key, what = ("target_prob", "p(target)") if target else ("true_prob", "p(true label)")
    fig = go.Figure()
    for model, rs in _by_model(rows).items():
        won = [r["hit"] if target else not r["correct"] for r in rs]
        fig.add_trace(go.Scatter(
            x=[r["eps_255"] for r in rs], y=[r[key] for r in rs], mode="lines+markers", name=model,
            marker=dict(symbol=["x" if w else "circle" for w in won], size=9),
            text=[f"top-1: {r['top1']}" for r in rs], hovertemplate=f"eps %{{x}}/255<br>{what} %{{y:.3f}}<br>%{{text}}"))
    title = (f"Target-class ({target}) confidence under attack (x: top-1 is the target)" if target
             else "True-class confidence under attack (x marks a wrong top-1)")
    fig.update_layout(title=title, xaxis_title="eps (/255)", yaxis_title=what, yaxis_range=[0, 1.02], **_LAYOUT)
    return fig


def distance_figure(rows: Sequence[dict], from_reference: bool = False) -> go.Figure:
    """Cosine and L2 distance, vs eps, of each model's adversarial image embedding from its own clean
    embedding, or (from_reference) from the reference model's clean embedding."""
    keys = ("ref_cosine", "ref_l2") if from_reference else ("cosine", "l2")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("cosine distance", "L2 distance"))
    for i, (model, rs) in enumerate(_by_model(rows).items()):
        x = [r["eps_255"] for r in rs]
        for col, key in zip((1, 2), keys):
            fig.add_trace(go.Scatter(x=x, y=[r[key] for r in rs], mode="lines+markers", name=model,
                                     legendgroup=model, showlegend=col == 1,
                                     line=dict(color=_colour(i))), row=1, col=col)
    if from_reference:
        ref = rows[0]["reference"] if rows else "original"
        title = f"Distance from {ref}'s clean embedding (eps 0: drift from fine-tuning)"
    else:
        title = "How far the attack moves each model's image embedding"
    fig.update_layout(title=title, **_LAYOUT)
    fig.update_xaxes(title_text="eps (/255)")
    return fig


def projection_figure(data: dict) -> go.Figure:
    """Text embeddings as labelled stars, clean (circle) and adversarial (x) image embeddings per model."""
    pts = data["points"]
    fig = go.Figure()
    text = [p for p in pts if p["kind"] == "text"]
    labelled = len(text) <= MAX_TEXT_LABELS  # more names than that would be unreadable: hover only
    fig.add_trace(go.Scatter(x=[p["x"] for p in text], y=[p["y"] for p in text],
                             mode="markers+text" if labelled else "markers",
                             text=[p["label"] for p in text], name="class text", hovertemplate="%{text}",
                             textposition=_label_sides(text) if labelled else None,
                             textfont=dict(size=11, color="#444"), marker=dict(symbol="star", size=12, color="#555")))
    models = list(dict.fromkeys(p["model"] for p in pts if p["kind"] != "text"))
    for i, model in enumerate(models):
        for kind, symbol in (("clean", "circle"), ("adversarial", "x")):
            sel = [p for p in pts if p["model"] == model and p["kind"] == kind]
            fig.add_trace(go.Scatter(x=[p["x"] for p in sel], y=[p["y"] for p in sel], mode="markers",
                                     name=f"{model} ({kind})", legendgroup=model,
                                     marker=dict(symbol=symbol, size=12, color=_colour(i)),
                                     text=[f"top-1: {p['label']}" for p in sel], hovertemplate="%{text}"))
    var = data.get("explained_variance", [0, 0]) + [0, 0]
    fig.update_layout(title="Image embeddings among the class text embeddings (PCA)",
                      xaxis_title=f"PC1 ({var[0]:.0%})", yaxis_title=f"PC2 ({var[1]:.0%})", **_LAYOUT)
    return fig


def _label_sides(points: Sequence[dict]) -> list[str]:
    """Where to write each point's label: on the side away from its nearest neighbour (axes scaled to
    the plot), so two close points do not write their names on top of each other."""
    if len(points) < 2:
        return ["top center"] * len(points)
    xs, ys = [p["x"] for p in points], [p["y"] for p in points]
    sx, sy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    sides = []
    for i, p in enumerate(points):
        dx, dy = min((((p["x"] - q["x"]) / sx, (p["y"] - q["y"]) / sy) for j, q in enumerate(points) if j != i),
                     key=lambda d: d[0] ** 2 + d[1] ** 2)
        if abs(dy) >= abs(dx):
            sides.append("top center" if dy >= 0 else "bottom center")
        else:
            sides.append("middle right" if dx >= 0 else "middle left")
    return sides


def eval_figure(results: Sequence[dict]) -> go.Figure:
    """One series per model: its robust accuracy (%) per dataset as bars with their 95% interval
    (`robust_interval`, when given), its clean accuracy as a tick on the same bar."""
    fig = go.Figure()
    models = list(dict.fromkeys(r["model"] for r in results))
    for i, model in enumerate(models):
        rs = [r for r in results if r["model"] == model]
        x = [r["dataset"] for r in rs]
        bounds = [r.get("robust_interval") for r in rs]
        error = dict(type="data", symmetric=False, array=[100 * (b[1] - r["robust_acc"]) for r, b in zip(rs, bounds)],
                     arrayminus=[100 * (r["robust_acc"] - b[0]) for r, b in zip(rs, bounds)],
                     thickness=1, width=3) if all(bounds) else None
        fig.add_trace(go.Bar(x=x, y=[100 * r["robust_acc"] for r in rs], name=model, legendgroup=model,
                             marker=dict(color=_colour(i)), offsetgroup=model, error_y=error,
                             customdata=[[r["n"], 100 * r["clean_acc"]] for r in rs],
                             hovertemplate=f"{model}<br>%{{x}}: robust %{{y:.1f}}%, clean %{{customdata[1]:.1f}}%"
                                           f" (n = %{{customdata[0]}})<extra></extra>"))
        fig.add_trace(go.Scatter(x=x, y=[100 * r["clean_acc"] for r in rs], mode="markers", name=f"{model} clean",
                                 legendgroup=model, showlegend=False, offsetgroup=model, hoverinfo="skip",
                                 marker=dict(symbol="line-ew", size=14, line=dict(width=3, color=_colour(i)))))
    fig.update_layout(title="Robust accuracy (bars, 95% interval) and clean accuracy (ticks), per model",
                      yaxis_title="accuracy (%)", yaxis_range=[0, 105], barmode="group", scattermode="group",
                      **_LAYOUT)
    return fig


def train_figure(history: Sequence[dict]) -> go.Figure:
    """Loss and (adversarial) training accuracy per optimizer step; each step a point, so that a
    one-step run shows one; the accuracies' legend under their own chart."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "training accuracy"), horizontal_spacing=0.12)
    steps = [h["step"] for h in history]
    fig.add_trace(go.Scatter(x=steps, y=[h["loss"] for h in history], mode="lines+markers", name="loss",
                             showlegend=False), row=1, col=1)
    acc_keys = [k for k in _ACCURACIES if history and k in history[-1]]
    for i, key in enumerate(acc_keys):
        fig.add_trace(go.Scatter(x=steps, y=[h.get(key) for h in history], mode="lines+markers", name=_ACCURACIES[key],
                                 line=dict(color=_colour(i + 1))), row=1, col=2)
    fig.update_layout(title="Fine-tuning", **{**_LAYOUT, "legend": dict(orientation="h", x=0.56, xanchor="left", y=-0.22)})
    fig.update_xaxes(title_text="step", rangemode="tozero")
    return fig


_ACCURACIES = {"adv_acc": "on adversarial images", "acc": "on clean images", "clean_acc": "on clean images"}


def radius_chart(radii: Sequence[dict]):
    """Each model's robustness radius (explore.Radius as a dict) as a horizontal bar; a model still
    right at the bisection's upper bound gets a hatched bar to that bound, marked "holds beyond".
    Drawn 4.2 inches wide with 10-point text, so that a phone, which shows it about 350 px wide,
    keeps the text readable."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 1.3 + 0.4 * max(1, len(radii))), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    names = [r["model"] for r in radii][::-1]
    for row, r in enumerate(radii[::-1]):
        held = r["radius_255"] is None
        value = r["high_255"] if held else r["radius_255"]
        ax.barh(row, value, color=_colour(len(radii) - 1 - row), hatch="//" if held else None, alpha=0.5 if held else 1)
        text = f"holds beyond {r['high_255']:g}/255" if held else (
            "wrong on the clean image" if value == 0 else f"fooled at {value:g}/255")
        ax.text(value, row, f" {text}", va="center", fontsize=10)
    high = max((r["high_255"] for r in radii), default=1)
    ax.set_yticks(range(len(names)), names, fontsize=10)
    ax.set_xlim(0, high * 1.9)
    ax.set_xticks([t for t in (0, 4, 8, 12, 16) if t <= high])
    first = radii[0] if radii else {"steps": 0, "tolerance_255": 1}
    ax.set_xlabel(f"smallest eps (/255) that changes the answer\n(PGD-{first['steps']}, bisection to "
                  f"{first['tolerance_255']:g}/255)", fontsize=10)
    ax.set_title("How much it takes: robustness radius", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _colour(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


DEFENSE_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "star", "x", "hexagon")
_MPL_MARKERS = {"circle": "o", "diamond": "D", "square": "s", "triangle-up": "^", "cross": "P", "star": "*", "x": "X",
                "hexagon": "h"}


def _styles(rows: Sequence[dict]) -> tuple[dict[str, str], dict[str, str]]:
    """A colour per method and a marker per defense (no defense: a circle), in order of appearance."""
    methods = list(dict.fromkeys(r["method"] or "-" for r in rows))
    defenses = list(dict.fromkeys(["none", *(r["defense"] for r in rows)]))
    return ({m: _colour(i) for i, m in enumerate(methods)},
            {d: DEFENSE_SYMBOLS[i % len(DEFENSE_SYMBOLS)] for i, d in enumerate(defenses)})


def _percent(rows: Sequence[dict], key: str) -> tuple[list[float], list[float], list[float]]:
    """Estimates and the distances to each interval's ends, in percent (error bars)."""
    est = [100 * r[key].estimate for r in rows]
    return est, [100 * r[key].high - e for r, e in zip(rows, est)], [e - 100 * r[key].low for r, e in zip(rows, est)]


def leaderboard_scatter(rows: Sequence[dict]) -> go.Figure:
    """Average clean against average robust accuracy (%), one point per card at one threat (board.rows),
    with both 95% intervals as error bars: colour by method, marker by defense, the name on hover."""
    colours, symbols = _styles(rows)
    fig = go.Figure()
    for method, colour in colours.items():
        sel = [r for r in rows if (r["method"] or "-") == method]
        x, x_up, x_down = _percent(sel, "clean")
        y, y_up, y_down = _percent(sel, "robust")
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="markers", name=method, legendgroup="method", legendgrouptitle_text="method",
            error_x=dict(type="data", symmetric=False, array=x_up, arrayminus=x_down, thickness=1, width=0,
                         color=colour),
            error_y=dict(type="data", symmetric=False, array=y_up, arrayminus=y_down, thickness=1, width=0,
                         color=colour),
            marker=dict(size=11, color=colour, symbol=[symbols[r["defense"]] for r in sel],
                        line=dict(width=1, color="white")),
            customdata=[[r["model"], r["defense"], r["clean"].text(), r["robust"].text(), r["band"]] for r in sel],
            hovertemplate="<b>%{customdata[0]}</b><br>defense %{customdata[1]}<br>clean %{customdata[2]}<br>"
                          "robust %{customdata[3]}<br>band %{customdata[4]}<extra></extra>"))
    for defense, symbol in symbols.items():
        if any(r["defense"] == defense for r in rows):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=defense, legendgroup="defense",
                                     legendgrouptitle_text="defense", hoverinfo="skip",
                                     marker=dict(size=10, color="#6b7280", symbol=symbol)))
    fig.update_layout(template="plotly_white", height=560, margin=dict(l=55, r=15, t=15, b=50),
                      xaxis_title="clean accuracy (%, 95% interval)", yaxis_title="robust accuracy (%, 95% interval)",
                      legend=dict(groupclick="toggleitem", orientation="h", yanchor="top", y=-0.18, x=0),
                      xaxis=dict(range=[-2, 102]), yaxis=dict(range=[-2, 102]))
    return fig


def leaderboard_scatter_svg(rows: Sequence[dict]) -> str:
    """The same scatter as inline SVG for board.html (no script): each point's name, defense and intervals
    in a <title> the browser shows on hover."""
    import io

    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    colours, symbols = _styles(rows)
    fig = Figure(figsize=(8, 5), dpi=72)
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        (x,), (x_up,), (x_down,) = _percent([r], "clean")
        (y,), (y_up,), (y_down,) = _percent([r], "robust")
        colour = colours[r["method"] or "-"]
        bars = ax.errorbar([x], [y], xerr=[[x_down], [x_up]], yerr=[[y_down], [y_up]],
                           fmt=_MPL_MARKERS[symbols[r["defense"]]], color=colour, ecolor=colour, elinewidth=0.8,
                           markersize=8, markeredgecolor="white", alpha=0.9)
        bars[0].set_gid(f"pmg-point-{i}")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("clean accuracy (%, 95% interval)")
    ax.set_ylabel("robust accuracy (%, 95% interval)")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    used = {r["defense"] for r in rows}
    method_legend = ax.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=m) for m, c in colours.items()],
                              title="method", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.add_artist(method_legend)
    ax.legend(handles=[Line2D([], [], marker=_MPL_MARKERS[s], ls="", color="#6b7280", label=d)
                       for d, s in symbols.items() if d in used],
              title="defense", loc="lower left", bbox_to_anchor=(1.01, 0), frameon=False)
    buf = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "pmg-board"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    for i, r in enumerate(rows):
        title = (f"{r['model']} (defense {r['defense']}): clean {r['clean'].text()}, robust {r['robust'].text()}, "
                 f"band {r['band']}")
        group = f'<g id="pmg-point-{i}">'
        svg = svg.replace(group, f"{group}<title>{html.escape(title)}</title>", 1)
    return svg
