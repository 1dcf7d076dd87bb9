"""A live app on 127.0.0.1 driven through gradio_client: every endpoint, errors, train + cancel."""
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app  # noqa: E402
from test_app_handlers import EACH, EXAMPLE, LABELS, tiny_models  # noqa: E402

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
