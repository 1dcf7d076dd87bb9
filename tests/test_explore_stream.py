"""The live comparison: each model's verdict streams as soon as that model is done, equal to
attacking each model alone; with a stop margin a model fooled early stops early and stays fooled."""
from pathlib import Path

import pytest
import torch

from pmg_core.attacks.pgd import PGD
from pmg_core.evaluation.explore import AttackSettings, compare, iter_compare, predict, prepare_image, quantize_in_ball
from pmg_core.data.images import load_image
from pmg_core.models.clip import load_model

EXAMPLE = Path(__file__).resolve().parent.parent / "assets" / "examples" / "example.png"
LABELS = ["circle", "square", "triangle", "diamond", "cross", "star"]


@pytest.fixture(scope="module")
def shipped():
    """The shipped tiny models: the robust fine-tunes first, the non-robust original last."""
    base = load_model("clip-tiny")
    return [load_model(n, base=base) for n in ("tecoa-tiny", "pmg-aft-tiny", "fare-tiny")] + [base]


@pytest.fixture(scope="module")
def image():
    return load_image(str(EXAMPLE))


def settings(**kw) -> AttackSettings:
    return AttackSettings(**{"eps": 4 / 255, "steps": 10, "step_size": 1 / 255, **kw})


def each_model_alone(models, image, s: AttackSettings):
    """The comparison written out: every model attacked on its own by PGD, then judged."""
    x = prepare_image(image, s.max_side)
    y = torch.tensor([LABELS.index("circle")])
    out = []
    for m in models:
        clf = m.classifier(LABELS).eval()
        adv = PGD(clf, s.eps, s.step_size, s.steps, s.norm, s.loss, random_start=False).run(x[None], y).adv[0]
        adv = quantize_in_ball(x, adv, s.eps, s.norm)
        out.append((m.name, predict(clf, x, LABELS, 0), predict(clf, adv, LABELS, 0), adv))
    return out


def test_streamed_verdicts_equal_each_model_attacked_alone_and_arrive_one_by_one(shipped, image):
    events = list(iter_compare(shipped, image, LABELS, "circle", settings()))
    verdicts = [e["verdict"] for e in events if e["event"] == "verdict"]
    assert [e["done"] for e in events if e["event"] == "verdict"] == [1, 2, 3, 4]
    # Streamed: the first verdict comes before the last model's attack has begun.
    first_verdict = next(i for i, e in enumerate(events) if e["event"] == "verdict")
    last_model_steps = [i for i, e in enumerate(events) if e["event"] == "step" and e["model"] == shipped[-1].name]
    assert first_verdict < min(last_model_steps) and len(last_model_steps) == 10
    comparison = events[-1]["comparison"]
    assert [v.model for v in comparison.verdicts] == [m.name for m in shipped]
    for v, (name, clean, adv_pred, adv) in zip(comparison.verdicts, each_model_alone(shipped, image, settings())):
        assert (v.model, v.clean, v.adversarial, v.steps_taken) == (name, clean, adv_pred, 10)
        assert torch.equal(v.adv_image, adv)
    assert {v.model for v in verdicts} == {m.name for m in shipped}
    assert compare(shipped, image, LABELS, "circle", settings()).verdicts[0].adversarial == verdicts[0].adversarial


def test_stop_margin_ends_the_attack_on_a_fooled_model_early_and_it_stays_fooled(shipped, image):
    full = {v.model: v for v in compare(shipped, image, LABELS, "circle", settings(step_size=2 / 255)).verdicts}
    events = list(iter_compare(shipped, image, LABELS, "circle", settings(stop_margin=1.0, step_size=2 / 255)))
    verdicts = [e["verdict"] for e in events if e["event"] == "verdict"]
    original = verdicts[0]
    assert original.model == "clip-tiny"  # listed last, reported first: its attack fooled it at once
    assert original.steps_taken < 10 and original.stop_margin == 1.0
    assert original.adversarial.correct is False and full["clip-tiny"].adversarial.correct is False
    clf = shipped[-1].classifier(LABELS).eval()
    assert predict(clf, original.adv_image, LABELS, 0) == original.adversarial  # the 8-bit image shown fools it
    x = prepare_image(image, 224)
    assert (original.adv_image - x).abs().max() <= 4 / 255 + 1e-6
    # Models the attack never fooled by the margin ran every step and got the same verdict as before.
    for v in verdicts[1:]:
        assert v.steps_taken == 10 and v.adversarial == full[v.model].adversarial
    assert len(verdicts) == len([e for e in events if e["event"] == "verdict"]) == 4
    assert events[-1]["comparison"].to_dict(settings(stop_margin=1.0, step_size=2 / 255))["verdicts"][-1]["steps_taken"] < 10


def test_stop_margin_with_a_transferred_attack_and_a_clean_wrong_model(shipped, image):
    # tecoa-tiny calls the example a square: with a margin of 0 it stops one step in, never at the clean image.
    events = list(iter_compare(shipped, image, LABELS, "circle", settings(stop_margin=0.0)))
    tecoa = next(e["verdict"] for e in events if e["event"] == "verdict" and e["verdict"].model == "tecoa-tiny")
    assert tecoa.steps_taken == 1 and tecoa.clean.correct is False and tecoa.adversarial.correct is False
    assert not torch.equal(tecoa.adv_image, prepare_image(image, 224))  # an image the attack made
    comp = compare(shipped, image, LABELS, "circle", settings(stop_margin=1.0, source="clip-tiny", step_size=2 / 255))
    assert {v.attacked_by for v in comp.verdicts} == {"clip-tiny"}
    assert [v.steps_taken for v in comp.verdicts] == [None, None, None, comp.verdicts[-1].steps_taken]
    assert comp.verdicts[-1].steps_taken < 10 and comp.verdicts[-1].adversarial.correct is False
    assert all(torch.equal(v.adv_image, comp.verdicts[-1].adv_image) for v in comp.verdicts)


