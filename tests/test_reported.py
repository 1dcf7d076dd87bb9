"""The field's reported numbers as data: every row has its authors' source and protocol, is marked as reported
and not measured here, carries no invented interval, and stays when a card of the same model is measured here."""
import re

from pmg_core.leaderboard import reported
from pmg_core.models import zoo


def test_at_least_twelve_published_robust_clips_have_reported_numbers_with_their_sources():
    groups = reported.groups()
    rows = [r for g in groups for r in g["rows"]]
    assert reported.count_models(groups) == len(rows) >= 12
    for g in groups:
        assert g["eps"] and g["differs"].startswith("Their protocol:") and "closest protocol defined here" in g["differs"]
        for r in g["rows"]:
            assert r["where"] and r["source"].startswith("https://"), r["title"]
            assert r["mark"] == reported.MARK and "no interval" in r["interval"]
            assert 0 < min(r["robust"].values()) <= max(r["robust"].values()) < r["clean"] <= 100, r["title"]
            assert set(r["robust"]) <= set(g["eps"])
    # every registry entry with published numbers has a row, and one set of weights published twice shares one
    assert sorted(i for r in rows for i in r["ids"]) == sorted(e.id for e in zoo.ZOO.values() if e.published)
    shared = next(r for r in rows if "rclip-fare4-convnext" in r["ids"])
    assert shared["ids"] == ["fare4-convnext-laion", "rclip-fare4-convnext"]


def test_a_card_measured_here_later_replaces_no_reported_number():
    before = reported.groups()
    after = reported.groups({"zs16-aa": ["tecoa1-b32-rvlm", "clip-tiny"], "mini": ["clip-tiny"]})
    row_before = next(r for g in before for r in g["rows"] if r["ids"] == ["tecoa1-b32-rvlm"])
    row_after = next(r for g in after for r in g["rows"] if r["ids"] == ["tecoa1-b32-rvlm"])
    assert row_after["measured_here"] == ["zs16-aa"] and row_before["measured_here"] == []
    assert {k: v for k, v in row_after.items() if k != "measured_here"} == \
        {k: v for k, v in row_before.items() if k != "measured_here"}
    assert reported.count_models(after) == reported.count_models(before)
    assert "(`zs16-aa` (2 cards), `mini` (1 cards)) use other protocols" in after[0]["differs"]


def test_the_markdown_says_what_the_numbers_are_and_gives_each_row_its_source():
    text = reported.markdown(reported.groups({"mini": ["clip-tiny"]}))
    assert reported.MARK in text.splitlines()[0] and "no interval reported" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "`" in ln]
    assert len(rows) >= 12
    assert all(re.search(r"\[[^]]+\]\(https://github\.com/[^)]+\)", ln) for ln in rows)  # a link to the source
    assert text.count("no interval reported (a single figure each).**") == len(reported.groups())  # each group says so
    assert "**n (theirs): 1,000 images per dataset;" in text
    assert "| TGA-ZSR ViT-B/32 (its authors' weights) | `tga-zsr-b32` | tga-zsr | 56.44 | 42.09 |" in text
