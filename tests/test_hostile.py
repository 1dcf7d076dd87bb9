"""Issue 29's hostile probe, kept as a suite: each case attacks a public server as a visitor would and
asserts the bound that now holds.

The server is `python app.py --public` in a process of its own on 127.0.0.1 (the embedded models,
offline), so its memory, its disk and its exit are its own to measure. Visitors are loopback addresses
of their own (127.0.0.2 and up), as machines elsewhere would be: the server trusts no proxy. The
cases, by the issue's numbers:
1. one door: no work endpoint answers outside the queue; direct Trains cannot take the server's
   threads; a Train whose slot is taken is refused, never kept waiting; previews and the Attack
   tab's extras take turns and are charged; an attack refused by the budget reads no image;
2. memory: bombs read within the cap at every stage, 16 parallel previews within 300 MB, a ceiling
   on images in flight, 16-bit PNGs wider than 1,024 px;
3. routes and disk: the upload route by its exact path, files per request, each visitor's quota
   (share links' kept uploads too), the run folder gone after SIGTERM and leftovers gone at start;
4. sessions: their memory returned after their lifetime;
5. fairness: an honest visitor answered beside three hostile addresses at their caps, none starved
   (the 3x target is measured by scripts/public_load.py on a quiet machine; here how much slower
   goes to tests/artifacts; next to last, as what the hostile visitors leave running ends with the
   server). What made the honest
   visitor wait is held by the cases of 1 (the extras and image reads in turns) and by
   test_public_load.py (the spare turn);
7. the smaller items; and the earlier rounds' image probes the other suites do not hold.
"""
import json
import os
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import app
from pmg_core.core.env import checkpoint_dir
from pmg_core.core.errors import UserError
from pmg_core.data import images
from studio import disk, one_image, policy, safety, training
from studio.state import Studio
from helpers import EACH, EXAMPLE, LABELS, ROOT, tiny_models, wait_for
from public_server import PublicServer, QueueClient, image_bombs

pytestmark = pytest.mark.skipif(not (checkpoint_dir() / "clip-tiny.safetensors").is_file(),
                                reason="the embedded checkpoints are not built")
MODELS = ["clip-tiny", "tecoa-tiny", "pmg-aft-tiny", "fare-tiny", "tga-zsr-tiny"]
SHAPES = "circle, square, triangle, diamond, cross, star"
LIFETIME_S = 20  # the server's session lifetime in this module (PMG_SESSION_LIFETIME_S)
RUN_FOLDERS = "pmg_studio_"  # what the app's run folders are called: $TMPDIR/pmg_studio_<pid>_*
STARVED_S = 120  # an honest attack not answered in this long is starved, whatever the machine's load
ARTIFACTS = ROOT / "tests" / "artifacts"
WORK = ["attack", "attack_extras", "eps_sweep", "distances", "preview", "evaluate", "train"]
DEAD_PID = 4_194_303  # above Linux's largest pid but one: no process has it


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("public")
    leftover = folder / "tmp" / f"{RUN_FOLDERS}{DEAD_PID}_left"  # a run killed by SIGKILL left it
    (leftover / "outputs").mkdir(parents=True)
    (leftover / "outputs" / "adversarial.png").write_bytes(b"x" * 1000)
    running = PublicServer(folder, env={"PMG_SESSION_LIFETIME_S": str(LIFETIME_S)})
    running.leftover = leftover
    yield running
    running.stop()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    return image_bombs(tmp_path_factory.mktemp("bombs"))


def attack_args(image, models=("clip-tiny",), steps=1, eps=4, stop_early=True):
    return [image, SHAPES, "circle", "Linf", eps, steps, 1, "cross-entropy", "", EACH, list(models), False, stop_early]


def one_sentence(text) -> str:
    text = str(text)
    assert text and "\n" not in text.strip() and "Traceback" not in text and "went wrong" not in text, text
    return text


# --- 1. one door --------------------------------------------------------------------------------------

