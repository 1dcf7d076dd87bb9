"""Issue 17: a public server that one visitor cannot knock over (studio/policy.py).

Where a finding is about the server, the test drives a public-mode app on 127.0.0.1 through
gradio_client or HTTP, with bounded loops; the rest call the handlers of a public Studio.
"""
import threading
import time

import httpx
import pytest

import app
from pmg_core.core import env
from pmg_core.data import inputs, paper_datasets
from pmg_core.core.errors import UserError
from studio import evaluation, policy, training, visitors
from studio.state import Studio
from helpers import EACH, EXAMPLE, LABELS, behind_loopback_proxy, first_step_shown, free_port, tiny_models, wait_for

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt")
    with behind_loopback_proxy():
        demo = app.build_app(tiny_models(), checkpoint_dir=ckpt, public=True)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    yield demo, f"http://127.0.0.1:{port}/", ckpt
    demo.close()


@pytest.fixture
def public(tmp_path):
    return Studio.create(tiny_models()[:1], tmp_path, public=True)


def visitor(url: str, tmp_path, name: str) -> Client:
    return Client(url, verbose=False, download_files=str(tmp_path / name))


def attack_args(models, steps=1, eps=4):
    return [handle_file(EXAMPLE), LABELS, "circle", "Linf", eps, steps, 1, "cross-entropy", "", EACH, models]


def train_args(name, steps=1, batch=8, attack_steps=1):
    return ["clip", "tecoa", "toy-colours", 1, attack_steps, 0.01, steps, batch, 1, 1, name]


# --- cost before work --------------------------------------------------------------------------------

def test_a_model_ticked_200_times_is_attacked_once(server, tmp_path):
    *_, details = visitor(server[1], tmp_path, "a").predict(*attack_args(["clip"] * 200), api_name="/attack")
    assert [v["model"] for v in details["verdicts"]] == ["clip"]


@pytest.mark.parametrize("endpoint, args, words", [
    ("/train", train_args("huge-batch", batch=512), "batch size must be a whole number between 1 and 64 on this public"),
    ("/train", train_args("long-pgd", attack_steps=20), "PGD steps must be a whole number between 0 and 10 on this public"),
    ("/train", train_args("long-run", steps=500, batch=64, attack_steps=10), "at most 200,000 on this public server"),
    ("/eps_sweep", attack_args(["clip", "tecoa", "pmg-aft"], steps=50, eps="0, 1, 2, 3, 4, 5"),
     "3 model(s) x 51 passes x 6 radii = 918; at most 600 on this public server"),
    ("/eps_sweep", attack_args(["clip"], eps=", ".join(map(str, range(12)))), "between 1 and 6 eps"),
])
def test_costly_requests_are_refused_in_one_sentence_naming_the_cap(server, tmp_path, endpoint, args, words):
    _, url, ckpt = server
    with pytest.raises(AppError) as e:
        visitor(url, tmp_path, "a").predict(*args, api_name=endpoint)
    assert words in str(e.value) and "\n" not in str(e.value).strip()
    assert not list(ckpt.glob("huge-batch*")) and not list(ckpt.glob("long-*"))


def test_training_memory_is_estimated_from_the_architecture_and_the_batch():
    clip = tiny_models()[0]
    big = inputs.Limits(train_memory_mb=policy.image_memory_mb(clip) * 10)
    policy.check_train(big, clip, 1, 10, 1)
    with pytest.raises(UserError, match="use a batch of at most 10"):
        policy.check_train(big, clip, 1, 11, 1)


def test_evaluate_runs_a_model_named_three_times_once(public):
    status, table, _ = list(evaluation.evaluate(public, ["clip"] * 3, "toy-colours", "", 1, 1, 1, 8))[-1]
    assert "Done" in status and len(table) == 1


# --- visitors' checkpoints -----------------------------------------------------------------------------

def test_visitor_checkpoints_expire_oldest_first_and_leave_no_state_files(public):
    cap = inputs.PUBLIC.visitor_checkpoints
    for i in range(cap + 2):
        last = list(training.train(public, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 1, 8, 1, 1, f"run-{i}"))[-1][0]
        assert "Done" in last
    kept = sorted(p.stem for p in public.checkpoint_dir.glob("*.safetensors"))
    assert len(kept) == cap and "run-0" not in kept and "run-1" not in kept and f"run-{cap + 1}" in kept
    assert "run-0" not in public.names and f"run-{cap + 1}" in public.names
    assert not list(public.checkpoint_dir.glob("*.state"))


