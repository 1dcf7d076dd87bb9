"""A live app on 127.0.0.1 driven through gradio_client: every endpoint, errors, train + cancel, lanes, Spaces."""
import re
import struct
import sys
import time
import types
import zlib
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import yaml
from PIL import Image


import app  # noqa: E402
from studio import assets, safety  # noqa: E402
from helpers import EACH, EXAMPLE, LABELS, free_port, tiny_models, wait_for  # noqa: E402

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import Status  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt")
    demo = app.build_app(tiny_models(), checkpoint_dir=ckpt)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    yield demo, f"http://127.0.0.1:{port}/", ckpt
    demo.close()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server[1], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def attack_args(**kw):
    args = dict(image=handle_file(EXAMPLE), labels=LABELS, true_label="circle", norm="Linf", eps=8, steps=5,
                step_size=1, loss="cross-entropy", target="", source=EACH, models=["clip", "tecoa", "pmg-aft"])
    args.update(kw)
    return list(args.values())


def test_attack_endpoint_returns_verdicts_and_lossless_pngs(client):
    gallery, perturb, html, files, details = client.predict(*attack_args(), api_name="/attack")
    assert [v["model"] for v in details["verdicts"]] == ["clip", "tecoa", "pmg-aft"]
    assert len(gallery) == len(files) == 3 and "pmg-verdicts" in html
    clean = np.asarray(Image.open(EXAMPLE)).astype(int)
    for item, f in zip(gallery, files):
        shown = np.asarray(Image.open(item["image"]))
        downloaded = np.asarray(Image.open(f))
        assert Image.open(f).format == "PNG" and Image.open(item["image"]).format == "PNG"
        assert np.array_equal(shown, downloaded)
        assert 0 < np.abs(downloaded.astype(int) - clean).max() <= 8  # perturbed, inside eps 8/255


def test_eps_sweep_and_distances_endpoints(client):
    _, rows = client.predict(handle_file(EXAMPLE), LABELS, "circle", "Linf", "0, 4", 3, 1, "cross-entropy", "", EACH,
                             ["clip", "tecoa"], api_name="/eps_sweep")
    assert sorted({r["eps_255"] for r in rows}) == [0.0, 4.0] and len(rows) == 4
    d_plot, r_plot, p_plot, data = client.predict(handle_file(EXAMPLE), LABELS, "circle", "Linf", "0, 4", 3, 1,
                                                  "cross-entropy", ["clip", "tecoa", "pmg-aft"], "clip",
                                                  api_name="/distances")
    assert len(data["distances"]) == 6 and len(data["points"]) == 6 + 2 * 3
    assert all(p is not None for p in (d_plot, r_plot, p_plot))


def test_evaluate_endpoint_gives_a_table(client):
    status, table, plot = client.predict(["clip", "pmg-aft"], "toy-colours", "", 1, 2, 1, 16, api_name="/evaluate")
    assert "Done" in status
    assert [row[0] for row in table["data"]] == ["clip", "pmg-aft"] and all(row[2] == 16 for row in table["data"])


def test_bad_input_gets_a_sentence_and_the_server_keeps_serving(client):
    with pytest.raises(AppError, match="appears more than once"):
        client.predict(*attack_args(labels="cat, cat", true_label="cat"), api_name="/attack")
    with pytest.raises(AppError, match="eps"):
        client.predict(*attack_args(eps=1000), api_name="/attack")
    with pytest.raises(AppError, match="not allowed"):
        client.predict("clip", "tecoa", "toy-colours", 1, 1, 0.01, 2, 32, 1, 1, "../escape", api_name="/train")
    *_, details = client.predict(*attack_args(steps=1), api_name="/attack")
    assert len(details["verdicts"]) == 3


def test_train_streams_then_cancel_stops_it_and_the_checkpoint_joins_the_lists(client, server):
    _, _, ckpt = server
    job = client.submit("clip", "tecoa", "toy-colours", 1, 1, 0.01, 2000, 32, 1, 1, "server-run", api_name="/train")
    deadline = time.time() + 120
    while time.time() < deadline and not any("Step" in str(o[0]) for o in job.outputs()):
        time.sleep(0.2)
    assert any("Step" in str(o[0]) for o in job.outputs()), "training never reported a step"
    client.predict(api_name="/cancel_train")
    status, _ = job.result(timeout=120)
    assert "Stopped" in status
    assert (ckpt / "server-run.safetensors").is_file()
    chosen, *_, about = client.predict(api_name="/refresh_models")
    assert "server-run" in chosen["value"] and ["server-run", "server-run"] in chosen["choices"]
    assert "server-run" in about


# --- uploads that are not images reach our sentence ------------------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG that claims width x height but holds one row of pixels (a bomb costs nothing to make)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * width)))
            + chunk(b"IEND", b""))


