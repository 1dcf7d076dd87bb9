"""Recipe files (round trip, the paper's values, refusals, the CLI) and importers of foreign checkpoints."""
import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pmg_core.models.checkpoints import load_tensors, read_metadata
from pmg_core.cli.commands import main
from pmg_core.core.errors import UserError
from pmg_core.evaluation.accuracy import EvalConfig, evaluate
from pmg_core.models.importers import guess_base, import_checkpoint, load_torch_file
from pmg_core.models.clip import load_model
from pmg_core.cli.recipes import load_recipe, save_recipe
from pmg_core.training.loop import TrainConfig
from published_files import NUMPY1_SCALAR, pickle_globals, public_code_checkpoint, save_numpy1_checkpoint

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


# --- recipes -------------------------------------------------------------------------------------

def test_train_recipe_round_trip_file_settings_file(tmp_path):
    src = tmp_path / "r.yaml"
    src.write_text("kind: train\nmodel: pmg-test\nmethod: tecoa\ndataset: toy-colours\neps: 2\nstep_size: 0.5\n"
                   "attack_steps: 3\nlr: 1.0e-3\nbatch_size: 16\nextra_metadata: {note: hi}\n")
    values = load_recipe(src, "train")
    cfg = TrainConfig(**values)
    assert (cfg.eps, cfg.step_size, cfg.attack_steps, cfg.lr) == (2 / 255, 0.5 / 255, 3, 1e-3)
    assert cfg.extra_metadata == {"note": "hi"}
    again = save_recipe(tmp_path / "again.yaml", cfg)
    assert "eps: 2.0" in again.read_text()  # written back in /255 units, like the original
    assert TrainConfig(**load_recipe(again, "train")) == cfg
    as_json = save_recipe(tmp_path / "again.json", cfg)
    assert TrainConfig(**load_recipe(as_json, "train")) == cfg


def test_eval_recipe_round_trip_and_comma_lists(tmp_path):
    cfg = EvalConfig(models=["a", "b"], datasets=["mini", "toy-colours"], eps=4 / 255, attack="cw", limit=50)
    path = save_recipe(tmp_path / "e.yaml", cfg, description="test")
    assert EvalConfig(**load_recipe(path, "eval")) == cfg
    (tmp_path / "c.yaml").write_text("models: a, b\ndatasets: mini\n")
    assert load_recipe(tmp_path / "c.yaml", "eval")["models"] == ["a", "b"]


def test_shipped_recipes_hold_the_papers_settings():
    pmg = load_recipe(CONFIGS / "pmg_aft_vitb32.yaml", "train")
    assert (pmg["model"], pmg["method"], pmg["dataset"], pmg["preset"]) == \
        ("ViT-B-32-quickgelu:openai", "pmg-aft", "tinyimagenet", "paper")
    assert (pmg["eps"], pmg["attack_steps"], pmg["step_size"]) == (1 / 255, 2, 1 / 255)
    assert (pmg["alpha"], pmg["beta"], pmg["epochs"], pmg["batch_size"]) == (1.0, 1.0, 10, 256)
    assert (pmg["lr"], pmg["momentum"], pmg["weight_decay"], pmg["warmup"]) == (5e-5, 0.9, 0.0, 1000)
    public = load_recipe(CONFIGS / "pmg_aft_vitb32_public_code.yaml", "train")
    assert public == {**pmg, "preset": "public-code", "out": public["out"]} and public["out"] != pmg["out"]
    methods = {n: load_recipe(CONFIGS / f"{n}_vitb32.yaml", "train")["method"] for n in ("tecoa", "fare")}
    assert methods == {"tecoa": "tecoa", "fare": "fare"}
    from pmg_core.core.env import checkpoint_dir  # where eval_paper.yaml's models are looked up by name

    assert Path(pmg["out"]) == checkpoint_dir() / "pmg-aft-vitb32.safetensors"

    runs = {p.stem: load_recipe(p, "eval") for p in sorted(CONFIGS.glob("eval_paper*.yaml"))}
    settings = sorted((round(r["eps"] * 255, 6), r["attack"]) for r in runs.values())
    assert settings == [(1, "autoattack-standard"), (1, "cw"), (1, "pgd"), (2, "pgd"), (4, "pgd")]
    for name, r in runs.items():
        assert r["datasets"] == ["paper"] and r["step_size"] == 1 / 255 and r["limit"] is None
        assert r["preset"] is None  # each model judged with the numerics it was fine-tuned with
        assert r["steps"] == (100 if r["attack"].startswith("autoattack") else 10), name  # AutoAttack's own 100