def _stopped(job):
    job.stop.set()
    return job


def test_a_cancelled_run_leaves_no_state_file_and_an_immediate_cancel_no_checkpoint(public, monkeypatch):
    gen = training.train(public, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 500, 8, 1, 1, "cancelled")
    next(gen)
    assert wait_for(lambda: public.jobs.get("train") is not None, 10)
    public.jobs.get("train").stop.set()
    last = list(gen)[-1][0]
    assert not list(public.checkpoint_dir.glob("*.state"))
    if "after 0 steps" in last:  # stopped before its first step: nothing learnt, nothing saved
        assert not (public.checkpoint_dir / "cancelled.safetensors").exists()

    # Cancel before the run's thread took its first step (the flag is read before every step).
    start = public.jobs.start
    monkeypatch.setattr(public.jobs, "start", lambda kind, request=None: _stopped(start(kind, request)))
    gen = training.train(public, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 500, 8, 1, 1, "at-once")
    last = list(gen)[-1][0]
    assert "after 0 steps" in last and "No checkpoint was saved" in last
    assert not list(public.checkpoint_dir.glob("at-once*"))


def test_two_runs_cannot_take_one_checkpoint_name(public):
    first = training.train(public, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 500, 8, 1, 1, "same-name")
    next(first)
    with pytest.raises(UserError, match="being trained"):
        next(training.train(public, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 1, 8, 1, 1, "same-name"))
    public.jobs.cancel("train")
    list(first)


# --- lanes, cancel -------------------------------------------------------------------------------------

def test_a_flood_of_trains_fills_only_the_jobs_lane_and_attacks_are_still_answered(server, tmp_path):
    _, url, _ = server
    hostile, honest = visitor(url, tmp_path, "h"), visitor(url, tmp_path, "o")
    flood = [hostile.submit(*train_args(f"flood-{i}", steps=3), api_name="/train") for i in range(20)]
    *_, details = honest.predict(*attack_args(["clip"]), api_name="/attack")
    assert [v["model"] for v in details["verdicts"]] == ["clip"]
    refused = []
    for job in flood:
        try:
            job.result(timeout=120)
        except Exception as e:  # noqa: BLE001 - the flood's refusals are what is asserted
            refused.append(str(e))
    # gradio_client words a full lane (503) "Queue is full" and a visitor over their places (400) by its status
    assert refused and all("Queue is full" in r or "400 Bad Request" in r for r in refused), refused


def test_a_visitor_is_the_peer_unless_a_trusted_proxy_says_who_stands_behind_it():
    from types import SimpleNamespace

    def request(peer, forwarded=None):
        return SimpleNamespace(client=SimpleNamespace(host=peer),
                               headers={"x-forwarded-for": forwarded} if forwarded is not None else {})

    who = visitors.visitor_of
    nobody, space = visitors.Proxies.from_env({}), visitors.Proxies.from_env({"SPACE_ID": "me/app"})
    # No trusted proxy (a server on its own): the peer, whatever it writes; loopback is one visitor.
    assert who(request("8.8.4.4", "1.0.0.1"), nobody) == "8.8.4.4"
    assert who(request("127.0.0.1", "1.0.0.1"), nobody) == who(request("127.0.0.1", "1.0.0.2"), nobody) == "127.0.0.1"
    # On a Space its proxy sends from a private address: the rightmost entry that is no proxy, ports parsed.
    assert who(request("10.0.0.5", "1.0.0.1, 8.8.4.4:5678, 10.2.0.1"), space) == "8.8.4.4"
    assert who(request("10.0.0.5", "1.0.0.1, [2a00:1450::1]:443"), space) == "2a00:1450::/64"
    assert who(request("8.8.4.4", "1.0.0.1"), space) == "8.8.4.4"  # a public peer is no proxy of the Space's
    # IPv6 by its /64: one subscriber's block is one visitor.
    assert who(request("2001:db8:0:0:aaaa::1"), nobody) == who(request("2001:db8::bbbb:1"), nobody) == "2001:db8::/64"
    named = visitors.Proxies.from_env({visitors.TRUSTED_PROXIES_ENV: "127.0.0.1, 10.0.0.0/8"})
    assert who(request("127.0.0.1", "9.9.9.9, 10.1.1.1"), named) == "9.9.9.9"
    assert who(request("testclient"), nobody) == "testclient" and who(None, nobody) == visitors.LOCAL


