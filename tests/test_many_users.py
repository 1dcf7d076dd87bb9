"""Many users at once (issue 8, part 4): 20 gradio_client sessions attack their own images on a loopback
app serving the embedded models (clip-tiny and its shipped fine-tunes) while a Train job runs. Attacks
have their own queue lane, so every session gets its own answer (or a queue-full message) while the
training job is still running; then training is cancelled and memory comes back.

Users held, queue-full refusals, time and memory are written to tests/artifacts/many_users.txt.
"""
import gc
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image


import app  # noqa: E402
from pmg_core.models import zoo  # noqa: E402
from studio import one_image  # noqa: E402
from helpers import EACH, first_step_shown, free_port, rss_mb, wait_for  # noqa: E402

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

USERS = 20
EPS = 4  # /255
LABELS = "red shape, green shape, blue shape, yellow shape, purple shape, pink shape, cyan shape, brown shape"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WAITING_TO_JOIN = (Status.STARTING, Status.JOINING_QUEUE)


def colours(n: int) -> list[tuple[int, int, int]]:
    """n solid colours at least 85 grey levels apart in some channel: far outside each other's eps-ball."""
    levels = (0, 85, 170, 255)
    grid = [(r, g, b) for r in levels for g in levels for b in levels]
    return grid[:: len(grid) // n][:n]


@pytest.fixture(scope="module")
def embedded_models():
    models, mode = zoo.load_default_models()
    if "Embedded" not in mode:
        pytest.skip(f"the embedded checkpoints are not in checkpoints/: {mode}")
    return models


def attack_args(image: str, client_side: bool, models: list[str]) -> list:
    img = handle_file(image) if client_side else image
    return [img, LABELS, "red shape", "Linf", EPS, 3, 1, "cross-entropy", "", EACH, models]


def is_queue_full(e: BaseException) -> bool:
    return "queue is full" in str(e).lower()


def test_twenty_sessions_get_their_own_answers_while_training_runs(tmp_path, embedded_models):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    demo = app.build_app(embedded_models, checkpoint_dir=ckpt)
    studio = demo.studio
    names = studio.names
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    url = f"http://127.0.0.1:{port}/"
    images = []
    for i, rgb in enumerate(colours(USERS)):
        path = tmp_path / f"user{i}.png"
        Image.new("RGB", (32, 32), rgb).save(path)
        images.append(str(path))
    try:
        trainer = Client(url, verbose=False, download_files=str(tmp_path / "dl-train"))
        trainer.predict(*attack_args(images[0], True, names), api_name="/attack")  # warm-up: imports, first forward
        gc.collect()
        rss_before = rss_mb()

        start = time.time()
        train_job = trainer.submit(names[0], "tecoa", "toy-colours", 1, 1, 0.01, 5000, 32, 1, 1, "many-users-run",
                                   api_name="/train")
        deadline = time.time() + 60
        wait_for(lambda: first_step_shown(train_job), max(0.0, deadline - time.time()))
        assert any("Step" in str(o[0]) for o in train_job.outputs()), "training never started"

        results: dict[int, tuple] = {}
        queue_full: list[int] = []
        errors: list[str] = []
        submitted = threading.Barrier(USERS + 1, timeout=120)

        jobs: dict = {}

        def user(i: int) -> None:
            try:
                client = Client(url, verbose=False, download_files=str(tmp_path / f"dl{i}"))
                job = jobs[i] = client.submit(*attack_args(images[i], True, names), api_name="/attack")
            except Exception as e:  # noqa: BLE001 - recorded and asserted below
                (queue_full.append(i) if is_queue_full(e) else errors.append(f"user {i}: {e!r}"))
                submitted.wait()
                return
            submitted.wait()
            try:
                results[i] = job.result(timeout=240)
            except Exception as e:  # noqa: BLE001
                (queue_full.append(i) if is_queue_full(e) else errors.append(f"user {i}: {e!r}"))

        threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(USERS)]
        for t in threads:
            t.start()
        submitted.wait()
        deadline = time.time() + 120  # every request has reached the server's queue (or was turned away)
        while time.time() < deadline and any(j.status().code in WAITING_TO_JOIN for j in jobs.values()):
            time.sleep(0.1)
        assert not any(j.status().code in WAITING_TO_JOIN for j in jobs.values())
        for t in threads:
            t.join(timeout=300)
        seconds = time.time() - start
        assert not any(t.is_alive() for t in threads), "a session hung"
        # The requirement: attacks are served while the long job runs, not after it.
        assert not train_job.done(), "the attacks waited for training to finish"
        # Cancel is a queue=False event: the browser POSTs it to /run/, past the queue (gradio_client would
        # join the queue); it answers once the run has stopped and saved.
        cancelled = httpx.post(f"{url}gradio_api/run/cancel_train", timeout=60,
                               json={"data": [], "session_hash": trainer.session_hash})
        assert cancelled.status_code == 200 and "Stopped" in str(cancelled.json()["data"]), cancelled.text
        status, _ = train_job.result(timeout=120)
        assert "Stopped" in status and (ckpt / "many-users-run.safetensors").is_file()
        assert errors == []
        assert len(results) + len(queue_full) == USERS and len(results) >= studio_queue_size(demo)

        for i, (_, _, html, files, details) in results.items():
            # the same request, in process
            _, _, _, own_files, own = one_image.attack(studio, *attack_args(images[i], False, names), stop_early=True)
            assert details == own, f"user {i} got another user's answer"
            for got, want in zip(files, own_files):
                got_px, want_px = np.asarray(Image.open(got)), np.asarray(Image.open(want))
                assert np.array_equal(got_px, want_px)
                own_colour = np.asarray(Image.open(images[i])).astype(int)
                assert np.abs(got_px.astype(int) - own_colour).max() <= EPS  # inside its own image's eps-ball

        *_, details = trainer.predict(*attack_args(images[0], True, names), api_name="/attack")  # still serving
        assert [v["model"] for v in details["verdicts"]] == names
        del results, threads
        gc.collect()
        rss_after = rss_mb()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "many_users.txt").write_text(
            f"sessions: {USERS}\nheld (answered): {USERS - len(queue_full)}\nqueue full: {len(queue_full)}\n"
            f"errors: {len(errors)}\nseconds (train start to last answer, training still running): {seconds:.1f}\n"
            f"rss after warm-up: {rss_before:.0f} MB\nrss after all sessions: {rss_after:.0f} MB\n")
        assert rss_after - rss_before < 200, (rss_before, rss_after)
    finally:
        demo.close()


def studio_queue_size(demo) -> int:
    """How many waiting requests the app's queue holds before it answers 'queue full'."""
    return min(USERS, demo._queue.max_size or USERS)  # noqa: SLF001
