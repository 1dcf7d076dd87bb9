"""Results that explain themselves: the first example tells the project's story, a one-line summary
sits over the verdicts, the maps are one labelled grid, a comparison can be shared by a link, and
Evaluate and Train end with readable summaries and charts."""
import os
import re
import time
from pathlib import Path

import pytest

import app
from pmg_core.core import env
from pmg_core.evaluation import plots
from pmg_core.core.errors import UserError
from pmg_core.data.images import load_image
from pmg_core.models.zoo import load_default_models
from studio import assets, evaluation, one_image, sessions, share
from studio.state import Studio
from helpers import EACH, EXAMPLE, LABELS, tiny_models

EMBEDDED = (env.SHIPPED_CHECKPOINTS / "fare-tiny.safetensors").is_file()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Studio.create(tiny_models(), tmp_path_factory.mktemp("ckpt"))


def _defaults(demo) -> dict:
    """The Attack tab's starting values, read from the page as built (by elem_id or label)."""
    found = {}
    for block in demo.blocks.values():
        key = getattr(block, "elem_id", None) or getattr(block, "label", None)
        if key and key not in found:
            found[key] = getattr(block, "value", None)
    return found


@pytest.mark.skipif(not EMBEDDED, reason="the embedded checkpoints are not built")
def test_on_the_first_example_the_original_clip_is_fooled_and_robust_fine_tunes_stay_right(tmp_path):
    models, _ = load_default_models(env.SHIPPED_CHECKPOINTS)
    demo = app.build_app(models, checkpoint_dir=tmp_path)
    studio, page = demo.studio, _defaults(demo)
    path, labels, true = assets.examples(studio.presets())[0]  # the strip's first picture, as a click sets it
    *_, html, _, details = one_image.attack(
        studio, path, labels, true, page["Norm"], page["pmg-eps"], page["PGD steps"],
        page["Step size (/255, 0 = auto)"], page["Attack loss"], "", page["Who is attacked"],
        page["Models to compare"], page["pmg-defend"], page["pmg-stop-early"])
    verdicts = {v["model"]: v for v in details["verdicts"]}
    assert verdicts["clip-tiny"]["clean"]["correct"] and not verdicts["clip-tiny"]["adversarial"]["correct"]
    robust = [name for name, v in verdicts.items() if name != "clip-tiny"
              and v["clean"]["correct"] and v["adversarial"]["correct"]]
    assert len(robust) >= 2 and "pmg-aft-tiny" in robust, robust
    assert "fooled: <b>clip-tiny</b> (the original CLIP)" in html


def _verdict(model, clean_right, adversarial_right):
    import torch
    from pmg_core.evaluation.explore import ModelVerdict, Prediction

    def pred(right):
        return Prediction(["circle", "star"] if right else ["star", "circle"], [0.6, 0.4], 0.6 if right else 0.4, right)

    return ModelVerdict(model, pred(clean_right), pred(adversarial_right), model, torch.zeros(3, 4, 4))


def test_the_summary_counts_the_models_still_right_and_names_who_fell_and_who_was_wrong_before():
    from pmg_core.evaluation.explore import AttackSettings, Comparison, Radius
    from studio.html import verdict_html

    comp = Comparison(None, ["circle", "star"], "circle", [
        _verdict("clip", True, False), _verdict("tecoa", True, True), _verdict("fare", False, True),
        _verdict("pmg-aft", True, True), _verdict("odd", False, False)])
    radii = [Radius("clip", 3.0, 16, 1, 10, 5), Radius("tecoa", None, 16, 1, 10, 1)]
    html = verdict_html(comp, AttackSettings(eps=8 / 255), radii, originals=["clip"])
    summary = re.search(r"<p class='pmg-summary' data-held='(\d+)' data-models='(\d+)'>(.*?)</p>", html)
    assert (summary[1], summary[2]) == ("2", "5") and html.index("pmg-summary") < html.index("<table")
    assert summary[3] == ("<b>2 of 5 models still right after the attack</b>; fooled: <b>clip</b> (the original "
                          "CLIP) at 3/255; wrong before it: <b>fare</b>, <b>odd</b>.")