def test_new_sessions_from_one_address_get_its_places_only_and_others_still_queue(server, tmp_path):
    """A client that opens a session per request is held to its address's places in the lane."""
    from gradio_client.utils import Status

    demo, url, _ = server

    def client(name, address):
        return Client(url, verbose=False, download_files=str(tmp_path / name),
                      headers={"X-Forwarded-For": address})

    hostile = [client(f"s{i}", "1.0.0.1") for i in range(visitors.PER_VISITOR + 3)]
    other, blocker = client("other", "9.9.9.9"), client("blocker", "8.8.4.4")
    # A long run from elsewhere holds the jobs lane, so every request below waits in it.
    running = blocker.submit(*train_args("addr-blocker", steps=500, batch=32, attack_steps=3), api_name="/train")
    wait_for(lambda: first_step_shown(running), 120)
    jobs = [c.submit(*train_args(f"addr-{i}", steps=1), api_name="/train") for i, c in enumerate(hostile)]
    wait_for(lambda: not any(j.status().code in (Status.STARTING, Status.JOINING_QUEUE) for j in jobs), 120)
    # What the page is told (gradio_client words every refusal alike): one more session of that address.
    train_fn = next(i for i, fn in demo.fns.items() if fn.api_name == "train")
    answer = httpx.post(f"{url}gradio_api/queue/join", headers={"X-Forwarded-For": "1.0.0.1"}, timeout=30,
                        json={"data": [], "fn_index": train_fn, "session_hash": "fresh-session"})
    # 400, not 503: the page shows a 400's sentence as it is, and words every 503 "currently busy"
    assert answer.status_code == 400 and "your network address" in answer.json()["detail"], answer.text
    late = other.submit(*train_args("addr-other", steps=1), api_name="/train")  # the lane still has room
    cancelled = httpx.post(f"{url}gradio_api/run/cancel_train", timeout=60,
                           json={"data": [], "session_hash": blocker.session_hash})
    assert cancelled.status_code == 200, cancelled.text
    refused = []
    for job in jobs:
        try:
            job.result(timeout=300)
        except Exception as e:  # noqa: BLE001 - the refusals are what is asserted
            refused.append(str(e))
    assert len(refused) == len(jobs) - visitors.PER_VISITOR and all("400 Bad Request" in r for r in refused), refused
    status, _ = late.result(timeout=300)
    assert "**addr-other** saved" in status, status


def test_the_lanes_install_on_this_gradio_and_a_gradio_without_the_hook_still_starts(caplog):
    """The per-lane queues hook Gradio's private queue: this Gradio takes them; one whose queue looks
    otherwise keeps its single bounded queue and a warning, not a crash at start."""
    import gradio as gr

    with gr.Blocks() as demo:
        gr.Button().click(lambda: None, concurrency_id="jobs")
    demo.queue(max_size=4)
    assert visitors.limit_queues(demo, {"jobs": 2}, 1) is True

    class Bare:
        pass

    bare = Bare()
    bare._queue = Bare()
    assert visitors.limit_queues(bare, {"jobs": 2}, 1) is False and "per-lane hook" in caplog.text


def test_a_storm_of_cancels_answers_at_once_and_the_next_run_waits_for_the_last_to_stop(public):
    gen = training.train(public, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 500, 8, 1, 1, "stormed")
    next(gen)
    assert wait_for(lambda: public.jobs.get("train") is not None, 10)
    job = public.jobs.get("train")
    answers = []
    storm = [threading.Thread(target=lambda: answers.append(public.jobs.cancel("train"))) for _ in range(40)]
    for t in storm:
        t.start()
    for t in storm:
        t.join()
    # None waited for the save (that answer would be the run's final status); on a fast machine the run may
    # already be over when the last Cancels arrive.
    assert len(answers) == 40 and any(a.startswith("Stopping") for a in answers)
    assert all(a.startswith(("Stopping", "No train run")) for a in answers), set(answers)
    gen.close()  # the browser's stream goes away; the run's thread finishes its step and saves
    started = []

    def next_run_starts() -> bool:
        """A Train now: refused in a sentence while the stormed run still saves, never kept waiting."""
        if started:  # wait_for asks once more after the answer it waited for
            return True
        run = training.train(public, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 1, 8, 1, 1, "after-storm")
        try:
            next(run)
        except UserError as e:
            assert str(e) == training.STILL_STOPPING
            return False
        started.append(run)
        return True

    assert wait_for(next_run_starts, 60)
    assert job.done.is_set()  # the slot was handed over only once the stormed run had really stopped
    assert "Done" in list(started[0])[-1][0]


# --- no downloads from visitors ---------------------------------------------------------------------

