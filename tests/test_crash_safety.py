"""Crash safety: atomic checkpoints, SIGKILL at random moments, exact resume, NaN/inf losses."""
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pmg_core.models import checkpoints
from pmg_core.models.checkpoints import load_tensors, read_metadata, save_base, save_finetune
from pmg_core.core.errors import UserError
from pmg_core.training.methods import StepOutput
from pmg_core.models.clip import load_model
from pmg_core.training.loop import TrainConfig, Trainer, state_path, train

ROOT = Path(__file__).resolve().parent.parent
# Runs `python -m pmg_core` with the toy dataset registered (the registry lives in the process).
CHILD = ("import sys; sys.path[:0] = ['.', 'tests']; import torch; torch.set_num_threads(1); "
         "from toy import register_toy; register_toy(); from pmg_core.cli.commands import main; sys.exit(main(sys.argv[1:]))")


@contextlib.contextmanager
def one_thread():
    """Bit-exact comparisons need the same thread count everywhere (reductions split differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cfg(**kw) -> TrainConfig:
    base = dict(model="pmg-test", method="pmg-aft", dataset="toy-colours", eps=4 / 255, attack_steps=2,
                step_size=2 / 255, max_steps=6, batch_size=32, lr=0.05, warmup=2, seed=0)
    return TrainConfig(**{**base, **kw})


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # (a bool: short failure reports)


def visual(model) -> dict:
    return {f"visual.{k}": v.detach().clone() for k, v in model.visual.state_dict().items()}


# --- atomic writes ------------------------------------------------------------------------------

def _bump(model) -> None:
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.01)


@pytest.mark.parametrize("fail_in", ["write", "fsync", "rename"])
def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, model, monkeypatch, fail_in):
    path = save_finetune(tmp_path / "ft.safetensors", model, {"method": "tecoa", "steps": 1})
    before, before_bytes = load_tensors(path), path.read_bytes()
    _bump(model)

    def half_written(tensors, filename, metadata=None):  # the disk fills up halfway through
        Path(filename).write_bytes(before_bytes[: len(before_bytes) // 3])
        raise OSError(28, "No space left on device")

    def broken(*a, **k):
        raise OSError(5, "Input/output error")

    target = {"write": ("save_file", half_written), "fsync": ("os.fsync", broken), "rename": ("os.replace", broken)}
    name, fake = target[fail_in]
    monkeypatch.setattr(checkpoints if "." not in name else checkpoints.os, name.split(".")[-1], fake)
    with pytest.raises(OSError):
        save_finetune(path, model, {"method": "tecoa", "steps": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before_bytes
    assert read_metadata(path)["steps"] == 1 and same_weights(load_tensors(path), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.safetensors"]  # no temp file left behind


class Killed(BaseException):
    """Stands in for SIGKILL at one exact point (nothing after it runs, no handler sees it)."""


@pytest.mark.parametrize("where", ["between checkpoint and state", "before the final state is dropped"])
def test_crash_between_checkpoint_and_state_still_resumes_exactly(tiny_model, tmp_path, monkeypatch, where):
    """The checkpoint and its .state file are two writes: a kill between them must not break exact resume."""
    with one_thread():
        full = tiny_model.fork("full", "pmg-test")
        train(cfg(), progress=False, model=full)

        out = tmp_path / "run.safetensors"
        real_save_state, real_unlink = checkpoints.save_training_state, Path.unlink

        def save_state(path, optimizer, scheduler, step, *a, **k):
            if step == 4:  # the step-4 checkpoint is written, its state is not: step 2's is on disk
                raise Killed
            return real_save_state(path, optimizer, scheduler, step, *a, **k)

        def unlink(self, missing_ok=False):  # the final checkpoint is written, step 4's state remains
            if self == state_path(out):
                raise Killed
            return real_unlink(self, missing_ok)

        if where == "between checkpoint and state":
            monkeypatch.setattr("pmg_core.training.loop.save_training_state", save_state)
        else:
            monkeypatch.setattr(Path, "unlink", unlink)
        with pytest.raises(Killed):
            train(cfg(out=str(out), save_every=2), progress=False, model=tiny_model.fork("a", "pmg-test"))
        monkeypatch.undo()
        assert read_metadata(out)["steps"] in (4, 6)  # the newest checkpoint is complete and readable

        resumed = tiny_model.fork("b", "pmg-test")
        done = train(cfg(out=str(out), save_every=2, resume=True), progress=False, model=resumed)
    assert done["step"] == 6
    assert same_weights(visual(resumed), visual(full))
    assert same_weights(load_tensors(out), visual(full))


# --- SIGKILL at random moments ----------------------------------------------------------------

KILL_STEPS = 40


def _train_argv(base: Path, out: Path, resume: bool) -> list[str]:
    argv = ["train", "--model", str(base), "--method", "pmg-aft", "--dataset", "toy-colours", "--eps", "4",
            "--steps", "2", "--step-size", "2", "--max-steps", str(KILL_STEPS), "--batch-size", "32", "--lr", "0.05",
            "--warmup", "3", "--seed", "0", "--out", str(out), "--save-every", "1", "--keep-state"]
    return argv + (["--resume"] if resume else [])


def _steps_saved(out: Path) -> int:
    try:
        return int(read_metadata(out)["steps"])
    except (UserError, KeyError):
        return -1


def _run_and_kill(argv: list[str], out: Path, after_step: int, delay: float) -> tuple[bool, int]:
    """Start a training process; once it checkpoints past `after_step`, SIGKILL it after `delay` s.
    Returns (killed, exit code)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PMG_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and _steps_saved(out) <= after_step and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed or rc == 0, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    return killed, rc


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tiny_model, tmp_path):
    seed = int(time.time())
    rng = random.Random(seed)
    base = save_base(tmp_path / "base.safetensors", tiny_model, {})
    out = tmp_path / "run.safetensors"

    kills, saved = 0, 0
    for attempt in range(2):
        killed, _ = _run_and_kill(_train_argv(base, out, resume=attempt > 0), out, saved, rng.uniform(0.0, 1.5))
        kills += killed
        # Whatever instant the kill hit, the last complete checkpoint is there and loads.
        steps = _steps_saved(out)
        assert steps >= max(1, saved), f"seed {seed}: no complete checkpoint after kill {attempt + 1}"
        model = load_model(str(out))
        assert all(torch.isfinite(v).all() for v in model.visual.state_dict().values())
        saved = steps
        if not killed:
            break
    assert kills >= 1, f"seed {seed}: the training process finished before any kill"

    with one_thread():
        resumed = load_model(str(base))
        done = train(TrainConfig(**_config_of(base, out, resume=True)), progress=False, model=resumed)
        reference = load_model(str(base))
        train(TrainConfig(**_config_of(base, None, resume=False)), progress=False, model=reference)
    assert done["step"] == KILL_STEPS
    assert same_weights(visual(resumed), visual(reference)), f"seed {seed}, kills {kills}, last saved step {saved}"
    print(f"kills survived: {kills} (seed {seed}, last checkpoint before resume: step {saved})")


