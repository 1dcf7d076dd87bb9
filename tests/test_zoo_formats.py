"""The zoo's later formats, offline: a shared Google Drive folder (TGA-ZSR, Comp-TGA, SAFT) and a
whole CLIP in the transformers layout whose text tower replaces the base's (LEAF), served by the
local server the zoo tests use; and the cards of the robust CLIPs published after PMG-AFT."""
import io

import pytest
import torch
from safetensors.torch import save

from pmg_core.models import downloads, zoo
from pmg_core.models.checkpoints import read_metadata
from pmg_core.core.errors import UserError
from pmg_core.models.clip import load_model
from published_files import (FileServer, Route, cached_files, drive_folder_listing, one_sentence,
                             public_code_checkpoint, save_numpy1_checkpoint, transformers_clip_state)

LATER = ("advflyp-b32", "advflyp-noreg-b32", "tga-zsr-b32", "comp-tga-b32", "saft-b32", "simclip2-l14", "simclip4-l14",
         "leaf-fare2-l14", "leaf-rho50-fare2-l14", "delta-clip-l14-224", "delta-clip-l14-336", "delta-clip-h14-336",
         "agft-b32")


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PMG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PMG_ZOO_MIRROR", raising=False)
    monkeypatch.setattr(downloads, "TIMEOUT_S", 2.0)
    monkeypatch.setattr(zoo, "ZOO", dict(zoo.ZOO))  # entries registered by a test leave with it
    return tmp_path / "cache"


def _perturbed(state: dict, seed: int, keep=lambda k: True) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (v + 0.05 * torch.randn(v.shape, generator=g) if keep(k) and v.is_floating_point() and v.dim() else v)
            for k, v in state.items()}


# --- a shared Google Drive folder ----------------------------------------------------------------------------

def test_a_checkpoint_inside_a_shared_drive_folder_is_found_fetched_converted_and_loaded(server, cache, tiny_model,
                                                                                          tmp_path):
    weights = _perturbed(tiny_model.visual.state_dict(), 5)
    body = save_numpy1_checkpoint(public_code_checkpoint(weights), tmp_path / "m.pth.tar").read_bytes()
    # SAFT's layout: the folder holds a run folder, which holds the checkpoint beside other files.
    server.routes["/embeddedfolderview?id=TOP"] = Route(
        drive_folder_listing([("RUN", "SAFT-L run", True), ("NOTES", "README.txt", False)]).encode(),
        content_type="text/html; charset=utf-8")
    server.routes["/embeddedfolderview?id=RUN"] = Route(
        drive_folder_listing([("LOG", "train.log", False), ("CKPT", "model_final_seed3.pth.tar", False)]).encode(),
        content_type="text/html; charset=utf-8")
    server.routes["/uc?export=download&id=CKPT"] = Route(body)
    zoo.register(zoo.Entry("folder-test", "test folder", "pmg-test", "drive-folder",
                           urls=(server.url + "/embeddedfolderview?id=TOP",), filename="model_final_seed3.pth.tar",
                           method="saft", trainer="the test suite", licence="CC0 (test)", paper="a test"))
    path = zoo.fetch("folder-test")
    model = load_model(path)
    assert all(torch.equal(model.visual.state_dict()[k], weights[k]) for k in weights)
    meta = read_metadata(path)
    assert meta["zoo_id"] == "folder-test" and meta["source_url"].endswith("/uc?export=download&id=CKPT")
    assert cached_files(cache) == ["models/folder-test.safetensors"]  # the download was converted and removed
    assert [p for p, _ in server.requests][:2] == ["/embeddedfolderview?id=TOP", "/embeddedfolderview?id=RUN"]


