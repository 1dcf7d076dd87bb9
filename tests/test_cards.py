"""Protocols and robustness cards: manifests drawn once and pinned by hash, a killed run resumes without
recomputing a finished cell, 2 processes under torchrun write the same cards as 1, every card carries its
provenance and convergence, and the board is written.

The runs use a tiny protocol on the toy dataset and a random pmg-test model saved as a checkpoint
file (so every process loads the same weights). This file doubles as the script torchrun launches
(the __main__ block registers the toy dataset and the test protocol, then runs `python -m pmg_core`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _register_test_protocol():
    from pmg_core.evaluation.protocols import Protocol, ThreatModel, get_protocol, list_protocols, register_protocol

    if "test-toy" not in {p.name for p in list_protocols()}:
        register_protocol(Protocol("test-toy", 1, "tests: the toy colours, PGD-3 at 2 and 4/255", ("toy-colours",),
                                   samples=10, threats=(ThreatModel("Linf", (2, 4), "pgd", 3, 1),),
                                   menu=("bpda-eot", "apgd-ce"), defended={"eot": 2, "judge_draws": 2},
                                   convergence_samples=None, seed=0, batch_size=8))
    return get_protocol("test-toy")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A random pmg-test CLIP saved as a base checkpoint: the same weights in every process that loads it."""
    from pmg_core.models.checkpoints import save_base
    from pmg_core.models.clip import load_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "toy-clip.safetensors"
    save_base(path, load_model("pmg-test"), {"arch": "pmg-test"})
    return str(path)


def _without_times(card: dict) -> dict:
    """A card minus what depends on the clock and the machine, for comparing two runs."""
    drop = {"seconds", "device", "code_version"}
    return {k: v for k, v in card.items() if k not in drop}


def test_a_manifest_is_drawn_once_by_its_seed_and_its_hash_pins_the_images():
    from pmg_core.data.datasets import ZeroShotDataset, get_dataset
    from pmg_core.core.errors import UserError
    from pmg_core.evaluation.protocols import Manifest, check_manifest, get_protocol, manifest_for
    from torch.utils.data import TensorDataset

    protocol = _register_test_protocol()
    data = get_dataset("toy-colours")
    first, again = manifest_for(data, protocol), manifest_for(data, protocol)
    assert first == again and len(first.indices) == 10 and list(first.indices) == sorted(set(first.indices))
    # A limited run takes a prefix of the same draw, so its images are among the full run's.
    assert set(manifest_for(data, protocol, limit=4).indices) <= set(first.indices)
    # The hash covers the pixels: one grey level changed in one chosen image changes it.
    x, y = data.data.tensors
    x = x.clone()
    x[first.indices[0], 0, 0, 0] = (x[first.indices[0], 0, 0, 0] * 255).round().add(1).clamp(max=255) / 255
    changed = ZeroShotDataset("toy-colours", TensorDataset(x, y), data.classes, data.templates)
    assert manifest_for(changed, protocol).sha256 != first.sha256
    # The embedded world is generated here, so mini pins its hashes and refuses images that changed.
    mini = get_protocol("mini")
    assert set(mini.pinned) == set(mini.dataset_names())
    shape = get_dataset("synth-shape")
    assert manifest_for(shape, mini).sha256 == mini.pinned["synth-shape"]
    with pytest.raises(UserError, match="differ from those protocol mini"):
        check_manifest(Manifest("synth-shape", len(shape), first.indices, first.sha256), mini, None)


