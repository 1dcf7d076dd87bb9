"""Evaluation counts, the classifier contract, offline failures and the CLI's answers to bad input."""
import json
import math
import time

import pytest
import torch

from pmg_core.cli import commands as cli
from pmg_core.attacks.pgd import PGD
from pmg_core.data.datasets import get_dataset
from pmg_core.core.errors import UserError
from pmg_core.evaluation.accuracy import EvalConfig, evaluate, sample_noise, to_csv, to_markdown
from pmg_core.models.clip import ZeroShotClassifier, load_model
from toy import make_toy

CLASSES = ["red", "green", "blue", "grey"]


@pytest.mark.parametrize("early_stop", [False, True])
def test_eval_counts_equal_a_manual_count(model, early_stop):
    data = get_dataset("toy-colours")
    cfg = EvalConfig(models=["x"], datasets=["toy-colours"], eps=8 / 255, steps=4, step_size=2 / 255, batch_size=20,
                     early_stop=early_stop)
    row = evaluate(cfg, models=[model])["results"][0]
    x, y = make_toy(96, seed=2).tensors
    clf = model.classifier(data.classes, data.templates).eval()
    with torch.no_grad():
        clean = clf(x).argmax(1) == y
    init = sample_noise(range(96), (3, 32, 32), 8 / 255, "Linf", 0)
    fooled = PGD(clf, 8 / 255, 2 / 255, 4).run(x, y, init=init).fooled
    assert row["n"] == 96
    assert row["clean_correct"] == int(clean.sum())
    assert row["robust_correct"] == int((clean & ~fooled).sum())
    assert row["clean_acc"] == pytest.approx(int(clean.sum()) / 96)


def _rows(model: str, preset: str | None = "paper") -> list[dict]:
    return [{"model": model, "dataset": d, "n": 10, "clean_correct": c, "robust_correct": r, "clean_acc": c / 10,
             "robust_acc": r / 10, "seconds": 0, **({"preset": preset} if preset else {})}
            for d, c, r in (("a", 8, 2), ("b", 6, 4))]


def test_tables_have_average_column():
    md = to_markdown(_rows("m"))
    assert "| Average |" in md.splitlines()[0]
    assert "| m | paper | robust | 20.00 | 40.00 | 30.00 |" in md and "| m | paper | clean | 80.00 | 60.00 | 70.00 |" in md
    assert to_csv(_rows("m")).splitlines()[0].startswith("model,preset,dataset,n,clean_correct")


def test_tables_show_each_models_preset_and_warn_once_when_they_mix():
    mixed = _rows("base") + _rows("tuned", "public-code")
    md, csv_text = to_markdown(mixed), to_csv(mixed)
    assert "| base | paper | robust |" in md and "| tuned | public-code | robust |" in md
    assert md.count("mixes presets") == 1 and "paper, public-code" in md
    assert csv_text.splitlines()[1].startswith("base,paper,a,") and csv_text.splitlines()[3].startswith("tuned,public-code,a,")
    assert "mixes presets" not in to_markdown(_rows("base") + _rows("other"))
    assert "| old | - | robust |" in to_markdown(_rows("old", None))  # a report from before rows named it


def test_classifier_logits_are_scaled_cosines(model):
    x, _ = make_toy(4, seed=0).tensors
    clf = model.classifier(CLASSES, ("a {} image", "a photo of {}"))
    feats = torch.nn.functional.normalize(model.visual((x - clf.mean) / clf.std), dim=-1)
    text = model.text_features(CLASSES, ("a {} image", "a photo of {}"))
    assert torch.allclose(clf(x), model.logit_scale * feats @ text.T, atol=1e-5)
    # other image sizes are resized inside
    assert clf(torch.rand(2, 3, 57, 41)).shape == (2, 4)
    # text features are computed once per (classes, templates)
    assert model.text_features(CLASSES, ("a {} image", "a photo of {}")) is text


def test_template_ensemble_is_averaged(model):
    one = model.text_features(CLASSES, ("a {} image",))
    two = model.text_features(CLASSES, ("a photo of {}",))
    both = model.text_features(CLASSES, ("a {} image", "a photo of {}"))
    assert torch.allclose(both, torch.nn.functional.normalize(one + two, dim=-1), atol=1e-5)


def test_classifier_plugs_into_torchattacks(model):
    import torchattacks

    clf = model.classifier(CLASSES)
    assert isinstance(clf, ZeroShotClassifier)
    x, y = make_toy(4, seed=0).tensors
    adv = torchattacks.FGSM(clf, eps=2 / 255)(x, y)
    assert (adv - x).abs().max() <= 2 / 255 + 1e-6


def test_offline_failure_is_fast_and_clear():
    start = time.time()
    with pytest.raises(UserError) as e:
        load_model("ViT-B-32-quickgelu:openai")
    assert time.time() - start < 5
    assert "offline" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="offline"):
        load_model("hf-hub:chs20/tecoa4-clip")