def test_no_work_endpoint_answers_outside_the_queue(server):
    attack_id = QueueClient(server.url).fn_index["attack"]
    for name in WORK:
        for route in ("run", "api"):
            answer = httpx.post(f"{server.url}gradio_api/{route}/{name}", json={"data": []}, timeout=30)
            assert answer.status_code == 404 and "join the queue" in answer.json()["detail"], (route, name, answer.text)
    # a light endpoint's name with a work endpoint's index, and "upload" as a name: refused the same way
    for name in ("labels", "upload"):
        answer = httpx.post(f"{server.url}gradio_api/run/{name}", json={"data": [], "fn_index": attack_id}, timeout=30)
        assert answer.status_code == 404, (name, answer.text)


def test_twenty_direct_trains_beside_a_queued_one_leave_every_lane_answering(server):
    trainer = QueueClient(server.url, "127.0.0.3")
    trained = []
    run = threading.Thread(target=lambda: trained.append(trainer.call(
        "train", "clip-tiny", "pmg-aft", "synth-finetune", 1, 10, 0.01, 260, 64, 1, 1, "hostile-at-the-cap")))
    run.start()
    try:
        answers = []

        def direct():
            try:
                answers.append(httpx.post(f"{server.url}gradio_api/run/train", timeout=30, json={"data": [
                    "clip-tiny", "pmg-aft", "synth-finetune", 1, 10, 0.01, 260, 64, 1, 1, f"direct-{len(answers)}"]}))
            except httpx.HTTPError as e:
                answers.append(e)

        storm = [threading.Thread(target=direct) for _ in range(20)]
        for t in storm:
            t.start()
        for t in storm:
            t.join()
        assert all(getattr(a, "status_code", None) == 404 for a in answers), answers[:3]
        start = time.monotonic()
        labels = httpx.post(f"{server.url}gradio_api/run/labels", json={"data": ["cat, dog"]}, timeout=30)
        assert labels.status_code == 200 and time.monotonic() - start < 10
        honest = QueueClient(server.url, "127.0.0.4")
        ok, out = honest.call("attack", *attack_args(honest.upload(EXAMPLE)))
        assert ok, out
    finally:
        def cancel() -> str:  # as the page's Cancel button does: outside the queue, by session
            return httpx.post(f"{server.url}gradio_api/run/cancel_train", timeout=30,
                              json={"data": [], "session_hash": trainer.session}).text

        stopping = wait_for(lambda: "No train run" not in cancel(), 180)  # once its run has begun
        run.join(180)
    assert stopping and trained and trained[0][0] and "Stopped" in trained[0][1][0], trained


@pytest.fixture
def public(tmp_path):
    return Studio.create(tiny_models(), tmp_path / "ckpt", public=True)


def test_a_train_whose_slot_is_still_taken_is_refused_at_once(public):
    """The previous run's thread still saving (its slot taken): a new Train gets a sentence, never a
    thread asleep until the slot frees."""
    public.job_slot.acquire()
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(_first_update(public)))
    waiter.start()
    waiter.join(10)
    public.job_slot.release()
    assert not waiter.is_alive(), "the Train handler slept waiting for the slot"
    assert isinstance(answers[0], UserError) and "still finishing" in one_sentence(answers[0])
    assert "queued-next" not in public.reserved  # its name is free again
    run = training.train(public, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 1, 8, 1, 1, "queued-next")
    assert "Done" in list(run)[-1][0]  # once the slot is free, the next run starts


def _first_update(studio):
    try:
        return next(training.train(studio, "clip", "tecoa", "toy-colours", 1, 1, 0.01, 1, 8, 1, 1, "queued-next"))
    except UserError as e:
        return e


class Visitor:
    """A request from one address, as Gradio hands it to a handler."""

    def __init__(self, address: str):
        self.client = type("Client", (), {"host": address})()
        self.headers, self.session_hash = {}, address


def counted_turns(studio) -> list:
    turns, real = [], studio.turns.turn

    def turn(visitor):
        turns.append(visitor)
        return real(visitor)

    studio.turns.turn = turn
    return turns


