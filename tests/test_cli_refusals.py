"""Issue 17, finding 10: hostile command-line input gets one sentence (exit 2), before any training."""
import pytest

from pmg_core import cli
from pmg_core.checkpoints import save_finetune
from pmg_core.errors import UserError
from pmg_core.models import load_model
from pmg_core.train import Trainer, TrainConfig


def run(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def cfg(**kw):
    base = dict(model="pmg-test", dataset="toy-colours", eps=4 / 255, attack_steps=1, step_size=2 / 255,
                max_steps=4, batch_size=8, lr=0.05, warmup=0, seed=0, method="tecoa")
    return TrainConfig(**{**base, **kw})


def test_a_fine_tune_that_is_its_own_base_or_a_cycle_is_refused(tiny_model, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_finetune(a, tiny_model, {"base": str(a)})
    with pytest.raises(UserError, match="'a.safetensors' is its own base"):
        load_model(str(a))
    save_finetune(a, tiny_model, {"base": str(b)})
    save_finetune(b, tiny_model, {"base": str(a)})
    with pytest.raises(UserError, match="its own base through a.safetensors -> b.safetensors -> a.safetensors"):
        load_model(str(a))


def test_recipes_refuse_bad_metadata_alias_bombs_and_unknown_kinds_before_training(tmp_path, capsys):
    bad = tmp_path / "meta.yaml"
    bad.write_text("kind: train\nmodel: pmg-test\ndataset: toy-colours\nextra_metadata: not a dict\n")
    assert "extra_metadata must be a mapping" in run(["train", "--config", str(bad)], capsys)
    bomb = tmp_path / "bomb.yaml"
    # Six levels of nine (531,441 values); the bombs that hurt have more levels, refused the same way.
    bomb.write_text("kind: train\nmodel: pmg-test\nmax_steps: 1\nextra_metadata:\n  a: &a [x, x, x, x, x, x, x, x, x]\n"
                    + "".join(f"  {c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                              for p, c in zip("abcde", "bcdef")))
    assert "uses a YAML alias" in run(["train", "--config", str(bomb)], capsys)
    evil = tmp_path / "evil.yaml"
    evil.write_text("kind: evil\nmodel: pmg-test\n")
    err = run(["train", "--config", str(evil)], capsys)
    assert "'train' or 'eval'" in err and "evil --config" not in err


@pytest.mark.parametrize("device", ["banana", "mps", "meta"])
def test_devices_outside_cpu_and_cuda_are_named_in_one_sentence(device, capsys):
    err = run(["train", "--model", "pmg-test", "--dataset", "toy-colours", "--max-steps", "1", "--device", device], capsys)
    assert "device must be 'cpu', 'cuda' or 'cuda:N'" in err


def test_resume_with_other_settings_is_refused_naming_the_difference(tiny_model, tmp_path):
    out = tmp_path / "run.safetensors"
    trainer = Trainer(cfg(out=str(out)), model=tiny_model.fork("first", "pmg-test"))
    list(trainer.run(should_stop=lambda: trainer.step >= 1))
    with pytest.raises(UserError, match="trained with lr 0.05, not 0.01"):
        list(Trainer(cfg(out=str(out), resume=True, lr=0.01), model=tiny_model.fork("second", "pmg-test")).run())
    with pytest.raises(UserError, match="trained with method 'tecoa', not 'pmg-aft'"):
        list(Trainer(cfg(out=str(out), resume=True, method="pmg-aft"), model=tiny_model.fork("third", "pmg-test")).run())