def test_the_attack_tab_streams_a_progress_line_then_each_verdict(shipped, tmp_path):
    from studio import one_image
    from studio.state import Studio

    studio = Studio.create(shipped, tmp_path)
    fields = (str(EXAMPLE), ", ".join(LABELS), "circle", "Linf", 8, 10, 2, "cross-entropy", "", one_image.EACH_MODEL,
              [m.name for m in shipped])
    updates = list(one_image.attack_stream(studio, *fields, False, True))
    progress = [u[2] for u in updates if "attacking" in u[2]]
    assert progress and "0 of 4 models done; attacking" in progress[0] and "step 1 of 10" in progress[0]
    grown = [u[2].count("class='pmg-model'") for u in updates if "attacking" not in u[2]]
    assert grown == [1, 2, 3, 4, 4]  # the table grows by one verdict at a time, then the final table
    first = next(u[2] for u in updates if "attacking" not in u[2])
    assert "clip-tiny" in first and "stopped after" in first  # fooled first, and it says so
    assert all(u[0] is one_image.UNCHANGED for u in updates[:-1])  # images and files come with the end
    final = one_image.attack(studio, *fields, False, True)
    assert final[4] == updates[-1][4] and final[2] == updates[-1][2] and "models done" not in final[2]


@pytest.fixture
def one_thread():
    """torch on one thread, so attacking in lanes (one thread each) computes exactly as one after the other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _lane_threads():
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("pmg-lane")]


@pytest.mark.parametrize("margin", [None, 1.0])
def test_models_attacked_in_lanes_get_the_same_attacks_and_verdicts(shipped, image, one_thread, margin):
    s = settings(stop_margin=margin, step_size=2 / 255)
    alone = compare(shipped, image, LABELS, "circle", s).verdicts
    events = list(iter_compare(shipped, image, LABELS, "circle", settings(stop_margin=margin, step_size=2 / 255, lanes=3)))
    assert [e["done"] for e in events if e["event"] == "verdict"] == [1, 2, 3, 4]  # each verdict counted once
    for name in (m.name for m in shipped):  # each model's steps in order, whichever lane ran them
        steps = [e["step"] for e in events if e["event"] == "step" and e["model"] == name]
        assert steps == sorted(steps)
    laned = events[-1]["comparison"].verdicts
    for a, b in zip(alone, laned):
        assert (a.model, a.clean, a.adversarial, a.steps_taken) == (b.model, b.clean, b.adversarial, b.steps_taken)
        assert torch.equal(a.adv_image, b.adv_image)
    assert not _lane_threads()


def test_a_stream_closed_early_or_failing_in_a_lane_leaves_no_worker_and_keeps_torch_threads(
        shipped, image, monkeypatch):
    import threading

    from pmg_core.evaluation import explore

    before = torch.get_num_threads()
    stream = iter_compare(shipped, image, LABELS, "circle", settings(lanes=2))
    assert next(stream)["event"] == "step"
    stream.close()  # the visitor pressed Stop
    assert not _lane_threads()
    advance = explore._Setup.advance

    def failing(self, job):
        if job.model.name == "fare-tiny" and job.taken == 2:
            raise RuntimeError("out of memory in a lane")
        return advance(self, job)

    monkeypatch.setattr(explore._Setup, "advance", failing)
    with pytest.raises(RuntimeError, match="out of memory in a lane"):
        list(iter_compare(shipped, image, LABELS, "circle", settings(lanes=2)))
    assert not _lane_threads()
    seen = []  # a thread starting work now gets the process's thread count, not a lane's share
    fresh = threading.Thread(target=lambda: (torch.ones(2) + 1, seen.append(torch.get_num_threads())))
    fresh.start()
    fresh.join()
    assert seen == [before] == [torch.get_num_threads()]


def test_cpu_lanes_are_one_per_thread_up_to_the_models(shipped, one_thread):
    from pmg_core.evaluation.explore import cpu_lanes

    assert cpu_lanes(shipped) == 1  # one thread: one lane
    torch.set_num_threads(3)
    assert cpu_lanes(shipped) == 3 and cpu_lanes(shipped[:2]) == 2


def test_a_thread_that_starts_torch_work_during_a_lane_run_gets_the_processs_thread_count(shipped, image):
    """Lanes run each model on a share of the threads, set for their own workers only: a thread whose first
    torch call falls while they run (a Train started during an attack) gets the process's count, for good."""
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(4)  # so that two lanes would each get 2
    try:
        seen, lane_threads = [], []
        stream = iter_compare(shipped, image, LABELS, "circle", settings(lanes=2))
        for event in stream:
            if event["event"] == "step" and not seen:  # the lanes are running now
                lane_threads.append(len(_lane_threads()))
                fresh = threading.Thread(target=lambda: (torch.ones(2) + 1, seen.append(torch.get_num_threads())))
                fresh.start()
                fresh.join()
        later = []
        again = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        again.start()
        again.join()
        assert lane_threads == [2] and seen == [4] and later == [4] and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
