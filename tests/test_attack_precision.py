"""Attack passes in bf16 where the CPU has bf16 instructions, without a weaker or flattered attack:
the policy picks the precision and says why, bf16-made images stay valid attacks, and every verdict
is an fp32 judgement (of the 8-bit image in the app)."""
import json

import pytest
import torch

from pmg_core.core import env, precision
from pmg_core.attacks.pgd import OUTER_AUTOCAST, PGD
from pmg_core.core.errors import UserError
from pmg_core.evaluation.accuracy import EvalConfig, evaluate
from pmg_core.evaluation.explore import AttackSettings, compare, prediction
from pmg_core.data.images import load_image
from pmg_core.training.methods import get_method
from pmg_core.models.clip import load_model
from studio.html import verdict_html

from helpers import EXAMPLE, LABELS

BIG_TOWER = torch.nn.Linear(5000, 5000)  # 25M parameters: above precision.BF16_MIN_PARAMS, never run


@pytest.fixture
def cpuinfo(tmp_path):
    def write(flags: str, key: str = "flags"):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}\t\t: {flags}\n")
        return path
    return write


def test_bf16_instructions_are_read_from_the_cpu_flags_and_torch_kernel_level(cpuinfo, tmp_path):
    assert env.cpu_bf16(cpuinfo("fpu sse2 avx512f avx512_bf16"), capability="AVX512") == "avx512_bf16"
    assert env.cpu_bf16(cpuinfo("avx512f amx_bf16 amx_tile avx512_bf16"), capability="AVX512") == "avx512_bf16+amx_bf16"
    assert env.cpu_bf16(cpuinfo("avx512f avx512_bf16"), capability="AVX2") is None  # torch's kernels would emulate it
    assert env.cpu_bf16(cpuinfo("fpu sse2 avx2 avx512f"), capability="AVX512") is None
    assert env.cpu_bf16(cpuinfo("fp asimd bf16 i8mm", key="Features")) == "bf16"
    assert env.cpu_bf16(cpuinfo("fp asimd", key="Features")) is None
    assert env.cpu_bf16(tmp_path / "no-such-file") is None


def test_the_policy_follows_pmg_attack_dtype_and_the_cpu_and_says_why(monkeypatch):
    monkeypatch.delenv(precision.ATTACK_DTYPE_ENV, raising=False)
    has, lacks = "avx512_bf16", ""
    auto = precision.attack_precision("cpu", BIG_TOWER, bf16_cpu=has)
    assert (auto.name, auto.dtype) == ("bf16", torch.bfloat16) and "avx512_bf16" in auto.reason
    for choice, value in (("fp32", "fp32"), ("bf16", "bf16"), ("auto", "bf16"), ("", "bf16"), (" FP32 ", "fp32")):
        monkeypatch.setenv(precision.ATTACK_DTYPE_ENV, choice)
        assert precision.attack_precision("cpu", BIG_TOWER, bf16_cpu=has).name == value, choice
    monkeypatch.setenv(precision.ATTACK_DTYPE_ENV, "half")
    with pytest.raises(UserError, match="PMG_ATTACK_DTYPE must be one of auto, fp32, bf16"):
        precision.attack_precision("cpu", BIG_TOWER, bf16_cpu=has)
    monkeypatch.delenv(precision.ATTACK_DTYPE_ENV)
    # auto falls back to fp32, saying why: no bf16 instructions, a tower too small to gain, a GPU.
    no_bf16 = precision.attack_precision("cpu", BIG_TOWER, bf16_cpu=lacks)
    assert (no_bf16.name, no_bf16.dtype) == ("fp32", None) and "no bf16 instructions" in no_bf16.reason
    small = precision.attack_precision("cpu", torch.nn.Linear(10, 10), bf16_cpu=has)
    assert small.name == "fp32" and "no faster" in small.reason
    assert precision.attack_precision("cuda", BIG_TOWER, bf16_cpu=has).name == "fp32"
    assert precision.attack_precision("cpu", BIG_TOWER, "bf16", bf16_cpu=lacks).name == "bf16"  # asked for: obeyed
    # --attack-amp: bf16 on a GPU and on a CPU with bf16 instructions, fp32 on other CPUs.
    assert precision.amp_attack_dtype("cpu", bf16_cpu=has) == torch.bfloat16 == precision.amp_attack_dtype("cuda")
    assert precision.amp_attack_dtype("cpu", bf16_cpu=lacks) is None


def test_attack_amp_means_bf16_on_a_cpu_that_has_it_for_train_and_eval(monkeypatch):
    tecoa = get_method("tecoa", attack_amp=True)
    assert tecoa.attack_dtype_on(torch.device("cuda")) == OUTER_AUTOCAST  # the GPU step's own autocast
    monkeypatch.setattr(env, "cpu_bf16", lambda: "avx512_bf16")
    assert tecoa.attack_dtype_on(torch.device("cpu")) == torch.bfloat16
    assert get_method("tecoa").attack_dtype_on(torch.device("cpu")) is None  # the paper's fp32 by default
    assert get_method("tecoa", preset="public-code", attack_amp=True).attack_dtype_on(torch.device("cpu")) == torch.float16
    monkeypatch.setattr(env, "cpu_bf16", lambda: None)
    assert tecoa.attack_dtype_on(torch.device("cpu")) is None


