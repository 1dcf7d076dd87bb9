"""Property-based fuzzing of the app's handlers and the CLI with hostile input (issue 8, part 1).

Every case must end in a correct result or in one readable sentence (a UserError in the handlers,
exit code 2 with one 'error:' line on the CLI); anything else (a traceback, another exception
type) fails the test. The number of cases run is written to tests/artifacts/fuzz_cases.txt.
"""
import contextlib
import functools
import io
import itertools
import math
import resource
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image


from pmg_core.cli import commands as cli  # noqa: E402
from pmg_core.data import inputs  # noqa: E402
from pmg_core.core.errors import UserError  # noqa: E402
from pmg_core.evaluation.explore import prepare_image  # noqa: E402
from pmg_core.data.images import MAX_PIXELS, load_image  # noqa: E402
from studio import evaluation, one_image, training  # noqa: E402
from studio.state import Studio  # noqa: E402
from helpers import EACH, EXAMPLE, LABELS, tiny_models  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CASES: Counter = Counter()  # (test, outcome) -> cases run
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def fuzz(cases: int) -> settings:
    """A reproducible budget of `cases` examples (CI sees the same cases every run)."""
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=SLOW_OK)
_names = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def record_cases():
    yield
    ARTIFACTS.mkdir(exist_ok=True)
    lines = [f"{test} {outcome}: {n}" for (test, outcome), n in sorted(CASES.items())]
    lines.append(f"total: {sum(CASES.values())}")
    (ARTIFACTS / "fuzz_cases.txt").write_text("\n".join(lines) + "\n")
    print("\nfuzz cases: " + ", ".join(lines))


@functools.cache
def shared_studio() -> Studio:
    """One tiny-model Studio for every case (not a fixture: hypothesis would print its whole repr)."""
    return Studio.create(tiny_models()[:1], Path(tempfile.mkdtemp(prefix="pmg_fuzz_ckpt_")))


@pytest.fixture(scope="module")
def workdir():
    return Path(tempfile.mkdtemp(prefix="pmg_fuzz_"))


def run_handler(test: str, fn, *args, **kw):
    """-> ('ok', result) or ('refused', message); any exception other than UserError fails the test."""
    try:
        result = fn(*args, **kw)
    except UserError as e:
        msg = str(e)
        assert msg.strip() and "\n" not in msg and "Traceback" not in msg, repr(msg)
        CASES[(test, "refused")] += 1
        return "refused", msg
    CASES[(test, "ok")] += 1
    return "ok", result


