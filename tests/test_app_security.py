"""Uploads and paths: the upload size limit, checkpoint names that try to leave checkpoints/, the bind address."""
import os
from pathlib import Path
from types import SimpleNamespace

import pytest


import app  # noqa: E402
from pmg_core.data import inputs  # noqa: E402
from pmg_core.core.env import checkpoint_dir  # noqa: E402
from pmg_core.core.errors import UserError  # noqa: E402
from studio import one_image, training  # noqa: E402
from studio.state import Studio  # noqa: E402
from helpers import EACH, EXAMPLE, LABELS, tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio.create(tiny_models(), tmp_path_factory.mktemp("ckpt"))


def one_sentence(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


# --- (a) upload size ----------------------------------------------------------------------------------

def test_every_launch_passes_the_upload_limit_to_gradio():
    assert app.launch_options()["max_file_size"] == inputs.MAX_UPLOAD_BYTES


def test_a_file_one_byte_over_the_limit_is_refused_by_the_handler_before_decoding(studio, tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: costs no disk and no time
        f.truncate(inputs.MAX_UPLOAD_BYTES + 1)
    with pytest.raises(UserError) as e:
        one_image.attack(studio, {"path": str(big)}, LABELS, "circle", "Linf", 4, 1, 1, "cross-entropy", "", EACH, ["clip"])
    assert "upload limit" in one_sentence(e.value)


def test_the_live_server_refuses_an_upload_over_the_limit_and_keeps_serving(tmp_path):
    from gradio_client import Client, handle_file

    from helpers import free_port

    demo = app.build_app(tiny_models()[:1], checkpoint_dir=tmp_path / "ckpt")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "dl"))
        big = tmp_path / "big.png"
        with open(big, "wb") as f:
            f.truncate(inputs.MAX_UPLOAD_BYTES + 1)
        with pytest.raises(Exception) as e:
            client.predict(handle_file(str(big)), LABELS, "circle", "Linf", 4, 1, 1, "cross-entropy", "", EACH,
                           ["clip"], api_name="/attack")
        assert "413" in str(e.value) or "size" in str(e.value).lower()
        *_, details = client.predict(handle_file(EXAMPLE), LABELS, "circle", "Linf", 4, 1, 1, "cross-entropy", "",
                                     EACH, ["clip"], api_name="/attack")
        assert [v["model"] for v in details["verdicts"]] == ["clip"]
    finally:
        demo.close()


# --- (b) checkpoint names -----------------------------------------------------------------------------

ESCAPES = ["../../etc/passwd", "../x", "..", "/etc/passwd", "/tmp/pmg-escape", "a/b", "a/../b", "sub/", "a\\..\\b",
           "C:\\evil", "~/x", ".hidden", "%2e%2e%2fescape", "x\x00y", "ｘ／ｙ", "\u202eevil", "x" * 65]


@pytest.mark.parametrize("name", ESCAPES)
def test_train_refuses_checkpoint_names_that_are_paths_and_writes_nothing(studio, name):
    outside = Path("/tmp/pmg-escape.safetensors")
    before = sorted(os.listdir(studio.checkpoint_dir))
    with pytest.raises(UserError) as e:
        next(training.train(studio, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 1, 8, 1, 1, name))
    assert "not allowed" in one_sentence(e.value) or "name" in str(e.value)
    assert sorted(os.listdir(studio.checkpoint_dir)) == before and not outside.exists()


def test_a_symlink_in_the_checkpoint_folder_cannot_redirect_a_new_checkpoint(tmp_path):
    folder, outside = tmp_path / "ckpt", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "evil.safetensors").symlink_to(outside / "target.safetensors")  # dangling, points outside
    with pytest.raises(UserError) as e:
        inputs.new_checkpoint_path("evil", folder)
    one_sentence(e.value)
    assert not (outside / "target.safetensors").exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", str(checkpoint_dir() / "clip-tiny.safetensors"), "/etc/passwd"])
def test_model_names_typed_in_the_ui_are_only_looked_up_among_loaded_models(studio, name):
    with pytest.raises(UserError) as e:
        one_image.attack(studio, EXAMPLE, LABELS, "circle", "Linf", 4, 1, 1, "cross-entropy", "", EACH, [name])
    assert "not loaded" in one_sentence(e.value)
    with pytest.raises(UserError) as e:
        next(training.train(studio, name, "tecoa", "toy-colours", 1, 1, 0.01, 1, 8, 1, 1, "fine-name"))
    assert "not loaded" in one_sentence(e.value)


# --- (c) bind address ---------------------------------------------------------------------------------

@pytest.mark.parametrize("host, share, env, expected", [
    (None, False, {}, ("127.0.0.1", False)),
    (None, False, {"SPACE_ID": ""}, ("127.0.0.1", False)),
    ("127.0.0.1", False, {}, ("127.0.0.1", False)),
    ("localhost", False, {}, ("localhost", False)),
    ("0.0.0.0", False, {}, ("0.0.0.0", True)),
    (None, False, {"SPACE_ID": "someone/pmg-aft"}, ("0.0.0.0", True)),
    ("127.0.0.1", False, {"SPACE_ID": "someone/pmg-aft"}, ("127.0.0.1", True)),
    (None, True, {}, ("127.0.0.1", True)),
])
def test_host_is_loopback_unless_asked_or_on_a_space(host, share, env, expected):
    assert app.resolve_host(host, share, env) == expected


@pytest.mark.parametrize("argv, env, host, public", [
    ([], {}, "127.0.0.1", False),
    (["--host", "0.0.0.0"], {}, "0.0.0.0", True),
    ([], {"SPACE_ID": "someone/pmg-aft"}, "0.0.0.0", True),
])
def test_main_binds_the_resolved_host_and_hides_server_folders_in_public(monkeypatch, argv, env, host, public):
    seen = launched(monkeypatch, argv, env)
    assert seen["server_name"] == host and seen["public"] is public
    assert seen["max_file_size"] == inputs.MAX_UPLOAD_BYTES
    studio = Studio.create(tiny_models()[:1], Path("unused"), public=public)
    assert studio.allow_folders is not public and (studio.limits == inputs.PUBLIC) is public


@pytest.mark.parametrize("argv, env, extra", [
    ([], {}, []),
    (["--models", "a.safetensors, hf-hub:org/robust-clip"], {}, ["a.safetensors", "hf-hub:org/robust-clip"]),
    ([], {"PMG_MODELS": "b.safetensors"}, ["b.safetensors"]),
    (["--models", "c.safetensors"], {"PMG_MODELS": "b.safetensors"}, ["c.safetensors"]),  # the flag wins
])
def test_more_models_come_from_the_models_flag_or_pmg_models(monkeypatch, argv, env, extra):
    assert launched(monkeypatch, argv, env)["extra_models"] == extra


def launched(monkeypatch, argv: list[str], env: dict[str, str]) -> dict:
    """What app.main(argv) passes to build_app and launch, without loading models or serving."""
    seen = {}

    def fake_build_app(**kw):
        seen.update(kw)
        return SimpleNamespace(studio=SimpleNamespace(names=["clip"]), launch=lambda **kw: seen.update(kw))

    for var in ("SPACE_ID", "PMG_MODELS"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(app, "build_app", fake_build_app)
    app.main(argv)
    return seen