BAD_UPLOADS = {
    "random bytes": (lambda: np.random.default_rng(0).bytes(3000), "not a readable image"),
    "truncated PNG": (lambda: Path(EXAMPLE).read_bytes()[:400], "damaged or cut short"),
    "15000x15000 PNG": (lambda: png_header(15_000, 15_000), "too large"),  # past PIL's own bomb check
    "8000x8000 PNG": (lambda: png_header(8_000, 8_000), "this one is 8000x8000 pixels"),  # past ours only
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_gets_our_sentence_through_the_server_and_it_keeps_serving(client, tmp_path, capfd, case):
    make, words = BAD_UPLOADS[case]
    bad = tmp_path / "upload.png"
    bad.write_bytes(make())
    for endpoint, args in (("/preview", []), ("/attack", attack_args(steps=1, models=["clip"])[1:])):
        with pytest.raises(AppError) as e:
            client.predict(handle_file(str(bad)), *args, api_name=endpoint)
        msg = str(e.value)
        assert words in msg and "give a PNG, JPEG" in msg  # what was wrong and what is accepted
        assert "preprocess" not in msg and str(tmp_path) not in msg and "\n" not in msg.strip()
    *_, details = client.predict(*attack_args(steps=1, models=["clip"]), api_name="/attack")
    assert [v["model"] for v in details["verdicts"]] == ["clip"]
    assert "Traceback" not in capfd.readouterr().err


# --- two lanes, and Cancel of a run that is still waiting ------------------------------------------------

def cancel_like_the_browser(url: str, session_hash: str, api_name: str) -> str:
    """The Cancel button's own event (queue=False): the browser POSTs it to /run/, past the queue."""
    answer = httpx.post(f"{url}gradio_api/run/{api_name}", json={"data": [], "session_hash": session_hash}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"][0]


def test_attacks_are_served_during_training_and_a_waiting_run_cancelled_never_trains(server, tmp_path):
    demo, url, ckpt = server
    blocker, waiter = (Client(url, verbose=False, download_files=str(tmp_path / name)) for name in ("a", "b"))
    long_run = blocker.submit("clip", "tecoa", "toy-colours", 1, 1, 0.01, 5000, 8, 1, 1, "lane-blocker", api_name="/train")
    assert wait_for(lambda: any("Step" in str(o[0]) for o in long_run.outputs())), "training never started"

    *_, details = waiter.predict(*attack_args(steps=2), api_name="/attack")  # the interactive lane is free
    assert len(details["verdicts"]) == 3 and not long_run.done()

    queued = waiter.submit("clip", "tecoa", "toy-colours", 1, 1, 0.01, 2, 8, 1, 1, "never-trained", api_name="/train")
    assert wait_for(lambda: queued.status().code == Status.IN_QUEUE, 30), queued.status()
    queued.cancel()  # what the browser's Cancel does for the event it submitted (cancels=[train])
    assert "No train run" in cancel_like_the_browser(url, waiter.session_hash, "cancel_train")
    after = blocker.submit("clip", "tecoa", "toy-colours", 1, 1, 0.01, 1, 8, 1, 1, "after-the-cancel", api_name="/train")

    assert "Stopped" in cancel_like_the_browser(url, blocker.session_hash, "cancel_train")
    assert "Stopped" in long_run.result(timeout=60)[0]
    assert "Done" in after.result(timeout=120)[0]  # queued after the cancelled run: it would have run by now
    assert not (ckpt / "never-trained.safetensors").exists()
    assert (ckpt / "lane-blocker.safetensors").is_file() and (ckpt / "after-the-cancel.safetensors").is_file()


def test_cancel_buttons_take_their_waiting_runs_off_the_queue():
    """The browser cancels queued events of a dependency named in cancels=; Cancel must name its run."""
    config = app.build_app(tiny_models()[:1], checkpoint_dir=Path("unused")).config
    deps = config["dependencies"]
    ids = {d["api_name"]: d["id"] for d in deps}
    button_of = {d["api_name"]: d["targets"][0][0] for d in deps if d["api_name"] in ("cancel_train", "cancel_evaluate")}
    for run, cancel in (("train", "cancel_train"), ("evaluate", "cancel_evaluate")):
        assert any(ids[run] in d["cancels"] and d["targets"][0][0] == button_of[cancel] for d in deps)


# --- Hugging Face Spaces ---------------------------------------------------------------------------------

def test_zerogpu_gives_each_handler_a_duration_and_is_a_no_op_without_spaces(monkeypatch, tmp_path):
    durations = {}

    def gpu(duration=60):
        def wrap(fn):
            durations[fn.__name__] = duration
            return fn
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    app.build_app(tiny_models()[:1], checkpoint_dir=tmp_path)
    assert durations == {"attack": 120, "extras": 120, "eps_sweep": 120, "distances": 120, "evaluate": 300,
                         "train": 300}
    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` raises ImportError
    assert safety.gpu(300)(len) is len


def test_readme_front_matter_is_what_a_space_needs():
    text = (assets.ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n", 2)[1])
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gr.__version__
    assert meta["app_file"] == "app.py" and (assets.ROOT / meta["app_file"]).is_file()
    assert re.fullmatch(r"3\.\d+", str(meta["python_version"]))


def test_four_40_mb_label_texts_at_once_are_refused_before_they_are_read(server):
    """The labels endpoint is not queued: a 40 MB text was read, parsed and split, and four at once took
    2 GB. Bodies over the request limit are refused by their length, before any byte is read. (The
    four clients are another process, so this one's memory is the server's.)"""
    import json
    import subprocess
    import threading

    from helpers import rss_mb

    _, url, _ = server
    clients = f"""
import httpx, json, threading
body = json.dumps({{"data": ["cat, " * (8 * 2**20)]}}).encode()
answers = []
def send():
    r = httpx.post("{url}gradio_api/run/labels", content=body, timeout=120, headers={{"content-type": "application/json"}})
    answers.append([r.status_code, r.json().get("detail")])
threads = [threading.Thread(target=send) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(answers))
"""
    before, peak, stop = rss_mb(), [0.0], threading.Event()

    def watch():
        while not stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak[0] = max(peak[0], int(line.split()[1]) / 1024)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        done = subprocess.run([sys.executable, "-c", clients], capture_output=True, text=True, timeout=300)
    finally:
        stop.set()
        watcher.join()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[413, safety.TOO_LARGE_REQUEST]] * 4
    assert peak[0] - before < 100, f"peak RSS grew by {peak[0] - before:.0f} MB"
    small = httpx.post(f"{url}gradio_api/run/labels", json={"data": ["cat, dog"]}, timeout=30)
    assert small.status_code == 200  # the endpoint itself still answers
