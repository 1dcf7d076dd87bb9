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
    from pmg_core.protocols import Protocol, ThreatModel, get_protocol, list_protocols, register_protocol

    if "test-toy" not in {p.name for p in list_protocols()}:
        register_protocol(Protocol("test-toy", 1, "tests: the toy colours, PGD-3 at 2 and 4/255", ("toy-colours",),
                                   samples=10, threats=(ThreatModel("Linf", (2, 4), "pgd", 3, 1),),
                                   defended={"eot": 2, "adaptive": ["bpda-eot", "gate"], "judge_draws": 2}, convergence_samples=6, seed=0, batch_size=8))
    return get_protocol("test-toy")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A random pmg-test CLIP saved as a base checkpoint: the same weights in every process that loads it."""
    from pmg_core.checkpoints import save_base
    from pmg_core.models import load_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "toy-clip.safetensors"
    save_base(path, load_model("pmg-test"), {"arch": "pmg-test"})
    return str(path)


def _without_times(card: dict) -> dict:
    """A card minus what depends on the clock and the machine, for comparing two runs."""
    drop = {"seconds", "device", "code_version"}
    return {k: v for k, v in card.items() if k not in drop}


def test_a_manifest_is_drawn_once_by_its_seed_and_its_hash_pins_the_images():
    from pmg_core.data import ZeroShotDataset, get_dataset
    from pmg_core.errors import UserError
    from pmg_core.protocols import Manifest, check_manifest, get_protocol, manifest_for
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
    from pmg_core import cards
    from pmg_core.cards import cells_of, parse_models, run_cards

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
        run_cards(protocol, models, tmp_path)
    assert len(list((tmp_path / "cells").rglob("*.json"))) == 3
    # The first model's cells were all done, so its card was written; the second's was not.
    assert [p.name for p in tmp_path.glob("*.json")] == ["toy-clip.json"]
    monkeypatch.setattr(cards, "compute_cell", lambda *a: (computed.append(a[2]), real(*a))[1])
    written = run_cards(protocol, models, tmp_path)
    assert len(computed) == total  # the three finished cells were not computed again
    assert len(set(map(str, computed))) == total
    assert sorted(p.name for p in written) == ["toy-clip+ttc.json", "toy-clip.json"]


def test_a_card_holds_provenance_protocol_results_convergence_and_the_published_numbers(tmp_path, checkpoint,
                                                                                       monkeypatch):
    from pmg_core import zoo
    from pmg_core.cards import parse_models, run_cards
    from pmg_core.checkpoints import read_metadata
    from pmg_core.importers import sha256_file

    protocol = _register_test_protocol()
    theirs = zoo.Protocol("theirs", ("toy-colours", "cifar10"), "autoattack", 100, "clip", 1000, "their note")
    monkeypatch.setitem(zoo.ZOO, "toy-zoo", zoo.Entry(  # for this test only: the registry checks run after it
        "toy-zoo", "a zoo model on the tiny base", "pmg-test", "open_clip", method="tecoa", trainer="Someone",
        paper="A paper", published=zoo.Published(50.0, {4: 33.0}, theirs, "Table 9")))
    torch.manual_seed(0)
    [card_path, zoo_path] = run_cards(protocol, parse_models([checkpoint, "toy-zoo"]), tmp_path)
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
    from pmg_core import cards
    from pmg_core.cards import parse_models, run_cards

    protocol = _register_test_protocol()
    real = cards.evaluate_model

    def weaker_when_doubled(model, data, cfg):  # an attack that finds 1% more at twice its steps
        row = real(model, data, cfg)
        return {**row, "robust_acc": row["robust_acc"] - 0.01} if cfg.steps == 6 else row

    monkeypatch.setattr(cards, "evaluate_model", weaker_when_doubled)
    [path] = run_cards(protocol, parse_models([checkpoint]), tmp_path)
    card = json.loads(path.read_text())
    assert not card["convergence"]["converged"] and card["convergence"]["not_converged"]


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
    from pmg_core.cards import read_cards

    models = f"{checkpoint},{checkpoint}+ttc"
    one, two = tmp_path / "one", tmp_path / "two"
    for out, nproc in ((one, 1), (two, 2)):
        res = _cli(["cards", "run", "--protocol", "test-toy", "--models", models, "--out", str(out)], nproc)
        assert res.returncode == 0, res.stderr[-3000:]
    cards_one, cards_two = read_cards(one), read_cards(two)
    assert len(cards_one) == 2 and [_without_times(c) for c in cards_one] == [_without_times(c) for c in cards_two]
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
    from pmg_core.cli import main

    sys.exit(main())