def test_previews_and_the_attack_tabs_extras_take_turns_and_are_charged(public):
    turns = counted_turns(public)
    visitor = Visitor("203.0.113.7")
    one_image.preview(public, EXAMPLE, visitor)
    assert turns == ["203.0.113.7"]
    with pytest.raises(UserError, match=f"asks for {policy.PREVIEW_PASSES} model-passes"):
        for _ in range(public.budget.per_minute // policy.PREVIEW_PASSES + 1):
            one_image.preview(public, EXAMPLE, visitor)
    other = Visitor("203.0.113.8")
    result = {}
    one_image.attack(public, EXAMPLE, LABELS, "circle", "Linf", 4, 5, 0, "cross-entropy", "", EACH, ["clip"],
                     stop_early=True, result=result, request=other)
    seen = result["comparison"].verdicts[0].clean.labels[0]  # the true label: what the model sees, so a radius exists
    one_image.attack(public, EXAMPLE, LABELS, seen, "Linf", 4, 5, 0, "cross-entropy", "", EACH, ["clip"],
                     stop_early=True, result=result, request=other)
    turns.clear()
    *_, (grid, chart, _, details, _) = one_image.extras(public, result, True, True, other)
    radius = details["radius"][0]
    assert radius["attacks"] > 0, radius
    # the bisection's PGD passes (at least one per attack; an attack stops once it fools) and each image's
    # map passes waited for the visitor's turn
    assert turns.count("203.0.113.8") >= radius["attacks"] + 2, (len(turns), radius)
    assert set(turns) == {"203.0.113.8"} and grid.count("<img ") == 6  # the maps' grid: one model, six maps


def test_an_attack_refused_by_the_budget_reads_no_image(public, monkeypatch):
    """The image is read once the request is charged, in the visitor's turn: a visitor whose minute is
    spent costs the server no decode of the image they send again and again."""
    public.budget.charge("203.0.113.10", public.budget.per_minute)
    monkeypatch.setattr(one_image, "load_image", lambda *a, **k: pytest.fail("the image was read"))
    with pytest.raises(UserError, match="try again in"):
        one_image.attack(public, EXAMPLE, LABELS, "circle", "Linf", 4, 5, 0, "cross-entropy", "", EACH, ["clip"],
                         request=Visitor("203.0.113.10"))


# --- 2. memory -----------------------------------------------------------------------------------------

def test_reading_an_image_bomb_holds_at_most_the_cap_at_any_stage(bombs, tmp_path):
    """In a fresh process each, its peak resident memory measured by the kernel: the decode, every
    conversion and the downscale together stay within MAX_DECODED_BYTES (the palette PNG took +649 MB,
    the RGBA one +306 MB, and the 16-bit one was refused with 'image has wrong mode')."""
    import subprocess
    import sys

    probe = ("import sys, pathlib; from pmg_core.data.images import load_image\n"
             "status = lambda k: next(int(l.split()[1]) for l in pathlib.Path('/proc/self/status').read_text()"
             ".splitlines() if l.startswith(k))\n"
             "before = status('VmRSS'); pathlib.Path('/proc/self/clear_refs').write_text('5')\n"
             "x = load_image(sys.argv[1]); print(tuple(x.shape), (status('VmHWM') - before) / 1024)\n")
    for name, path in bombs.items():
        done = subprocess.run([sys.executable, "-c", probe, path], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (name, done.stderr[-500:])
        shape, grown = done.stdout.rsplit(" ", 1)
        assert shape.startswith("(3, 1024, 1024)"), (name, shape)
        assert float(grown) <= images.MAX_DECODED_BYTES / 2**20, f"{name}: +{float(grown):.0f} MB"


def test_images_past_the_ceiling_in_flight_are_refused_in_a_sentence():
    with images.IN_FLIGHT.hold(images.IN_FLIGHT.limit):
        with pytest.raises(UserError) as e:
            images.load_image(EXAMPLE)
    assert "reading other large images" in one_sentence(e.value)
    assert images.load_image(EXAMPLE).shape[0] == 3 and images.IN_FLIGHT.used == 0


def test_sixteen_parallel_previews_of_image_bombs_cost_at_most_300_mb(server, bombs):
    """Four addresses with four previews each (their places), the three bombs in turn: each answer is
    the image or the sentence of a full ceiling, and the server's peak grows by at most 300 MB (16 of
    them direct took it from 2.7 to 11 GB)."""
    files = list(bombs.values())
    clients = [QueueClient(server.url, f"127.0.0.{10 + i // 4}") for i in range(16)]
    uploaded = [c.upload(files[i % 3]) for i, c in enumerate(clients)]
    before = server.reset_peak()
    answers = [None] * 16

    def preview(i):
        answers[i] = clients[i].call("preview", uploaded[i])

    threads = [threading.Thread(target=preview, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    grown = server.status("VmHWM") - before
    for ok, out in answers:
        assert (ok and out[0]["path"].endswith(".png")) or "reading other large images" in one_sentence(out), out
    assert sum(ok for ok, _ in answers) >= 2
    assert grown <= 300, f"peak RSS grew by {grown:.0f} MB"


def test_a_16_bit_png_wider_than_1024_px_is_previewed_and_attacked(server, bombs):
    visitor = QueueClient(server.url, "127.0.0.14")
    deep = visitor.upload(bombs["16-bit"])
    ok, shown = visitor.call("preview", deep)
    assert ok, shown
    ok, out = visitor.call("attack", *attack_args(deep))
    assert ok and out[4]["verdicts"][0]["model"] == "clip-tiny", out


# --- 3. routes and disk ----------------------------------------------------------------------------------

def test_a_40_mb_body_to_run_upload_is_refused_by_its_length_and_costs_no_memory(server):
    attack_id = QueueClient(server.url).fn_index["attack"]
    body = json.dumps({"data": ["cat, " * (8 * 2**20)], "fn_index": attack_id}).encode()
    before = server.reset_peak()
    answer = httpx.post(f"{server.url}gradio_api/run/upload", content=body, timeout=120,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["detail"] == safety.TOO_LARGE_REQUEST
    assert server.status("VmHWM") - before < 50


def test_an_upload_of_a_thousand_files_is_refused_and_leaves_no_file(server):
    before = server.disk_bytes()
    files = [("files", (f"f{i}.png", b"\x89PNG" + bytes(2000), "image/png")) for i in range(1000)]
    answer = httpx.post(f"{server.url}gradio_api/upload", files=files, timeout=120)
    assert answer.status_code == 400 and answer.text == safety.TOO_MANY_FILES
    assert server.disk_bytes() - before < 2000 * (safety.MAX_UPLOAD_FILES + 1)
    # a path that only ends like the upload route is held to the 2 MB of any other request
    answer = httpx.post(f"{server.url}gradio_api/call/v2/upload", content=b"x" * (3 * 2**20), timeout=60)
    assert answer.status_code == 413


def test_a_visitors_uploads_and_outputs_stay_within_their_quota(server):
    visitor = QueueClient(server.url, "127.0.0.20")
    before = server.disk_bytes()
    rng = np.random.default_rng(0)
    for i in range(14):  # 14 x 19 MB: 266 MB, over the 200 MB quota
        answer = visitor.http.post(visitor.url + "gradio_api/upload", files=[(
            "files", (f"noise-{i}.png", rng.bytes(19 * 2**20), "image/png"))])
        assert answer.status_code == 200, answer.text
    ok, out = visitor.call("attack", *attack_args(visitor.upload(EXAMPLE), MODELS))
    assert ok, out
    assert visitor.call("attack_extras", None, True, False)[0]
    grown = server.disk_bytes() - before
    assert grown <= 200 * 2**20 + 20 * 2**20, f"{grown / 2**20:.0f} MB kept for one visitor"


def test_a_visitors_outputs_count_in_their_quota_with_their_uploads(server):
    """Uploads that leave 4 kB of the quota, then an attack with its maps: the files it returns take the
    visitor over, and their oldest upload goes (disk.watch_outputs)."""
    visitor = QueueClient(server.url, "127.0.0.21")
    rng = np.random.default_rng(1)
    room = disk.PER_VISITOR_BYTES - Path(EXAMPLE).stat().st_size - 4096
    filled = []
    for i, size in enumerate([room // 10] * 9 + [room - 9 * (room // 10)]):
        answer = visitor.http.post(visitor.url + "gradio_api/upload", files=[(
            "files", (f"fill-{i}.png", rng.bytes(size), "image/png"))])
        assert answer.status_code == 200, answer.text
        filled.append(Path(answer.json()[0]))
    assert all(p.is_file() for p in filled)
    ok, out = visitor.call("attack", *attack_args(visitor.upload(EXAMPLE), MODELS))
    assert ok, out
    assert visitor.call("attack_extras", None, True, False)[0]
    assert not filled[0].exists(), "the attack's files were not counted: the visitor's oldest upload is still kept"
    assert all(p.is_file() for p in filled[2:])


def test_the_quota_deletes_a_visitors_oldest_files_first_and_nothing_outside_its_roots(tmp_path):
    from studio import disk

    root, outside = tmp_path / "run", tmp_path / "elsewhere"
    root.mkdir(), outside.mkdir()
    quota = disk.Quota([root], per_visitor=3000)
    files = []
    for i in range(4):
        (root / f"h{i}").mkdir()
        files.append(root / f"h{i}" / "upload.png")
        files[-1].write_bytes(bytes(1000))
    mine = outside / "secret.txt"
    mine.write_bytes(bytes(5000))
    quota.keep("a", files[0], mine)
    quota.keep("b", files[0])  # two visitors keep one file
    quota.keep("a", files[1])
    quota.keep("a", files[2])
    assert quota.keep("a", files[3]) == [] and files[0].exists()  # 4,000 bytes, but b keeps the oldest too
    folder = root / "outputs" / "request"
    folder.mkdir(parents=True)
    (folder / "zip").write_bytes(bytes(1500))
    assert quota.keep("a", folder) == [str(files[1]), str(files[2])]  # a's oldest of its own first
    assert not (root / "h1").exists() and mine.exists() and quota.used("a") == 1000 + 1500
    (folder / "maps.png").write_bytes(bytes(1000))  # the request's folder grew: measured again
    assert quota.keep("a") == [str(files[3])] and quota.used("a") == 2500


def test_a_shared_upload_counts_in_its_visitors_quota_and_the_page_gets_a_copy(public, tmp_path):
    """A link keeps the upload as attacked (share.keep_upload) in the visitor's quota; a page opened from the
    link is handed a copy, so Gradio's hourly sweep of the files it served never takes the kept one."""
    from pmg_core.data.images import load_image
    from studio import share

    photo = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), (200, 30, 90)).save(photo)
    visitor, result = Visitor("203.0.113.9"), {}
    one_image.attack(public, str(photo), "red, blue", "red", "Linf", 4, 1, 1, "cross-entropy", "", EACH, ["clip"],
                     result=result, request=visitor)
    token = share.link_query(public, result, [], False, False, visitor).split("image=")[1][:16]
    kept = public.out_dir / f"{share.PREFIX}{token}.png"
    assert public.disk.used("203.0.113.9") == kept.stat().st_size > 0
    page = Path(share.link_settings(public, {"image": token}, [])["image"])
    assert page != kept and page.parent.parent == public.out_dir and load_image(page).equal(load_image(kept))


# --- 4. sessions -----------------------------------------------------------------------------------------

def test_sessions_return_their_memory_after_their_lifetime(server, tmp_path):
    """150 sessions, one cheap attack each of every model on a 640 px photo (each kept 3.6 MB of images
    in its state, for as long as Gradio kept 10,000 sessions)."""
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (640, 640, 3), np.uint8)).save(photo)
    visitor = QueueClient(server.url, "127.0.0.30")
    image = visitor.upload(photo)
    for _ in range(3):  # warm: the label features, the first session's allocations
        visitor.new_session()
        assert visitor.call("attack", *attack_args(image, MODELS, steps=0))[0]
    time.sleep(LIFETIME_S + 10)
    before = server.status("VmRSS")
    for _ in range(150):
        visitor.new_session()
        ok, out = visitor.call("attack", *attack_args(image, MODELS, steps=0))
        assert ok, out
    during = server.status("VmRSS")
    assert wait_for(lambda: server.status("VmRSS") - before < 60, LIFETIME_S * 3), \
        f"RSS {before:.0f} -> {during:.0f} -> {server.status('VmRSS'):.0f} MB"


# --- 7. the smaller items ----------------------------------------------------------------------------------

def test_model_names_that_are_not_text_get_a_sentence(server):
    visitor = QueueClient(server.url, "127.0.0.50")
    ok, out = visitor.call("attack", *attack_args(visitor.upload(EXAMPLE))[:10], {"a": 1}, False, True)
    assert not ok and "list of their names" in one_sentence(out)


def test_a_click_without_its_event_data_gets_a_sentence(server):
    """An example's click (the only handler taking a click's event data since the Leaderboard's open_card went)."""
    answer = httpx.post(f"{server.url}gradio_api/run/example", json={"data": []}, timeout=30)
    assert safety.NO_EVENT in answer.text, answer.text


def test_numbers_a_person_would_not_type_are_refused(server):
    visitor = QueueClient(server.url, "127.0.0.51")
    image = visitor.upload(EXAMPLE)
    for steps in (True, 1.5):
        ok, out = visitor.call("attack", *attack_args(image, steps=steps))
        assert not ok and "steps must be a whole number" in one_sentence(out), (steps, out)
    ok, out = visitor.call("eps_sweep", image, SHAPES, "circle", "Linf", "0, 1_0", 1, 1, "cross-entropy", "", EACH,
                           ["clip-tiny"])
    assert not ok and "got '1_0'" in one_sentence(out), out


def launched(monkeypatch, argv, env=()) -> dict:
    from studio import disk

    seen = {}

    def build_app(**kw):
        seen.update(kw)
        studio = type("Studio", (), {"names": ["clip"]})()
        return type("Demo", (), {"studio": studio, "launch": lambda self, **k: seen.update(k)})()

    monkeypatch.delenv(app.PUBLIC_ENV, raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    for k, v in env:
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(app, "build_app", build_app)
    monkeypatch.setattr(disk, "stop_on_signals", lambda: None)  # this is the test process
    monkeypatch.setattr(disk, "remove_leftovers", lambda: [])
    app.main(argv)
    return seen


def test_the_app_binds_ipv6_loopback_and_the_switch_turns_the_policy_on(monkeypatch):
    seen = launched(monkeypatch, ["--host", "::1"])
    assert seen["server_name"] == "[::1]" and seen["public"] is False
    assert launched(monkeypatch, ["--public"])["public"] is True
    seen = launched(monkeypatch, [], [(app.PUBLIC_ENV, "1")])
    assert seen["public"] is True and seen["server_name"] == "127.0.0.1"
    readme = (ROOT / "README.md").read_text()
    assert "--public" in readme and app.PUBLIC_ENV in readme


def test_a_public_app_with_work_outside_the_queue_does_not_start(tmp_path):
    import gradio as gr

    demo = app.build_app(tiny_models()[:1], checkpoint_dir=tmp_path, public=True)
    safety.check_one_door(demo, app.MAX_THREADS)  # as built: one door
    with demo:
        gr.Button().click(lambda: time.sleep(60), None, None, queue=False)
    with pytest.raises(RuntimeError, match="runs outside the queue"):
        safety.check_one_door(demo, app.MAX_THREADS)


# --- the earlier rounds' image probes that no other suite holds --------------------------------------------

def test_animated_and_many_page_images_are_read_one_frame_and_drawings_refused(server, tmp_path):
    visitor = QueueClient(server.url, "127.0.0.52")
    frames = [Image.new("RGB", (512, 512), (i, 0, 255 - i)) for i in range(200)]
    gif, tiff, svg = tmp_path / "many.gif", tmp_path / "pages.tiff", tmp_path / "drawing.svg"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=10)
    frames[0].save(tiff, save_all=True, append_images=frames[1:100], compression="tiff_deflate")
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"><rect/></svg>')
    for path in (gif, tiff):
        start = time.monotonic()
        ok, out = visitor.call("preview", visitor.upload(path))
        assert ok and time.monotonic() - start < 30, out
    ok, out = visitor.call("preview", visitor.upload(svg))
    assert not ok and "not a readable image" in one_sentence(out)


# --- 5. fairness -----------------------------------------------------------------------------------------

def test_an_honest_visitor_is_answered_beside_three_hostile_addresses_at_their_caps(server):
    """Three addresses, each with four attacks near the caps followed by their maps and radius, a Train and
    an Evaluate at their caps: the honest visitor's attacks are all answered, none starved (the probe's got
    nothing in 4.5 minutes), and the server's info page answers (it timed out). How much slower they were
    goes to tests/artifacts/hostile_fairness.txt: the house keeps timed assertions out of tests, and
    scripts/public_load.py measures the 3x target on a quiet machine."""
    honest = QueueClient(server.url, "127.0.0.40")
    image = honest.upload(EXAMPLE)
    timed = []

    def attack_timed():
        start = time.perf_counter()
        ok, out = honest.call("attack", *attack_args(image, MODELS, steps=10))
        assert ok and [v["model"] for v in out[4]["verdicts"]] == MODELS, out
        timed.append(time.perf_counter() - start)
        assert timed[-1] < STARVED_S, f"an honest attack waited {timed[-1]:.0f} s"

    attack_timed()
    for _ in range(3):
        attack_timed()
    idle = statistics.median(timed[1:])
    stop, sessions_of = threading.Event(), []
    hostile = [threading.Thread(target=_hostile, args=(server.url, f"127.0.0.{41 + a}", kind, stop, sessions_of),
                                daemon=True) for a in range(3) for kind in ["attack"] * 4 + ["train", "evaluate"]]
    for t in hostile:
        t.start()
    try:
        time.sleep(15)
        timed.clear()
        for _ in range(3):
            attack_timed()
        assert httpx.get(f"{server.url}gradio_api/info", timeout=STARVED_S).status_code == 200
    finally:
        stop.set()  # what still runs ends with the server, in the next case
        for session in list(sessions_of):
            for cancel in ("cancel_train", "cancel_evaluate"):
                httpx.post(f"{server.url}gradio_api/run/{cancel}", json={"data": [], "session_hash": session}, timeout=30)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "hostile_fairness.txt").write_text(
        f"honest attack beside three hostile addresses: median {statistics.median(timed):.2f} s (n = {len(timed)}), "
        f"idle {idle:.2f} s (n = 3): {statistics.median(timed) / idle:.1f}x; load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")


def _hostile(url, address, kind, stop, sessions_of):
    try:
        _hostile_loop(url, address, kind, stop, sessions_of)
    except httpx.HTTPError:  # the server stopped under it
        pass


def _hostile_loop(url, address, kind, stop, sessions_of):
    c = QueueClient(url, address, timeout=600)
    image = c.upload(EXAMPLE) if kind == "attack" else None
    labels = ", ".join(f"thing {k}" for k in range(999))
    n = 0
    while not stop.is_set():
        n += 1
        c.new_session()
        sessions_of.append(c.session)
        if kind == "attack":  # near the caps: 5 x 23 passes x (1 + 4 EOT) = 575, maps and radius 5 x (5 x 23 + 4) = 595
            c.call("attack", image, labels + f", fresh {n}", "thing 0", "Linf", 4, 22, 1, "cross-entropy", "", EACH, MODELS,
                   "TTC (test-time counterattacks)", False)
            c.call("attack_extras", None, True, True)
        elif kind == "train":
            c.call("train", "clip-tiny", "pmg-aft", "synth-finetune", 1, 10, 0.01, 260, 64, 1, 1, f"h-{address}-{n}")
        else:
            c.call("evaluate", MODELS, "mini", "", 1, 10, 1, 180)  # 99,000 passes of the 100,000 cap
        time.sleep(0.2)


# --- last: the server stops -----------------------------------------------------------------------------------

def test_sigterm_removes_the_run_folder_and_the_start_removed_an_earlier_runs_leftovers(server):
    import signal

    assert not server.leftover.exists()
    visitor = QueueClient(server.url, "127.0.0.53")
    assert visitor.call("attack", *attack_args(visitor.upload(EXAMPLE)))[0]
    assert server.disk_bytes() > 0
    assert server.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    assert server.disk_bytes() == 0, [str(p) for p in server.tmp.rglob("*") if p.is_file()][:5]
    assert not list(server.tmp.glob(f"{RUN_FOLDERS}*"))
