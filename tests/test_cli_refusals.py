"""Issue 17, finding 10: hostile command-line input gets one sentence (exit 2), before any training."""
from pathlib import Path

import pytest
import torch

from pmg_core.cli import commands as cli
from pmg_core.models.checkpoints import save_finetune
from pmg_core.core.errors import UserError
from pmg_core.models.clip import load_model
from pmg_core.training.loop import Trainer, TrainConfig

EXAMPLE = str(Path(__file__).parents[1] / "assets" / "examples" / "example.png")


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


# --- issue 26, item 6: each of these was a traceback or was accepted ------------------------------------

def test_importing_a_file_whose_pickle_breaks_torch_load_is_one_sentence(tmp_path, capsys):
    import zipfile

    src = tmp_path / "junk.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, src)
    with zipfile.ZipFile(src) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(src, "w") as z:  # a pickle that reads an empty memo: KeyError inside torch.load
        for info, data in entries:
            z.writestr(info, b"\x80\x02h\x05." if info.filename.endswith("data.pkl") else data)
    err = run(["import", str(src), "--base", "pmg-test", "--out", str(tmp_path / "o.safetensors")], capsys)
    assert "'junk.pth.tar' is not a PyTorch checkpoint" in err


def test_recipes_that_are_not_utf8_or_set_a_key_twice_are_refused_naming_the_key(tmp_path, capsys):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("kind: eval\ndescription: caf\u00e9 au lait\n".encode("latin-1"))
    assert "'latin.yaml' is not UTF-8 text" in run(["eval", "--config", str(latin)], capsys)
    twice = tmp_path / "twice.yaml"
    twice.write_text("kind: eval\nlimit: 10\nseed: 1\nlimit: 2000\n")
    assert "'twice.yaml' sets 'limit' twice" in run(["eval", "--config", str(twice)], capsys)
    twice_json = tmp_path / "twice.json"
    twice_json.write_text('{"kind": "eval", "eps": 1, "eps": 4}')
    assert "'twice.json' sets 'eps' twice" in run(["eval", "--config", str(twice_json)], capsys)


def test_a_gpu_this_machine_does_not_have_is_named_before_any_work(capsys):
    err = run(["bench", "--quick", "--device", "cuda:99"], capsys)
    assert "device cuda:99 is not available: this machine has" in err


def test_eval_and_attack_share_one_cap_on_eot_draws(capsys):
    eval_err = run(["eval", "--models", "pmg-test", "--datasets", "synth-shape", "--defense", "ttc",
                    "--eot", "100000"], capsys)
    attack_err = run(["attack", EXAMPLE, "--models", "pmg-test", "--labels", "a,b",
                      "--true", "a", "--defense", "ttc", "--eot", "100000"], capsys)
    assert eval_err == attack_err == "error: EOT samples must be a whole number between 1 and 64; got 100000."


def test_attack_refuses_an_empty_label_as_the_app_does(capsys):
    from pmg_core.data.inputs import parse_labels

    err = run(["attack", EXAMPLE, "--models", "pmg-test", "--labels", "cat,,dog",
               "--true", "cat"], capsys)
    with pytest.raises(UserError) as app_err:
        parse_labels("cat,,dog")
    assert err == f"error: {app_err.value}"


def test_a_radius_or_step_is_refused_in_the_unit_it_was_typed_in(capsys):
    for argv in (["attack", EXAMPLE, "--models", "pmg-test", "--labels", "a,b", "--true", "a", "--eps", "300"],
                 ["eval", "--models", "pmg-test", "--datasets", "synth-shape", "--eps", "300"],
                 ["train", "--model", "pmg-test", "--dataset", "synth-shape", "--eps", "300"]):
        assert run(argv, capsys) == "error: --eps (in /255) must be a number between 0 and 255; got 300."
    err = run(["attack", EXAMPLE, "--models", "pmg-test", "--labels", "a,b", "--true", "a", "--step-size", "-1"], capsys)
    assert err == "error: --step-size (in /255) must be a number between 0 and 255; got -1."


def test_cards_run_refuses_an_unknown_model_before_any_cell(tmp_path, capsys):
    out = tmp_path / "cards"
    err = run(["cards", "run", "--protocol", "mini", "--models", "clip-tiny,nosuch", "--limit", "1", "--out", str(out)],
              capsys)
    assert err.startswith("error: Unknown model 'nosuch' in --models") and not out.exists()


def test_every_command_and_option_says_what_it_is_for():
    import argparse

    def undocumented(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from (" ".join(path + [c.dest]) for c in action._choices_actions if not c.help)
                for name, sub in action.choices.items():
                    yield from undocumented(sub, path + [name])
            elif not action.help and not isinstance(action, argparse._HelpAction):
                yield " ".join(path + [action.option_strings[0] if action.option_strings else action.dest])

    assert list(undocumented(cli.build_parser(), [])) == []
    assert "where those modules provide them" not in cli.build_parser().description