def test_a_killed_run_resumes_and_recomputes_no_finished_cell(tmp_path, checkpoint, monkeypatch):
    from pmg_core.leaderboard import cards
    from pmg_core.leaderboard.cards import cells_of, parse_models, run_cards

    protocol = _register_test_protocol()
    models = parse_models([checkpoint, f"{checkpoint}+ttc"])
    total = len(cells_of(protocol, models))
    computed = []
    real = cards.compute_cell

    def counted(model, data, cell, proto):
        if len(computed) == 3:
            raise KeyboardInterrupt  # the run is killed while its fourth cell is computed
        computed.append((cell.spec.text, cell.dataset, cell.eps_255))
        return real(model, data, cell, proto)

    monkeypatch.setattr(cards, "compute_cell", counted)
    with pytest.raises(KeyboardInterrupt):
        run_cards(protocol, models, tmp_path, allow_dirty=True)
    assert len(list((tmp_path / "cells").rglob("*.json"))) == 3
    # The first model's cells were all done, so its card was written; the second's was not.
    assert [p.name for p in tmp_path.glob("*.json")] == ["toy-clip.json"]
    monkeypatch.setattr(cards, "compute_cell", lambda *a: (computed.append(a[2]), real(*a))[1])
    written = run_cards(protocol, models, tmp_path, allow_dirty=True)
    assert len(computed) == total  # the three finished cells were not computed again
    assert len(set(map(str, computed))) == total
    assert sorted(p.name for p in written) == ["toy-clip+ttc.json", "toy-clip.json"]


def test_a_card_holds_provenance_protocol_results_convergence_and_the_published_numbers(tmp_path, checkpoint,
                                                                                       monkeypatch):
    from pmg_core.models import zoo
    from pmg_core.leaderboard.cards import parse_models, run_cards
    from pmg_core.models.checkpoints import read_metadata
    from pmg_core.models.importers import sha256_file

    protocol = _register_test_protocol()
    theirs = zoo.Protocol("theirs", ("toy-colours", "cifar10"), "autoattack", 100, "clip", 1000, "their note")
    monkeypatch.setitem(zoo.ZOO, "toy-zoo", zoo.Entry(  # for this test only: the registry checks run after it
        "toy-zoo", "a zoo model on the tiny base", "pmg-test", "open_clip", method="tecoa", trainer="Someone",
        paper="A paper", published=zoo.Published(50.0, {4: 33.0}, theirs, "Table 9")))
    torch.manual_seed(0)
    [card_path, zoo_path] = run_cards(protocol, parse_models([checkpoint, "toy-zoo"]), tmp_path, allow_dirty=True)
    card = json.loads(card_path.read_text())
    assert card["weights_sha256"] == sha256_file(Path(checkpoint)) and card["base"] == checkpoint
    assert card["protocol"]["name"] == "test-toy" and card["protocol"]["version"] == 1
    manifest = json.loads((tmp_path / "manifests" / "toy-colours.json").read_text())
    assert card["protocol"]["manifests"] == {"toy-colours": manifest["sha256"]} and len(manifest["indices"]) == 10
    assert card["code_version"] and card["device"] and card["seconds"] >= 0
    assert card["method"] == "base" and read_metadata(checkpoint)["kind"] == "base"
    result = card["results"]["toy-colours"]
    assert result["n"] == 10 and set(result["robust"]) == {"Linf 2/255", "Linf 4/255"}
    assert 0 <= result["robust"]["Linf 4/255"]["robust_acc"] <= result["robust"]["Linf 2/255"]["robust_acc"] <= result["clean_acc"]
    conv = card["convergence"]
    assert isinstance(conv["converged"], bool) and "twice the attack steps" in conv["rule"]
    assert conv["status"] in ("converged", "not converged", "not checked")
    assert conv["converged"] == (conv["status"] == "converged") and (conv["status"] == "not converged") == bool(conv["not_converged"])
    assert card["protocol"]["definition_sha256"] == protocol.definition_sha256()
    assert card["published"] is None  # our own checkpoint: no authors' numbers
    other = json.loads(zoo_path.read_text())
    assert other["trainer"] == "Someone" and other["paper"] == "A paper" and other["method"] == "tecoa"
    assert other["weights_sha256"].startswith("state-dict:")
    ours = round(100 * other["averages"]["robust_acc"]["Linf 4/255"], 2)
    row = next(r for r in other["published"]["averages"] if r["metric"] == "robust Linf 4/255")
    assert row == {"metric": "robust Linf 4/255", "theirs": 33.0, "ours": ours, "difference": round(ours - 33.0, 2)}
    differs = " ".join(other["published"]["what_differs"])
    assert "cifar10" in differs and "autoattack-100" in differs and "their note" in differs