def test_a_visitor_never_starts_a_dataset_download_even_online(public, monkeypatch):
    asked = []
    monkeypatch.setattr(env, "is_offline", lambda: False)

    def torchvision_missing(spec, split, root, transform, download):
        asked.append(download)
        raise FileNotFoundError("not found")
    monkeypatch.setattr(paper_datasets, "_torchvision", torchvision_missing)
    with pytest.raises(UserError, match="downloads are switched off here"):
        list(evaluation.evaluate(public, ["clip"], "cifar10", "", 1, 1, 1, 8))
    with pytest.raises(UserError, match="downloads are switched off here"):
        next(training.train(public, "clip", "tecoa", "food101", 1, 1, 0.01, 1, 8, 1, 1, "food"))
    assert asked and not any(asked)


# --- smaller findings ------------------------------------------------------------------------------------

def test_error_toasts_show_what_a_visitor_typed_as_text_not_html(server, tmp_path):
    args = attack_args(["clip"])
    args[2] = "<img src=x onerror=alert(1)>"
    with pytest.raises(AppError) as e:
        visitor(server[1], tmp_path, "a").predict(*args, api_name="/attack")
    assert "&lt;img src=x onerror=alert(1)&gt;" in str(e.value) and "<img" not in str(e.value)


def test_text_features_of_new_label_sets_are_kept_for_the_last_64_only():
    clip = tiny_models()[0]
    for i in range(100):
        clip.text_features([f"thing {i}", f"other {i}"])
    assert len(clip.text_cache) == 64
    assert clip.text_features(["thing 99", "other 99"]) is clip.text_features(["thing 99", "other 99"])


def test_pil_opens_only_the_formats_the_app_accepts(tmp_path):
    from pmg_core.data.images import load_image

    eps = tmp_path / "drawing.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    with pytest.raises(UserError, match="not a readable image"):
        load_image(str(eps))
    assert load_image(EXAMPLE).shape[0] == 3


def test_a_broken_checkpoint_is_read_once_until_it_changes(public, monkeypatch):
    from pmg_core.models import zoo

    broken = public.checkpoint_dir / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}...")
    reads = []
    read = zoo.read_metadata
    monkeypatch.setattr(zoo, "read_metadata", lambda path: reads.append(path.name) or read(path))
    for _ in range(3):
        public.rescan()
    assert reads.count("broken.safetensors") == 1
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{still broken}....")
    public.rescan()
    assert reads.count("broken.safetensors") == 2


# --- issue 26: bounded before work, who a visitor is, budgets, turns -------------------------------------

def test_a_float_tiff_that_decodes_to_150_mb_is_refused_from_its_header(tmp_path, monkeypatch):
    import io

    import numpy as np
    from PIL import Image

    from pmg_core.data.images import load_image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((6300, 6300), np.float32), "F").save(buffer, format="TIFF", compression="tiff_deflate")
    path = tmp_path / "float.tiff"
    path.write_bytes(buffer.getvalue())  # 252 kB on disk
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the pixels were decoded"))
    with pytest.raises(UserError, match=r"6300x6300 pixels of mode F take 197 MB to read; .* at most 128 MB decoded"):
        load_image(str(path))


def test_label_and_radius_texts_are_measured_before_they_are_split(monkeypatch):
    with pytest.raises(UserError, match="The labels are too long: give at most 1000 labels"):
        inputs.parse_labels("cat" * 100_000)
    with pytest.raises(UserError, match="The labels are too long"):
        inputs.parse_labels("," * 5_000)  # short, but thousands of labels once split
    with pytest.raises(UserError, match="text is too long"):
        inputs.parse_number_list("eps (/255)", "1," * 5_000, 0, 16)
    assert len(inputs.parse_labels(", ".join(f"label {i}" for i in range(1000)))) == 1000