def test_a_tga_zsr_folder_holding_both_checkpoints_converts_the_one_its_authors_evaluate(server, cache, tiny_model,
                                                                                         tmp_path):
    """TGA-ZSR's save_checkpoint writes checkpoint.pth.tar each epoch and can copy a model_best.pth.tar beside it."""
    last, best = _perturbed(tiny_model.visual.state_dict(), 21), _perturbed(tiny_model.visual.state_dict(), 22)
    for name, weights in (("last", last), ("best", best)):
        server.routes[f"/uc?export=download&id={name.upper()}"] = Route(
            save_numpy1_checkpoint(public_code_checkpoint(weights), tmp_path / f"{name}.pth.tar").read_bytes())
    server.routes["/embeddedfolderview?id=TGA"] = Route(drive_folder_listing(
        [("BEST", "model_best.pth.tar", False), ("LAST", "checkpoint.pth.tar", False), ("LOG", "TGA-ZSR.log", False)]
    ).encode(), content_type="text/html; charset=utf-8")
    for entry_id in ("tga-zsr-b32", "comp-tga-b32"):  # the registry's own entries, served by the stand-in folder
        zoo.ZOO[entry_id] = zoo.Entry(**{**vars(zoo.get(entry_id)), "base": "pmg-test",
                                         "urls": (server.url + "/embeddedfolderview?id=TGA",)})
        model = load_model(zoo.fetch(entry_id))
        assert all(torch.equal(model.visual.state_dict()[k], last[k]) for k in last), entry_id
        assert read_metadata(model.spec)["source_url"].endswith("id=LAST")
    assert not any("id=BEST" in path for path, _ in server.requests)


def test_a_drive_folder_without_the_file_or_with_several_is_refused_in_one_sentence(server, cache):
    server.routes["/embeddedfolderview?id=A"] = Route(
        drive_folder_listing([("X", "notes.txt", False)]).encode(), content_type="text/html")
    server.routes["/embeddedfolderview?id=B"] = Route(
        drive_folder_listing([("P", "a.pth.tar", False), ("Q", "b.pth.tar", False)]).encode(), content_type="text/html")
    for name, folder in (("none-there", "A"), ("two-there", "B")):
        zoo.register(zoo.Entry(name, name, "pmg-test", "drive-folder", urls=(f"{server.url}/embeddedfolderview?id={folder}",),
                               method="tga-zsr", trainer="t", licence="CC0", paper="p"))
    with pytest.raises(UserError) as err:
        zoo.fetch("none-there")
    assert "lists no checkpoint file" in one_sentence(err) and "notes.txt" in str(err.value)
    with pytest.raises(UserError) as err:
        zoo.fetch("two-there")
    assert "several checkpoint files" in one_sentence(err) and "a.pth.tar, b.pth.tar" in str(err.value)
    server.routes["/embeddedfolderview?id=C"] = Route(status=404)
    zoo.register(zoo.Entry("gone", "gone", "pmg-test", "drive-folder", urls=(f"{server.url}/embeddedfolderview?id=C",),
                           method="tga-zsr", trainer="t", licence="CC0", paper="p"))
    with pytest.raises(UserError) as err:
        zoo.fetch("gone")
    assert "HTTP 404" in one_sentence(err)
    assert not list((cache / "models").glob("*")) if (cache / "models").exists() else True


# --- a whole CLIP in the transformers layout, text tower included ------------------------------------------------

@pytest.fixture
def leaf_file(tiny_model):
    """(model.safetensors bytes, the open_clip state it was made from): both towers changed."""
    state = _perturbed(tiny_model.clip.state_dict(), 9, keep=lambda k: k != "logit_scale")
    return save(transformers_clip_state(state)), state


def _leaf_entry(server, name, text_tower):
    return zoo.register(zoo.Entry(name, f"test {name}", "pmg-test", "hf-transformers",
                                  urls=(f"{server.url}/{name}/resolve/main/model.safetensors",),
                                  filename="model.safetensors", method="fare", text_tower=text_tower,
                                  trainer="the test suite", licence="CC0 (test)", paper="a test"))


