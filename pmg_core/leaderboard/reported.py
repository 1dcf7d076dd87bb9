"""The field's reported numbers: what each published robust CLIP's authors report, beside what is measured here.

The numbers live once, in the zoo (each ``Entry.published``: the clean and robust averages, the
protocol they come from, the README line or table), typed from the authors' own pages and never
from anyone else's reproduction; a model whose authors' numbers could not be found has none.
This module only arranges them for people:
- ``groups(measured)``: one group per protocol (datasets, attack, samples per dataset, prompts),
  its rows the models whose authors report under it. Entries that are one set of weights published
  twice (RobustVLM's LAION hub models and R-CLIP's Nextcloud files) share one row. Each group says
  in words how its protocol differs from the protocols measured here, as RobustBench keeps a
  paper's ``reported`` figure beside its own AutoAttack one; a card measured here for the same
  model replaces nothing: its row only says where that card is.
- ``markdown(groups)``: the same for the Leaderboard tab and the command line.
A reported number is a single figure: the authors give no interval, and none is invented here; the
n shown is theirs (images per dataset, datasets averaged), where they give it.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from ..evaluation.protocols import get_protocol
from ..models.zoo import ROBUSTVLM_ZERO_SHOT, TGA_PROTOCOL, ZOO, Entry, Protocol

MARK = "reported by the authors, not measured here"
NO_INTERVAL = "no interval reported (a single figure each)"
# The protocol defined here that replays each reported one most closely (pmg_core.evaluation.protocols).
CLOSEST = {ROBUSTVLM_ZERO_SHOT.name: "rvlm13-aa", TGA_PROTOCOL.name: "tecoa16-pgd"}


def _samples(p: Protocol) -> str:
    return f"{p.samples:,} images per dataset" if p.samples else "every test image of each dataset"


def difference(p: Protocol, measured: Mapping[str, Iterable[str]]) -> str:
    """How a reported protocol differs from those measured here, in words."""
    closest = CLOSEST.get(p.name)
    here = ""
    if closest:
        mine = get_protocol(closest)
        threat = mine.threats[0]
        here = (f" The closest protocol defined here is `{closest}` ({mine.title}; {threat.attack}-{threat.steps}); what "
                f"differs from it: {p.note}.")
    cards = ", ".join(f"`{name}` ({len(list(models))} cards)" for name, models in measured.items())
    shown = (f" The cards measured here ({cards}) use other protocols, so no number in this group is comparable "
             "with theirs." if cards else " No card has been measured here yet.")
    return (f"Their protocol: {p.attack}-{p.steps}, {_samples(p)}, {p.prompts} prompts.{here}{shown}")


def groups(measured: Mapping[str, Sequence[str]] | None = None, entries: Iterable[Entry] | None = None) -> list[dict]:
    """The reported numbers grouped by protocol (module docstring). `measured`: committed protocol name -> the
    model names with a card there (board.committed()), so a row can point to a card of its own model."""
    measured = {k: list(v) for k, v in (measured or {}).items()}
    out: dict[str, dict] = {}
    for e in (ZOO.values() if entries is None else entries):
        pub = e.published
        if pub is None:
            continue
        group = out.setdefault(pub.protocol.name, {"protocol": pub.protocol.name, "eps": set(), "rows": [],
                                                   "samples": pub.protocol.samples,
                                                   "datasets": len(pub.protocol.datasets),
                                                   "differs": difference(pub.protocol, measured)})
        group["eps"] |= set(pub.robust)
        row = next((r for r in group["rows"] if r["published"] == pub), None)
        if row is None:
            row = {"published": pub, "title": e.title, "ids": [], "method": e.method, "clean": pub.clean,
                   "robust": dict(pub.robust), "where": pub.where, "source": e.source_page, "mark": MARK,
                   "interval": NO_INTERVAL, "measured_here": []}
            group["rows"].append(row)
        row["ids"].append(e.id)
        row["measured_here"] += [name for name, models in measured.items() if e.id in models]
    for group in out.values():
        group["eps"] = sorted(group["eps"])
        for row in group["rows"]:
            del row["published"]
    return list(out.values())


def count_models(found: Sequence[dict]) -> int:
    return sum(len(g["rows"]) for g in found)


def _number(value) -> str:
    """As the authors print it: one decimal, or two where they give two."""
    if value is None:
        return "-"
    return f"{value:.1f}" if abs(round(value, 1) - value) < 1e-9 else f"{value:.2f}"


def _source(row: dict) -> str:
    url, _, _ = row["source"].partition(" ")
    return f"[{row['where']}]({url})" if url.startswith("https://") else row["where"]


def markdown(found: Sequence[dict]) -> str:
    """The groups as Markdown: per protocol, what differs in words, then one row per model with its source."""
    if not found:
        return "No reported numbers are recorded in the zoo."
    lines = [f"**{count_models(found)} published robust CLIPs, {MARK}.** Average zero-shot accuracy (%) over their "
             f"datasets as their authors report it, grouped by protocol; {NO_INTERVAL}, and the n is theirs. A card "
             "measured here for the same model never replaces these rows: both stay, side by side."]
    for g in found:
        eps = [f"robust at {e:g}/255" for e in g["eps"]]
        n = f"{g['samples']:,} images per dataset" if g["samples"] else "every test image"
        lines += ["", f"#### {g['protocol']}", "", f"**n (theirs): {n}; {NO_INTERVAL}.** {g['differs']}", "",
                  "| model | zoo ids | method | clean | " + " | ".join(eps) + " | source |",
                  "|---|---|---|---:|" + "---:|" * len(eps) + "---|"]
        for r in g["rows"]:
            ids = ", ".join(f"`{i}`" for i in r["ids"])
            here = f"; measured here too: {', '.join(r['measured_here'])}" if r["measured_here"] else ""
            lines.append(f"| {r['title']} | {ids} | {r['method']} | {_number(r['clean'])} | "
                         + " | ".join(_number(r["robust"].get(e)) for e in g["eps"]) + f" | {_source(r)}{here} |")
    return "\n".join(lines)
