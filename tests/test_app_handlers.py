"""The app's handlers called directly (no server, no browser), on tiny random models."""
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app  # noqa: E402
from pmg_core import analysis, inputs  # noqa: E402
from pmg_core.errors import UserError  # noqa: E402
from pmg_core.images import load_image  # noqa: E402
from pmg_core.models import load_model  # noqa: E402

EXAMPLE = str(Path(app.EXAMPLES_DIR) / "example.png")
LABELS = "circle, square, triangle, diamond, cross, star"
EACH = app.EACH_MODEL


def tiny_models():
    """Three models sharing one text side: 'clip' and two differently perturbed image encoders."""
    torch.manual_seed(0)
    base = load_model("pmg-test")
    base.name = "clip"
    out = [base]
    for i, name in enumerate(("tecoa", "pmg-aft")):
        m = base.fork(name, name)
        with torch.no_grad():
            for p in m.visual.parameters():
                p.add_(0.05 * (i + 1) * torch.randn_like(p))
        out.append(m)
    return out


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return app.Studio.create(tiny_models(), tmp_path_factory.mktemp("ckpt"))


def attack(studio, **kw):
    args = dict(image=EXAMPLE, labels=LABELS, true_label="circle", norm="Linf", eps_255=8, steps=10, step_size_255=1,
                loss="cross-entropy", target="", source=EACH, model_names=studio.names)
    args.update(kw)
    return studio.attack(**args)


def test_attack_each_model_gives_top5_verdicts_and_bit_exact_pngs_inside_the_eps_ball(studio):
    gallery, perturb, html, files, data = attack(studio)
    assert [v["model"] for v in data["verdicts"]] == ["clip", "tecoa", "pmg-aft"]
    assert len(files) == len(gallery) == len(perturb) == 3
    clean = load_image(EXAMPLE)
    for v, f, (img, _) in zip(data["verdicts"], files, gallery):
        assert v["attacked_by"] == v["model"]
        assert len(v["clean"]["labels"]) == 5 and len(v["adversarial"]["labels"]) == 5
        # PGD keeps the best iterate, so the true class never gains confidence (up to 8-bit rounding)
        assert v["confidence_drop"] > -1e-2
        assert v["model"] in html
        png = np.asarray(Image.open(f))
        assert png.dtype == np.uint8 and np.array_equal(png, img)  # download == what the models were shown
        delta = np.abs(png.astype(int) - np.round(clean.permute(1, 2, 0).numpy() * 255).astype(int))
        assert delta.max() <= 8  # Linf eps 8/255, exactly on the 8-bit grid
    assert ("right" in html) or ("wrong" in html)


def test_transfer_attack_uses_one_source_image_for_all_models(studio):
    gallery, _, _, files, data = attack(studio, source="tecoa", steps=3)
    assert len(files) == 1 and len(gallery) == 1
    assert {v["attacked_by"] for v in data["verdicts"]} == {"tecoa"}


def test_targeted_attack_needs_no_true_label(studio):
    _, _, html, _, data = attack(studio, true_label="", target="star", steps=3)
    assert data["target"] == "star" and "targeted at star" in html


def test_eps_sweep_starts_at_the_clean_confidence(studio):
    fig, rows = studio.eps_sweep(EXAMPLE, LABELS, "circle", "Linf", "4, 0, 8", 5, 1, "cross-entropy", "", EACH,
                                 ["clip", "tecoa"])
    assert [r["eps_255"] for r in rows] == [0.0, 0.0, 4.0, 4.0, 8.0, 8.0]
    _, _, _, _, data = attack(studio, model_names=["clip", "tecoa"], steps=0)
    clean = {v["model"]: v["clean"]["true_prob"] for v in data["verdicts"]}
    for r in rows[:2]:
        assert math.isclose(r["true_prob"], clean[r["model"]], rel_tol=1e-4)
    for m in ("clip", "tecoa"):  # more budget never helps the true class
        probs = [r["true_prob"] for r in rows if r["model"] == m]
        assert probs[2] <= probs[0] + 1e-2
    assert len(fig.data) == 2