@pytest.mark.parametrize("call,words", [
    (lambda m: load_model("no-such-model"), "Unknown model"),
    (lambda m: load_model("missing.safetensors"), "does not exist"),
    (lambda m: m.classifier([]), "at least one class"),
    (lambda m: m.classifier(["a", "a"]), "distinct"),
    (lambda m: m.classifier(["a", " "]), "empty"),
    (lambda m: get_dataset("/no/such/path"), "Unknown dataset"),
    (lambda m: EvalConfig(eps=-1 / 255).validate(), "eps"),
    (lambda m: EvalConfig(steps=-1).validate(), "steps"),
    (lambda m: EvalConfig(attack="magic").validate(), "Unknown attack"),
])
def test_bad_input_is_one_sentence(model, call, words):
    with pytest.raises(UserError) as e:
        call(model)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and msg.endswith((".", "'"))


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_model(str(bad))


def test_cli_eval_writes_the_documented_json(model, tmp_path, capsys):
    from pmg_core.models.checkpoints import save_base

    path = save_base(tmp_path / "base.safetensors", model, {"arch": "pmg-test"})
    out = tmp_path / "r.json"
    rc = cli.main(["eval", "--models", str(path), "--datasets", "toy-colours", "--eps", "2", "--steps", "2",
                   "--limit", "30", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report) == {"config", "protocol", "results"}
    (row,) = report["results"]
    assert {"model", "dataset", "n", "clean_acc", "robust_acc"} <= set(row) and row["n"] == 30
    assert 0 <= row["robust_acc"] <= row["clean_acc"] <= 1
    assert math.isclose(report["config"]["eps"], 2 / 255)
    assert out.with_suffix(".md").exists() and out.with_suffix(".csv").exists()


def test_cli_train_and_attack(model, tmp_path, capsys):
    from pmg_core.models.checkpoints import read_metadata, save_base
    from pmg_core.data.images import save_png

    base = save_base(tmp_path / "base.safetensors", model, {"arch": "pmg-test"})
    ft = tmp_path / "ft.safetensors"
    rc = cli.main(["train", "--model", str(base), "--method", "tecoa", "--dataset", "toy-colours", "--eps", "4",
                   "--max-steps", "2", "--batch-size", "16", "--warmup", "1", "--attack-amp", "--out", str(ft)])
    assert rc == 0 and ft.exists()
    assert read_metadata(ft)["method_settings"]["attack_amp"] is True  # the flag reached the run
    alone = load_model(str(ft))  # a fine-tune finds its base by the path it was trained from
    assert alone.base == str(base) and torch.equal(alone.clip.logit_scale, model.clip.logit_scale)
    img = tmp_path / "img.png"
    save_png(make_toy(1, seed=0).tensors[0][0], img)
    adv = tmp_path / "adv.png"
    rc = cli.main(["attack", str(img), "--models", f"{base},{ft}", "--labels", ",".join(CLASSES), "--true", "red",
                   "--eps", "8", "--steps", "3", "--out", str(adv)])
    out = capsys.readouterr().out
    assert rc == 0 and "clean:" in out and "adversarial:" in out and adv.exists()


def test_train_compile_and_tf32_flags_reach_the_run_settings():
    """`train --compile` / `--attack-tf32` set their TrainConfig fields (`bench --compile` checks the compiled step)."""
    from pmg_core.training.loop import TrainConfig

    def settings(*flags):
        return TrainConfig(**cli._settings(cli.build_parser().parse_args(["train", *flags]), TrainConfig, "train"))

    assert settings("--compile").compile is True and settings().compile is False
    assert settings("--attack-tf32").method_settings().attack_tf32 is True and not settings().attack_tf32


@pytest.mark.parametrize("argv,words", [
    (["eval", "--models", "nope", "--datasets", "toy-colours"], "Unknown model"),
    (["eval", "--datasets", "nope"], "Unknown dataset"),
    (["eval", "--models", "pmg-test", "--datasets", "toy-colours", "--eps", "-3"], "eps"),
    (["train", "--model", "pmg-test", "--dataset", "toy-colours", "--method", "magic"], "Unknown method"),
    (["train", "--model", "pmg-test", "--dataset", "toy-colours", "--steps", "-1"], "steps"),
    (["attack", "/no/image.png", "--models", "pmg-test", "--labels", "a,b", "--true", "a"], "does not exist"),
    (["attack", "requirements.txt", "--models", "pmg-test", "--labels", "", "--true", "a"], "labels"),
    (["attack", "requirements.txt", "--models", "pmg-test", "--labels", "a,b", "--true", "a"], "not a readable image"),
    # unwritable outputs are refused before the run, not after it
    (["eval", "--models", "pmg-test", "--datasets", "toy-colours", "--out", "/proc/nope/x.json"], "Cannot write the report"),
    (["eval", "--models", "pmg-test", "--datasets", "toy-colours", "--out", "tests"], "is a folder"),
    (["attack", "assets/examples/example.png", "--models", "pmg-test", "--labels", "a,b", "--out", "/proc/nope/a.png"],
     "Cannot write the adversarial image"),
    (["train", "--model", "pmg-test", "--dataset", "toy-colours", "--out", "/proc/nope/x.safetensors"],
     "Cannot write the checkpoint"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err and "Traceback" not in err
