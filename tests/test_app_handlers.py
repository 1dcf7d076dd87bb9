"""The app's handlers called directly (no server, no browser), on tiny random models."""
import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


import gradio as gr  # noqa: E402
from pmg_core.evaluation import analysis  # noqa: E402
from pmg_core.models import zoo  # noqa: E402
from pmg_core.data import inputs  # noqa: E402
from pmg_core.core.errors import UserError  # noqa: E402
from pmg_core.evaluation.explore import prepare_image, quantize_in_ball  # noqa: E402
from pmg_core.data.images import load_image  # noqa: E402
from pmg_core.core import env  # noqa: E402
from pmg_core.core.env import checkpoint_dir  # noqa: E402
from studio import assets, evaluation, one_image, safety, training  # noqa: E402
from studio.state import Studio  # noqa: E402
from helpers import EACH, EXAMPLE, LABELS, tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio.create(tiny_models(), tmp_path_factory.mktemp("ckpt"))


def attack(studio, **kw):
    args = dict(image=EXAMPLE, labels=LABELS, true_label="circle", norm="Linf", eps_255=8, steps=10, step_size_255=1,
                loss="cross-entropy", target="", source=EACH, model_names=studio.names)
    args.update(kw)
    return one_image.attack(studio, **args)


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


def test_targeted_attack_needs_no_true_label_and_shows_the_target_class_gain(studio):
    _, _, html, _, data = attack(studio, true_label="", target="star", steps=3)
    assert data["target"] == "star" and "targeted at <b>star</b>" in html
    assert "target-class (star) confidence change" in html
    for v in data["verdicts"]:
        assert math.isclose(v["target_gain"], v["adversarial"]["target_prob"] - v["clean"]["target_prob"])
        assert v["target_gain"] > -1e-2  # PGD keeps its best iterate: the target never loses (up to 8-bit rounding)
        assert v["confidence_drop"] is None  # no true label given


def test_targeted_eps_sweep_plots_the_target_class_probability(studio):
    fig, rows = one_image.eps_sweep(studio, EXAMPLE, LABELS, "", "Linf", "0, 8", 3, 2, "cross-entropy", "star", EACH, ["clip"])
    assert [r["target"] for r in rows] == ["star", "star"] and all(r["true_prob"] is None for r in rows)
    (trace,) = fig.data
    assert list(trace.y) == [r["target_prob"] for r in rows] and None not in trace.y
    assert "star" in fig.layout.title.text