def test_twelve_sessions_of_one_loopback_client_get_its_four_places_only(tmp_path):
    """Without a trusted proxy, the peer is the visitor: a loopback client opening a session per request
    (or forging X-Forwarded-For) is one visitor, with its places in the lane, its running job counted."""
    from gradio_client.utils import Status

    demo = app.build_app(tiny_models()[:1], checkpoint_dir=tmp_path / "ckpt", public=True)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    url = f"http://127.0.0.1:{port}/"
    try:
        sessions = [Client(url, verbose=False, download_files=str(tmp_path / f"s{i}"),
                           headers={"X-Forwarded-For": f"1.0.0.{i}"}) for i in range(12)]
        running = sessions[0].submit(*train_args("loop-0", steps=500, batch=32, attack_steps=3), api_name="/train")
        wait_for(lambda: first_step_shown(running), 120)
        jobs = [c.submit(*train_args(f"loop-{i}"), api_name="/train") for i, c in enumerate(sessions[1:], 1)]
        wait_for(lambda: not any(j.status().code in (Status.STARTING, Status.JOINING_QUEUE) for j in jobs), 120)
        waiting = [j for j in jobs if j.status().code in (Status.IN_QUEUE, Status.PROCESSING)]
        assert len(waiting) == visitors.PER_VISITOR - 1  # with the running one, its four places
        for job in jobs:
            job.cancel()
        running.cancel()
        httpx.post(f"{url}gradio_api/run/cancel_train", json={"data": [], "session_hash": sessions[0].session_hash},
                   timeout=60)
        assert wait_for(lambda: not demo.studio.job_slot.locked(), 120)
    finally:
        demo.close()


def test_a_visitors_budget_counts_passes_and_label_text_and_says_when_to_come_back(public):
    from studio import one_image, turns

    clock = [0.0]
    public.budget = turns.Budget(100, clock=lambda: clock[0])
    attack = [EXAMPLE, LABELS, "circle", "Linf", 4, 10, 1, "cross-entropy", "", EACH, ["clip"]]
    one_image.attack(public, *attack)  # 11 passes and the labels' text
    clock[0] = 30.0
    for _ in range(7):
        one_image.attack(public, *attack)
    with pytest.raises(UserError, match=r"of your 100 a minute on this public server: try again in 30 s") as e:
        one_image.attack(public, *attack)
    assert "\n" not in str(e.value)
    clock[0] = 60.0  # the first attack's passes have left the minute
    one_image.attack(public, *attack)
    many = ", ".join(f"label {i}" for i in range(1000))
    text = policy.text_passes(public.pick(["clip"]), 1000)
    assert text > 100  # 1,000 labels cost more than an attack's passes: counted, they go over the budget alone
    with pytest.raises(UserError, match=f"This asks for {11 + text:,.0f} model-passes"):
        one_image.attack(public, *[EXAMPLE, many, "label 0", *attack[3:]])


def test_within_a_lane_a_visitors_second_job_waits_behind_every_other_visitors_first(server, tmp_path):
    from gradio_client.utils import Status

    _, url, ckpt = server

    def client(name, address):
        return Client(url, verbose=False, download_files=str(tmp_path / name), headers={"X-Forwarded-For": address})

    blocker, first, second = client("b", "8.8.4.4"), client("f", "1.0.0.1"), client("s", "9.9.9.9")
    running = blocker.submit(*train_args("turn-blocker", steps=500, batch=32, attack_steps=3), api_name="/train")
    wait_for(lambda: first_step_shown(running), 120)
    early = [first.submit(*train_args(f"turn-first-{i}"), api_name="/train") for i in range(2)]
    wait_for(lambda: all(j.status().code not in (Status.STARTING, Status.JOINING_QUEUE) for j in early), 60)
    time.sleep(1)
    late = second.submit(*train_args("turn-second"), api_name="/train")
    time.sleep(1)
    httpx.post(f"{url}gradio_api/run/cancel_train", json={"data": [], "session_hash": blocker.session_hash},
               timeout=60)
    for job in [*early, late]:
        job.result(timeout=300)
    saved = sorted(ckpt.glob("turn-*.safetensors"), key=lambda p: p.stat().st_mtime)
    # The first visitor's two runs queued before the second's one; the second's ran between them.
    assert [p.stem[:-2] if p.stem[-1].isdigit() else p.stem for p in saved if p.stem != "turn-blocker"] == [
        "turn-first", "turn-second", "turn-first"]


def test_an_update_that_leaves_every_output_but_one_as_it_is_sets_that_one():
    """safety.cheap_skips passes over the outputs a streamed update skips (the rest, even one, is Gradio's)."""
    import asyncio

    import gradio as gr

    from studio import safety

    with gr.Blocks() as demo:
        text, image = gr.Textbox(), gr.Image()
        gr.Button().click(lambda: None, None, [text, image])
    assert safety.cheap_skips(demo)
    (fn,) = [f for f in demo.fns.values() if len(f.outputs) == 2]
    assert asyncio.run(demo.postprocess_data(fn, [gr.skip(), None], None)) == [safety.SKIP, None]
    shown = asyncio.run(demo.postprocess_data(fn, ["hello", gr.skip()], None))
    assert shown[0] == "hello" and shown[1] == safety.SKIP
