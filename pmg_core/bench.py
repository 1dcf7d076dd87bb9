"""`python -m pmg_core bench`: how fast training and evaluation steps run, against two yardsticks.

For each method, one run on one device times three things on the same fixed batch:
- ours: a full training step through the real code path (`Trainer.train_step`: the registered
  method with its PGD, backward, optimizer step), plus PGD alone and robust evaluation;
- reference: the same step computed the way the public PMG-AFT code computes it: the text
  encoder re-run on all class prompts inside every forward and every PGD iteration, separate
  forward passes for f_t(x_adv), f_t(x) and f_o(x_adv), fp32, no early stop. It is written here
  from that description, as a baseline only;
- floor: the passes no implementation can avoid, timed in isolation: K image-encoder
  forward + input-gradient passes for the attack, one forward + backward over the batch(es) the
  loss trains on, one forward of the frozen model.
Timings interleave ours / reference / floor so that load from other processes hits all three
alike; warm-up iterations are dropped and the median of the repeats is kept.

A second study times robust evaluation (PGD-10 by default) on the embedded tiny CLIP with
per-sample early stop on and off, and checks that the reported accuracy is the same.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import check, check_number

METHODS = ("clean", "tecoa", "pmg-aft", "fare")
PARTS = ("steps", "attack", "study")  # training steps per method; PGD alone + robust eval; early-stop study
ROLES = ("ours", "reference", "floor")
BENCH_DATASET = "bench-random"
# Dense (no sparsity) bf16 tensor-core peak of known accelerators, from the vendors' datasheets, for
# "achieved vs peak"; the first name contained in the device's name wins, so variants come first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0))


@dataclass
class BenchConfig:
    arch: str = "ViT-B-32"
    batch_size: int = 8
    device: str | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    pgd_steps: int = 2
    eps: float = 1 / 255  # pixel units
    classes: int = 10  # class prompts the zero-shot head scores (the reference re-encodes all of them)
    eval_steps: int = 10  # PGD steps of the robust-evaluation timings
    eval_eps: float | None = None  # eps of the early-stop study (pixel units); None: eps
    eval_step_size: float | None = None  # its PGD step (pixel units); None: its eps
    repeats: int = 3
    warmup: int = 1
    amp: bool = True  # bf16 autocast on CUDA for our step (the reference stays fp32); CPU is fp32
    attack_amp: bool = False  # the training attack under that autocast too (TrainConfig.attack_amp); else fp32
    seed: int = 0
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    eval_model: str = "clip-tiny"  # model of the early-stop study
    eval_datasets: str = "mini"
    eval_limit: int = 200  # samples per dataset in the early-stop study
    eval_batch_size: int = 128

    def validate(self) -> None:
        check_number("batch size", self.batch_size, low=1, integer=True)
        check_number("PGD steps", self.pgd_steps, low=0, integer=True)
        check_number("eval steps", self.eval_steps, low=1, integer=True)
        check_number("eps", self.eps, low=0, high=1)
        if self.eval_eps is not None:
            check_number("eval eps", self.eval_eps, low=0, high=1)
        if self.eval_step_size is not None:
            check_number("eval step size", self.eval_step_size, low=0, high=1)
        check_number("classes", self.classes, low=2, integer=True)
        check_number("repeats", self.repeats, low=1, integer=True)
        check_number("warm-up iterations", self.warmup, low=0, integer=True)
        check_number("eval limit", self.eval_limit, low=1, integer=True)
        check_number("eval batch size", self.eval_batch_size, low=1, integer=True)
        check(len(self.parts) > 0 and all(p in PARTS for p in self.parts),
              f"Choose the parts to run among {', '.join(PARTS)}; got {', '.join(self.parts) or 'none'}.")
        check("steps" not in self.parts or len(self.methods) > 0, "Give at least one method to benchmark.")
        for m in self.methods:
            check(m in METHODS, f"Unknown method '{m}' for bench: choose all or one of {', '.join(METHODS)}.")


# --- the measured setup --------------------------------------------------------------------------

def class_names(n: int) -> list[str]:
    return [f"object {i}" for i in range(n)]


def _register_bench_dataset(classes: int, image_size: int, n: int) -> None:
    # Trainer reads its data by name; random images of the right size are all timing needs.
    from .data import ZeroShotDataset, register_dataset

    @register_dataset(BENCH_DATASET, "random images for `python -m pmg_core bench` (timing only)", "bench")
    def _build(split="train", root=None, **_):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n, 3, image_size, image_size, generator=g)
        y = torch.randint(0, classes, (n,), generator=g)
        return ZeroShotDataset(BENCH_DATASET, torch.utils.data.TensorDataset(x, y), class_names(classes))


def make_trainer(model, method: str, cfg: BenchConfig, device: torch.device):
    """The real training setup (Trainer) for `method` on random data with `cfg.classes` classes."""
    from .train import TrainConfig, Trainer

    _register_bench_dataset(cfg.classes, model.image_size, cfg.batch_size)
    tcfg = TrainConfig(model=model.spec, method=method, dataset=BENCH_DATASET, eps=cfg.eps, attack_steps=cfg.pgd_steps,
                       step_size=cfg.eps, batch_size=cfg.batch_size, max_steps=1_000_000, warmup=1, lr=1e-6,
                       device=str(device), amp=cfg.amp, attack_amp=cfg.attack_amp, seed=cfg.seed)
    return Trainer(tcfg, model=model)


def attack_autocast(trainer, cfg: BenchConfig) -> Callable:
    """The precision our training attack runs in: the step's autocast with attack_amp, else fp32."""
    return trainer._autocast if cfg.attack_amp else contextlib.nullcontext  # noqa: SLF001


