"""torchrun on CPU (gloo, 2 processes): same weights as one process (adversarial, and resumed across world
sizes), exact eval counts, no hang on a dead rank; and, in-process, what DDP wraps.

Each test starts the real command line under torchrun. This file doubles as the launched script
(see the __main__ block): it registers the toy dataset and seeds the random pmg-test model the
same way in every process, then hands over to `python -m pmg_core`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRAIN = ["train", "--model", "pmg-test", "--dataset", "toy-colours", "--batch-size", "16", "--warmup", "2",
         "--lr", "0.05", "--seed", "3", "--limit", "64"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return {**env, "PMG_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, __file__, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), __file__, *args]


def _run(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(_cmd(nproc, args), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _same(a: Path, b: Path) -> bool:
    from pmg_core.models.checkpoints import load_tensors

    x, y = load_tensors(a), load_tensors(b)
    return x.keys() == y.keys() and all(torch.allclose(x[k], y[k], rtol=1e-4, atol=1e-6) for k in x)


def test_two_processes_train_to_the_same_weights_as_one_and_resume_on_any_world_size(tmp_path):
    from pmg_core.models.checkpoints import read_metadata

    # pmg-aft at eps 8/255 (random start drawn for the global batch, PGD through the DDP encoder,
    # frozen original, both KL terms, two-branch forward): 2 processes must match 1 process.
    args = [*TRAIN, "--method", "pmg-aft", "--eps", "8", "--steps", "2", "--step-size", "4"]
    one, two, moved = tmp_path / "one.safetensors", tmp_path / "two.safetensors", tmp_path / "moved.safetensors"
    single = _run(1, [*args, "--max-steps", "4", "--out", str(one)])
    multi = _run(2, [*args, "--max-steps", "4", "--out", str(two)])
    assert _same(one, two)
    meta = read_metadata(two)
    assert meta["batch_size"] == 16 and meta["steps"] == 4  # the global batch, as the user set it
    # The logged loss is the global batch's, not one rank's.
    assert json.loads(multi.stdout)["metrics"]["loss"] == pytest.approx(json.loads(single.stdout)["metrics"]["loss"],
                                                                        rel=1e-4)
    # Rank 0 alone reports; the other rank says once where it runs and that it stays quiet.
    assert multi.stdout.count('"metrics"') == 1
    assert "[rank 1/2]" in multi.stderr and "quiet" in multi.stderr

    # Resume on another world size: steps 1-2 on 2 processes, steps 3-4 on 1 (warm-up 2, so the
    # schedule of the shorter first run agrees with the 4-step one).
    _run(2, [*args, "--max-steps", "2", "--keep-state", "--out", str(moved)])
    assert not _same(moved, one)  # halfway: a comparison that can fail
    _run(1, [*args, "--max-steps", "4", "--resume", "--out", str(moved)])
    assert read_metadata(moved)["steps"] == 4 and _same(moved, one)


def test_only_the_image_encoder_is_wrapped_in_ddp(model, tmp_path):
    """In-process, in a one-process gloo group: DDP wraps model.visual alone; f_o and the text side stay plain."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pmg_core.training.loop import Trainer, TrainConfig

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        # world=2 makes the trainer wrap (the group itself has one process: collectives are trivial).
        trainer = Trainer(TrainConfig(model="pmg-test", method="pmg-aft", dataset="toy-colours", eps=4 / 255,
                                      attack_steps=1, max_steps=1, batch_size=16, lr=0.05, warmup=1), model=model,
                          rank=0, world=2)
        ddp = trainer.train_module.visual
        assert isinstance(ddp, DistributedDataParallel) and ddp.module is model.visual
        assert {id(p) for p in ddp.parameters()} == {id(p) for p in model.visual.parameters()}
        assert not any(isinstance(m, DistributedDataParallel) for m in trainer.original.modules())
        assert not isinstance(trainer.train_module, DistributedDataParallel)
        assert torch.equal(trainer.train_module.text_features, trainer.classifier.text_features)
        assert "text_features" not in dict(trainer.train_module.named_parameters())

        frozen = {k: v.clone() for k, v in trainer.original.state_dict().items()}
        text = {k: v.clone() for k, v in model.clip.state_dict().items() if not k.startswith("visual.")}
        visual = {k: v.clone() for k, v in model.visual.state_dict().items()}
        x, y = next(iter(trainer._loader(0, 0)))
        assert trainer.train_step(x, y) is not None
        assert all(torch.equal(v, frozen[k]) for k, v in trainer.original.state_dict().items())
        assert all(torch.equal(v, text[k]) for k, v in model.clip.state_dict().items() if k in text)
        assert any(not torch.equal(v, visual[k]) for k, v in model.visual.state_dict().items())
    finally:
        dist.destroy_process_group()


def test_two_process_eval_of_an_odd_sized_set_gives_the_exact_counts(tmp_path):
    args = ["eval", "--models", "pmg-test", "--datasets", "toy-colours", "--limit", "45", "--eps", "1", "--steps", "2",
            "--batch-size", "8"]
    _run(1, [*args, "--out", str(tmp_path / "one.json")])
    multi = _run(2, [*args, "--out", str(tmp_path / "two.json")])
    one = json.loads((tmp_path / "one.json").read_text())["results"][0]
    two = json.loads((tmp_path / "two.json").read_text())["results"][0]
    assert two["n"] == 45
    assert (two["clean_correct"], two["robust_correct"]) == (one["clean_correct"], one["robust_correct"])
    assert 0 < one["clean_correct"] < 45  # a count that could have come out differently
    assert multi.stdout.count("| pmg-test | paper | robust |") == 1  # one table, from rank 0


def _wait_for(path: Path, text: str, procs: list, limit_s: float = 240) -> None:
    deadline = time.time() + limit_s
    while text not in path.read_text(errors="replace"):
        assert time.time() < deadline and all(p.poll() is None for p in procs), path.read_text(errors="replace")[-2000:]
        time.sleep(0.5)


def test_killing_a_rank_stops_the_other_with_a_clear_error(tmp_path):
    # Launched as torchrun would, without its agent, so the surviving rank must notice by itself
    # (the agent would otherwise tear it down first, as it also does on several nodes).
    port = str(_free_port())
    args = [*TRAIN, "--method", "clean", "--max-steps", "100000"]
    logs = [tmp_path / f"rank{r}.log" for r in range(2)]
    procs = []
    try:
        for r, log in enumerate(logs):
            with open(log, "w") as f:  # files, not pipes: a full pipe would stall the training rank
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                    env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                             PMG_DIST_TIMEOUT="30")))
        _wait_for(logs[1], "[rank 1/2]", procs)
        _wait_for(logs[0], "step/s", procs)  # rank 0's progress bar: training has started
        procs[1].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=90)  # a hang guard, not a speed target
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    err = logs[0].read_text(errors="replace")
    assert procs[0].returncode == 2
    assert "error: rank 0/2 stopped: another process of the run died or stopped answering" in err
    assert "Traceback" not in err


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("PMG_OFFLINE", "1")
    torch.set_num_threads(1)
    from toy import register_toy

    register_toy()
    torch.manual_seed(0)  # the same random pmg-test weights in every process and every run

    from pmg_core.cli.commands import main

    sys.exit(main())