def test_the_convergence_check_says_so_when_doubling_the_budget_moves_robust_accuracy(tmp_path, checkpoint, monkeypatch):
    from pmg_core.leaderboard import cards
    from pmg_core.leaderboard.cards import parse_models, run_cards

    protocol = _register_test_protocol()
    real = cards.evaluate_model

    def weaker_when_doubled(model, data, cfg, per_sample=False):  # an attack that finds one more image at twice its steps
        row = real(model, data, cfg, per_sample)
        if cfg.steps == 6:
            row["per_sample"]["robust_right"][0] = 0
        return row

    monkeypatch.setattr(cards, "evaluate_model", weaker_when_doubled)
    [path] = run_cards(protocol, parse_models([checkpoint]), tmp_path, allow_dirty=True)
    card = json.loads(path.read_text())
    assert not card["convergence"]["converged"] and card["convergence"]["not_converged"]


def _cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").rglob("*.json"))]


def test_every_cell_holds_its_images_verdicts_in_the_order_of_its_manifest(tmp_path, checkpoint):
    from pmg_core.leaderboard.cards import parse_models, run_cards

    protocol = _register_test_protocol()
    run_cards(protocol, parse_models([checkpoint, f"{checkpoint}+ttc", f"{checkpoint}+clipure"]), tmp_path,
              allow_dirty=True)
    manifest = json.loads((tmp_path / "manifests" / "toy-colours.json").read_text())["indices"]
    menus = {}
    for cell in _cells(tmp_path):
        n = cell["n"]
        assert cell["samples"] == manifest and len(cell["clean_right"]) == len(cell["robust_right"]) == n
        assert sum(cell["clean_right"]) == cell["clean_correct"] and sum(cell["robust_right"]) == cell["robust_correct"]
        by = cell["robust_right_by_attack"]
        # Best-of per image: robust exactly where every attack of the menu left it right, and only if right clean.
        assert cell["robust_right"] == [int(all(v[i] for v in by.values())) for i in range(n)]
        assert all(r <= c for r, c in zip(cell["robust_right"], cell["clean_right"]))
        assert {k: sum(v) / n for k, v in by.items()} == cell["robust_acc_by_attack"]
        menus[cell["model"].rpartition("+")[2] if "+" in cell["model"] else "none"] = set(by)
    # One menu for every row: a defended one adds the attack unaware of it, and a gate attack where there is a gate.
    assert menus == {"none": {"bpda-eot", "apgd-ce"}, "clipure": {"unaware", "bpda-eot", "apgd-ce"},
                     "ttc": {"unaware", "bpda-eot", "apgd-ce", "gate"}}


def test_the_convergence_check_runs_on_every_image_still_robust_or_says_it_could_not(tmp_path, checkpoint,
                                                                                   monkeypatch):
    from pmg_core.leaderboard import cards
    from pmg_core.leaderboard.cards import parse_models, run_cards

    protocol = _register_test_protocol()
    run_cards(protocol, parse_models([checkpoint]), tmp_path, allow_dirty=True)
    for cell in _cells(tmp_path):
        conv, still = cell["convergence"], [s for s, r in zip(cell["samples"], cell["robust_right"]) if r]
        assert still, "the toy model keeps some images at these radii"
        assert conv["checked"] and conv["samples"] == still and conv["informative"] == len(still)
        assert len(conv["robust_right_doubled"]) == len(still) and conv["robust_right"] == [1] * len(still)
        assert conv["flipped"] == len(still) - sum(conv["robust_right_doubled"]) and conv["eot"] == 1
    # A cell where no image survived the menu has nothing that could fall: it is not checked, and says why.
    real = cards.evaluate_model

    def nothing_survives(model, data, cfg, per_sample=False):
        row = real(model, data, cfg, per_sample)
        row["per_sample"]["robust_right"] = [0] * row["n"]
        return row

    monkeypatch.setattr(cards, "evaluate_model", nothing_survives)
    run_cards(protocol, parse_models([checkpoint]), tmp_path / "none", allow_dirty=True)
    for cell in _cells(tmp_path / "none"):
        assert cell["convergence"]["checked"] is False and "no image was still robust" in cell["convergence"]["why"]
    card = json.loads((tmp_path / "none" / "toy-clip.json").read_text())
    assert card["convergence"]["informative"] == 0 and len(card["convergence"]["not_checked"]) == 2