@pytest.mark.parametrize("text, says", [
    ("epoch: 3\n", "Unknown setting 'epoch'.*did you mean 'epochs'"),
    ("kind: eval\n", "recipe for `eval`"),
    ("lr: fast\n", "learning rate must be a number"),
    ("eps: one\n", "'eps' in 'r.yaml' must be a number of 1/255 steps"),
    ("- a list\n", "must be a mapping"),
    ("model: [unclosed\n", "not valid YAML"),
    ("extends: r.yaml\n", "extends itself"),
])
def test_bad_recipes_are_one_sentence(tmp_path, text, says):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UserError, match=says) as e:
        load_recipe(tmp_path / "r.yaml", "train")
    assert "\n" not in str(e.value)


def _toy_recipe(tmp_path, method="pmg-aft") -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(f"kind: train\nmodel: pmg-test\nmethod: {method}\ndataset: toy-colours\neps: 2\n"
                    "attack_steps: 1\nbatch_size: 8\nlimit: 16\nmax_steps: 1\nwarmup: 0\nlr: 0.01\n"
                    f"out: {tmp_path / 'from-recipe.safetensors'}\n")
    return path


def test_cli_train_uses_the_recipe_and_flags_override_it(tmp_path, capsys):
    recipe = _toy_recipe(tmp_path)
    assert main(["train", "--config", str(recipe), "--method", "tecoa", "--out", str(tmp_path / "flag.safetensors")]) == 0
    meta = read_metadata(tmp_path / "flag.safetensors")
    assert (meta["method"], meta["eps_255"], meta["batch_size"], meta["steps"]) == ("tecoa", 2.0, 8, 1)
    assert not (tmp_path / "from-recipe.safetensors").exists()


def _cli_settings(argv, cls):
    from pmg_core.cli.commands import _settings, build_parser

    args = build_parser().parse_args(argv)
    return cls(**_settings(args, cls, argv[0]))


def test_flags_equal_to_their_defaults_still_override_the_recipe():
    cfg = _cli_settings(["eval", "--config", str(CONFIGS / "eval_paper_eps4.yaml"), "--eps", "1", "--batch-size", "128"],
                        EvalConfig)
    assert (cfg.eps, cfg.batch_size, cfg.datasets, cfg.limit) == (1 / 255, 128, ["paper"], None)
    assert cfg.batch_size == EvalConfig().batch_size and cfg.eps == EvalConfig().eps  # the parser defaults
    cfg = _cli_settings(["train", "--config", str(CONFIGS / "tecoa_vitb32.yaml"), "--method", "pmg-aft"], TrainConfig)
    assert (cfg.method, cfg.lr, cfg.epochs) == ("pmg-aft", 5e-5, 10)
    flags = _cli_settings(["eval", "--config", str(CONFIGS / "eval_paper.yaml"), "--no-early-stop", "--seed", "0",
                           "--preset", "paper"], EvalConfig)
    assert (flags.early_stop, flags.seed, flags.preset) == (False, 0, "paper")
    # without --config, an absent flag is the config class's default
    assert _cli_settings(["eval"], EvalConfig) == EvalConfig()
    assert _cli_settings(["train"], TrainConfig) == TrainConfig()