def fixed_batch(trainer, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, size = trainer.cfg.batch_size, trainer.classifier.image_size
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.randint(0, trainer.classifier.num_classes, (n,), generator=g)
    return x.to(trainer.device), y.to(trainer.device)


# --- the reference: the public code's way of computing the same step ----------------------------

class Reference:
    """Clean / TeCoA / PMG-AFT steps as the public PMG-AFT code computes them (FARE: see below).

    What that code does, and this class reproduces: every zero-shot forward re-encodes all class
    prompts with the text encoder; f_t(x_adv), f_t(x) and f_o(x_adv) are three separate
    forwards; everything runs in fp32 here; PGD attacks every sample for every step with
    loss.backward(). Its CLIP models come from clip.load with every parameter trainable (only
    the optimizer is limited to the image encoder), and f_o runs outside no_grad, so each
    backward also runs through the text encoder, and the training backward through f_o (the KL
    target carries gradient). One defect is not reproduced: the attack's parameter gradients
    are cleared before the training backward, so the update equals ours. The math (logit scale,
    normalisation, KL reduction, PGD update, random start) is the same as ours: the losses and
    gradients agree, only the cost differs.

    FARE is not part of the PMG-AFT code and has no text side; its reference only runs the
    passes separately, without our fused attack loop.
    """

    def __init__(self, trainer):
        clf = trainer.classifier
        self.clip = trainer.model.clip
        self.visual, self.params = clf.visual, trainer.params
        self.original = trainer.original.visual if trainer.original is not None else None
        self.scale, self.mean, self.std = clf.logit_scale, clf.mean, clf.std
        data = trainer.data
        prompts = [t.format(c) for c in data.classes for t in data.templates]
        self.tokens = trainer.model.tokenizer(prompts).to(trainer.device)  # tokenised once, encoded every forward
        self.n_classes, self.n_templates = len(data.classes), len(data.templates)
        self.method, self.settings, self.preset = trainer.method.name, trainer.method.settings, trainer.method.preset
        self.optimizer = torch.optim.SGD(self.params, lr=trainer.cfg.lr, momentum=trainer.cfg.momentum)
        visual_ids = {id(p) for p in self.visual.parameters()}
        self.frozen = [p for p in self.clip.parameters() if id(p) not in visual_ids]
        if self.original is not None:
            self.frozen += list(self.original.parameters())
        self.trainable_everywhere = self.method != "fare"

    @contextlib.contextmanager
    def _public_code_gradients(self):
        # The public code leaves the text encoder and f_o trainable; ours freezes them.
        flip = self.trainable_everywhere
        for p in self.frozen if flip else ():
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p in self.frozen if flip else ():
                p.requires_grad_(False)
                p.grad = None

    def text_features(self) -> torch.Tensor:
        feats = F.normalize(self.clip.encode_text(self.tokens).float(), dim=-1)
        feats = feats.view(self.n_classes, self.n_templates, -1).mean(1)
        return F.normalize(feats, dim=-1)

    def encode(self, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return visual((x - self.mean) / self.std)

    def logits(self, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
        text = self.text_features()  # re-run inside every forward, as the public code does
        feats = F.normalize(self.encode(visual, x).float(), dim=-1)
        return self.scale * feats @ text.t()

    def _pgd(self, x: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor], steps: int) -> torch.Tensor:
        eps, alpha = self.settings.eps, self.settings.step_size if self.settings.step_size is not None else self.settings.eps
        u = torch.rand(x.shape, device=x.device)  # the same uniform random start as ours (attacks.random_start)
        delta = (x + (2 * u - 1) * eps).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            if self.trainable_everywhere:  # backward into every trainable parameter, as the public code
                loss_of(x + delta).backward()
                grad = delta.grad
            else:
                (grad,) = torch.autograd.grad(loss_of(x + delta), delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        return (x + delta).detach()

    def _attack(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
        return self._pgd(x, lambda z: F.cross_entropy(self.logits(self.visual, z), y, reduction="sum"), steps)

    def attack(self, x: torch.Tensor, y: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        with self._public_code_gradients():
            x_adv = self._attack(x, y, self.settings.steps if steps is None else steps)
        self.optimizer.zero_grad(set_to_none=True)
        return x_adv

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from .methods import fare_loss, pmg_aft_loss

        if self.method == "clean":
            return F.cross_entropy(self.logits(self.visual, x), y)
        if self.method == "fare":
            with torch.no_grad():
                target = self.encode(self.original, x).float()
            x_adv = self._pgd(x, lambda z: (self.encode(self.visual, z).float() - target).pow(2).sum(),
                              self.settings.steps)
            return fare_loss(self.encode(self.visual, x_adv), target)
        x_adv = self._attack(x, y, self.settings.steps)
        self.optimizer.zero_grad(set_to_none=True)  # drop the attack's parameter gradients (a public-code leak)
        logits_adv = self.logits(self.visual, x_adv)
        if self.method == "tecoa":
            return F.cross_entropy(logits_adv, y)
        logits_clean = self.logits(self.visual, x)
        logits_orig = self.logits(self.original, x_adv)
        s = self.settings
        return pmg_aft_loss(logits_adv, logits_clean, logits_orig, y, s.alpha, s.beta, self.preset.kl_reduction,
                            self.preset.kl_direction)[0]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.visual.train()
        with self._public_code_gradients():
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(x, y)
            loss.backward()
            self.optimizer.step()
        return loss.item()

    def robust_eval(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
        """Robust-correct flags: clean forward, PGD on every sample for every step, final forward."""
        self.visual.eval()
        with torch.no_grad():
            clean = self.logits(self.visual, x).argmax(1) == y
        x_adv = self.attack(x, y, steps)
        with torch.no_grad():
            return clean & (self.logits(self.visual, x_adv).argmax(1) == y)


# --- the floor: the unavoidable passes alone -----------------------------------------------------

def floor_passes(method: str, visual: nn.Module, original: nn.Module | None, x: torch.Tensor, attack_steps: int,
                 autocast, attack_autocast) -> Callable[[], None]:
    """K attack passes (forward + input gradient) in the attack's precision, then forward +
    backward over what the loss trains on (x_adv and x for PMG-AFT) and one frozen forward
    (PMG-AFT, FARE) in the step's, on normalised inputs."""
    adversarial = method != "clean"
    train_x = torch.cat([x, x]) if method == "pmg-aft" else x
    params = [p for p in visual.parameters() if p.requires_grad]
    attack = _input_grad_passes(visual, x, attack_steps if adversarial else 0, autocast=attack_autocast)

    def run() -> None:
        visual.train()
        attack()
        with autocast():
            if original is not None:
                with torch.no_grad():
                    original(x)
            for p in params:
                p.grad = None
            out = visual(train_x).float().sum()
        out.backward()

    return run


# --- memory and timing ---------------------------------------------------------------------------

class PeakMemory:
    """Peak memory between reset() and read(): CUDA allocator peak, or peak RSS on CPU (Linux
    lets a process reset its high-water mark through /proc/self/clear_refs)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start_mib = 0.0  # what was resident at reset(): the step's own use is read_mib() - start_mib
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mib = self._current_rss_mib()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "process-lifetime peak RSS (ru_maxrss; could not reset)"
        self.start_mib = self._current_rss_mib()

    def read_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._status_mib("VmHWM:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _current_rss_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return self._status_mib("VmRSS:") or 0.0

    @staticmethod
    def _status_mib(key: str) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], cfg: BenchConfig, device: torch.device,
                     memory: PeakMemory) -> dict[str, dict]:
    """Round-robin over `fns` (warm-up rounds dropped); per name: median seconds, all seconds, peak memory."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    peaks: dict[str, float] = {k: 0.0 for k in fns}
    extra: dict[str, float] = {k: 0.0 for k in fns}
    for r in range(cfg.warmup + cfg.repeats):
        for name, fn in fns.items():
            memory.reset()
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            dt = time.perf_counter() - t0
            peak = memory.read_mib()
            peaks[name], extra[name] = max(peaks[name], peak), max(extra[name], peak - memory.start_mib)
            if r >= cfg.warmup:
                times[name].append(dt)
    return {k: {"seconds": statistics.median(v), "seconds_all": [round(t, 4) for t in v],
                "peak_memory_mib": round(peaks[k], 1), "step_memory_mib": round(extra[k], 1)}
            for k, v in times.items()}


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul/conv/attention FLOPs of one call, counted with torch's own formulas (FlopCounterMode
    itself cannot follow torch.autograd.grad, which PGD uses)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func.overloadpacket)
            if formula is not None:
                self.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with Counter() as counter:
        fn()
    return counter.total


# --- the benchmark -------------------------------------------------------------------------------

def _summarise(timed: dict[str, dict], batch: int, flops: int | None, peaks: dict[str, float]) -> dict:
    out = {}
    for role, t in timed.items():
        out[role] = {**t, "images_per_s": round(batch / t["seconds"], 3), "seconds": round(t["seconds"], 4)}
    if "reference" in timed:
        out["ratio_vs_reference"] = round(timed["reference"]["seconds"] / timed["ours"]["seconds"], 3)
    if "floor" in timed:
        out["efficiency_vs_floor"] = round(timed["floor"]["seconds"] / timed["ours"]["seconds"], 3)
    if flops:
        achieved = flops / timed["ours"]["seconds"] / 1e12
        out["flops_per_step"] = flops
        out["achieved_tflops"] = round(achieved, 4)
        for name, tflops in peaks.items():  # fraction_of_peak (datasheet), fraction_of_matmul (measured)
            out[f"fraction_of_{name}"] = round(achieved / tflops, 4)
    return out


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        info["name"] = name
        info["peak_bf16_tflops"] = next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)
        info["matmul_bf16_tflops"] = round(matmul_tflops(device), 1)
    else:
        info["name"] = _cpu_name()
        info["cores"] = os.cpu_count()
    return info


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """bf16 n x n x n matrix products per second on this device: the datasheet peak is rarely
    reached, so this is the practical ceiling that the step's achieved TFLOP/s is also set against."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def bench_method(model, method: str, cfg: BenchConfig, device: torch.device, memory: PeakMemory,
                 peaks: dict[str, float]) -> dict:
    trainer = make_trainer(model, method, cfg, device)
    ref = Reference(trainer)
    x, y = fixed_batch(trainer, cfg.seed)
    clf = trainer.classifier
    with torch.no_grad():
        xn = clf.preprocess(x)
    original = trainer.original.visual if trainer.original is not None else None
    floor = floor_passes(method, clf.visual, original, xn, cfg.pgd_steps, trainer._autocast,  # noqa: SLF001
                         attack_autocast(trainer, cfg))
    fns = {"ours": lambda: trainer.train_step(x, y), "reference": lambda: ref.step(x, y), "floor": floor}
    flops = count_flops(fns["ours"])  # doubles as one more warm-up of our step
    return _summarise(time_interleaved(fns, cfg, device, memory), cfg.batch_size, flops, peaks)


def bench_attack_and_eval(model, cfg: BenchConfig, device: torch.device, memory: PeakMemory,
                          peaks: dict[str, float]) -> dict[str, dict]:
    """PGD alone (training attack, K steps) and robust evaluation (PGD-eval_steps with early stop)."""
    from .evaluate import EvalConfig, evaluate_batch

    trainer = make_trainer(model, "tecoa", cfg, device)
    ref = Reference(trainer)
    clf = trainer.classifier
    x, _ = fixed_batch(trainer, cfg.seed)
    with torch.no_grad():
        xn = clf.preprocess(x)
        y = clf.eval()(x).argmax(1)  # label = clean prediction: every sample gets attacked
    pgd = trainer.method.pgd(clf)

    def ours_pgd():
        clf.train()
        with trainer._autocast():  # noqa: SLF001
            return pgd.perturb(x, y)

    floor_pgd = _input_grad_passes(clf.visual, xn, cfg.pgd_steps, autocast=attack_autocast(trainer, cfg))
    out = {"pgd": _summarise(time_interleaved(
        {"ours": ours_pgd, "reference": lambda: ref.attack(x, y), "floor": floor_pgd}, cfg, device, memory),
        cfg.batch_size, count_flops(ours_pgd), peaks)}

    ecfg = EvalConfig(eps=cfg.eps, steps=cfg.eval_steps, step_size=cfg.eps, early_stop=True, seed=cfg.seed)
    idx = torch.arange(cfg.batch_size)

    def ours_eval():
        clf.eval()
        return evaluate_batch(clf, x, y, idx, ecfg)[1]

    floor_eval = _input_grad_passes(clf.visual, xn, cfg.eval_steps, forwards=2)
    timed = time_interleaved({"ours": ours_eval, "reference": lambda: ref.robust_eval(x, y, cfg.eval_steps),
                              "floor": floor_eval}, cfg, device, memory)
    out["eval"] = _summarise(timed, cfg.batch_size, count_flops(ours_eval), peaks)
    out["eval"]["steps"] = cfg.eval_steps
    return out


def _input_grad_passes(visual: nn.Module, x: torch.Tensor, steps: int, forwards: int = 0,
                       autocast: Callable = contextlib.nullcontext) -> Callable[[], None]:
    """`steps` forward + input-gradient passes, plus `forwards` gradient-free forwards, under
    `autocast` (the attack's precision: fp32, or the step's bf16 with attack_amp)."""

    def run() -> None:
        with autocast():
            with torch.no_grad():
                for _ in range(forwards):
                    visual(x)
            for _ in range(steps):
                xi = x.detach().requires_grad_(True)
                torch.autograd.grad(visual(xi).float().sum(), xi)

    return run


def eval_early_stop_study(cfg: BenchConfig, device: torch.device) -> dict:
    """Robust evaluation of the embedded tiny CLIP with early stop on / off / attacking everything.

    The datasets are built once before timing (rendering them is the same for every variant and no
    part of the attack); each timed run is the evaluation proper: text features, batches, attack."""
    from .data import expand_names, get_dataset
    from .evaluate import EvalConfig, evaluate_model
    from .models import checkpoint_path, load_model

    spec = cfg.eval_model
    note = None
    if spec == "clip-tiny" and checkpoint_path(spec) is None:
        spec, note = "pmg-tiny", "checkpoints/clip-tiny.safetensors is missing: a random-init pmg-tiny stood in"
    model = load_model(spec, device=device)
    eps = cfg.eval_eps if cfg.eval_eps is not None else cfg.eps
    step = cfg.eval_step_size if cfg.eval_step_size is not None else eps
    base = EvalConfig(models=[spec], datasets=[n.strip() for n in cfg.eval_datasets.split(",") if n.strip()], eps=eps,
                      steps=cfg.eval_steps, step_size=step, limit=cfg.eval_limit, batch_size=cfg.eval_batch_size,
                      seed=cfg.seed, device=str(device))
    datasets = [get_dataset(n, split="test", root=base.data_root).limited(base.limit, base.seed)
                for n in expand_names(base.datasets)]
    variants = {"early_stop": dict(early_stop=True), "no_early_stop": dict(early_stop=False)}
    times: dict[str, list[float]] = {k: [] for k in (*variants, "attack_all")}
    rows: dict[str, list[dict]] = {}
    passes: dict[str, dict[str, int]] = {}

    def run(name: str) -> list[dict]:
        if name == "attack_all":
            return attack_everything(model, base, datasets)
        ecfg = EvalConfig(**{**asdict(base), **variants[name]})
        return [evaluate_model(model, data, ecfg) for data in datasets]

    for r in range(cfg.warmup + cfg.repeats):
        for name in times:
            # The first round also counts the work: images the encoder sees (a hook, microseconds).
            counting = count_passes(model.visual) if r == 0 else contextlib.nullcontext()
            _sync(device)
            t0 = time.perf_counter()
            with counting as counted:
                rows[name] = run(name)
            _sync(device)
            if r == 0:
                passes[name] = counted
            if r >= cfg.warmup:
                times[name].append(time.perf_counter() - t0)
    n = sum(row["n"] for row in rows["early_stop"])
    out: dict = {"model": spec, "datasets": cfg.eval_datasets, "samples": n, "steps": cfg.eval_steps,
                 "eps_255": round(eps * 255, 4), "step_size_255": round(step * 255, 4), "batch_size": cfg.eval_batch_size}
    if note:
        out["note"] = note
    for name, ts in times.items():
        robust = sum(row["robust_correct"] for row in rows[name])
        clean = sum(row["clean_correct"] for row in rows[name])
        out[name] = {"seconds": round(statistics.median(ts), 4), "seconds_all": [round(t, 4) for t in ts],
                     "robust_correct": robust, "clean_correct": clean, "robust_acc": robust / max(n, 1),
                     "images_per_s": round(n / statistics.median(ts), 2), **passes[name]}
    es = out["early_stop"]["seconds"]
    out["speedup_vs_attack_all"] = round(out["attack_all"]["seconds"] / es, 3)
    out["speedup_vs_no_early_stop"] = round(out["no_early_stop"]["seconds"] / es, 3)
    # What the pass counts allow: the speed-up if time were just passes, a gradient pass costing
    # `grad_pass_cost` forwards (measured on one full batch of this model).
    out["grad_pass_cost"] = round(gradient_pass_cost(model, datasets[0], base, device), 3)
    work = {k: out[k]["forward_images"] + out["grad_pass_cost"] * out[k]["gradient_images"] for k in times}
    out["pass_speedup_vs_attack_all"] = round(work["attack_all"] / max(work["early_stop"], 1e-9), 3)
    out["same_accuracy"] = len({out[k]["robust_correct"] for k in times}) == 1 and \
        len({out[k]["clean_correct"] for k in times}) == 1
    return out


@contextlib.contextmanager
def count_passes(encoder: nn.Module):
    """Counts the passes `encoder` runs and the images in them: plain forwards, and passes that build
    a graph for an input gradient (an attack's forward + backward). Yields the dict it fills. Where
    a small model is launch-bound (a GPU), time follows the passes; elsewhere, the images."""
    counts = {"forward_images": 0, "gradient_images": 0, "forward_passes": 0, "gradient_passes": 0}

    def hook(_module, args, _output):
        kind = "gradient" if torch.is_grad_enabled() and args[0].requires_grad else "forward"
        counts[f"{kind}_images"] += args[0].shape[0]
        counts[f"{kind}_passes"] += 1

    handle = encoder.register_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


def gradient_pass_cost(model, data, cfg, device: torch.device, repeats: int = 5) -> float:
    """Time of one forward + input-gradient pass over a full batch, in forwards of that batch."""
    from .evaluate import model_preset

    clf = model.classifier(data.classes, data.templates, model_preset(model, cfg)).eval()
    x = torch.stack([data.data[i][0] for i in range(min(len(data), cfg.batch_size))]).to(device)

    def forward():
        with torch.no_grad():
            clf(x)

    def gradient():
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(clf(xi).logsumexp(1).sum(), xi)

    def best(fn) -> float:
        fn()
        ts = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
        return min(ts)

    return best(gradient) / best(forward)


def attack_everything(model, cfg, datasets) -> list[dict]:
    """The plain baseline: PGD on every sample (clean-wrong ones too) for every step, same
    per-sample random starts as evaluate(); robust = correct at every iterate."""
    from torch.utils.data import DataLoader

    from .attacks import PGD
    from .evaluate import model_preset, sample_noise

    rows = []
    for data in datasets:
        clf = model.classifier(data.classes, data.templates, model_preset(model, cfg)).eval()
        attack = PGD(clf, cfg.eps, cfg.step_size, cfg.steps, cfg.norm, "ce", random_start=False, early_stop=False)
        n = clean_n = robust_n = start = 0
        for x, y in DataLoader(data.data, batch_size=cfg.batch_size, shuffle=False):
            x, y = x.to(model.device), y.to(model.device)
            idx = list(range(start, start + len(y)))
            start += len(y)
            with torch.no_grad():
                logits = clf(x)
            clean = logits.argmax(1) == y
            init = sample_noise(idx, tuple(x.shape[1:]), cfg.eps, cfg.norm, cfg.seed).to(x)
            robust = clean & ~attack.run(x, y, init=init, clean_logits=logits).fooled
            n, clean_n, robust_n = n + len(y), clean_n + int(clean.sum()), robust_n + int(robust.sum())
        rows.append({"dataset": data.name, "n": n, "clean_correct": clean_n, "robust_correct": robust_n})
    return rows


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run every requested measurement; returns the JSON-ready report."""
    from .models import load_model

    cfg.validate()
    say = progress or (lambda _msg: None)
    from .env import default_device

    device = torch.device(cfg.device or default_device())
    info = device_info(device)
    peaks = {k: info[f] for k, f in (("peak", "peak_bf16_tflops"), ("matmul", "matmul_bf16_tflops")) if info.get(f)}
    memory = PeakMemory(device)
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.arch, device=device) if {"steps", "attack"} & set(cfg.parts) else None
    report: dict = {"config": {**asdict(cfg), "eps_255": round(cfg.eps * 255, 4)}, "device": info,
                    "memory_kind": memory.kind, "methods": {}}
    for method in cfg.methods if "steps" in cfg.parts else ():
        say(f"timing {method} (ours / reference / floor)")
        report["methods"][method] = bench_method(model, method, cfg, device, memory, peaks)
    if "attack" in cfg.parts:
        say("timing PGD alone and robust evaluation")
        report.update(bench_attack_and_eval(model, cfg, device, memory, peaks))
    report["memory_kind"] = memory.kind
    if "study" in cfg.parts:
        say(f"robust evaluation early-stop study on {cfg.eval_model}")
        report["eval_early_stop"] = eval_early_stop_study(cfg, device)
    return report


# --- reporting -----------------------------------------------------------------------------------

def to_markdown(report: dict) -> str:
    c, d = report["config"], report["device"]
    lines = [f"# Benchmark: {c['arch']} on {d['name']} ({d['type']}, {d['threads']} threads)", "",
             f"Batch {c['batch_size']}, {c['classes']} classes, PGD {c['pgd_steps']} steps at eps "
             f"{c['eps_255']}/255 for training, {c['eval_steps']} for evaluation; median of {c['repeats']} "
             f"runs after {c['warmup']} warm-up, ours/reference/floor interleaved. Memory: {report['memory_kind']}."]
    if d.get("matmul_bf16_tflops"):
        lines += ["", f"Achieved TFLOP/s = counted matmul/conv/attention FLOPs of our step / its time, against the "
                      f"datasheet dense bf16 peak ({d.get('peak_bf16_tflops') or 'unknown'}) and a measured bf16 "
                      f"8192^3 matmul ({d['matmul_bf16_tflops']})."]
    rows = {**report["methods"], "PGD alone": report.get("pgd"), "robust eval": report.get("eval")}
    rows = {k: v for k, v in rows.items() if v}
    if rows:
        lines += ["", "| step | ours img/s | reference img/s | floor img/s | ours / reference | floor / ours "
                      "| ours peak MiB (step's own) | reference peak MiB (step's own) | ours TFLOP/s (of peak, of matmul) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['ours']['images_per_s']:.2f} | {r['reference']['images_per_s']:.2f} | "
                     f"{r['floor']['images_per_s']:.2f} | {r['ratio_vs_reference']:.2f}x | "
                     f"{r['efficiency_vs_floor']:.2f} | {r['ours']['peak_memory_mib']:.0f} ({r['ours']['step_memory_mib']:.0f}) | "
                     f"{r['reference']['peak_memory_mib']:.0f} ({r['reference']['step_memory_mib']:.0f}) | "
                     f"{_tflops_cell(r)} |")
    es = report.get("eval_early_stop")
    if es:
        lines += ["", f"## Robust evaluation early stop: {es['model']} on {es['datasets']} "
                      f"({es['samples']} samples, PGD-{es['steps']}, eps {es['eps_255']}/255, "
                      f"step {es.get('step_size_255', es['eps_255'])}/255)", ""]
        if es.get("note"):
            lines += [f"Note: {es['note']}.", ""]
        lines += ["| variant | seconds | images/s | images in forwards (passes) | images in gradient passes (passes) "
                  "| clean correct | robust correct |", "|---|---:|---:|---:|---:|---:|---:|"]
        for k, label in (("early_stop", "early stop (ours)"), ("no_early_stop", "no early stop"),
                         ("attack_all", "attack every sample, every step")):
            v = es[k]
            lines.append(f"| {label} | {v['seconds']:.2f} | {v['images_per_s']:.1f} | {v['forward_images']} "
                         f"({v['forward_passes']}) | {v['gradient_images']} ({v['gradient_passes']}) | "
                         f"{v['clean_correct']} | {v['robust_correct']} |")
        lines += ["", f"Speed-up {es['speedup_vs_attack_all']:.2f}x over attacking everything "
                      f"(the pass counts allow {es['pass_speedup_vs_attack_all']:.2f}x, a gradient pass costing "
                      f"{es['grad_pass_cost']:.2f} forwards), {es['speedup_vs_no_early_stop']:.2f}x over no early "
                      f"stop; same accuracy: {'yes' if es['same_accuracy'] else 'NO'}."]
    return "\n".join(lines) + "\n"


def _tflops_cell(r: dict) -> str:
    if "achieved_tflops" not in r:
        return "-"
    shares = [f"{r[k]:.0%}" for k in ("fraction_of_peak", "fraction_of_matmul") if k in r]
    return f"{r['achieved_tflops']:.1f}" + (f" ({', '.join(shares)})" if shares else "")


# --- command line --------------------------------------------------------------------------------

QUICK = {"repeats": 1, "warmup": 0, "eval_limit": 32, "eval_datasets": "synth-shape,synth-colour", "eval_steps": 3}


def add_parser(sub) -> None:
    d = BenchConfig()
    p = sub.add_parser("bench", help="time training / attack / evaluation steps against the public code's way and the floor",
                       description=__doc__.split("\n\n")[0] + " eps in /255 units.")
    p.add_argument("--arch", default=d.arch, help="architecture, random init, nothing downloaded (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("--method", default="all", help=f"all or one of {', '.join(METHODS)}")
    p.add_argument("--pgd-steps", type=int, default=d.pgd_steps, help="PGD steps of the training attack")
    p.add_argument("--eval-steps", type=int, default=None, help=f"PGD steps of robust evaluation (default {d.eval_steps})")
    p.add_argument("--eps", type=float, default=1.0, help="Linf radius in /255 (default 1)")
    p.add_argument("--classes", type=int, default=d.classes, help="number of class prompts (default %(default)s)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed repeats, median kept (default {d.repeats})")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed warm-up rounds (default {d.warmup})")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    p.add_argument("--attack-amp", action="store_true",
                   help="the training attack under the step's bf16 autocast too (train --attack-amp); default fp32")
    p.add_argument("--eval-eps", type=float, default=None, help="eps of the early-stop study in /255 (default: --eps)")
    p.add_argument("--eval-step-size", type=float, default=None,
                   help="PGD step of the early-stop study in /255 (default: its eps)")
    p.add_argument("--eval-model", default=d.eval_model, help="model of the early-stop study (default %(default)s)")
    p.add_argument("--eval-datasets", default=None, help=f"datasets of the early-stop study (default {d.eval_datasets})")
    p.add_argument("--eval-limit", type=int, default=None, help=f"samples per dataset there (default {d.eval_limit})")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="what to run, comma-separated: steps (training step per method), attack (PGD alone and "
                        "robust eval), study (early-stop study); default all")
    p.add_argument("--quick", action="store_true", help="one repeat, no warm-up, a small early-stop study (smoke test)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--markdown", default=None, help="write the Markdown summary here")
    p.set_defaults(func=_run_cli)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    d = BenchConfig()
    check(args.method == "all" or args.method in METHODS,
          f"Unknown method '{args.method}' for bench: choose all or one of {', '.join(METHODS)}.")
    check_number("eps", args.eps, low=0, high=255)
    picked = {k: getattr(args, k) for k in ("repeats", "warmup", "eval_limit", "eval_datasets", "eval_steps")}
    resolved = {k: v if v is not None else (QUICK[k] if args.quick else getattr(d, k)) for k, v in picked.items()}
    return BenchConfig(arch=args.arch, batch_size=args.batch_size, device=args.device,
                       methods=list(METHODS) if args.method == "all" else [args.method], pgd_steps=args.pgd_steps,
                       eps=args.eps / 255, eval_eps=None if args.eval_eps is None else args.eval_eps / 255,
                       eval_step_size=None if args.eval_step_size is None else args.eval_step_size / 255,
                       classes=args.classes, amp=args.amp, attack_amp=args.attack_amp, seed=args.seed,
                       parts=[p.strip() for p in args.parts.split(",") if p.strip()], eval_model=args.eval_model,
                       **resolved)


def _run_cli(args) -> int:
    import sys

    cfg = config_from_args(args)
    report = run_bench(cfg, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(to_markdown(report))
    print(to_markdown(report) if args.out else text)
    return 0
