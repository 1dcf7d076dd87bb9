"""The benchmark: our optimized step computes the same loss and gradients as the public code's way
of computing it, and `bench --quick` writes a report with every field (no timing assertions)."""
import copy
import json

import pytest
import torch

from pmg_core.bench import METHODS, BenchConfig, Reference, fixed_batch, make_trainer
from pmg_core.cli.commands import main


def _pair(tiny_model, method: str):
    """Two identical trainers of the same starting weights: one runs ours, one the reference."""
    cfg = BenchConfig(arch="pmg-test", batch_size=6, classes=5, pgd_steps=2, eps=4 / 255)
    trainers = []
    for _ in range(2):
        model = copy.deepcopy(tiny_model)
        with torch.no_grad():  # move f_t away from f_o so PMG-AFT's KL to the original is not zero
            next(model.visual.parameters()).add_(0.05)
        trainers.append(make_trainer(model, method, cfg, torch.device("cpu")))
    return trainers


@pytest.mark.parametrize("method", METHODS)
def test_optimized_step_equals_reference_step(tiny_model, method):
    ours_trainer, ref_trainer = _pair(tiny_model, method)
    x, y = fixed_batch(ours_trainer, seed=3)
    torch.manual_seed(11)
    ours = ours_trainer.train_step(x, y)["loss"]
    torch.manual_seed(11)  # same PGD random start
    ref = Reference(ref_trainer).step(x, y)
    assert ours > 0
    assert ours == pytest.approx(ref, rel=1e-4, abs=1e-6)
    # The update agrees too: same gradients on every trained parameter.
    for p_ours, p_ref in zip(ours_trainer.params, ref_trainer.params):
        assert torch.allclose(p_ours.grad, p_ref.grad, rtol=1e-3, atol=1e-6)
    # The reference's public-code gradient flow is undone afterwards: the text side is frozen again.
    assert not any(p.requires_grad for p in ref_trainer.model.clip.transformer.parameters())


def test_bench_trains_on_its_own_data_without_registering_it(tiny_model):
    from pmg_core.data.datasets import list_datasets

    trainer, _ = _pair(tiny_model, "tecoa")
    assert "bench-random" not in [e.name for e in list_datasets()]  # the random images are handed to the Trainer
    assert trainer.data.classes == [f"object {i}" for i in range(5)] and len(trainer.data) == 6
    assert trainer._metadata({})["data"] == "bench-random"  # a checkpoint would say what it trained on


def test_reference_differs_when_attack_differs(tiny_model):
    # Guards the equality test against passing trivially: a different random start changes the loss.
    ours_trainer, ref_trainer = _pair(tiny_model, "tecoa")
    x, y = fixed_batch(ours_trainer, seed=3)
    torch.manual_seed(11)
    ours = ours_trainer.train_step(x, y)["loss"]
    torch.manual_seed(12)
    ref = Reference(ref_trainer).step(x, y)
    assert ours != pytest.approx(ref, rel=1e-6, abs=0)


def test_quick_bench_writes_report(tmp_path, capsys):
    out, md = tmp_path / "b.json", tmp_path / "b.md"
    rc = main(["bench", "--arch", "pmg-test", "--quick", "--method", "pmg-aft", "--eval-model", "pmg-test",
               "--eval-datasets", "toy-colours", "--eval-limit", "16", "--eval-eps", "4", "--eval-step-size", "1",
               "--out", str(out), "--markdown", str(md)])
    assert rc == 0
    report = json.loads(out.read_text())
    r = report["methods"]["pmg-aft"]
    for role in ("ours", "reference", "floor"):
        assert r[role]["seconds"] > 0 and r[role]["images_per_s"] > 0 and r[role]["peak_memory_mib"] > 0
    assert r["ratio_vs_reference"] > 0 and r["efficiency_vs_floor"] > 0
    assert r["flops_per_step"] > 0
    for entry in ("pgd", "eval"):
        assert report[entry]["ratio_vs_reference"] > 0
    study = report["eval_early_stop"]
    assert study["samples"] == 16 and study["same_accuracy"] is True
    assert study["speedup_vs_attack_all"] > 0 and study["pass_speedup_vs_attack_all"] >= 1
    # Attacking everything shows the encoder every sample at every one of the 3 iterates (+ clean, final).
    assert study["attack_all"]["gradient_images"] == 3 * 16
    assert study["early_stop"]["gradient_images"] <= study["no_early_stop"]["gradient_images"] <= 3 * 16
    assert (study["eps_255"], study["step_size_255"]) == (4, 1)  # the study's own attack, not the training eps
    assert report["device"]["type"] == "cpu"
    assert "| pmg-aft |" in md.read_text() and "eps 4.0/255, step 1.0/255" in md.read_text()


def test_bench_rejects_unknown_method(capsys):
    assert main(["bench", "--arch", "pmg-test", "--method", "mart"]) == 2
    assert "Unknown method 'mart'" in capsys.readouterr().err


def test_app_part_times_todays_comparison_against_the_streamed_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PMG_ATTACK_DTYPE", "bf16")  # the app's defaults row in bf16 even for pmg-test
    out = tmp_path / "app.json"
    rc = main(["bench", "--device", "cpu", "--parts", "app", "--app-arch", "pmg-test", "--app-models", "3",
               "--app-steps", "4", "--app-eps", "8", "--repeats", "1", "--warmup", "0", "--out", str(out),
               "--markdown", str(tmp_path / "app.md")])
    assert rc == 0
    app = json.loads(out.read_text())["app"]
    assert app["models"] == ["original-0", "robust-1", "robust-2"] and app["steps"] == 4
    assert app["same_verdicts"] is True and app["same_right_wrong_with_margin"] is True
    assert app["same_right_wrong_in_lanes"] is True and 1 <= app["lanes"] <= 3
    # Without a margin every model runs every step; today's path shows its first verdict at its end.
    assert set(app["streamed"]["steps_taken"].values()) == {4}
    assert app["todays_path"]["first_verdict_s"] == app["todays_path"]["all_verdicts_s"]
    # The app's defaults run bf16 passes; their right/wrong marks are counted, each pass timed both ways.
    assert app["app_default"]["precision"] == ["bf16"] and 0 <= app["app_default"]["right_wrong_as_today"] <= 3
    assert app["pass_s"]["fp32"] > 0 and app["pass_s"]["bf16"] > 0 and len(app["load_average"]["before"]) == 3
    assert "the app's defaults: the same, bf16 passes" in (tmp_path / "app.md").read_text()
    for variant in ("streamed", "streamed_with_margin", "streamed_in_lanes", "in_lanes_with_maps_and_radius",
                    "app_default"):
        v = app[variant]
        assert 0 < v["first_verdict_s"] <= v["all_verdicts_s"] and v["first_verdict_speedup"] > 0
        assert sorted(v["order"]) == sorted(app["models"])
