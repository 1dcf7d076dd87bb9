"""The app with published models joining in the background: it answers at once and keeps serving.

A local server plays the model's host; the base is the tiny pmg-test CLIP, so the zoo entry here is
a test entry onto it.
"""
import io
import threading

import pytest
import torch

import app
from pmg_core.models import downloads, zoo
from pmg_core.core import env
from pmg_core.models.clip import load_model
from published_files import FileServer, Route
from studio import assets, one_image, state

EXAMPLE = str(assets.EXAMPLES_DIR / "example.png")


@pytest.fixture
def online(tmp_path, monkeypatch):
    """A machine that is online as far as the app can tell, a fresh cache, and a local model host."""
    monkeypatch.setattr(env, "is_offline", lambda: False)
    monkeypatch.setenv("PMG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PMG_ZOO_MIRROR", raising=False)
    monkeypatch.setattr(zoo, "ZOO", dict(zoo.ZOO))  # entries registered by a test leave with it
    monkeypatch.setattr(downloads, "TIMEOUT_S", 60.0)  # the held-up download must not time out
    server = FileServer()
    yield server
    server.close()


def base_model():
    torch.manual_seed(0)
    base = load_model("pmg-test")
    base.name = "clip"
    return base


def published(server, name, route: Route) -> zoo.Entry:
    server.routes[f"/{name}"] = route
    e = zoo.Entry(name, f"{name} (a test model)", "pmg-test", "state-dict", urls=(f"{server.url}/{name}",),
                  filename=f"{name}.pt", method="tecoa", trainer="the test suite", paper="A Test (2026)",
                  paper_url="https://example.org/paper", source_page="https://example.org/repo", licence="CC0")
    return zoo.register(e)


def weights_file(model, seed=5) -> bytes:
    g = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    torch.save({k: torch.randn(v.shape, generator=g) for k, v in model.visual.state_dict().items()}, buf)
    return buf.getvalue()


def answers(studio) -> list[str]:
    *_, details = one_image.attack(studio, EXAMPLE, "circle, square, star", "circle", "Linf", 4, 2, 1,
                                   "cross-entropy", "", one_image.EACH_MODEL, studio.names)
    return [v["model"] for v in details["verdicts"]]


def test_a_cold_start_answers_at_once_and_the_model_joins_when_its_download_ends(online, tmp_path):
    base = base_model()
    gate = threading.Event()
    published(online, "robust-test", Route(weights_file(base), gate=gate))
    demo = app.build_app([base], checkpoint_dir=tmp_path / "ckpt", zoo_ids=["robust-test"])
    studio = demo.studio
    assert studio.loader.busy and studio.loader.status["robust-test"] == "downloading"
    assert answers(studio) == ["clip"]  # served while the download is held up
    assert "| robust-test | robust-test (a test model) | downloading" in studio.about() and studio.loader.busy
    version = studio.version
    gate.set()
    studio.loader.thread.join(60)
    assert studio.names == ["clip", "robust-test"] and studio.version > version
    assert answers(studio) == ["clip", "robust-test"]
    about = studio.about()
    assert "| robust-test | robust-test (a test model) | ready |" in about
    assert "Trained by the test suite" in about and "[A Test (2026)](https://example.org/paper)" in about
    assert studio.models["robust-test"].clip is base.clip  # shares the loaded base


def test_a_failed_download_is_named_on_about_and_the_app_keeps_serving(online, tmp_path):
    base = base_model()
    published(online, "gone-test", Route(status=404))
    published(online, "fine-test", Route(weights_file(base)))
    studio = state.Studio.create([base], tmp_path / "ckpt", zoo_ids=["gone-test", "fine-test"])
    studio.loader.thread.join(60)
    status = studio.loader.status["gone-test"]
    assert status.startswith("not loaded: Downloading gone-test failed") and "HTTP 404" in status
    assert "\n" not in status and status in studio.about()
    assert studio.names == ["clip", "fine-test"]  # the next one still came
    assert answers(studio) == ["clip", "fine-test"]


def test_offline_the_app_fetches_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(env, "is_offline", lambda: True)
    demo = app.build_app([base_model()], checkpoint_dir=tmp_path / "ckpt", zoo_ids=["pmg-aft-b32"])
    assert demo.studio.loader is None and "Published models" not in demo.studio.about()


