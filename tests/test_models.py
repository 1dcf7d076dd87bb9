"""Loading models and the classifier contract: bad input is one sentence, network trouble is bounded."""
import logging
import threading
import time

import open_clip
import pytest
import torch

from pmg_core.core import env
from pmg_core.models import clip as models
from pmg_core.core.errors import UserError
from pmg_core.models.clip import load_model

CLASSES = ["red", "green", "blue", "grey"]


def one_sentence(excinfo, *words: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert all(w in msg for w in words), msg
    return msg


@pytest.mark.parametrize("template", ["a {} {} image", "a {name} image", "a {0} image", "a {", "a } image",
                                      "no slot", ""])
def test_a_template_needs_exactly_one_slot(model, template):
    with pytest.raises(UserError) as e:
        model.classifier(CLASSES, (template,))
    one_sentence(e, "exactly one '{}'", repr(template))


def test_templates_with_one_slot_work_and_a_single_string_is_one_template(model):
    one = model.text_features(CLASSES, "a {} image")
    assert torch.equal(one, model.text_features(CLASSES, ("a {} image",)))
    # escaped braces are text, not slots
    assert model.text_features(CLASSES, ("a {{photo}} of a {}",)).shape == one.shape


def test_uint8_images_are_refused(model):
    clf = model.classifier(CLASSES, ("a {} image",))
    with pytest.raises(UserError) as e:
        clf(torch.full((2, 3, 32, 32), 200, dtype=torch.uint8))
    one_sentence(e, "floating point", "uint8", "255")


def _online(monkeypatch, error: Exception):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(env, "is_offline", lambda: False)
    monkeypatch.setattr(open_clip, "create_model", broken)


def test_a_failed_download_is_one_sentence(monkeypatch):
    _online(monkeypatch, RuntimeError("Failed to download file (open_clip_pytorch_model.bin) for timm/x.\n"
                                      "Last error: HTTPSConnectionPool(host='huggingface.co', port=443)\n  more"))
    with pytest.raises(UserError) as e:
        load_model("ViT-B-32-quickgelu:openai")
    msg = one_sentence(e, "ViT-B-32-quickgelu:openai", "Failed to download file")
    assert "Last error" not in msg


def test_a_failed_hub_load_is_one_sentence(monkeypatch):
    import huggingface_hub

    _online(monkeypatch, OSError("404 Client Error.\n\nRepository Not Found for url: https://huggingface.co/x\n" * 3))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", open_clip.create_model)  # the hub fails the same way
    with pytest.raises(UserError) as e:
        load_model("hf-hub:nobody/nothing")
    msg = one_sentence(e, "hf-hub:nobody/nothing", "404 Client Error")
    assert "Repository Not Found" not in msg and len(msg) < 300


def test_cached_weights_keep_their_tag_normalisation_offline(monkeypatch):
    """Given a cached file instead of the tag, open_clip would fall back to OpenAI's mean/std."""
    calls = []
    real_create = open_clip.create_model

    def create(arch, pretrained=None, **kwargs):
        calls.append(pretrained)
        return real_create("pmg-test", pretrained=None)  # stands in for ViT-L-14: no download, no 1.7 GB

    monkeypatch.setattr(models, "_cached_hub_file", lambda hub: "/cache/open_clip_model.safetensors")
    monkeypatch.setattr(open_clip, "create_model", create)
    m = load_model("ViT-L-14:laion2b_s32b_b82k")  # conftest: offline; this tag normalises with 0.5 / 0.5
    assert calls == ["/cache/open_clip_model.safetensors"]
    assert m.mean == (0.5, 0.5, 0.5) and m.std == (0.5, 0.5, 0.5)
    assert m.mean != open_clip.OPENAI_DATASET_MEAN


def test_the_network_probe_is_bounded_even_when_name_lookup_hangs(monkeypatch):
    release = threading.Event()

    def hanging(address, timeout=None):  # a DNS lookup ignores the connect timeout
        release.wait(30)
        raise OSError("no network")

    monkeypatch.setattr(env, "PROBE_TIMEOUT_S", 0.2)
    monkeypatch.setattr(env.socket, "create_connection", hanging)
    start = time.monotonic()
    try:
        assert env.hub_reachable.__wrapped__() is False
        assert time.monotonic() - start < 2
    finally:
        release.set()


def test_the_network_probe_says_reachable_when_it_connects(monkeypatch):
    class Conn:
        def close(self):
            pass

    monkeypatch.setattr(env.socket, "create_connection", lambda address, timeout=None: Conn())
    assert env.hub_reachable.__wrapped__() is True


def test_loading_a_saved_model_does_not_claim_random_weights(model, tmp_path, caplog):
    from pmg_core.models.checkpoints import save_base

    path = save_base(tmp_path / "base.safetensors", model, {"arch": "pmg-test"})
    with caplog.at_level(logging.WARNING):
        loaded = load_model(str(path))
    assert "initialized randomly" not in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(model.clip.state_dict().values(), loaded.clip.state_dict().values()))
    with caplog.at_level(logging.WARNING):  # an architecture alone still says it is random, truthfully
        load_model("pmg-test")
    assert "initialized randomly" in caplog.text
