"""The zoo of published checkpoints, offline: a local server plays Google Drive, Nextcloud and a mirror.

Every file is built from the tiny pmg-test architecture in the formats the publishers used.
"""
import hashlib
import io
from pathlib import Path

import pytest
import torch

from pmg_core.models import downloads, zoo
from pmg_core.models.checkpoints import read_metadata
from pmg_core.data.datasets import list_datasets
from pmg_core.core.errors import UserError
from pmg_core.models.clip import load_model
from published_files import (DRIVE_QUOTA_PAGE, FileServer, Route, cached_files, drive_confirm_page, one_sentence,
                             public_code_checkpoint, save_numpy1_checkpoint)


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PMG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PMG_ZOO_MIRROR", raising=False)
    monkeypatch.setattr(downloads, "TIMEOUT_S", 2.0)  # a stalled test server fails in seconds
    monkeypatch.setattr(zoo, "ZOO", dict(zoo.ZOO))  # entries registered by a test leave with it
    return tmp_path / "cache"


@pytest.fixture
def weights(tiny_model) -> dict:
    g = torch.Generator().manual_seed(3)
    return {k: torch.randn(v.shape, generator=g) for k, v in tiny_model.visual.state_dict().items()}


def pth_tar(weights, tmp_path) -> bytes:
    """The test-time-counterattacks repo's file: a dict with vision_encoder_state_dict, pickled under numpy 1.x."""
    return save_numpy1_checkpoint(public_code_checkpoint(weights), tmp_path / "src.pth.tar").read_bytes()