def test_feature_distances_are_zero_without_attack_and_grow_with_it(studio):
    d_fig, r_fig, p_fig, data = studio.distances(EXAMPLE, LABELS, "circle", "Linf", "0, 8", 5, 1, "cross-entropy",
                                                 studio.names, "clip")
    rows = data["distances"]
    at0 = [r for r in rows if r["eps_255"] == 0]
    at8 = [r for r in rows if r["eps_255"] == 8]
    assert all(r["l2"] == 0 and abs(r["cosine"]) < 1e-5 for r in at0)
    assert all(r["l2"] > 0 for r in at8)
    ref0 = {r["model"]: r["ref_l2"] for r in at0}
    assert ref0["clip"] == 0 and ref0["tecoa"] > 0  # drift of a perturbed encoder from the original
    clip8 = next(r for r in at8 if r["model"] == "clip")
    assert math.isclose(clip8["ref_l2"], clip8["l2"], rel_tol=1e-6)  # the reference's own displacement
    kinds = [p["kind"] for p in data["points"]]
    assert kinds.count("text") == 6 and kinds.count("clean") == 3 and kinds.count("adversarial") == 3


def test_amplified_perturbation_is_grey_without_change_and_full_range_with():
    x = torch.rand(3, 8, 8)
    assert torch.allclose(analysis.amplify_perturbation(x, x), torch.full_like(x, 0.5))
    y = (x + 2 / 255 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    amp = analysis.amplify_perturbation(x, y)
    assert amp.max() == 1.0 or amp.min() == 0.0


@pytest.mark.parametrize("kw, words", [
    (dict(labels=""), "labels"),
    (dict(labels="cat, cat, dog", true_label="cat"), "more than once"),
    (dict(labels="cat,,dog", true_label="cat"), "empty"),
    (dict(true_label="wolf"), "not among"),
    (dict(eps_255=float("nan")), "eps"),
    (dict(eps_255=1000), "eps"),
    (dict(steps=-1), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(image=None), "Upload"),
    (dict(model_names=[]), "model"),
    (dict(model_names=["nope"]), "not loaded"),
])
def test_bad_attack_input_gets_one_sentence(studio, kw, words):
    with pytest.raises(UserError) as e:
        attack(studio, **kw)
    msg = str(e.value)
    assert words.lower() in msg.lower() and "\n" not in msg and "Traceback" not in msg


@pytest.mark.parametrize("content", [b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_non_images_and_broken_files_are_refused_in_one_sentence(studio, tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(UserError, match="image"):
        attack(studio, image=str(bad))


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_grayscale_rgba_16bit_and_palette_images_are_attacked(studio, tmp_path, mode):
    rgb = Image.open(EXAMPLE)
    img = rgb.convert("I").point(lambda v: v * 256).convert("I;16") if mode == "I;16" else rgb.convert(mode)
    path = tmp_path / f"img-{mode.replace(';', '')}.png"
    img.save(path)
    _, _, _, files, data = attack(studio, image=str(path), steps=1, model_names=["clip"])
    assert np.asarray(Image.open(files[0])).shape == (32, 32, 3)


def test_safe_wrapper_turns_user_errors_into_their_sentence_and_others_into_a_generic_one():
    import gradio as gr

    def bad_input():
        raise UserError("eps must be a number; got 'x'.")

    def bug():
        raise RuntimeError("internal detail")

    with pytest.raises(gr.Error, match="eps must be a number"):
        app.safe(bad_input)()
    with pytest.raises(gr.Error) as e:
        app.safe(bug)()
    assert "internal detail" not in str(e.value) and e.value.message == app.GENERIC_ERROR


def test_label_parsing_accepts_unicode_and_refuses_control_characters_and_floods():
    assert inputs.parse_labels(" chat ,  猫, café ,") == ["chat", "猫", "café"]
    with pytest.raises(UserError, match="control"):
        inputs.parse_labels("cat, d\x00og")
    with pytest.raises(UserError, match="at most 1000"):
        inputs.parse_labels(",".join(f"c{i}" for i in range(1001)))
    assert len(inputs.parse_labels(",".join(f"c{i}" for i in range(1000)))) == 1000


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "/etc/passwd", "x" * 80, "", "  ", "-dash", "a\\b", "ok name"])
def test_checkpoint_names_cannot_leave_the_checkpoint_folder(tmp_path, name):
    with pytest.raises(UserError):
        inputs.new_checkpoint_path(name, tmp_path)


def test_checkpoint_name_is_validated_and_never_overwrites(tmp_path):
    path = inputs.new_checkpoint_path("my-pmg_aft.v2", tmp_path)
    assert path == (tmp_path / "my-pmg_aft.v2.safetensors").resolve()
    path.write_bytes(b"x")
    with pytest.raises(UserError, match="already exists"):
        inputs.new_checkpoint_path("my-pmg_aft.v2.safetensors", tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "abc", None, True, -1, 11])
def test_numbers_out_of_range_or_not_finite_are_refused(value):
    with pytest.raises(UserError, match="between 0 and 10"):
        inputs.parse_number("eps", value, 0, 10)


def test_upload_size_limit(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(UserError, match="upload limit"):
        inputs.upload_path({"path": str(big)}, max_bytes=1024)


def test_evaluate_streams_rows_and_can_be_cancelled(studio):
    events = list(studio.evaluate(studio.names, "toy-colours", "", 1, 2, 1, 16))
    status, table, fig = events[-1]
    assert "Done" in status and [row[0] for row in table] == studio.names
    assert all(0 <= row[4] <= row[3] <= 100 for row in table)  # robust <= clean, in %
    gen = studio.evaluate(studio.names, "toy-colours", "", 1, 2, 1, 16)
    next(gen)
    studio.cancel("evaluate")
    status, table, _ = list(gen)[-1]
    assert "Cancelled" in status and len(table) < len(studio.names)


def test_evaluate_refuses_folders_when_serving_in_public(studio, tmp_path):
    studio.allow_folders = False
    try:
        with pytest.raises(UserError, match="public"):
            next(studio.evaluate(studio.names, "toy-colours", str(tmp_path), 1, 2, 1, 16))
    finally:
        studio.allow_folders = True


def test_train_saves_a_checkpoint_that_joins_the_model_lists(studio):
    events = list(studio.train("clip", "pmg-aft", "toy-colours", 1, 1, 0.01, 3, 32, 1, 1, "handler-run"))
    assert "Done" in events[-1][0]
    assert (studio.checkpoint_dir / "handler-run.safetensors").is_file()
    assert "handler-run" in studio.names
    assert studio.models["handler-run"].metadata["method"] == "pmg-aft"
    assert "handler-run" in studio.about()
    with pytest.raises(UserError, match="already exists"):
        next(studio.train("clip", "tecoa", "toy-colours", 1, 1, 0.01, 3, 32, 1, 1, "handler-run"))


def test_train_cancel_stops_early_and_keeps_the_checkpoint(studio):
    gen = studio.train("clip", "tecoa", "toy-colours", 1, 1, 0.01, 500, 32, 1, 1, "cancelled-run")
    next(gen)  # started
    studio.cancel("train")
    last = list(gen)[-1][0]
    assert "Stopped" in last
    meta = studio.models["cancelled-run"].metadata
    assert meta["steps"] < 500


def test_default_models_fall_back_to_random_weights_when_no_checkpoint_is_there(tmp_path, monkeypatch):
    monkeypatch.setenv("PMG_OFFLINE", "1")
    models, mode = app.load_default_models(tmp_path)
    assert [m.name for m in models] == ["pmg-tiny (random weights)"] and "random" in mode.lower()


@pytest.mark.skipif(not (app.CHECKPOINT_DIR / "clip-tiny.safetensors").is_file(), reason="clip-tiny not built yet")
def test_default_models_offline_are_the_embedded_world(monkeypatch):
    monkeypatch.setenv("PMG_OFFLINE", "1")
    models, mode = app.load_default_models(app.CHECKPOINT_DIR)
    assert models[0].name == "clip-tiny" and "Embedded" in mode
    assert all(m.base == models[0].spec for m in models)


def test_presets_and_examples_fit_the_embedded_world(studio):
    presets = studio.presets()
    assert presets["synth-shape"][:2] == ["circle", "square"]
    assert "CIFAR-10" not in presets  # only offered with a real CLIP
    for path, labels, true in app._examples(presets):
        assert os.path.isfile(path) and true in inputs.parse_labels(labels)
