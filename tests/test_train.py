"""The fine-tuning loop: what trains, what stays frozen, robustness gained, checkpoints and resume."""
import copy
import math

import pytest
import torch

from pmg_core.core import env
from pmg_core.models.checkpoints import load_tensors, read_metadata
from pmg_core.core.errors import UserError
from pmg_core.evaluation.accuracy import EvalConfig, evaluate
from pmg_core.models.clip import load_model
from pmg_core.training.loop import Trainer, TrainConfig, state_path, train


def cfg(**kw):
    base = dict(model="pmg-test", dataset="toy-colours", eps=4 / 255, attack_steps=2, step_size=2 / 255,
                max_steps=12, batch_size=32, lr=0.05, warmup=3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def robust_acc(m, eps=12 / 255):
    ev = EvalConfig(models=["x"], datasets=["toy-colours"], eps=eps, steps=5, step_size=eps / 3, batch_size=96)
    return evaluate(ev, models=[m])["results"][0]["robust_acc"]


@pytest.fixture(scope="module")
def pretrained(tiny_model):
    """The toy's 'pre-trained CLIP': clean-trained, accurate but not robust at eps 12/255."""
    m = copy.deepcopy(tiny_model)
    train(cfg(method="clean", max_steps=100, warmup=5), progress=False, model=m)
    return m


@pytest.mark.parametrize("method", ["tecoa", "pmg-aft", "fare"])
def test_only_the_image_encoder_changes(model, method):
    text_before = {k: v.clone() for k, v in model.clip.state_dict().items() if not k.startswith("visual.")}
    visual_before = {k: v.clone() for k, v in model.visual.state_dict().items()}
    train(cfg(method=method, max_steps=3, lr=0.01 if method == "fare" else 0.05), progress=False, model=model)
    for k, v in model.clip.state_dict().items():
        if not k.startswith("visual."):
            assert torch.equal(v, text_before[k]), k
    assert any(not torch.equal(v, visual_before[k]) for k, v in model.visual.state_dict().items())
    assert 1 <= model.logit_scale <= 100  # (the logit_scale parameter is part of the text side checked above)


@pytest.mark.parametrize("stored,used", [(4.6055, 100.0), (10.0, 100.0), (-1.0, 1.0), (2.0, math.exp(2.0))])
def test_logit_scale_is_clamped_where_read_and_never_changed_in_place(model, stored, used):
    """OpenAI's checkpoint stores 4.6055 > ln 100; the base's value must survive training a fork that shares it."""
    with torch.no_grad():
        model.clip.logit_scale.fill_(stored)
    before = model.clip.logit_scale.detach().clone()
    sibling = model.fork("sibling", "pmg-test")  # shares model.clip, as fine-tunes of one base do
    trained = model.fork("trained", "pmg-test")
    train(cfg(method="tecoa", max_steps=2), progress=False, model=trained)
    assert torch.equal(model.clip.logit_scale.detach(), before)
    for m in (model, sibling, trained):
        assert m.logit_scale == pytest.approx(used, rel=1e-6)  # clamped to [1, 100]: CLIP's [0, ln 100]
        assert m.classifier(["red", "green"]).logit_scale == pytest.approx(used, rel=1e-6)


@pytest.mark.parametrize("cpu_bf16", ["avx512_bf16", None])
@pytest.mark.parametrize("attack_amp", [False, True])
def test_training_attack_runs_in_fp32_inside_the_step_autocast_unless_asked(model, attack_amp, cpu_bf16,
                                                                           monkeypatch):
    """The paper's attacks are fp32; TrainConfig.attack_amp runs them under the step's autocast
    (bf16 on CUDA; here a CPU bf16 autocast stands in for it). A CPU step has no autocast to reuse: the
    attack takes a bf16 autocast of its own where the CPU has bf16 instructions and stays fp32 where it
    has none, whatever the machine running the suite has."""
    monkeypatch.setattr(env, "cpu_bf16", lambda: cpu_bf16)
    trainer = Trainer(cfg(method="tecoa", max_steps=1, attack_steps=2, attack_amp=attack_amp), model=model)
    trainer.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    seen = []
    hook = model.visual.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    x, y = next(iter(trainer._loader(0, 0)))
    try:
        assert trainer.train_step(x, y) is not None
    finally:
        hook.remove()
    attack, loss_pass = seen[:2], seen[2:]
    assert attack == [torch.bfloat16 if attack_amp and cpu_bf16 else torch.float32] * 2
    assert loss_pass == [torch.bfloat16]  # the loss pass runs under the step's autocast either way
    assert trainer._metadata({})["method_settings"]["attack_amp"] is attack_amp  # recorded in the checkpoint


@pytest.mark.parametrize("attack_tf32", [False, True])
def test_tf32_attack_passes_only_when_asked_and_only_inside_the_attack(model, attack_tf32):
    """TrainConfig.attack_tf32 lets the training attack's fp32 matrix products use TF32 on CUDA (a change
    of numerics, off by default); the loss passes and everything after the attack keep the setting."""
    trainer = Trainer(cfg(method="tecoa", max_steps=1, attack_steps=2, attack_tf32=attack_tf32), model=model)
    seen = []
    hook = model.visual.register_forward_hook(
        lambda mod, inp, out: seen.append((torch.backends.cuda.matmul.allow_tf32, out.dtype)))
    before = torch.backends.cuda.matmul.allow_tf32
    x, y = next(iter(trainer._loader(0, 0)))
    try:
        assert trainer.train_step(x, y) is not None
    finally:
        hook.remove()
    assert seen == [(attack_tf32 or before, torch.float32)] * 2 + [(before, torch.float32)]
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert trainer._metadata({})["method_settings"]["attack_tf32"] is attack_tf32  # recorded in the checkpoint
    with pytest.raises(UserError, match="not both"):
        Trainer(cfg(method="tecoa", attack_amp=True, attack_tf32=True), model=model)


@pytest.mark.parametrize("method", ["tecoa", "pmg-aft"])
def test_adversarial_fine_tuning_raises_robust_accuracy(pretrained, method):
    model = copy.deepcopy(pretrained)
    before = robust_acc(model)
    train(cfg(method=method, eps=12 / 255, step_size=6 / 255, max_steps=80, lr=0.02), progress=False, model=model)
    after = robust_acc(model)
    assert after >= before + 0.15, (before, after)


def test_train_last_n_freezes_the_rest(model):
    names = [n for n, _ in model.visual.named_parameters()]
    before = {k: v.clone() for k, v in model.visual.state_dict().items()}
    train(cfg(method="clean", max_steps=2, train_last_n=2), progress=False, model=model)
    changed = {k for k, v in model.visual.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= set(names[-2:])


def test_checkpoint_round_trips_bit_for_bit(model, tmp_path):
    out = tmp_path / "ft.safetensors"
    ev = train(cfg(method="tecoa", max_steps=2, out=str(out)), progress=False, model=model)
    assert ev["path"] == str(out)
    meta = read_metadata(out)
    assert meta["kind"] == "finetune" and meta["base"] == "pmg-test" and meta["method"] == "tecoa"
    assert meta["eps_255"] == pytest.approx(4.0) and meta["steps"] == 2 and "loss" in meta["metrics"]
    loaded = load_model(str(out))
    for (k, a), (k2, b) in zip(model.visual.state_dict().items(), loaded.visual.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert set(load_tensors(out)) == {f"visual.{k}" for k in model.visual.state_dict()}
    assert not state_path(out).exists()  # finished runs drop their resume state unless asked to keep it


def test_resume_ends_identical_to_uninterrupted_run(tiny_model, tmp_path):
    full = tiny_model.fork("a", "pmg-test")
    train(cfg(method="pmg-aft", max_steps=8), progress=False, model=full)

    out = tmp_path / "resumed.safetensors"
    first = tiny_model.fork("b", "pmg-test")
    trainer = Trainer(cfg(method="pmg-aft", max_steps=8, out=str(out)), model=first)
    events = list(trainer.run(should_stop=lambda: trainer.step >= 3))
    assert events[-1]["event"] == "stopped" and state_path(out).exists()

    second = tiny_model.fork("c", "pmg-test")
    done = list(Trainer(cfg(method="pmg-aft", max_steps=8, out=str(out), resume=True), model=second).run())[-1]
    assert done["event"] == "done" and done["step"] == 8
    for a, b in zip(full.visual.state_dict().values(), second.visual.state_dict().values()):
        assert torch.equal(a, b)


def test_events_report_progress(model):
    events = list(Trainer(cfg(method="tecoa", max_steps=3), model=model).run())
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "step", "step", "step", "done"]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]
    assert all(math.isfinite(e["loss"]) and "adv_acc" in e for e in events if e["event"] == "step")


@pytest.mark.parametrize("bad,words", [
    ({"method": "magic"}, "Unknown method"), ({"eps": -3 / 255}, "eps"), ({"attack_steps": -1}, "steps"),
    ({"dataset": "/no/such/dir"}, "Unknown dataset"), ({"batch_size": 10_000}, "fewer than one batch"),
    ({"lr": 0.0}, "learning rate"), ({"resume": True}, "resume"), ({"model": "no-such-model"}, "Unknown model"),
])
def test_bad_config_is_one_sentence(bad, words):
    with pytest.raises(UserError) as e:
        Trainer(cfg(**bad))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_mismatched_checkpoint_is_refused(model, tmp_path):
    out = tmp_path / "ft.safetensors"
    train(cfg(method="clean", max_steps=1, out=str(out)), progress=False, model=model)
    other = load_model("pmg-tiny")
    from pmg_core.models.checkpoints import load_visual_into

    with pytest.raises(UserError, match="does not fit the image encoder"):
        load_visual_into(other, load_tensors(out), "ft.safetensors")