def _config_of(base: Path, out: Path | None, resume: bool) -> dict:
    return dict(model=str(base), method="pmg-aft", dataset="toy-colours", eps=4 / 255, attack_steps=2,
                step_size=2 / 255, max_steps=KILL_STEPS, batch_size=32, lr=0.05, warmup=3, seed=0,
                out=str(out) if out else None, save_every=1 if out else 0, keep_state=True, resume=resume)


# --- non-finite losses --------------------------------------------------------------------------

def _poison(trainer: Trainer, bad_calls: set[int], value: float) -> list[int]:
    """Make the method's loss `value` on the given calls (0-based); returns the call log."""
    real, calls = trainer.method, []

    def method(model, original, x, y):
        out = real(model, original, x, y)
        calls.append(len(calls))
        if calls[-1] in bad_calls:
            return StepOutput(out.loss * value, out.logits, out.metrics)
        return out

    trainer.method = method
    return calls


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_is_skipped_and_counted(model, value):
    trainer = Trainer(cfg(method="tecoa", max_steps=4, max_bad_steps=3), model=model)
    _poison(trainer, {1, 3}, value)
    weights, events = visual(model), []
    for ev in trainer.run():
        if ev["event"] == "skipped":
            assert same_weights(visual(model), weights), "a skipped step changed the weights"
        weights = visual(model)
        events.append(ev)
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "step", "skipped", "step", "skipped", "step", "step", "done"]
    assert [e["bad_steps"] for e in events if e["event"] == "skipped"] == [1, 2]
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_too_many_bad_steps_stop_with_a_clear_error_keeping_the_last_good_checkpoint(model, tmp_path):
    out = tmp_path / "run.safetensors"
    trainer = Trainer(cfg(method="tecoa", max_steps=10, max_bad_steps=2, out=str(out)), model=model)
    _poison(trainer, set(range(3, 100)), float("nan"))
    events = []
    with pytest.raises(UserError) as e:
        for ev in trainer.run():
            events.append(ev)
            if ev["event"] == "step":
                good = visual(model)
    msg = str(e.value)
    assert "\n" not in msg and "NaN/inf on 3 steps (limit 2)" in msg and "last good checkpoint" in msg
    assert [e["event"] for e in events].count("skipped") == 2
    assert read_metadata(out)["steps"] == 3 and same_weights(load_tensors(out), good)
    assert same_weights(load_tensors(out), visual(load_model(str(out))))


def test_non_finite_gradients_never_reach_the_checkpoint(model, tmp_path):
    """A finite loss with NaN gradients (an overflow inside backward) is a bad step too."""
    out = tmp_path / "run.safetensors"
    trainer = Trainer(cfg(method="tecoa", max_steps=10, max_bad_steps=2, out=str(out)), model=model)
    real = trainer.method
    p0 = next(model.visual.parameters())

    def method(m, original, x, y):
        o = real(m, original, x, y)
        if trainer.step >= 2:  # d/dp sqrt(|0 * p|) = NaN while the loss itself stays finite
            return StepOutput(o.loss + (p0.sum() * 0).abs().sqrt(), o.logits, o.metrics)
        return o

    trainer.method = method
    with pytest.raises(UserError, match="NaN/inf"):
        list(trainer.run())
    assert read_metadata(out)["steps"] == 2
    assert all(torch.isfinite(v).all() for v in load_tensors(out).values())