def test_each_cell_records_the_settings_that_ran_and_the_defense_its_own(tmp_path, checkpoint):
    from pmg_core.leaderboard.cards import parse_models, run_cards
    from pmg_core.attacks.defenses import BLANK_TEMPLATES

    protocol = _register_test_protocol()
    run_cards(protocol, parse_models([f"{checkpoint}+ttc@calibrated", f"{checkpoint}+clipure"]), tmp_path,
              allow_dirty=True)
    cells = {(c["model"].rpartition("+")[2], c["eps_255"]): c for c in _cells(tmp_path)}
    ttc, clipure = cells["ttc@calibrated", 4], cells["clipure", 4]
    # TTC: the protocol's EOT and judge draws, the gate attack, the threshold the cell calibrated.
    assert (ttc["settings"]["eot"], ttc["settings"]["judge_draws"]) == (2, 2) and "gate" in ttc["settings"]["adaptive"]
    assert ttc["defense_settings"]["tau_threshold"] == ttc["tau_threshold"] != 0.2
    assert {"eps", "steps", "step_size", "beta", "seed"} <= set(ttc["defense_settings"])
    assert ttc["settings"]["defense_threshold"] == "calibrated"
    # CLIPure: one draw each way, no gate, no threshold, its own steps and blank prompt.
    assert (clipure["settings"]["eot"], clipure["settings"]["judge_draws"]) == (1, 1)
    assert "gate" not in clipure["settings"]["adaptive"] and "tau_threshold" not in clipure
    assert clipure["defense_settings"] == {"name": "clipure", "title": clipure["defense_settings"]["title"],
                                           "randomised": False, "gated": False, "latent_steps": 10,
                                           "latent_step_size": 0.02, "null_prompt": BLANK_TEMPLATES}
    assert "variant" in clipure["defense_settings"]["title"]
    card = json.loads((tmp_path / "toy-clip+clipure.json").read_text())
    assert "threshold" not in card["defense"] and card["defense"]["settings"]["latent_steps"] == 10


def test_cards_are_refused_from_a_dirty_tree_unless_allowed_and_hold_one_code_version(tmp_path, checkpoint,
                                                                                    monkeypatch):
    from pmg_core.leaderboard import cards
    from pmg_core.leaderboard.cards import parse_models, run_cards
    from pmg_core.core.errors import UserError

    protocol = _register_test_protocol()
    models = parse_models([checkpoint])
    monkeypatch.setattr(cards, "source_state", lambda: ("0.1.0+git.abc1234-dirty", True))
    with pytest.raises(UserError, match="uncommitted changes .* --allow-dirty"):
        run_cards(protocol, models, tmp_path)
    assert not (tmp_path / "cells").exists()
    [path] = run_cards(protocol, models, tmp_path, allow_dirty=True)
    card = json.loads(path.read_text())
    assert card["allowed_dirty"] is True and card["code_version"] == ["0.1.0+git.abc1234-dirty"]
    # Resuming that folder with other code would mix two code versions in one card: refused.
    monkeypatch.setattr(cards, "source_state", lambda: ("0.1.0+git.def5678", False))
    with pytest.raises(UserError, match="code version 0.1.0\\+git.abc1234-dirty"):
        run_cards(protocol, models, tmp_path)
    clean = run_cards(protocol, models, tmp_path / "clean")
    assert json.loads(clean[0].read_text())["allowed_dirty"] is False


def test_a_changed_protocol_definition_needs_a_new_version():
    """Every built-in protocol's definition hash is pinned beside its version; any change of what its
    numbers depend on changes the hash (a title or note does not)."""
    from dataclasses import replace

    from pmg_core.evaluation.protocols import DEFINITIONS, list_protocols

    builtin = [p for p in list_protocols() if not p.name.startswith("test-")]
    assert {(p.name, p.version) for p in builtin} <= set(DEFINITIONS)
    for p in builtin:
        assert p.definition_sha256() == DEFINITIONS[p.name, p.version], (
            f"{p.name} v{p.version}'s definition changed: register it as v{p.version + 1} and pin its new hash")
    mini = next(p for p in builtin if p.name == "mini")
    assert mini.version == 2 and len(mini.dataset_names()) == 10 and mini.samples * 10 >= 150
    for change in ({"samples": 17}, {"menu": ("bpda-eot",)}, {"defended": {"eot": 4, "judge_draws": 5}},
                   {"datasets": ("synth-shape",)}, {"apgd_targets": 3}):
        assert replace(mini, **change).definition_sha256() != mini.definition_sha256(), change
    assert replace(mini, title="another title", note="").definition_sha256() == mini.definition_sha256()