def test_cli_train_flag_at_its_default_beats_the_recipe(tmp_path, capsys):
    recipe = _toy_recipe(tmp_path, method="tecoa")
    out = tmp_path / "flag.safetensors"
    assert main(["train", "--config", str(recipe), "--method", "pmg-aft", "--steps", "2", "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert (meta["method"], meta["attack_steps"], meta["eps_255"]) == ("pmg-aft", 2, 2.0)


def test_recipe_out_by_bare_name_lands_where_eval_finds_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PMG_CHECKPOINT_DIR", str(tmp_path / "ckpts"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # wherever the command runs from
    recipe = _toy_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace(f"out: {tmp_path / 'from-recipe.safetensors'}", "out: toy-pmg.safetensors"))
    assert main(["train", "--config", str(recipe)]) == 0
    assert (tmp_path / "ckpts" / "toy-pmg.safetensors").is_file() and not any(elsewhere.iterdir())
    assert main(["eval", "--models", "toy-pmg", "--datasets", "toy-colours", "--steps", "1", "--limit", "8"]) == 0
    assert "| toy-pmg | paper | robust |" in capsys.readouterr().out
    # a path with a folder stays relative to the working directory, as --out always is
    recipe.write_text("kind: train\nout: runs/x.safetensors\n")
    assert load_recipe(recipe, "train")["out"] == "runs/x.safetensors"


def test_cli_eval_runs_a_recipe(tmp_path, capsys):
    recipe = tmp_path / "e.yaml"
    recipe.write_text("kind: eval\nmodels: [pmg-test]\ndatasets: [toy-colours]\neps: 2\nsteps: 1\nlimit: 8\n")
    out = tmp_path / "report.json"
    assert main(["eval", "--config", str(recipe), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["eps_255"] == 2.0 and [r["n"] for r in report["results"]] == [8]
    assert main(["eval", "--config", str(_toy_recipe(tmp_path))]) == 2
    assert "recipe for `train`" in capsys.readouterr().err


# --- importers -----------------------------------------------------------------------------------

@pytest.fixture
def foreign(tiny_model):
    """Image-encoder weights unlike any random init, in the pmg-test architecture."""
    g = torch.Generator().manual_seed(7)
    return {k: torch.randn(v.shape, generator=g) for k, v in tiny_model.visual.state_dict().items()}


def _public_code(weights, prefix):  # as saved under today's numpy (numpy 2 names its scalar numpy._core...)
    return {**public_code_checkpoint(weights, prefix), "best_acc1": np.float64(31.2)}


LAYOUTS = {
    "public-code": _public_code,
    "whole-model-state_dict": lambda w, p: {"state_dict": {**{p + "visual." + k: v for k, v in w.items()},
                                                           p + "token_embedding.weight": torch.zeros(3, 2)}},
    "robustvlm-visual": lambda w, p: {p + k: v for k, v in w.items()},
}


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_foreign_checkpoints_round_trip_to_identical_weights(tmp_path, foreign, layout, prefix):
    src = tmp_path / f"tecoa_eps1_{layout}.pth.tar"
    torch.save(LAYOUTS[layout](foreign, prefix), src)
    path, model = import_checkpoint(str(src), tmp_path / "imported.safetensors", base="pmg-test")
    meta = read_metadata(path)
    assert (meta["kind"], meta["base"], meta["method"], meta["source"]) == ("finetune", "pmg-test", "tecoa", src.name)
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    stored = load_tensors(path)
    assert stored.keys() == {f"visual.{k}" for k in foreign}
    assert all(torch.equal(stored[f"visual.{k}"], v) for k, v in foreign.items())
    reloaded = load_model(str(path))  # through the project's own loader
    assert all(torch.equal(reloaded.visual.state_dict()[k], v) for k, v in foreign.items())


def test_plain_safetensors_import(tmp_path, foreign):
    save_file(foreign, str(tmp_path / "fare2.safetensors"))
    path, _ = import_checkpoint(str(tmp_path / "fare2.safetensors"), tmp_path / "out.safetensors", base="pmg-test")
    assert read_metadata(path)["method"] == "fare"
    assert all(torch.equal(load_tensors(path)[f"visual.{k}"], v) for k, v in foreign.items())
    with pytest.raises(UserError, match="already a pmg_core checkpoint"):
        import_checkpoint(str(path), tmp_path / "again.safetensors", base="pmg-test")


class _WritesAFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_carrying_code_is_refused_without_running(tmp_path, writer):
    target, src = tmp_path / "pwned.txt", tmp_path / "evil.pth.tar"
    payload = {"vision_encoder_state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _WritesAFile(target)}
    if writer == "torch.save":
        torch.save(payload, src)
    else:
        with open(src, "wb") as f:
            pickle.dump(payload, f, protocol=2)  # a protocol torch's safe unpickler reads up to the GLOBAL
    with pytest.raises(UserError, match="arbitrary Python objects.*refused"):
        import_checkpoint(str(src), tmp_path / "out.safetensors", base="pmg-test")
    assert not target.exists() and not (tmp_path / "out.safetensors").exists()


def test_numpy_numbers_in_public_checkpoints_load(tmp_path, foreign):
    torch.save(_public_code(foreign, "module."), tmp_path / "c.pth.tar")
    assert load_torch_file(tmp_path / "c.pth.tar")["best_acc1"] == 31.2


def test_a_checkpoint_pickled_under_numpy_1_imports(tmp_path, foreign):
    """The published .pth.tar files name numpy 1.x's scalar rebuilder, which numpy 2 renamed."""
    src = save_numpy1_checkpoint(public_code_checkpoint(foreign, "module."), tmp_path / "PMG_AFT.pth.tar")
    names = pickle_globals(src)
    assert NUMPY1_SCALAR in names and not any(n.startswith("numpy._core") for n in names)
    assert load_torch_file(src)["best_acc1"] == 31.2
    path, _ = import_checkpoint(str(src), tmp_path / "pmg.safetensors", base="pmg-test")
    assert all(torch.equal(load_tensors(path)[f"visual.{k}"], v) for k, v in foreign.items())


def test_other_numpy_1_names_stay_refused(tmp_path, foreign):
    """Allowing numpy 1.x's scalar rebuilder allows nothing else from numpy.core (an array's rebuilder here)."""
    src = save_numpy1_checkpoint(public_code_checkpoint(foreign), tmp_path / "arr.pth.tar")
    with zipfile.ZipFile(src) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(src, "w") as z:
        for info, data in entries:
            z.writestr(info, data.replace(b"cnumpy.core.multiarray\nscalar\n", b"cnumpy.core.multiarray\n_reconstruct\n"))
    with pytest.raises(UserError, match="arbitrary Python objects"):
        load_torch_file(src)


def test_mismatched_or_unreadable_sources_are_one_sentence(tmp_path, foreign):
    torch.save({k: v[..., :1] if v.dim() > 1 else v for k, v in foreign.items()}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="does not fit the image encoder"):
        import_checkpoint(str(tmp_path / "bad.pt"), tmp_path / "o.safetensors", base="pmg-test")
    (tmp_path / "junk.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="is not a PyTorch checkpoint"):
        import_checkpoint(str(tmp_path / "junk.pth.tar"), tmp_path / "o.safetensors", base="pmg-test")
    torch.save({"state_dict": {}, "epoch": 1}, tmp_path / "empty.pth.tar")
    with pytest.raises(UserError, match="none of vision_encoder_state_dict"):
        import_checkpoint(str(tmp_path / "empty.pth.tar"), tmp_path / "o.safetensors", base="pmg-test")
    with pytest.raises(UserError, match="--base"):
        import_checkpoint(str(tmp_path / "bad.pt"), tmp_path / "o.safetensors")  # pmg-test shapes: no OpenAI base


def _vit_shapes(width, patch, layers, tokens):
    state = {"conv1.weight": torch.empty(width, 3, patch, patch), "positional_embedding": torch.empty(tokens, width)}
    state.update({f"transformer.resblocks.{i}.ln_1.weight": torch.empty(1) for i in range(layers)})
    return state


def test_base_guessed_from_openai_vit_shapes():
    assert guess_base(_vit_shapes(768, 32, 12, 50)) == "ViT-B-32-quickgelu:openai"
    assert guess_base(_vit_shapes(1024, 14, 24, 257)) == "ViT-L-14-quickgelu:openai"


def _fake_hub_model(hub: Path, repo: str, visual: dict) -> None:
    """An open_clip model in a Hugging Face cache laid out as hf_hub_download leaves it."""
    from pmg_core.models.clip import CONFIG_DIR, _open_clip

    torch.manual_seed(3)
    clip = _open_clip().create_model("pmg-test")
    clip.visual.load_state_dict(visual)
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = hub / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    config = {"model_cfg": json.loads((CONFIG_DIR / "pmg-test.json").read_text()),
              "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(snapshot / "open_clip_model.safetensors"))


def test_hub_model_is_paired_with_its_own_text_encoder(tmp_path, foreign, monkeypatch):
    from huggingface_hub import constants

    _fake_hub_model(tmp_path / "hub", "someone/robust-clip", foreign)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path, model = import_checkpoint("hf-hub:someone/robust-clip", tmp_path / "robust.safetensors")
    meta = read_metadata(path)
    assert (meta["base"], meta["source"]) == ("hf-hub:someone/robust-clip", "hf-hub:someone/robust-clip")
    assert all(torch.equal(load_tensors(path)[f"visual.{k}"], v) for k, v in foreign.items())
    hub, imported = load_model("hf-hub:someone/robust-clip"), load_model(str(path))
    classes = ["a cat", "a dog"]
    assert torch.equal(imported.text_features(classes), hub.text_features(classes))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(imported.classifier(classes)(x), hub.classifier(classes)(x))


def test_hub_ids_fail_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("PMG_OFFLINE", "1")
    with pytest.raises(UserError, match="offline"):
        import_checkpoint("hf-hub:chs20/tecoa4-clip", tmp_path / "o.safetensors")


def test_import_records_the_numerics_evaluation_then_uses(tmp_path, foreign):
    torch.save(_public_code(foreign, "module."), tmp_path / "pmg_aft_eps1.pth.tar")
    path, model = import_checkpoint(str(tmp_path / "pmg_aft_eps1.pth.tar"), tmp_path / "pmg.safetensors",
                                    base="pmg-test", preset="public-code")
    assert read_metadata(path)["preset"] == "public-code"
    cfg = EvalConfig(models=[str(path)], datasets=["toy-colours"], steps=1, limit=8)
    assert evaluate(cfg, models=[load_model(str(path))])["results"][0]["preset"] == "public-code"
    with pytest.raises(UserError, match="Unknown preset"):
        import_checkpoint(str(tmp_path / "pmg_aft_eps1.pth.tar"), tmp_path / "x.safetensors", base="pmg-test",
                          preset="fp16")
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_import_then_evaluate(tmp_path, foreign, capsys):
    torch.save(_public_code(foreign, "module."), tmp_path / "pmg_aft_eps1.pth.tar")
    out = tmp_path / "pmg.safetensors"
    rc = main(["import", str(tmp_path / "pmg_aft_eps1.pth.tar"), "--base", "pmg-test", "--out", str(out),
               "--eval", "toy-colours", "--limit", "8", "--device", "cpu"])
    assert rc == 0 and read_metadata(out)["method"] == "pmg-aft"
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "| pmg | paper | robust |" in printed