def test_real_clip_mode_offers_photo_examples_with_imagenet_labels():
    from pmg_core.evaluation.explore import label_presets
    from pmg_core.data.paper_datasets import imagenet_names

    photos = [e for e in assets.examples(label_presets(real_clip=True)) if not e[0].startswith(str(assets.EXAMPLES_DIR))]
    assert [p[0].rsplit("/", 1)[-1] for p in photos] == ["china.jpg", "flower.jpg"]
    names = set(imagenet_names().values())
    for path, labels, true in photos:
        classes = [c.strip() for c in labels.split(",")]
        assert true in classes and set(classes) <= names
    assert not any("china.jpg" in e[0] for e in assets.examples(label_presets(real_clip=False)))


def test_when_real_clip_cannot_be_downloaded_the_page_says_so_with_the_whole_error(online, tmp_path, monkeypatch):
    import html

    import open_clip

    hub_error = ("HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded with url: "
                 "/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_pytorch_model.bin (Caused by "
                 "NameResolutionError: Failed to resolve 'huggingface.co')")

    create_model, gate = open_clip.create_model, threading.Event()

    def hub_unreachable(arch, pretrained=None, **kwargs):
        if pretrained:
            gate.wait(60)
            raise ConnectionError(hub_error)
        return create_model(arch, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(zoo, "is_cached", lambda entry: False)
    monkeypatch.setattr(open_clip, "create_model", hub_unreachable)
    studio = state.Studio.create(None, tmp_path / "ckpt", zoo_ids=[zoo.REAL_CLIP])
    assert "Real CLIP is downloading" in studio.mode
    gate.set()
    studio.loader.thread.join(60)
    about = studio.about()
    assert "Real CLIP could not be downloaded" in studio.mode and "Real CLIP is downloading" not in about
    assert "until real CLIP joins" not in about
    status = studio.loader.status[zoo.REAL_CLIP]
    assert f"| {status} |" in about and status.startswith("not loaded: Could not load the weights of")
    quoted = status.split("(", 1)[1].split("...)")[0]  # the hub's error, as much as the sentence keeps
    assert len(quoted) < len(hub_error) and hub_error.startswith(quoted)
    assert not hub_error[len(quoted)].isalnum()  # cut between words, not inside one
    assert html.escape(hub_error) in about  # the whole of it, below the table


def test_once_real_clip_joins_the_mode_no_longer_says_it_is_downloading(online, tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "is_cached", lambda entry: False)
    pending = zoo.load_default_models(tmp_path / "ckpt", wait_for_download=False)[1]
    assert "Real CLIP is downloading" in pending
    joined = zoo.mode_after_download(pending, zoo.REAL_CLIP, failed=False)
    assert "Real CLIP has joined" in joined and "downloading" not in joined.replace("finished downloading", "")
    assert zoo.mode_after_download(pending, "pmg-aft-b32", failed=True) == pending  # only real CLIP changes the mode


def test_an_api_client_that_never_loads_the_page_reaches_a_model_that_joined_after_launch(tmp_path):
    """Gradio held such a client to the launch-time choices: "Value: 'tecoa-b32' is not in the list of choices"."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from helpers import free_port

    base = base_model()
    demo = app.build_app([base], checkpoint_dir=tmp_path / "ckpt")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_options())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        demo.studio.add(base.fork("tecoa-b32", base.spec))  # joins as a published model does, after launch

        def attack(source, models):
            return client.predict(handle_file(EXAMPLE), "circle, square, star", "circle", "Linf", 4, 1, 1,
                                  "cross-entropy", "", source, models, api_name="/attack")[-1]

        details = attack("tecoa-b32", ["clip", "tecoa-b32"])
        assert [(v["model"], v["attacked_by"]) for v in details["verdicts"]] == \
            [("clip", "tecoa-b32"), ("tecoa-b32", "tecoa-b32")]
        with pytest.raises(AppError, match="The model 'fare-b32' is not loaded"):
            attack(one_image.EACH_MODEL, ["clip", "fare-b32"])
    finally:
        demo.close()