def test_eps_sweep_starts_at_the_clean_confidence(studio):
    fig, rows = one_image.eps_sweep(studio, EXAMPLE, LABELS, "circle", "Linf", "4, 0, 8", 5, 1, "cross-entropy", "", EACH,
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
    d_fig, r_fig, p_fig, data = one_image.distances(studio, EXAMPLE, LABELS, "circle", "Linf", "0, 8", 5, 1, "cross-entropy",
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
    def bad_input():
        raise UserError("eps must be a number; got 'x'.")

    def bug():
        raise RuntimeError("internal detail")

    with pytest.raises(gr.Error, match="eps must be a number"):
        safety.safe(bad_input)()
    with pytest.raises(gr.Error) as e:
        safety.safe(bug)()
    assert "internal detail" not in str(e.value) and e.value.message == safety.GENERIC_ERROR


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
    events = list(evaluation.evaluate(studio, studio.names, "toy-colours", "", 1, 2, 1, 16))
    status, table, fig = events[-1]
    assert "Done" in status and [row[0] for row in table] == studio.names
    assert all(0 <= row[4] <= row[3] <= 100 for row in table)  # robust <= clean, in %
    gen = evaluation.evaluate(studio, studio.names, "toy-colours", "", 1, 2, 1, 16)
    next(gen)
    assert "Stopping" in studio.jobs.cancel("evaluate", wait=0)  # it stops when next iterated
    status, table, _ = list(gen)[-1]
    assert "Cancelled" in status and len(table) < len(studio.names)


def test_evaluate_refuses_folders_when_serving_in_public(studio, tmp_path):
    studio.public = True
    try:
        with pytest.raises(UserError, match="public"):
            next(evaluation.evaluate(studio, studio.names, "toy-colours", str(tmp_path), 1, 2, 1, 16))
    finally:
        studio.public = False


def test_train_saves_a_checkpoint_that_joins_the_model_lists(studio):
    events = list(training.train(studio, "clip", "pmg-aft", "toy-colours", 1, 1, 0.01, 3, 32, 1, 1, "handler-run"))
    assert "Done" in events[-1][0]
    assert (studio.checkpoint_dir / "handler-run.safetensors").is_file()
    assert "handler-run" in studio.names
    assert studio.models["handler-run"].metadata["method"] == "pmg-aft"
    assert "handler-run" in studio.about()
    with pytest.raises(UserError, match="already exists"):
        next(training.train(studio, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 3, 32, 1, 1, "handler-run"))


def test_train_cancel_stops_early_and_keeps_the_checkpoint(studio):
    gen = training.train(studio, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 500, 32, 1, 1, "cancelled-run")
    # Cancelled after its first step (a run stopped before any step saves nothing: nothing was learnt).
    next(status for status, _ in gen if status.startswith("Step"))
    studio.jobs.cancel("train", wait=0)
    last = list(gen)[-1][0]
    assert "Stopped" in last
    meta = studio.models["cancelled-run"].metadata
    assert meta["steps"] < 500


def test_default_models_fall_back_to_random_weights_when_no_checkpoint_is_there(tmp_path, monkeypatch):
    monkeypatch.setenv("PMG_OFFLINE", "1")
    models, mode = zoo.load_default_models(tmp_path)
    assert [m.name for m in models] == ["pmg-tiny (random weights)"] and "random" in mode.lower()


@pytest.mark.skipif(not (checkpoint_dir() / "clip-tiny.safetensors").is_file(), reason="clip-tiny not built yet")
def test_default_models_offline_are_the_embedded_world(monkeypatch):
    monkeypatch.setenv("PMG_OFFLINE", "1")
    models, mode = zoo.load_default_models(checkpoint_dir())
    assert models[0].name == "clip-tiny" and "Embedded" in mode
    assert all(m.base == models[0].spec for m in models)


def test_presets_and_examples_fit_the_embedded_world(studio):
    presets = studio.presets()
    assert presets["synth-shape"][:2] == ["circle", "square"]
    assert "CIFAR-10" not in presets  # only offered with a real CLIP
    for path, labels, true in assets.examples(presets):
        assert os.path.isfile(path) and true in inputs.parse_labels(labels)


# --- adversarial PNGs stay inside the eps-ball ----------------------------------------------------------

def clean_levels(path: str) -> np.ndarray:
    """The clean image the models saw (center square, at most 224 px, 8-bit), in grey levels."""
    return np.round(prepare_image(load_image(path), 224).permute(1, 2, 0).numpy() * 255).astype(int)


@pytest.mark.parametrize("eps", [1.5, 2.7])
def test_fractional_linf_eps_downloads_stay_inside_the_ball(studio, eps):
    # step = eps with no random start: the first PGD step lands exactly on +-eps (1.5 or 2.7 levels),
    # which plain rounding would turn into a 2- or 3-level change
    *_, files, _ = attack(studio, eps_255=eps, steps=2, step_size_255=eps)
    clean = clean_levels(EXAMPLE)
    for f in files:
        delta = np.abs(np.asarray(Image.open(f)).astype(int) - clean)
        assert delta.max() == math.floor(eps)  # perturbed as far as the grid allows, never further


def test_l2_eps_downloads_stay_inside_the_ball(studio):
    eps = 20  # /255, L2 over the whole image
    *_, files, _ = attack(studio, norm="L2", eps_255=eps, steps=3, step_size_255=eps)
    clean = clean_levels(EXAMPLE)
    for f in files:
        delta = np.asarray(Image.open(f)).astype(int) - clean
        assert 0 < np.sqrt((delta.astype(float) ** 2).sum()) <= eps + 1e-6


def test_quantizing_into_the_ball_never_rounds_outward():
    clean = torch.full((3, 4, 4), 100 / 255)
    up = clean + 1.5 / 255  # halfway between two levels: rounding goes to 2 levels
    assert ((quantize_in_ball(clean, up, 1.5 / 255, "Linf") - clean) * 255).abs().max().round() == 1
    spread = clean + 0.6 / 255  # 0.6 levels everywhere, L2 norm exactly eps: rounding to 1 level leaves the ball
    eps = 0.6 * math.sqrt(clean.numel()) / 255
    q = quantize_in_ball(clean, spread, eps, "L2")
    assert float(((q - clean) * 255).norm()) <= eps * 255 + 1e-6
    assert torch.equal(quantize_in_ball(clean, clean + 2 / 255, 3 / 255, "Linf"), clean + 2 / 255)  # on the grid: kept


# --- presets, model lists, housekeeping ---------------------------------------------------------------

def test_a_real_size_clip_gets_cifar10_and_all_1000_imagenet_classes():
    big = tiny_models()[0]
    big.image_size = 224  # what a real CLIP reports; the presets only look at the size
    presets = Studio.create([big], Path("unused")).presets()
    assert presets["CIFAR-10"][0] == "airplane" and len(presets["CIFAR-10"]) == 10
    imagenet = presets["ImageNet (1000 classes)"]
    assert len(inputs.parse_labels(", ".join(imagenet))) == 1000  # the whole list is accepted as labels
    assert imagenet[:3] == ["tench", "goldfish", "great white shark"]
    assert presets["ImageNet (first 20 classes)"] == imagenet[:20]
    assert "synth-shape" in presets


def test_rescan_skips_an_unreadable_checkpoint_with_a_log_line(tmp_path, caplog):
    studio = Studio.create(tiny_models()[:1], tmp_path)
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    (tmp_path / "folder.safetensors").mkdir()
    with caplog.at_level("WARNING", logger="pmg_core.models.zoo"):
        assert studio.rescan() == []
    assert "skipping checkpoint broken.safetensors" in caplog.text
    assert "skipping checkpoint folder.safetensors" in caplog.text


def test_output_folders_older_than_an_hour_are_removed(studio):
    old = studio.out_dir / "old-request"
    old.mkdir(parents=True)
    (old / "adversarial.png").write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    *_, files, _ = attack(studio, steps=1, model_names=["clip"])
    assert not old.exists() and all(os.path.isfile(f) for f in files)


def test_the_preview_is_what_the_models_see_and_refuses_a_bad_file_at_once(studio, tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (600, 300), (200, 30, 30)).save(wide)
    assert one_image.preview(studio, str(wide)).shape == (224, 224, 3)  # center square, scaled to 224
    assert one_image.preview(studio, None) is None  # cleared upload: nothing to show, no error
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UserError, match="not a readable image"):
        one_image.preview(studio, str(tmp_path / "text.png"))


def test_evaluate_step_size_0_means_automatic_as_in_the_attack_tab(studio):
    status, table, _ = list(evaluation.evaluate(studio, ["clip"], "toy-colours", "", 1, 2, 0, 8))[-1]
    assert "Done" in status and "auto step" in status and len(table) == 1


def test_public_servers_cap_training_steps_and_evaluation_samples(tmp_path):
    studio = Studio.create(tiny_models()[:1], tmp_path, public=True)
    with pytest.raises(UserError, match="between 1 and 500 on this public server"):
        next(training.train(studio, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 501, 8, 1, 1, "too-long"))
    with pytest.raises(UserError, match="between 1 and 2000 on this public server"):
        next(evaluation.evaluate(studio, ["clip"], "toy-colours", "", 1, 1, 1, 2001))
    assert Studio.create(tiny_models()[:1], tmp_path).limits.train_steps == 10_000  # local: the full range


# --- cancelling and ending runs -----------------------------------------------------------------------

def test_a_cancel_with_nothing_running_does_not_cancel_the_next_run(studio):
    assert "No train run" in studio.jobs.cancel("train")
    last = list(training.train(studio, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 2, 32, 1, 1, "after-stale-cancel"))[-1][0]
    assert "Done" in last and "after-stale-cancel" in studio.names


def test_cancel_returns_the_final_status_once_the_run_has_saved(studio):
    gen = training.train(studio, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 500, 32, 1, 1, "cancel-reports")
    next(status for status, _ in gen if status.startswith("Step"))  # a step done: the run has something to save
    stopper = threading.Thread(target=lambda: answers.append(studio.jobs.cancel("train")))
    answers: list[str] = []
    stopper.start()
    last = list(gen)[-1][0]
    stopper.join(timeout=30)
    assert answers == [last] and "Stopped" in last and "cancel-reports" in last


def test_a_run_closed_by_gradio_still_saves_and_joins_the_lists(studio, monkeypatch):
    """Gradio's cancels= closes a running generator at its next update, on its event loop: the steps
    done are kept, and the last step, the save and the rescan happen in the run's own thread, so
    closing returns at once instead of holding up every other session."""
    rescans = []
    real_rescan = Studio.rescan
    monkeypatch.setattr(Studio, "rescan", lambda self: (rescans.append(threading.current_thread()), real_rescan(self))[1])
    gen = training.train(studio, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 500, 32, 1, 1, "closed-run")
    next(gen)
    while "Step" not in next(gen)[0]:
        pass
    job = studio.jobs.get("train")
    gen.close()
    assert job.done.wait(60) and "Stopped" in job.final
    assert rescans and threading.current_thread() not in rescans
    assert "closed-run" in studio.names and 0 < studio.models["closed-run"].metadata["steps"] < 500


class PoisonedTrainer(training.Trainer):
    """A trainer whose loss is NaN on the given calls of its method (0-based)."""

    bad_calls: set[int] = set()

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        real, calls = self.method, []

        def method(model, original, x, y):
            out = real(model, original, x, y)
            calls.append(len(calls))
            return type(out)(out.loss * float("nan"), out.logits, out.metrics) if calls[-1] in self.bad_calls else out

        self.method = method


def test_train_status_counts_skipped_non_finite_steps(studio, monkeypatch):
    monkeypatch.setattr(training, "Trainer", PoisonedTrainer)
    monkeypatch.setattr(PoisonedTrainer, "bad_calls", {1, 3})
    updates = [u[0] for u in training.train(studio, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 4, 8, 1, 1, "skipping-run")]
    assert "Done" in updates[-1] and "2 step(s) were skipped" in updates[-1]
    assert studio.models["skipping-run"].metadata["steps"] == 4


def test_too_many_bad_steps_stop_with_the_reason_and_the_checkpoint_joins_the_lists(studio, monkeypatch):
    monkeypatch.setattr(training, "Trainer", PoisonedTrainer)
    monkeypatch.setattr(PoisonedTrainer, "bad_calls", set(range(2, 1000)))
    last = list(training.train(studio, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 50, 8, 1, 1, "diverged-run"))[-1][0]
    assert "NaN/inf" in last and "after 2 steps" in last and "added to the model lists" in last
    assert studio.models["diverged-run"].metadata["steps"] == 2


def test_a_run_that_breaks_says_so_in_one_sentence_and_frees_its_slot(studio, monkeypatch, caplog):
    """An unexpected error inside the run's thread reaches the stream as the generic sentence
    (details in the log), and the session can start another run."""
    class BrokenTrainer(training.Trainer):
        def run(self, should_stop=None):
            yield from super().run(should_stop=lambda: self.step >= 1)
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(training, "Trainer", BrokenTrainer)
    with caplog.at_level("ERROR", logger="pmg_studio"), pytest.raises(gr.Error, match="went wrong"):
        list(safety.safe(training.train, studio)("clip", "tecoa", "toy-colours", 1, 1, 0.01, 50, 8, 1, 1, "broken-run"))
    assert "disk on fire" in caplog.text and studio.jobs.get("train") is None


# --- which models the app loads -------------------------------------------------------------------------

EMBEDDED = pytest.mark.skipif(not (checkpoint_dir() / "clip-tiny.safetensors").is_file(),
                              reason="clip-tiny not built yet")


@EMBEDDED
def test_any_failure_to_load_real_clip_falls_back_to_the_embedded_default(monkeypatch, caplog):
    real_load = zoo.load_model

    def load_model(spec, **kw):
        if spec == zoo.OPENAI_VIT_B32:
            raise RuntimeError("download interrupted")  # not a UserError
        return real_load(spec, **kw)

    monkeypatch.setattr(env, "is_offline", lambda: False)
    monkeypatch.setattr(zoo, "load_model", load_model)
    with caplog.at_level("WARNING", logger="pmg_core.models.zoo"):
        models, mode = zoo.load_default_models(checkpoint_dir())
    assert models[0].name == "clip-tiny" and "Embedded" in mode
    assert "Real CLIP could not be loaded (download interrupted)" in caplog.text


@EMBEDDED
def test_extra_model_specs_join_the_default_and_a_bad_one_is_skipped_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PMG_OFFLINE", "1")
    mine = tmp_path / "my-robust.safetensors"
    shutil.copy(checkpoint_dir() / "tecoa-tiny.safetensors", mine)  # a fine-tune of clip-tiny, outside checkpoints/
    models, mode = zoo.load_default_models(checkpoint_dir(), [str(mine), "tecoa-tiny", str(tmp_path / "no.safetensors")])
    names = [m.name for m in models]
    assert names[0] == "clip-tiny" and "my-robust" in names and names.count("tecoa-tiny") == 1
    assert models[names.index("my-robust")].clip is models[0].clip  # shares the loaded base
    assert "Not loaded: `" + str(tmp_path / "no.safetensors") in mode and "does not exist" in mode


@EMBEDDED
def test_an_extra_fine_tune_shares_an_extra_base(tmp_path, monkeypatch):
    """`--models pmg-test,ft.safetensors`: the fine-tune reuses the pmg-test the app loaded just before."""
    from pmg_core.training.loop import TrainConfig, train

    monkeypatch.setenv("PMG_OFFLINE", "1")
    ft = tmp_path / "ft.safetensors"
    train(TrainConfig(model="pmg-test", method="clean", dataset="toy-colours", max_steps=1, batch_size=8, out=str(ft)),
          progress=False)
    models, _ = zoo.load_default_models(checkpoint_dir(), ["pmg-test", str(ft)])
    by_name = {m.name: m for m in models}
    assert by_name["ft"].clip is by_name["pmg-test"].clip


@EMBEDDED
def test_the_cli_writes_the_same_comparison_json_as_the_app_shows(tmp_path, capsys):
    """`python -m pmg_core attack --json OUT` and the app's Details (JSON) are one document for one attack."""
    import json

    from pmg_core.cli import commands as cli

    specs = ["clip-tiny", "tecoa-tiny"]
    out = tmp_path / "comparison.json"
    assert cli.main(["attack", EXAMPLE, "--models", ",".join(specs), "--labels", LABELS, "--true", "circle",
                     "--target", "star", "--eps", "8", "--steps", "3", "--step-size", "2", "--norm", "L2",
                     "--loss", "margin", "--source", "clip-tiny", "--json", str(out), "--device", "cpu"]) == 0
    studio = Studio.create(zoo.load_models(specs, "cpu"), tmp_path)
    *_, details = one_image.attack(studio, EXAMPLE, LABELS, "circle", "L2", 8, 3, 2, "CW margin", "star", "clip-tiny",
                                   specs)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(details))
    assert [v["model"] for v in written["verdicts"]] == specs and written["target"] == "star"