def test_no_count_shows_while_the_verdicts_still_arrive(tiny):
    streamed = list(one_image.attack_stream(tiny, EXAMPLE, LABELS, "circle", "Linf", 8, 3, 2, "cross-entropy", "",
                                            EACH, tiny.names))
    assert all("pmg-summary" not in out[2] for out in streamed[:-1]) and "pmg-summary" in streamed[-1][2]


def test_a_targeted_summary_counts_the_models_pushed_to_the_target(tiny):
    *_, html, _, details = one_image.attack(tiny, EXAMPLE, LABELS, "circle", "Linf", 16, 5, 4, "cross-entropy",
                                            "star", EACH, tiny.names)
    hit = sum(v["adversarial"]["labels"][0] == "star" for v in details["verdicts"])
    assert f"{hit} of 3 models pushed to the target star" in html


def test_the_maps_are_one_grid_with_headers_once_and_a_row_per_model(tiny):
    result = {}
    one_image.attack(tiny, EXAMPLE, LABELS, "circle", "Linf", 8, 2, 2, "cross-entropy", "", EACH, tiny.names,
                     result=result)
    grid, chart, *_ = list(one_image.extras(tiny, result, True, False))[-1]
    assert chart is None
    table = grid.split("<table>")[1].split("</table>")[0].replace("&shy;", "")
    heads = " | ".join(re.findall(r"<th[^>]*>(.*?)</th>", table))  # every header cell, rows' model names included
    assert heads.count("clean image") == heads.count("adversarial image") == 1  # headers once, not per row
    assert heads.count("true class") == heads.count("predicted class") == heads.count("saliency") == 2
    assert table.rindex("saliency</th>") < table.index("<tbody>")
    rows = re.findall(r"<tr data-model='([^']+)'>(.*?)</tr>", grid)
    assert [name for name, _ in rows] == tiny.names
    for name, cells in rows:
        assert cells.count("<img ") == 6
        predicted = {v.model: v for v in result["comparison"].verdicts}[name]
        assert f"<small>{predicted.adversarial.labels[0]}</small>" in cells  # named under its map
    nothing, *_ = list(one_image.extras(tiny, result, False, False))[-1]
    assert nothing == ""  # no maps asked: nothing to show


def test_a_link_to_an_example_reopens_it_with_every_setting_and_keeps_no_file(tiny):
    path, labels, true = assets.examples(tiny.presets())[1]
    result = {}
    one_image.attack(tiny, path, labels, true, "L2", 40, 2, 0, "CW margin", "", "tecoa", ["clip", "tecoa"],
                     "TTC (test-time counterattacks)", False, result=result)
    query = share.link_query(tiny, result, assets.examples(tiny.presets()), True, False)
    assert "example=example.png" in query and not list(tiny.out_dir.glob(f"{share.PREFIX}*"))
    params = dict(p.split("=", 1) for p in query[1:].split("&"))
    from urllib.parse import unquote_plus
    link = share.link_settings(tiny, {k: unquote_plus(v) for k, v in params.items()}, assets.examples(tiny.presets()))
    assert link["image"] == path and link["preset"] == "synth-shape" and link["true_label"] == true
    assert (link["norm"], link["eps"], link["steps"], link["step_size"], link["loss"]) == ("L2", 40, 2, 0, "CW margin")
    assert (link["source"], link["models"], link["defend"]) == ("tecoa", ["clip", "tecoa"],
                                                                 "TTC (test-time counterattacks)")
    assert (link["stop_early"], link["with_maps"], link["with_radius"]) == (False, True, False)


def test_a_link_to_an_upload_keeps_the_image_as_attacked_until_it_expires(tiny, tmp_path, monkeypatch):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), (200, 30, 90)).save(photo)
    result = {}
    one_image.attack(tiny, str(photo), "red, blue", "red", "Linf", 4, 1, 1, "cross-entropy", "", EACH, ["clip"],
                     result=result)
    query = share.link_query(tiny, result, assets.examples(tiny.presets()), True, False)
    token = re.search(r"image=([0-9a-f]{16})", query)[1]
    link = share.link_settings(tiny, {"image": token, "labels": "red, blue", "models": "clip,nosuch"},
                               assets.examples(tiny.presets()))
    attacked = sessions.restore(result)[0].image  # the session keeps the comparison's images as files
    assert load_image(link["image"]).equal(attacked)  # the very tensor attacked: same verdicts
    assert link["models"] == ["clip"] and link["missing"] == ["nosuch"]
    kept = tiny.out_dir / f"{share.PREFIX}{token}.png"
    os.utime(kept, (time.time() - share.KEEP_S - 1,) * 2)
    with pytest.raises(UserError, match="no longer kept"):
        share.link_settings(tiny, {"image": token}, [])
    with pytest.raises(UserError, match="not valid"):
        share.link_settings(tiny, {"image": "../../etc/passwd"}, [])
    monkeypatch.setattr(share, "KEPT_FILES", 2)
    tokens = [share.keep_upload(tiny, attacked * (i + 1) / 4) for i in range(3)]
    assert sorted(p.name for p in tiny.out_dir.glob(f"{share.PREFIX}*")) == sorted(
        f"{share.PREFIX}{t}.png" for t in tokens[1:])  # the oldest and the expired one went
    assert share.link_settings(tiny, {"page": "1"}, []) is None  # not opened from a link


