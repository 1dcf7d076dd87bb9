"""Hub models and the LAION entries, offline: stand-in hub repos laid out in a temporary Hugging Face cache with
the published configs' keys (Delta-CLIP's text_cfg.vocab_path, its own Hugging Face tokenizer; RobustVLM's LAION
ConvNeXt-B), and an R-CLIP file served by the local server the zoo tests use."""
import io
import json
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from pmg_core.models import downloads, zoo
from pmg_core.models.checkpoints import read_metadata
from pmg_core.cli.commands import main
from pmg_core.core.errors import UserError
from pmg_core.models.clip import CONFIG_DIR, load_model
from published_files import (FileServer, Route, cached_files, flip_tensor_bytes, hub_repo, one_sentence,
                             open_clip_config, word_tokenizer_files)

WORDS = ("a", "photo", "of", "circle", "square", "triangle", ".")
TINY_CONVNEXT = {"embed_dim": 32, "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False,
                                                 "timm_pool": "", "timm_proj": "linear", "timm_drop": 0.0,
                                                 "timm_drop_path": 0.0, "image_size": 64},
                 "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("PMG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PMG_ZOO_LOCK", raising=False)
    monkeypatch.delenv("PMG_ZOO_MIRROR", raising=False)
    monkeypatch.setattr(zoo, "ZOO", dict(zoo.ZOO))  # entries changed by a test leave with it
    return tmp_path / "hf"