def test_a_transformers_clip_is_converted_with_its_text_tower_replacing_the_bases(server, cache, leaf_file):
    body, state = leaf_file
    server.routes["/leaf-test/resolve/main/model.safetensors"] = Route(body)
    _leaf_entry(server, "leaf-test", text_tower=True)
    base = load_model("pmg-test")
    original_text = {k: v.clone() for k, v in base.clip.state_dict().items() if not k.startswith("visual.")}
    model = zoo.load_entry("leaf-test", base=base)
    assert read_metadata(model.spec)["text_tower"] is True
    # the converted model computes what the open_clip model with the published weights computes
    reference = load_model("pmg-test")
    reference.clip.load_state_dict(state)
    tokens = reference.tokenizer(["a photo of a circle", "a photo of a ."])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.clip.encode_text(tokens), reference.clip.encode_text(tokens), atol=1e-5)
        assert torch.allclose(model.visual(x), reference.clip.visual(x), atol=1e-5)
    # the base it shared nothing with keeps its own text tower and text features
    assert all(torch.equal(base.clip.state_dict()[k], v) for k, v in original_text.items())
    assert not torch.allclose(model.text_features(["circle", "square"]), base.text_features(["circle", "square"]))
    again = load_model(model.spec, base=base)  # from the cache, later: the same two towers
    with torch.no_grad():
        assert torch.allclose(again.clip.encode_text(tokens), reference.clip.encode_text(tokens), atol=1e-5)


def test_without_text_tower_only_the_image_encoder_is_taken(server, cache, leaf_file):
    body, state = leaf_file
    server.routes["/leaf-image/resolve/main/model.safetensors"] = Route(body)
    _leaf_entry(server, "leaf-image", text_tower=False)
    base = load_model("pmg-test")
    model = zoo.load_entry("leaf-image", base=base)
    assert model.clip is base.clip  # the text side is the base's, shared
    assert all(torch.equal(model.visual.state_dict()[k], state[f"visual.{k}"]) for k in model.visual.state_dict())


def test_a_broken_transformers_file_is_refused_in_one_sentence_and_leaves_nothing(server, cache, leaf_file, tiny_model):
    _, state = leaf_file
    hf = transformers_clip_state(state)
    nan = dict(hf, **{"text_model.final_layer_norm.weight": torch.full_like(hf["text_model.final_layer_norm.weight"],
                                                                              float("nan"))})
    odd = dict(hf, **{"vision_model.encoder.layers.0.self_attn.rotary.weight": torch.zeros(2)})
    small = {k: v for k, v in hf.items() if not k.startswith("vision_model.encoder.layers.1.")}
    for name, tensors, says in (("leaf-nan", nan, "NaN or infinite"), ("leaf-odd", odd, "does not know"),
                                ("leaf-small", small, "does not fit the image encoder")):
        server.routes[f"/{name}/resolve/main/model.safetensors"] = Route(save(tensors))
        _leaf_entry(server, name, text_tower=True)
        with pytest.raises(UserError) as err:
            zoo.fetch(name)
        assert says in one_sentence(err), err.value
    server.routes["/leaf-pickle/resolve/main/model.safetensors"] = Route(_pickled(state))
    _leaf_entry(server, "leaf-pickle", text_tower=True)
    with pytest.raises(UserError) as err:
        zoo.fetch("leaf-pickle")  # a pickle under the safetensors name is read as data, never unpickled
    one_sentence(err)
    assert cached_files(cache) == []


def _pickled(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


# --- the cards -------------------------------------------------------------------------------------------

def test_every_later_robust_clip_has_a_complete_card_and_says_how_its_weights_come():
    for entry_id in LATER:
        e = zoo.get(entry_id)
        card = e.card()
        for field in ("title", "trainer", "paper", "source_page", "licence", "method", "preset"):
            assert card.get(field), (entry_id, field)
        assert e.note, entry_id  # what its code stores, in a sentence
        if e.converted:
            assert e.urls and (e.filename or e.format == "drive-folder"), entry_id
        if e.format in ("hf-transformers", "drive-folder", "pth.tar", "state-dict"):
            assert e.base in ("ViT-B-32-quickgelu:openai", "ViT-L-14-quickgelu:openai"), entry_id
    assert zoo.get("leaf-rho50-fare2-l14").text_tower and not zoo.get("leaf-fare2-l14").text_tower
    assert zoo.get("tga-zsr-b32").published.robust == {1: 42.09}
    agft = zoo.get("agft-b32")
    assert agft.format == "unpublished" and not agft.urls and not zoo.is_cached(agft)
    with pytest.raises(UserError, match="without published weights"):
        zoo.fetch("agft-b32")