def test_the_mini_protocol_and_the_mini_dataset_group_name_the_same_ten_tasks():
    from pmg_core.data.datasets import list_groups
    from pmg_core.evaluation.protocols import get_protocol

    mini = get_protocol("mini")
    assert mini.dataset_names() == list_groups()["mini"] and set(mini.pinned) == set(mini.dataset_names())


def test_tga_zsr_published_numbers_are_over_the_same_sixteen_sets_as_tecoa16():
    from pmg_core.leaderboard.cards import parse_model, published_beside
    from pmg_core.evaluation.protocols import get_protocol

    averages = {"clean_acc": 0.5, "robust_acc": {"Linf 1/255": 0.4}}
    for entry in ("tga-zsr-b32", "comp-tga-b32"):
        beside = published_beside(parse_model(entry), get_protocol("tecoa16-pgd"), averages)
        assert not any(line.startswith("datasets:") for line in beside["what_differs"]), beside["what_differs"]


def _cli(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(PMG_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if nproc == 1:
        cmd = [sys.executable, __file__, *args]
    else:
        from helpers import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), __file__, *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_two_processes_under_torchrun_write_the_same_cards_as_one_and_the_board(tmp_path, checkpoint):
    from pmg_core.leaderboard.cards import read_cards

    models = f"{checkpoint},{checkpoint}+ttc"
    one, two = tmp_path / "one", tmp_path / "two"
    for out, nproc in ((one, 1), (two, 2)):
        res = _cli(["cards", "run", "--protocol", "test-toy", "--models", models, "--out", str(out), "--allow-dirty"],
                   nproc)
        assert res.returncode == 0, res.stderr[-3000:]
    cards_one, cards_two = read_cards(one), read_cards(two)
    assert len(cards_one) == 2 and [_without_times(c) for c in cards_one] == [_without_times(c) for c in cards_two]
    per_image = ("samples", "clean_right", "robust_right", "robust_right_by_attack")
    cells_one, cells_two = _cells(one), _cells(two)
    assert len(cells_one) == 4 and [{k: c[k] for k in per_image} for c in cells_one] == [
        {k: c[k] for k in per_image} for c in cells_two]
    assert [{k: v for k, v in c["convergence"].items() if k != "seconds"} for c in cells_one] == [
        {k: v for k, v in c["convergence"].items() if k != "seconds"} for c in cells_two]
    res = _cli(["cards", "board", str(two)])
    assert res.returncode == 0, res.stderr[-2000:]
    board = (two / "board.md").read_text()
    assert "| toy-clip+ttc |" in board and "| toy-clip |" in board and "Linf 4/255" in board and "test-toy v1" in board
    assert len((two / "board.csv").read_text().splitlines()) == 1 + 2 * 2  # header, 2 cards x 2 eps
    html = (two / "board.html").read_text()
    assert html.count("<svg") == 2 and html.count("class='pmg-heat'") == 2  # a scatter and a heatmap per eps


def test_cards_refuse_bad_input_in_one_sentence(tmp_path):
    res = _cli(["cards", "run", "--protocol", "nope", "--models", "clip-tiny", "--out", str(tmp_path)])
    assert res.returncode == 2 and "Unknown protocol 'nope'" in res.stderr and "Traceback" not in res.stderr
    res = _cli(["cards", "run", "--protocol", "test-toy", "--models", "clip-tiny+ttc@high", "--out", str(tmp_path)])
    assert res.returncode == 2 and "must be a number or 'calibrated'" in res.stderr
    res = _cli(["cards", "board", str(tmp_path)])
    assert res.returncode == 2 and "holds no cards" in res.stderr


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("PMG_OFFLINE", "1")
    torch.set_num_threads(1)
    from toy import register_toy

    register_toy()
    _register_test_protocol()
    from pmg_core.cli.commands import main

    sys.exit(main())