def _saved(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _changed(state: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.dim() else v.clone()
            for k, v in state.items()}


def delta_stand_in(hub: Path, entry_id: str, seed: int = 1, tokenizer: bool = True, **text_keys) -> dict:
    """A hub repo under the entry's own name holding what Delta-CLIP's repos hold, at pmg-test's size: an
    open_clip config with the published text_cfg keys, pickled weights, the repo's own Hugging Face tokenizer."""
    repo = zoo.get(entry_id).base[len("hf-hub:"):]
    model = open_clip.create_model("pmg-test")
    state = _changed(model.state_dict(), seed)
    keys = text_keys or {"vocab_path": "vocab.txt", "hf_tokenizer_name": repo}
    files = {"open_clip_config.json": open_clip_config(json.loads((CONFIG_DIR / "pmg-test.json").read_text()), **keys),
             "open_clip_pytorch_model.bin": _saved(state)}
    if tokenizer:
        files.update(word_tokenizer_files(WORDS))
    hub_repo(hub, repo, files)
    return state


# --- Delta-CLIP: loads with the extra, or says why ----------------------------------------------------------

def test_delta_clip_stand_ins_load_with_the_extra_installed(hub, tiny_model):
    pytest.importorskip("transformers", reason="the optional extra (requirements-extra.txt)")
    for entry_id, keys in (("delta-clip-l14-224", {}), ("delta-clip-l14-336", {"vocab_path": "vocab.txt"})):
        state = delta_stand_in(hub, entry_id, **keys)
        repo = zoo.get(entry_id).base[len("hf-hub:"):]
        with pytest.raises(TypeError, match="vocab_path"):  # open_clip itself rejects the published config as it is
            open_clip.create_model(f"hf-hub:{repo}")
        model = zoo.load_entry(entry_id)
        assert model.name == entry_id and model.metadata["method"] == "delta-clip"
        assert all(torch.equal(model.clip.state_dict()[k], v) for k, v in state.items()), entry_id
        ids = model.tokenizer(["a photo of a circle"])[0].tolist()
        assert ids[:5] == [4, 5, 6, 4, 7] and len(ids) == 24  # the repo's own vocabulary, padded to its context
        features = model.text_features(["circle", "square"])
        assert torch.isfinite(features).all() and not torch.allclose(features[0], features[1])


def test_without_the_extra_a_delta_clip_entry_refuses_in_one_sentence_naming_it(hub, monkeypatch, capsys):
    delta_stand_in(hub, "delta-clip-l14-224", tokenizer=False)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(UserError) as err:
        zoo.load_entry("delta-clip-l14-224")
    msg = one_sentence(err)
    assert "transformers" in msg and "pip install -r requirements-extra.txt" in msg
    with pytest.raises(UserError, match="needs the optional package transformers"):  # named by hub id, not zoo id
        load_model("hf-hub:zw123/delta_clip_l14_224")
    assert main(["zoo", "list"]) == 0
    listing = capsys.readouterr().out
    assert "UNUSABLE here: needs transformers" in next(ln for ln in listing.splitlines() if "delta-clip-h14-336" in ln)
    assert "requirements-extra.txt" in listing.splitlines()[-1]


def test_a_config_key_open_clip_cannot_build_is_refused_by_name(hub):
    delta_stand_in(hub, "delta-clip-h14-336", tokenizer=False, rope_theta=10000)
    with pytest.raises(UserError, match=r"keys open_clip cannot build \(text_cfg.rope_theta\)") as err:
        load_model("hf-hub:zw123/delta_clip_h14_336")
    one_sentence(err)


# --- RobustVLM's LAION ConvNeXt-B (open_clip hub format) and R-CLIP (Nextcloud state dicts) -----------------

def _convnext_repo(hub: Path, entry_id: str, seed: int, like: dict) -> tuple[dict, Path]:
    state = _changed(like, seed)
    snapshot = hub_repo(hub, zoo.get(entry_id).base[len("hf-hub:"):], {
        "open_clip_config.json": open_clip_config(TINY_CONVNEXT), "open_clip_pytorch_model.bin": _saved(state)})
    return state, snapshot / "open_clip_pytorch_model.bin"


def _tiny_convnext_config(folder: Path) -> Path:
    """A ConvNeXt CLIP (timm trunk, as convnext_base_w) small enough for a test: timm's convnext_atto."""
    path = folder / "pmg-test-convnext.json"
    path.write_text(json.dumps(TINY_CONVNEXT))
    return path


def test_robustvlm_laion_convnext_entries_load_from_their_hub_format_and_refuse_a_damaged_file(hub, tmp_path,
                                                                                             monkeypatch, capsys):
    open_clip.add_model_config(_tiny_convnext_config(tmp_path))
    like = open_clip.create_model("pmg-test-convnext").state_dict()
    for seed, entry_id in enumerate(("tecoa4-convnext-laion", "fare4-convnext-laion")):
        state, _ = _convnext_repo(hub, entry_id, seed, like)
        model = zoo.load_entry(entry_id)
        assert all(torch.equal(model.clip.state_dict()[k], v) for k, v in state.items()), entry_id
        assert model.metadata["trainer"].startswith("Schlarmann") and model.metadata["eps_255"] == 4
        logits = model.classifier(["circle", "square"])(torch.rand(2, 3, 64, 64))
        assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    # pinned: the lock holds the hub weights too; other bytes under the same name are refused
    assert main(["zoo", "pin", "fare4-convnext-laion", "--out", str(tmp_path / "zoo.lock")]) == 0
    capsys.readouterr()
    _, weights = _convnext_repo(hub, "fare4-convnext-laion", 7, like)
    monkeypatch.setenv("PMG_ZOO_LOCK", str(tmp_path / "zoo.lock"))
    with pytest.raises(UserError, match="does not match its pinned sha256") as err:
        zoo.load_entry("fare4-convnext-laion")
    one_sentence(err)
    monkeypatch.delenv("PMG_ZOO_LOCK")
    # damaged in the cache, with no hash pinned: the CRC-32 check refuses it before open_clip unpickles it
    weights.write_bytes(flip_tensor_bytes(weights.read_bytes()))
    with pytest.raises(UserError, match="does not match the CRC-32") as err:
        zoo.load_entry("fare4-convnext-laion")
    one_sentence(err)


def test_an_rclip_state_dict_converts_onto_its_laion_base(hub, tmp_path, monkeypatch):
    assert zoo.with_bases(["rclip-fare4-convnext"]) == ["clip-convnext-laion", "rclip-fare4-convnext"]  # base first
    open_clip.add_model_config(_tiny_convnext_config(tmp_path))
    base = load_model("pmg-test-convnext")
    published = _changed(base.visual.state_dict(), 11)  # their file: torch.save(model.visual.state_dict())
    server = FileServer()
    monkeypatch.setattr(downloads, "TIMEOUT_S", 2.0)
    try:
        e = zoo.get("rclip-fare4-convnext")
        server.routes[f"/s/share/download/{e.filename}"] = Route(_saved(published))
        zoo.ZOO[e.id] = zoo.Entry(**{**vars(e), "base": "pmg-test-convnext",
                                     "urls": (f"{server.url}/s/share/download/{e.filename}",)})
        model = zoo.load_entry(e.id, base=base)
    finally:
        server.close()
    assert model.clip is base.clip  # the LAION base's text encoder, shared
    assert all(torch.equal(model.visual.state_dict()[k], v) for k, v in published.items())
    meta = read_metadata(model.spec)
    assert (meta["zoo_id"], meta["method"], meta["eps_255"]) == ("rclip-fare4-convnext", "fare", 4)