def state_dict_file(state) -> bytes:
    """RobustVLM's file: torch.save of the image encoder's state dict."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def entry(server, name, fmt="pth.tar", path=None, **kw) -> zoo.Entry:
    e = zoo.Entry(name, f"test {name}", "pmg-test", fmt, urls=(server.url + (path or f"/{name}"),),
                  filename=f"{name}.{'pth.tar' if fmt == 'pth.tar' else 'pt'}", method="tecoa",
                  trainer="the test suite", licence="CC0 (test)", paper="a test", **kw)
    return zoo.register(e)


# --- fetch -> check -> convert -> load -----------------------------------------------------------------

def test_a_drive_file_behind_its_virus_scan_page_is_fetched_checked_converted_and_loaded(server, cache, weights,
                                                                                         tmp_path):
    body = pth_tar(weights, tmp_path)
    server.routes["/uc"] = Route(drive_confirm_page(server.url + "/download", "abc").encode(),
                                 content_type="text/html; charset=utf-8")
    server.routes["/download"] = Route(body)
    e = entry(server, "ttc-test", path="/uc?export=download&id=abc")
    said = []
    where = zoo.fetch("ttc-test", say=said.append)
    digest = hashlib.sha256(body).hexdigest()
    assert Path(where) == cache / "models" / "ttc-test.safetensors"
    assert any(digest in line and "not pinned" in line for line in said)  # printed for a maintainer to pin
    meta = read_metadata(where)
    assert (meta["trainer"], meta["licence"], meta["source_url"], meta["source_sha256"]) == \
        ("the test suite", "CC0 (test)", e.urls[0], digest)
    assert (meta["zoo_id"], meta["method"], meta["preset"], meta["base"]) == ("ttc-test", "tecoa", "paper", "pmg-test")
    model = zoo.load_entry("ttc-test")
    assert all(torch.equal(model.visual.state_dict()[k], v) for k, v in weights.items())
    assert cached_files(cache) == ["models/ttc-test.safetensors"]  # the downloaded file is gone once converted
    assert any("confirm=t" in path for path, _ in server.requests)


def test_a_robustvlm_state_dict_is_fetched_and_shares_the_loaded_base(server, cache, weights, tiny_model):
    server.routes["/s/xyz/download/vitb32_tecoa_eps_1.pt"] = Route(state_dict_file(weights))
    entry(server, "rvlm-test", "state-dict", path="/s/xyz/download/vitb32_tecoa_eps_1.pt")
    base = tiny_model.fork("pmg-test", "pmg-test")
    base.visual, base.spec, base.base = tiny_model.visual, "pmg-test", "pmg-test"
    model = zoo.load_entry("rvlm-test", base=base)
    assert model.clip is base.clip and model.name == "rvlm-test"
    assert all(torch.equal(model.visual.state_dict()[k], v) for k, v in weights.items())
    assert zoo.is_cached(zoo.get("rvlm-test"))
    zoo.fetch("rvlm-test")  # cached: no second download
    assert len(server.requests) == 1


def test_a_cut_download_resumes_where_it_stopped(server, cache, weights):
    body = state_dict_file(weights)
    server.routes["/f"] = Route(body, cut_at=len(body) // 2)
    entry(server, "cut-test", "state-dict", path="/f")
    with pytest.raises(UserError) as err:
        zoo.fetch("cut-test")
    assert "stopped at" in one_sentence(err) and "resume" in str(err.value)
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())
    assert cached_files(cache) == ["downloads/cut-test/cut-test.pt.part"]  # only the part the server can continue
    server.routes["/f"] = Route(body)
    zoo.fetch("cut-test")
    assert server.requests[-1][1] == f"bytes={len(body) // 2}-"
    assert cached_files(cache) == ["models/cut-test.safetensors"]


def test_a_mirror_serves_converted_checkpoints(server, cache, weights, tmp_path, monkeypatch):
    server.routes["/f"] = Route(state_dict_file(weights))
    entry(server, "mirrored", "state-dict", path="/f")
    converted = Path(zoo.fetch("mirrored")).read_bytes()
    (cache / "models" / "mirrored.safetensors").unlink()
    server.routes.clear()
    server.routes["/mirror/mirrored.safetensors"] = Route(converted)
    monkeypatch.setenv("PMG_ZOO_MIRROR", server.url + "/mirror/")
    model = zoo.load_entry("mirrored")
    assert all(torch.equal(model.visual.state_dict()[k], v) for k, v in weights.items())
    # a mirror that holds another entry's file under this name is refused
    entry(server, "other", "state-dict", path="/none")
    server.routes["/mirror/other.safetensors"] = Route(converted)
    with pytest.raises(UserError, match="is not a converted 'other'") as err:
        zoo.fetch("other")
    one_sentence(err)
    assert not (cache / "models" / "other.safetensors").exists()


# --- each failure: one sentence, nothing half-written ---------------------------------------------------

def _hostile(tmp_path) -> bytes:
    class WritesFile:
        def __reduce__(self):
            return exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('pwned')",)

    buf = io.BytesIO()
    torch.save({"vision_encoder_state_dict": {"proj": torch.zeros(2)}, "x": WritesFile()}, buf)
    return buf.getvalue()


FAILURES = {
    "an HTML page": (lambda w, t: Route(b"<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html"),
                     "web page instead of the file|not public"),
    "Drive's quota page": (lambda w, t: Route(DRIVE_QUOTA_PAGE.encode(), content_type="text/html"), "quota"),
    "wrong shapes": (lambda w, t: Route(state_dict_file({k: v[..., :1] for k, v in w.items()})), "does not fit"),
    "a pickle with code": (lambda w, t: Route(_hostile(t)), "arbitrary Python objects"),
    "NaN weights": (lambda w, t: Route(state_dict_file({**w, "proj": w["proj"] * float("nan")})), "NaN or infinite"),
    "not a checkpoint": (lambda w, t: Route(b"\x00garbage" * 100), "is not a PyTorch checkpoint"),
    # The host itself serves a cut file (its length announced as it is): torch says "[Errno 22] Invalid argument".
    "a file truncated at the source": (lambda w, t: Route(pth_tar(w, t)[:20_000]), "is incomplete: the file ends before"),
    "HTTP 404": (lambda w, t: Route(status=404), "HTTP 404 \\(not found\\)"),
    "HTTP 500": (lambda w, t: Route(status=500), "HTTP 500"),
    "a stalled server": (lambda w, t: Route(b"x" * 4096, stall_after=100), "sent nothing for 2 s"),
    "a cut file the server cannot resume": (lambda w, t: Route(b"x" * 4096, ranges=False, cut_at=100), "stopped at 100"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_bad_download_ends_in_one_sentence_with_nothing_left(server, cache, weights, tmp_path, case):
    make, words = FAILURES[case]
    server.routes["/f"] = make(weights, tmp_path)
    entry(server, "bad", "state-dict", path="/f")
    with pytest.raises(UserError, match=words) as err:
        zoo.fetch("bad")
    assert "bad" in one_sentence(err)
    assert cached_files(cache) == [] and not (tmp_path / "pwned").exists()
    assert not zoo.is_cached(zoo.get("bad"))


def test_a_pinned_hash_that_does_not_match_refuses_the_file(server, cache, weights, monkeypatch):
    body = state_dict_file(weights)
    server.routes["/f"] = Route(body)
    entry(server, "pinned", "state-dict", path="/f", sha256="0" * 64)
    with pytest.raises(UserError, match="does not match its pinned sha256") as err:
        zoo.fetch("pinned")
    one_sentence(err)
    assert cached_files(cache) == []
    monkeypatch.setitem(zoo.ZOO, "pinned", zoo.Entry(**{**vars(zoo.get("pinned")),
                                                       "sha256": hashlib.sha256(body).hexdigest()}))
    assert Path(zoo.fetch("pinned")).is_file()  # the right hash passes


# --- Google Drive pages, without network ---------------------------------------------------------------

def test_drive_confirmation_pages_lead_to_the_file():
    page = drive_confirm_page("https://drive.usercontent.google.com/download", "1JMX")
    nxt = downloads.drive_next_url(page, "https://drive.google.com/uc?export=download&id=1JMX")
    assert nxt.startswith("https://drive.usercontent.google.com/download?")
    assert "id=1JMX" in nxt and "confirm=t" in nxt and "uuid=0b5e-test" in nxt
    older = '<html><a id="uc-download-link" href="/uc?export=download&amp;confirm=Xy_1&amp;id=1JMX">Download</a>'
    assert downloads.drive_next_url(older, "https://drive.google.com/uc?id=1JMX") == \
        "https://drive.google.com/uc?export=download&confirm=Xy_1&id=1JMX"
    assert downloads.drive_next_url(DRIVE_QUOTA_PAGE, "https://drive.google.com/uc") is None
    assert "quota" in downloads.page_problem(DRIVE_QUOTA_PAGE)


def test_web_pages_are_told_from_checkpoints():
    assert downloads.looks_like_html(b"\n  <!DOCTYPE html><html>") and downloads.looks_like_html(b"<HTML><body>")
    assert not downloads.looks_like_html(b"PK\x03\x04archive/data.pkl")  # a torch zip checkpoint
    assert not downloads.looks_like_html(b"\x80\x02}q\x00")  # a legacy torch pickle


# --- the registry ----------------------------------------------------------------------------------------

def test_every_registry_entry_is_complete_and_its_recipe_uses_registered_datasets():
    datasets = {d.name for d in list_datasets()}
    for e in zoo.ZOO.values():
        assert e.format in zoo.FORMATS and e.trainer and e.paper and e.licence and e.source_page, e.id
        assert (e.base.startswith("hf-hub:") or ":" in e.base), e.id
        if e.converted:  # a drive-folder entry may leave the file to the folder's only checkpoint
            assert e.urls and (e.filename or e.format == "drive-folder"), e.id
            assert e.base in (zoo.OPENAI_VIT_B32, zoo.OPENAI_VIT_L14, zoo.LAION_B16, zoo.LAION_CONVNEXT), e.id
        if e.published:
            assert set(e.published.protocol.datasets) <= datasets, e.id
            assert e.published.robust and set(e.published.robust) <= {1, 2, 4}, e.id
    assert all(zoo.get(i).base == zoo.OPENAI_VIT_B32 for i in zoo.DEFAULT_ZOO)
    assert [zoo.get(i).method for i in zoo.DEFAULT_ZOO] == ["base", "pmg-aft", "tecoa", "fare"]
    assert {zoo.get(i).preset for i in zoo.DEFAULT_ZOO} == {"paper"}  # CLIP's normalisation and x100 logits


def test_zoo_ids_are_parsed_as_people_write_them():
    assert zoo.parse_zoo_ids("") == list(zoo.DEFAULT_ZOO) and zoo.parse_zoo_ids("none") == ["clip-b32"]
    assert zoo.with_bases(["tecoa1-b32-rvlm", "clip-b32"]) == ["clip-b32", "tecoa1-b32-rvlm"]  # the base first
    assert zoo.parse_zoo_ids(" fare4-b32-rvlm , tecoa1-b32-rvlm") == ["fare4-b32-rvlm", "tecoa1-b32-rvlm"]
    with pytest.raises(UserError, match="no model 'nope'"):
        zoo.parse_zoo_ids("clip-b32,nope")


def test_the_cache_folder_follows_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("PMG_CACHE_DIR", str(tmp_path / "c"))
    assert zoo.converted_path(zoo.get("pmg-aft-b32")) == tmp_path / "c" / "models" / "pmg-aft-b32.safetensors"
    monkeypatch.delenv("PMG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert zoo.cache_dir() == tmp_path / "x" / "pmg-aft-studio"


def test_loading_a_zoo_model_needs_nothing_but_the_converted_file(server, cache, weights):
    server.routes["/f"] = Route(state_dict_file(weights))
    entry(server, "kept", "state-dict", path="/f")
    path = zoo.fetch("kept")
    server.close()  # the sources are gone: the cache is enough
    assert all(torch.equal(load_model(path).visual.state_dict()[k], v) for k, v in weights.items())


# --- the command line ------------------------------------------------------------------------------------

def test_zoo_commands_list_show_and_fetch(server, cache, weights, capsys):
    from pmg_core.cli.commands import main

    server.routes["/f"] = Route(state_dict_file(weights))
    entry(server, "cli-test", "state-dict", path="/f")
    assert main(["zoo", "fetch", "cli-test"]) == 0
    out = capsys.readouterr().out
    assert hashlib.sha256(state_dict_file(weights)).hexdigest() in out and "cli-test: ready" in out
    assert main(["zoo", "list"]) == 0
    listing = capsys.readouterr().out
    assert "pmg-aft-b32" in listing and "fare4-l14" in listing
    assert next(ln for ln in listing.splitlines() if "cli-test" in ln).split()[4].endswith("kB")  # cached: its size
    assert main(["zoo", "show", "tecoa1-b32-rvlm"]) == 0
    card = capsys.readouterr().out
    assert "Schlarmann" in card and "MIT" in card and "53.1" in card and "LHgi84RskrtYCiX" in card
    assert main(["zoo", "fetch", "cli-test", "nope"]) == 2  # every id checked before any download
    assert "no model 'nope'" in capsys.readouterr().err


def test_a_failed_fetch_names_the_entry_once(server, cache, weights, tmp_path, capsys):
    from pmg_core.cli.commands import main

    server.routes["/f"] = Route(pth_tar(weights, tmp_path)[:20_000])  # cut at the source
    entry(server, "cut-test", "pth.tar", path="/f")
    assert main(["zoo", "fetch", "cut-test"]) == 2
    said = capsys.readouterr()
    line = next(ln for ln in said.out.splitlines() if "incomplete" in ln)
    assert line.startswith("cut-test: 'cut-test.pth.tar' is incomplete") and line.count("cut-test:") == 1
    assert "error: 1 of 1 could not be fetched: cut-test." in said.err


def test_zoo_verify_prints_ours_beside_theirs(server, cache, weights, capsys):
    from pmg_core.cli.commands import main

    server.routes["/f"] = Route(state_dict_file(weights))
    recipe = zoo.Protocol("toy recipe", ("toy-colours",), "pgd", 2, "clip", 16, "a toy")
    entry(server, "verify-test", "state-dict", path="/f",
          published=zoo.Published(61.5, {1: 12.5, 4: 3.0}, recipe, "a test table"))
    assert main(["zoo", "verify", "verify-test", "--data-root", "unused", "--eps", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("| 1 |"))
    ours_clean, theirs_clean, ours_robust, theirs_robust = (float(c) for c in row.strip("|").split("|")[1:])
    assert (theirs_clean, theirs_robust) == (61.5, 12.5) and 0 <= ours_robust <= ours_clean <= 100
    assert "a test table" in out and "a toy" in out
    assert main(["zoo", "verify", "verify-test", "--data-root", "x", "--eps", "2"]) == 2
    assert "No published number at eps 2/255" in capsys.readouterr().err


def test_a_hub_entry_loads_through_open_clip_once_named_by_its_id_with_its_card(monkeypatch, tiny_model):
    """Hub models are open_clip's to download (huggingface_hub); the zoo names them and adds their card."""
    loads = []

    def fake_load_model(spec, device="cpu", base=None):
        loads.append(spec)
        return tiny_model.fork(spec, spec)

    monkeypatch.setattr(zoo, "load_model", fake_load_model)
    model = zoo.load_entry("fare4-b32-laion")
    assert loads == ["hf-hub:chs20/FARE4-ViT-B-32-laion2B-s34B-b79K"]
    assert model.name == "fare4-b32-laion" and model.metadata["trainer"].startswith("Schlarmann")
    assert model.metadata["method"] == "fare" and model.metadata["eps_255"] == 4