def test_opening_the_page_leaves_an_image_uploaded_before_the_page_finished_loading(tmp_path):
    """The page's load event (a share link's settings) answers after the page is drawn: on a slow server a
    visitor may have uploaded an image by then, and an answer that is not a link must leave it as it is."""
    import asyncio
    from types import SimpleNamespace

    from studio import safety

    demo = app.build_app(tiny_models(), checkpoint_dir=tmp_path)
    (load,) = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "open_link"]
    image = [o for o in load.outputs if o.elem_id == "pmg-image"]
    assert len(image) == 1
    at = load.outputs.index(image[0])
    for query, hint in (({}, False), ({"image": "../../etc/passwd"}, True)):  # no link; a link that is not valid
        sent = asyncio.run(demo.postprocess_data(load, load.fn(SimpleNamespace(query_params=query)), None))
        assert sent[at] == safety.SKIP
        assert ("not valid" in str(sent[-1])) == hint


def test_evaluate_ends_with_a_per_model_summary_with_n_and_an_interval(tiny):
    status, table, fig = list(evaluation.evaluate(tiny, tiny.names, "toy-colours", "", 8, 2, 2, 16))[-1]
    lines = status.splitlines()
    assert lines[0].startswith("**Done**") and lines[2].startswith("| model | datasets | images (n) |")
    summary = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[4:])}
    assert list(summary) == tiny.names
    for row in table:
        n, robust = int(summary[row[0]][2]), summary[row[0]][4]
        value, low, high = map(float, re.match(r"([\d.]+) \(([\d.]+)-([\d.]+)\)", robust).groups())
        assert n == row[2] == 16 and value == pytest.approx(row[4], abs=0.05) and low <= value <= high
    assert [trace.name for trace in fig.data if trace.showlegend is not False] == tiny.names  # one series per model
    two = [dict(model="m", dataset="a", n=10, clean_acc=0.9, robust_acc=0.5),
           dict(model="m", dataset="b", n=30, clean_acc=0.5, robust_acc=0.2)]
    assert evaluation.summary(two).splitlines()[-1] == "| m | 2 | 40 | 60.0 (44.6-73.7) | 27.5 (16.1-42.8) |"


def test_a_one_step_training_run_draws_its_point_and_keeps_the_legend_off_the_loss_chart():
    fig = plots.train_figure([{"step": 1, "total": 1, "loss": 2.1, "adv_acc": 0.3, "acc": 0.5}])
    assert all("markers" in trace.mode for trace in fig.data)
    assert [trace.name for trace in fig.data if trace.showlegend is not False] == ["on adversarial images",
                                                                                     "on clean images"]
    assert fig.layout.legend.x > 0.5  # under the accuracy chart, on the right


def test_checkpoints_people_train_in_the_checkout_are_ignored_by_git_and_the_shipped_ones_are_not():
    import shutil
    import subprocess

    root = env.SHIPPED_CHECKPOINTS.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(name: str) -> bool:  # by the patterns alone (--no-index), tracked or not
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", f"checkpoints/{name}"],
                              cwd=root).returncode == 0

    assert ignored("my-pmg-aft.safetensors") and ignored("my-pmg-aft.state")  # the Train tab's default name
    tracked = subprocess.run(["git", "ls-files", "checkpoints"], cwd=root, capture_output=True, text=True).stdout.split()
    assert tracked and not any(ignored(Path(p).name) for p in tracked)