class LowPrecisionLiar(torch.nn.Module):
    """Right (class 0) in fp32, wrong (class 1) under any autocast: what an attack's fooled
    verdicts would be if they were read off its low-precision passes."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        s = (x.flatten(1).mean(1, keepdim=True) * self.w)
        wrong = torch.is_autocast_enabled(x.device.type)
        return torch.cat([s - 1, s + 1] if wrong else [s + 1, s - 1], 1)


def test_fooled_verdicts_of_bf16_passes_are_fp32_judgements():
    x, y = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    liar = LowPrecisionLiar()
    for early_stop in (False, True):
        judged = PGD(liar, 4 / 255, steps=3, dtype=torch.bfloat16, judge_fp32=True, early_stop=early_stop).run(x, y)
        assert not judged.fooled.any() and (judged.adv_pred == 0).all()
    streamed = PGD(liar, 4 / 255, steps=3, dtype=torch.bfloat16, judge_fp32=True, early_stop=True)
    assert not any(f.any() for _, f in streamed.fooled_stream([(x, y, torch.zeros_like(x))], pool=4))
    # Without the fp32 judgement the passes' own verdicts would count (what judge_fp32 prevents).
    assert PGD(liar, 4 / 255, steps=3, dtype=torch.bfloat16).run(x, y).fooled.all()


@pytest.fixture(scope="module")
def shipped():
    base = load_model("clip-tiny")
    return [base, load_model("tecoa-tiny", base=base)]


def test_a_bf16_attack_stays_in_its_ball_and_lowers_accuracy(shipped):
    from pmg_core.data.datasets import get_dataset

    data = get_dataset("synth-shape", split="test").limited(32, 0)
    x, y = next(iter(torch.utils.data.DataLoader(data.data, batch_size=32)))
    clf = shipped[0].classifier(data.classes, data.templates, exact=True).eval()
    eps = 4 / 255
    adv = PGD(clf, eps, steps=3, dtype=torch.bfloat16, judge_fp32=True).run(x, y).adv
    assert float((adv - x).abs().max()) <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean_acc, adv_acc = ((clf(t).argmax(1) == y).float().mean() for t in (x, adv))
    assert adv_acc < clean_acc - 0.3, (clean_acc, adv_acc)


def test_bf16_verdicts_equal_an_fp32_rejudgement_of_their_8bit_images_and_say_the_precision(shipped):
    labels = [c.strip() for c in LABELS.split(",")]
    eps = 4 / 255
    settings = AttackSettings(eps=eps, steps=5, precision="bf16")
    comp = compare(shipped, load_image(EXAMPLE), labels, "circle", settings)
    for model, v in zip(shipped, comp.verdicts):
        assert v.precision.name == "bf16"
        img = v.adv_image
        assert torch.equal(img * 255, torch.round(img * 255))  # on the 8-bit grid
        assert float((img - comp.image).abs().max()) <= eps + 1e-6
        with torch.no_grad():
            fp32 = model.classifier(labels).eval()(img[None])
        assert v.adversarial == prediction(fp32, labels, labels.index("circle"))
    doc = json.loads(json.dumps(comp.to_dict(settings)))
    assert [v["attack_precision"] for v in doc["verdicts"]] == ["bf16", "bf16"]
    assert "PMG_ATTACK_DTYPE=bf16" in doc["verdicts"][0]["attack_precision_reason"]
    assert "made with bf16 passes, judged in fp32" in verdict_html(comp, settings)
    fp32 = compare(shipped, load_image(EXAMPLE), labels, "circle", AttackSettings(eps=eps, steps=5, precision="fp32"))
    assert fp32.to_dict(settings)["verdicts"][0]["attack_precision"] == "fp32"
    # The bf16 passes really made the bf16 images: fp32 passes make (slightly) different ones.
    assert any(not torch.equal(v.adv_image, w.adv_image) for v, w in zip(comp.verdicts, fp32.verdicts))


def test_eval_with_attack_amp_names_its_precision(shipped, monkeypatch):
    monkeypatch.setattr(env, "cpu_bf16", lambda: "avx512_bf16")
    cfg = dict(datasets=["synth-shape"], eps=4 / 255, steps=2, limit=8)
    amp = evaluate(EvalConfig(**cfg, attack_amp=True), models=shipped[:1])
    assert amp["results"][0]["attack_precision"] == "bf16" and "--attack-amp" in amp["protocol"]
    assert evaluate(EvalConfig(**cfg), models=shipped[:1])["results"][0]["attack_precision"] == "fp32"