def run_cli(test: str, argv: list[str]) -> tuple[int, str, str]:
    """`python -m pmg_core ARGV` in process -> (exit code, stdout, stderr); a refusal is 2 + one error line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: usage line + one 'error:' line
            code = e.code
    stderr = err.getvalue()
    assert "Traceback" not in stderr and "Traceback" not in out.getvalue()
    assert code in (0, 2), (code, stderr[-500:])
    if code == 2:
        errors = [line for line in stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].split("error:", 1)[1].strip(), stderr
    CASES[(test, "ok" if code == 0 else "refused")] += 1
    return code, out.getvalue(), stderr


def attack(studio, image=EXAMPLE, labels=LABELS, true_label="circle", eps=4, steps=2, step_size=1):
    return one_image.attack(studio, image, labels, true_label, "Linf", eps, steps, step_size, "cross-entropy", "", EACH,
                         ["clip"])


def write(workdir: Path, data: bytes, suffix: str = ".png") -> str:
    path = workdir / f"case{next(_names)}{suffix}"
    path.write_bytes(data)
    return str(path)


# --- images ------------------------------------------------------------------------------------------

MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF\0\0\0\0WEBP"]


@fuzz(40)
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=600))
@example(prefix=b"", body=b"")
def test_random_bytes_as_an_image_are_refused_in_one_sentence(workdir, prefix, body):
    studio = shared_studio()
    path = write(workdir, prefix + body)
    status, msg = run_handler("handler random-bytes", attack, studio, image=path)
    if status == "refused":
        assert "image" in msg.lower() or "file" in msg.lower()


@fuzz(8)
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=300))
def test_random_bytes_given_to_the_cli_exit_2_with_one_error_line(workdir, prefix, body):
    path = write(workdir, prefix + body)
    code, _, err = run_cli("cli random-bytes", ["attack", path, "--models", "pmg-test", "--labels", "a, b",
                                                "--true", "a", "--steps", "1"])
    if code == 2:
        assert "image" in err.lower()


MODES = ["1", "L", "P", "RGB", "RGBA", "I;16", "I;16B", "CMYK", "LA", "PA", "F", "I", "YCbCr"]
FORMATS = ["PNG", "TIFF", "WEBP", "BMP", "GIF", "JPEG"]


def make_image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I;16B"):  # 16-bit grey, little- or big-endian
        return Image.frombytes(mode, (w, h), rng.integers(0, 256, 2 * w * h, dtype=np.uint8).tobytes())
    if mode == "F":  # floats outside [0,255], NaN included: a scientific TIFF
        a = rng.normal(100, 200, (h, w)).astype(np.float32)
        a.flat[0] = np.nan
        return Image.fromarray(a)
    if mode == "I":
        return Image.fromarray(rng.integers(-70000, 70000, (h, w), dtype=np.int32))
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    return rgba.convert(mode)


def encode(img: Image.Image, fmt: str) -> bytes | None:
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # this format cannot hold this mode
    return buf.getvalue()


@fuzz(36)
@given(mode=st.sampled_from(MODES), fmt=st.sampled_from(FORMATS), w=st.integers(1, 48), h=st.integers(1, 48),
       seed=st.integers(0, 2**32 - 1))
@example(mode="CMYK", fmt="JPEG", w=16, h=16, seed=0)
@example(mode="I;16", fmt="PNG", w=1, h=1, seed=0)
@example(mode="1", fmt="PNG", w=33, h=7, seed=0)
@example(mode="F", fmt="TIFF", w=9, h=9, seed=0)
def test_every_pil_mode_is_attacked_inside_the_eps_ball(workdir, mode, fmt, w, h, seed):
    studio = shared_studio()
    data = encode(make_image(mode, w, h, seed), fmt)
    if data is None:
        return
    path = write(workdir, data, "." + fmt.lower())
    status, out = run_handler("handler pil-mode", attack, studio, image=path, eps=4, steps=2)
    if status == "refused":  # only files PIL itself cannot read back
        assert "image" in out.lower()
        return
    _, _, _, files, details = out
    clean = prepare_image(load_image(path), 224)
    adv = np.asarray(Image.open(files[0]))
    assert adv.dtype == np.uint8 and adv.shape == (min(w, h), min(w, h), 3)
    delta = np.abs(adv.astype(int) - np.round(clean.permute(1, 2, 0).numpy() * 255).astype(int))
    assert delta.max() <= 4  # the perturbation stays inside eps 4/255
    assert details["verdicts"][0]["clean"]["labels"][0] in inputs.parse_labels(LABELS)


@fuzz(10)
@given(norm=st.sampled_from(["Linf", "L2"]), eps=st.floats(0, 16), seed=st.integers(0, 2**32 - 1))
@example(norm="Linf", eps=1.5, seed=0)
@example(norm="Linf", eps=2.7, seed=1)
@example(norm="L2", eps=3.3, seed=2)
def test_the_downloaded_png_stays_inside_any_eps_ball(workdir, norm, eps, seed):
    studio = shared_studio()
    noise = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    path = write(workdir, encode(Image.fromarray(noise), "PNG"))
    # step = eps and no random start: PGD's one step lands on the ball's surface, between grey levels
    status, out = run_handler("handler eps-ball", one_image.attack, studio, path, LABELS, "circle", norm, eps, 1, eps,
                              "cross-entropy", "", EACH, ["clip"])
    assert status == "ok", out
    delta = np.asarray(Image.open(out[3][0])).astype(float) - noise
    size = np.abs(delta).max() if norm == "Linf" else np.sqrt((delta ** 2).sum())
    assert size <= eps + 1e-6, (norm, eps, size)


def constant_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (30, 160, 90)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_10000_by_10000_image_is_refused_before_decoding_and_extreme_shapes_are_downscaled(workdir):
    studio = shared_studio()
    huge = write(workdir, constant_png(10_000, 10_000))
    assert Path(huge).stat().st_size < inputs.MAX_UPLOAD_BYTES  # small file, 300 MB of pixels
    before = peak_rss_mb()
    status, msg = run_handler("handler huge-image", attack, studio, image=huge)
    assert status == "refused" and "megapixel" in msg
    code, _, err = run_cli("cli huge-image", ["attack", huge, "--models", "pmg-test", "--labels", "a, b", "--true", "a"])
    assert code == 2 and "megapixel" in err
    assert peak_rss_mb() - before < 150  # never decoded (that alone would take 300 MB)
    assert 10_000 * 10_000 > MAX_PIXELS
    for w, h in [(1, 1), (10_000, 1), (1, 10_000), (3000, 2)]:
        path = write(workdir, constant_png(w, h))
        status, out = run_handler("handler extreme-shape", attack, studio, image=path)
        assert status == "ok"
        side = min(min(load_image(path).shape[1:]), 224)  # 3000x2 is first downscaled to 1024x1
        assert np.asarray(Image.open(out[3][0])).shape == (side, side, 3)


# --- labels ------------------------------------------------------------------------------------------

LABEL_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


def label_pieces(text: str) -> list[str]:
    """The labels a comma-separated text names, empty ones kept (to be refused): one trailing comma is harmless."""
    pieces = [p.strip() for p in text.split(",")]
    return pieces[:-1] if len(pieces) > 1 and pieces[-1] == "" else pieces


def label_rules_hold(pieces: list[str]) -> bool:
    """What the label contract promises about any list it accepts (written independently of inputs.py)."""
    import unicodedata

    return (0 < len(pieces) <= inputs.MAX_LABELS and all(pieces) and len(set(pieces)) == len(pieces)
            and all(len(p) <= inputs.MAX_LABEL_CHARS for p in pieces)
            and not any(unicodedata.category(c) in ("Cc", "Cf") for p in pieces for c in p))


@fuzz(45)
@given(labels=st.one_of(st.lists(LABEL_TEXT, max_size=8), st.lists(LABEL_TEXT, min_size=1, max_size=4).map(lambda x: x + x),
                        st.lists(st.sampled_from(["cat", "dog", " ", "\x00", "\t", "猫", "🐈", "\u200b", "é", "e\u0301"]),
                                 max_size=6)),
       trailing=st.booleans())
@example(labels=[], trailing=False)
@example(labels=[f"class {i}" for i in range(5000)], trailing=False)
@example(labels=[f"class {i}" for i in range(1000)], trailing=True)
@example(labels=["cat", "cat"], trailing=False)
@example(labels=["cat", ""], trailing=True)
@example(labels=["x" * 201, "y"], trailing=False)
@example(labels=["Ω≈ç√", "ﷺ", "ᚠᛇᚻ", "👩‍🔬"], trailing=False)
def test_label_lists_give_a_sentence_or_a_verdict_over_exactly_those_labels(labels, trailing):
    studio = shared_studio()
    text = ", ".join(labels) + ("," if trailing else "")
    pieces = label_pieces(text)
    status, out = run_handler("handler labels", attack, studio, labels=text, true_label=pieces[0], steps=1)
    if status == "ok":
        assert label_rules_hold(pieces)
        verdict = out[4]["verdicts"][0]
        assert verdict["clean"]["labels"] and set(verdict["clean"]["labels"]) <= set(pieces)
        assert len(verdict["clean"]["labels"]) == min(5, len(pieces))
    else:
        assert not label_rules_hold(pieces), out


@fuzz(12)
@given(labels=st.lists(st.sampled_from(["cat", "dog", "\x07bell", "猫", "🐈", "\u200bzw", "  ", "a" * 201]),
                       min_size=1, max_size=4))
@example(labels=[f"c{i}" for i in range(5000)])
@example(labels=["cat", "cat"])
def test_cli_labels_give_exit_2_and_one_line_or_a_verdict(workdir, labels):
    pieces = label_pieces(",".join(labels))  # the app's reading: "cat,,dog" is refused, not read as two labels
    true = pieces[0] or "cat"
    code, out, err = run_cli("cli labels", ["attack", EXAMPLE, "--models", "pmg-test", "--labels", ",".join(labels),
                                            "--true", true, "--steps", "1"])
    assert (code == 0) == label_rules_hold(pieces), err
    if code == 0:
        assert "adversarial:" in out


# --- numbers -----------------------------------------------------------------------------------------

def accepted(value, low, high, integer=False) -> bool:
    """The documented contract of every numeric field: a finite number, or text written as people write a
    decimal number (digits, a point, an exponent: not '1_0', 'nan', 'inf' or hex), inside [low, high]."""
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, str):
        if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip(), flags=re.ASCII):
            return False
        value = float(value.strip())
    try:
        value = float(value)
    except OverflowError:
        return False
    return math.isfinite(value) and low <= value <= high and (not integer or value.is_integer())


def numbers(low: float, high: float) -> st.SearchStrategy:
    edges = [low, high, low - 1, high + 1, math.nextafter(low, -math.inf), math.nextafter(high, math.inf),
             (low + high) / 2, 0.5, -0.0]
    return st.one_of(st.sampled_from(edges), st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -10**400]),
                     st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                     st.sampled_from(["", "abc", " 3 ", "nan", "-inf", "1e999", "0x10", "1_0", "٣"]), st.none())


# handler -> {field: (label in the message, low, high, integer)}
ATTACK_FIELDS = {"eps": ("eps", 0, 64, False), "steps": ("steps", 0, 200, True),
                 "step_size": ("step size", 0, 255, False)}
EVAL_FIELDS = {"eps_255": ("eps", 0, 64, False), "steps": ("steps", 0, 200, True),
               "step_size_255": ("step size", 0, 64, False), "limit": ("sample limit", 1, 100_000, True)}
TRAIN_FIELDS = {"eps_255": ("eps", 0, 32, False), "attack_steps": ("PGD steps", 0, 20, True),
                "lr": ("learning rate", 1e-8, 1.0, False), "max_steps": ("training steps", 1, 10_000, True),
                "batch_size": ("batch size", 1, 512, True), "alpha": ("alpha", 0, 100, False),
                "beta": ("beta", 0, 100, False)}


def field_and_value(fields: dict) -> st.SearchStrategy:
    return st.sampled_from(sorted(fields)).flatmap(
        lambda f: st.tuples(st.just(f), numbers(*fields[f][1:3])))


def check_number_outcome(status, out, fields, field, value, auto_ok=False):
    label, low, high, integer = fields[field]
    if auto_ok and value in (None, "", 0):  # "0 = auto" step size
        assert status == "ok"
        return
    assert (status == "ok") == accepted(value, low, high, integer), (field, value, out)
    if status == "refused":
        assert label.lower() in out.lower(), out


@fuzz(40)
@given(fv=field_and_value(ATTACK_FIELDS))
def test_attack_numbers_at_below_above_range_nan_inf(fv):
    studio = shared_studio()
    field, value = fv
    kw = {"eps": 4, "steps": 2, "step_size": 1, field: value}
    if field == "steps" and accepted(value, 0, 200, True):
        kw["steps"] = value  # all in-range step counts run for real (tiny model)
    status, out = run_handler("handler attack-numbers", attack, studio, **kw)
    check_number_outcome(status, out, ATTACK_FIELDS, field, value, auto_ok=field == "step_size")
    if status == "ok":
        assert out[4]["verdicts"][0]["model"] == "clip"


def started(gen) -> tuple:
    """The first update of a streaming handler (inputs are all checked before it), then stop the job."""
    try:
        return next(gen)
    finally:
        gen.close()


@fuzz(30)
@given(fv=field_and_value(EVAL_FIELDS))
def test_evaluate_numbers_at_below_above_range_nan_inf(fv):
    studio = shared_studio()
    field, value = fv
    kw = {"eps_255": 1, "steps": 2, "step_size_255": 1, "limit": 8, field: value}
    status, out = run_handler("handler evaluate-numbers", lambda: started(
        evaluation.evaluate(studio, ["clip"], "toy-colours", "", kw["eps_255"], kw["steps"], kw["step_size_255"], kw["limit"])))
    check_number_outcome(status, out, EVAL_FIELDS, field, value, auto_ok=field == "step_size_255")  # as in the attack tab
    if status == "ok":
        assert out[0].startswith("Evaluating 1 model")


@fuzz(35)
@given(fv=field_and_value(TRAIN_FIELDS))
def test_train_numbers_at_below_above_range_nan_inf(fv):
    studio = shared_studio()
    field, value = fv
    kw = {"eps_255": 1, "attack_steps": 1, "lr": 0.01, "max_steps": 1, "batch_size": 8, "alpha": 1, "beta": 1,
          field: value}
    name = f"fuzz-{next(_names)}"
    assert studio.job_slot.acquire(timeout=60), "the previous example's run never let go of the training slot"
    studio.job_slot.release()  # a Train while the last one still saves is refused in a sentence, by design
    status, out = run_handler("handler train-numbers", lambda: started(training.train(studio, 
        "clip", "pmg-aft", "toy-colours", kw["eps_255"], kw["attack_steps"], kw["lr"], kw["max_steps"],
        kw["batch_size"], kw["alpha"], kw["beta"], name)))
    check_number_outcome(status, out, TRAIN_FIELDS, field, value)
    if status == "ok":
        assert out[0].startswith("Training pmg-aft from clip")


def test_sweep_lists_with_nan_inf_and_junk_get_one_sentence():
    studio = shared_studio()
    for text in ["0, nan", "inf", "-1", "65", "a, b", "", ",", "1e400", "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"]:
        status, out = run_handler("handler sweep-list", one_image.eps_sweep, studio, EXAMPLE, LABELS, "circle", "Linf", text, 1, 1,
                                  "cross-entropy", "", EACH, ["clip"])
        assert status == "refused" and "eps" in out.lower(), (text, out)
    status, (_, rows) = run_handler("handler sweep-list", one_image.eps_sweep, studio, EXAMPLE, LABELS, "circle", "Linf",
                                    "2, 0, , 2", 1, 1, "cross-entropy", "", EACH, ["clip"])
    assert [r["eps_255"] for r in rows] == [0.0, 2.0]


# --- the CLI's numbers ---------------------------------------------------------------------------------

CLI_TEXT = st.one_of(st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1", "2", "0.5", "1e999", "1" * 400, "", "abc",
                                      "0x10", "-0", "3.7", "1e-300", "٣"]),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.integers(-10**9, 10**9).map(str))
CLI_COMMANDS = {
    "attack": (["attack", EXAMPLE, "--models", "pmg-test", "--labels", "circle, square", "--true", "circle",
                "--steps", "1"], ["--eps", "--steps", "--step-size"]),
    "eval": (["eval", "--models", "pmg-test", "--datasets", "toy-colours", "--limit", "4", "--steps", "1"],
             ["--eps", "--steps", "--step-size", "--limit", "--batch-size", "--seed"]),
    "train": (["train", "--model", "pmg-test", "--dataset", "toy-colours", "--max-steps", "1", "--batch-size", "8"],
              ["--eps", "--steps", "--step-size", "--alpha", "--beta", "--epochs", "--max-steps", "--batch-size",
               "--lr", "--momentum", "--weight-decay", "--warmup", "--limit", "--train-last-n", "--save-every",
               "--seed"]),
}


@pytest.fixture
def checks_only(monkeypatch):
    """CLI eval/train stop after every input check (a huge valid --steps or --max-steps would run for hours)."""
    import pmg_core.evaluation.accuracy as evaluate
    import pmg_core.training.loop as train
    from pmg_core.models.zoo import load_models

    def evaluate_checked(cfg, **_):
        cfg.validate()
        load_models(cfg.models, "cpu")
        return {"config": {}, "protocol": evaluate.describe_protocol(cfg), "results": []}

    monkeypatch.setattr(evaluate, "evaluate", evaluate_checked)
    monkeypatch.setattr(train, "train", lambda cfg, **_: (train.Trainer(cfg), {"event": "done", "steps": 0})[1])


@fuzz(30)
@given(command=st.sampled_from(sorted(CLI_COMMANDS)), data=st.data())
def test_cli_numbers_exit_0_or_2_with_one_error_line(checks_only, workdir, command, data):
    argv, flags = CLI_COMMANDS[command]
    flag = data.draw(st.sampled_from(flags), label="flag")
    value = data.draw(CLI_TEXT, label="value")
    extra = ["--out", str(workdir / f"cli{next(_names)}.safetensors")] if command == "train" else []
    code, out, err = run_cli(f"cli {command}-numbers", argv + extra + [f"{flag}={value}"])
    if value.strip().lower() in ("nan", "inf", "-inf", "1e999") or value == "1" * 400:
        assert code == 2, (flag, value, out)


def test_after_all_that_the_handlers_and_the_cli_still_answer_normally():
    studio = shared_studio()
    status, out = run_handler("handler normal", attack, studio)
    assert status == "ok" and out[4]["verdicts"][0]["model"] == "clip"
    code, out, _ = run_cli("cli normal", ["attack", EXAMPLE, "--models", "pmg-test", "--labels", LABELS, "--true",
                                          "circle", "--steps", "1"])
    assert code == 0 and "adversarial:" in out
