"""Corrupt bytes never become weights: the CRC-32 of every torch zip member is checked with no hash pinned,
and a lock file written by `zoo pin` holds every later fetch to the files pinned (pip's hash-checking mode)."""
import hashlib
import io
from pathlib import Path

import pytest
import torch

from pmg_core.models import downloads, zoo
from pmg_core.cli.commands import main
from pmg_core.core.errors import UserError
from pmg_core.models.importers import _numpy_scalar_globals, import_checkpoint
from pmg_core.models.integrity import read_lock
from published_files import (FileServer, Route, cached_files, flip_tensor_bytes, one_sentence, public_code_checkpoint,
                             save_numpy1_checkpoint)


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PMG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PMG_ZOO_MIRROR", raising=False)
    monkeypatch.delenv("PMG_ZOO_LOCK", raising=False)
    monkeypatch.setattr(downloads, "TIMEOUT_S", 2.0)
    monkeypatch.setattr(zoo, "ZOO", dict(zoo.ZOO))  # entries registered by a test leave with it
    return tmp_path / "cache"


def _weights(tiny_model, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in tiny_model.visual.state_dict().items()}


def _state_dict_file(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _entry(server, name, fmt="state-dict", path="/f") -> zoo.Entry:
    return zoo.register(zoo.Entry(name, f"test {name}", "pmg-test", fmt, urls=(server.url + path,),
                                  filename=f"{name}.{'pth.tar' if fmt == 'pth.tar' else 'pt'}", method="tecoa",
                                  trainer="the test suite", licence="CC0 (test)", paper="a test"))


# --- the CRC-32 of every member, no hash needed ------------------------------------------------------------

def test_a_torch_zip_with_flipped_bytes_in_its_tensor_data_is_refused_with_no_hash_pinned(server, cache, tiny_model,
                                                                                           tmp_path):
    weights = _weights(tiny_model, 1)
    body = save_numpy1_checkpoint(public_code_checkpoint(weights), tmp_path / "good.pth.tar").read_bytes()
    damaged = flip_tensor_bytes(body)
    (tmp_path / "damaged.pth.tar").write_bytes(damaged)
    # what makes the check necessary: torch itself reads the damaged archive without a word
    with torch.serialization.safe_globals(_numpy_scalar_globals()):  # the numbers the public code saves
        assert isinstance(torch.load(tmp_path / "damaged.pth.tar", weights_only=True), dict)
    server.routes["/f"] = Route(damaged)
    e = _entry(server, "flipped", "pth.tar")
    assert not e.sha256
    with pytest.raises(UserError, match="does not match the CRC-32") as err:
        zoo.fetch("flipped")
    assert "flipped" in one_sentence(err) and "/data/" in str(err.value)  # it names the damaged member
    assert cached_files(cache) == [] and not zoo.is_cached(zoo.get("flipped"))
    # the importer refuses it the same way, and writes nothing
    with pytest.raises(UserError, match="does not match the CRC-32"):
        import_checkpoint(str(tmp_path / "damaged.pth.tar"), tmp_path / "out.safetensors", base="pmg-test")
    assert not (tmp_path / "out.safetensors").exists()
    server.routes["/f"] = Route(body)  # the undamaged file passes the same check
    assert Path(zoo.fetch("flipped")).is_file()


def test_a_zip_whose_directory_is_damaged_is_refused_in_one_sentence(tmp_path, tiny_model):
    body = bytearray(_state_dict_file(_weights(tiny_model, 2)))
    directory = body.rindex(b"PK\x01\x02")
    body[directory + 4:directory + 12] = b"\xff" * 8  # a central-directory record made nonsense
    (tmp_path / "bad.pt").write_bytes(bytes(body))
    with pytest.raises(UserError) as err:
        import_checkpoint(str(tmp_path / "bad.pt"), tmp_path / "out.safetensors", base="pmg-test")
    assert "bad.pt" in one_sentence(err) and not (tmp_path / "out.safetensors").exists()


# --- lock files: zoo pin, then fetch --require-hashes / PMG_ZOO_LOCK -----------------------------------------

def test_zoo_pin_writes_what_is_cached_and_a_locked_fetch_refuses_a_file_whose_hash_differs(
        server, cache, tiny_model, tmp_path, monkeypatch, capsys):
    good = _state_dict_file(_weights(tiny_model, 3))
    server.routes["/f"] = Route(good)
    _entry(server, "locked")
    converted = Path(zoo.fetch("locked"))
    lock_path = tmp_path / "zoo.lock"
    assert main(["zoo", "pin", "--out", str(lock_path)]) == 0
    pin = read_lock(lock_path).pins["locked"]
    assert pin.source == hashlib.sha256(good).hexdigest()
    assert pin.converted == hashlib.sha256(converted.read_bytes()).hexdigest()
    assert "1 entries pinned" in capsys.readouterr().out

    # The host now serves other bytes (a re-upload, a tampered copy): a valid checkpoint, but not the pinned one.
    converted.unlink()
    server.routes["/f"] = Route(_state_dict_file(_weights(tiny_model, 4)))
    assert main(["zoo", "fetch", "locked", "--require-hashes", "--lock", str(lock_path)]) == 2
    said = capsys.readouterr()
    assert "does not match its pinned sha256" in said.out and "could not be fetched: locked" in said.err
    assert cached_files(cache) == []
    # Through PMG_ZOO_LOCK, the app's path (load_entry) holds to it too.
    monkeypatch.setenv("PMG_ZOO_LOCK", str(lock_path))
    with pytest.raises(UserError, match="does not match its pinned sha256") as err:
        zoo.load_entry("locked")
    one_sentence(err)
    assert cached_files(cache) == []
    # The pinned bytes pass, under the flag and under the variable.
    server.routes["/f"] = Route(good)
    assert main(["zoo", "fetch", "locked", "--require-hashes", "--lock", str(lock_path)]) == 0
    assert zoo.load_entry("locked").name == "locked"


def test_under_a_lock_an_entry_without_a_hash_is_refused_before_any_download(server, cache, tiny_model, tmp_path,
                                                                             monkeypatch, capsys):
    lock_path = tmp_path / "zoo.lock"
    lock_path.write_text(f"other --hash=sha256:{'a' * 64}\n")
    server.routes["/f"] = Route(_state_dict_file(_weights(tiny_model, 5)))
    _entry(server, "unpinned")
    assert main(["zoo", "fetch", "unpinned", "--require-hashes", "--lock", str(lock_path)]) == 2
    assert "has no hash in the lock file" in capsys.readouterr().err
    assert main(["zoo", "fetch", "unpinned", "--require-hashes"]) == 2  # no lock named anywhere
    assert "--require-hashes needs a lock file" in capsys.readouterr().err
    monkeypatch.setenv("PMG_ZOO_LOCK", str(lock_path))
    with pytest.raises(UserError, match="has no hash in the lock file"):
        zoo.load_entry("unpinned")
    assert server.requests == [] and cached_files(cache) == []


def test_a_cached_checkpoint_converted_from_another_file_is_refused_under_the_lock(server, cache, tiny_model,
                                                                                   tmp_path, monkeypatch):
    server.routes["/f"] = Route(_state_dict_file(_weights(tiny_model, 6)))
    _entry(server, "stale")
    zoo.fetch("stale")  # cached before the lock was written, from other bytes than the pinned ones
    lock_path = tmp_path / "zoo.lock"
    lock_path.write_text(f"# pinned elsewhere\nstale --hash=sha256:{'b' * 64}\n")
    monkeypatch.setenv("PMG_ZOO_LOCK", str(lock_path))
    with pytest.raises(UserError, match="converted from a file whose sha256") as err:
        zoo.load_entry("stale")
    one_sentence(err)


def test_a_lock_file_that_cannot_be_read_is_refused_in_one_sentence(tmp_path):
    bad = tmp_path / "zoo.lock"
    bad.write_text("tecoa1-b32-rvlm sha256=deadbeef\n")
    with pytest.raises(UserError, match="Line 1 of the lock file") as err:
        read_lock(bad)
    one_sentence(err)
    with pytest.raises(UserError, match="does not exist"):
        read_lock(tmp_path / "missing.lock")
