"""Attack one image and compare models on it: the logic behind `pmg_core attack` and the app's
first tab. Adversarial images are quantized to 8 bits inside the eps-ball before they are judged,
so what a person downloads as PNG is exactly what the models were shown, and a valid attack.
The attack's gradient passes run in the precision precision.attack_precision picks for each model
(bf16 autocast on a CPU with bf16 instructions, for large models); every verdict is an fp32
judgement of the 8-bit image, and says which precision made it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Sequence

import torch

from ..attacks.pgd import EOTPGD, PGD, margin_loss
from ..attacks.defenses import defend, get_defense
from ..data.datasets import list_groups
from ..core.errors import check, check_number
from ..data.images import center_square, quantize
from ..models.clip import ClipModel
from ..data.presets import DEFAULT_TEMPLATES
from ..data.paper_datasets import imagenet_names
from ..core.threads import own_threads
from ..core.precision import CHOICES as PRECISIONS, AttackPrecision, attack_precision
from ..core.units import to_255

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Prediction:
    labels: list[str]  # top-k labels, best first
    probs: list[float]
    true_prob: float | None
    correct: bool | None  # top-1 == true label
    target_prob: float | None = None  # probability of the target class of a targeted attack


@dataclass
class DefendedVerdict:
    """The same model behind a test-time defense (settings.defense)."""

    defense: str
    clean: Prediction  # on the clean image
    adversarial: Prediction  # on the verdict's adversarial image: an attack unaware of the defense
    adaptive: Prediction  # on an image attacked through the defense (BPDA + EOT), its own
    adaptive_image: torch.Tensor  # [3,H,W], quantized


@dataclass
class ModelVerdict:
    model: str
    clean: Prediction
    adversarial: Prediction
    attacked_by: str  # the model whose gradients made the adversarial image
    adv_image: torch.Tensor  # [3,H,W], quantized
    steps_taken: int | None = None  # PGD steps that made adv_image (None: transferred to this model)
    precision: AttackPrecision | None = None  # the passes that made adv_image (its verdict is fp32 whatever they were)
    stop_margin: float | None = None  # the margin that could stop that attack early (None: it ran every step)
    defended: DefendedVerdict | None = None

    @property
    def confidence_drop(self) -> float | None:
        if self.clean.true_prob is None:
            return None
        return self.clean.true_prob - self.adversarial.true_prob

    @property
    def target_gain(self) -> float | None:
        """How much a targeted attack raised the target class's probability."""
        if self.clean.target_prob is None:
            return None
        return self.adversarial.target_prob - self.clean.target_prob


@dataclass
class AttackSettings:
    eps: float = 4 / 255  # pixel units
    steps: int = 10
    step_size: float | None = None
    norm: str = "Linf"
    loss: str = "ce"
    target: str | None = None  # a class name for a targeted attack
    source: str | None = None  # attack this model and transfer to all; None: each attacked itself
    max_side: int = 224  # attack at most at this resolution (the models see 224 px or less)
    # Stop attacking a model once an iterate fools it by this many logits (the wrong class, or the
    # target, ahead by it) and its 8-bit image still fools it; None: every model gets every step.
    stop_margin: float | None = None
    defense: str = "none"  # also judge each model behind this test-time defense (pmg_core.attacks.defenses)
    eot: int = 4  # the attack through the defense: gradients per step, each through a fresh draw
    # Models attacked at once, each lane on its share of torch's CPU threads (cpu_lanes picks it);
    # 1: one after the other. The same attacks and verdicts either way, only sooner.
    lanes: int = 1
    # What each model pass waits for first (`with gate(): ...`): a public server's turn among its
    # visitors (studio/turns.py). None: every pass runs at once. The same verdicts either way.
    gate: Callable[[], ContextManager] | None = field(default=None, compare=False, repr=False)

    def turn(self) -> ContextManager:
        return self.gate() if self.gate is not None else contextlib.nullcontext()
    # The attack passes' precision (precision.py): auto, fp32 or bf16; None: $PMG_ATTACK_DTYPE.
    precision: str | None = None

    def validate(self, classes: Sequence[str], model_names: Sequence[str]) -> None:
        check_number("eps", self.eps, low=0, high=1 if self.norm == "Linf" else 100)
        check_number("steps", self.steps, low=0, high=500, integer=True)
        if self.step_size is not None:
            check_number("step size", self.step_size, low=0, high=1)
        check(self.target is None or self.target in classes, f"The target class '{self.target}' is not among the labels.")
        if self.stop_margin is not None:
            check_number("stop margin", self.stop_margin, low=0, high=100)
        check(self.source is None or self.source in model_names,
              f"The source model '{self.source}' is not loaded; choose one of {', '.join(model_names)}.")
        get_defense(self.defense)
        check_number("EOT samples", self.eot, low=1, high=64, integer=True)
        check_number("lanes", self.lanes, low=1, high=64, integer=True)
        check(self.precision is None or self.precision in PRECISIONS,
              f"The attack precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")


@dataclass
class Comparison:
    image: torch.Tensor  # the clean image as attacked, [3,H,W]
    classes: list[str]
    true_label: str | None
    verdicts: list[ModelVerdict] = field(default_factory=list)

    def to_dict(self, settings: AttackSettings, radii: Sequence["Radius"] = ()) -> dict:
        """The comparison as plain JSON data (no images): the app's details and `attack --json` write this;
        with `radii` (robustness_radius of each model), under "radius"."""
        extra = {"radius": [dataclasses.asdict(r) for r in radii]} if radii else {}
        return {"eps_255": to_255(settings.eps), "steps": settings.steps, "norm": settings.norm,
                "true_label": self.true_label, "target": settings.target,
                "defense": settings.defense,
                "verdicts": [{"model": v.model, "attacked_by": v.attacked_by, "clean": vars(v.clean),
                              "adversarial": vars(v.adversarial), "confidence_drop": v.confidence_drop,
                              "target_gain": v.target_gain, "steps_taken": v.steps_taken,
                              "stop_margin": v.stop_margin,
                              "attack_precision": v.precision.name if v.precision else None,
                              "attack_precision_reason": v.precision.reason if v.precision else None,
                              **({"defended": {k: vars(p) for k, p in vars(v.defended).items()
                                               if isinstance(p, Prediction)}} if v.defended else {})}
                             for v in self.verdicts], **extra}


def prepare_image(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """Center-square crop and downscale to max_side, then quantize: the exact clean input."""
    x = center_square(image)
    if x.shape[-1] > max_side:
        x = torch.nn.functional.interpolate(x[None], size=(max_side, max_side), mode="bicubic",
                                            antialias=True, align_corners=False)[0]
    return quantize(x)


def quantize_in_ball(clean: torch.Tensor, adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Round `adv` to the 8-bit grid without leaving the eps-ball around `clean` (itself on the grid).

    Plain rounding can step out of the ball when eps is not a whole number of levels (eps 1.5/255
    rounds a 1.5-level change up to 2). Linf: each change is rounded, then clipped to
    floor(eps * 255) levels. L2: rounded if that stays inside, else scaled into the ball and
    truncated toward the clean image, which only shrinks every change.
    """
    levels = eps * 255 + 1e-6  # the budget in grey levels; the slack absorbs float error in eps itself
    base = torch.round(clean * 255)
    delta = torch.round(adv * 255) - base
    if norm == "Linf":
        delta = delta.clamp(-math.floor(levels), math.floor(levels))
    elif delta.double().norm() > levels:
        raw = (adv * 255 - base).double()
        delta = torch.trunc(raw * min(1.0, levels / float(raw.norm().clamp_min(1e-12)))).to(delta.dtype)
    return (base + delta).clamp(0, 255) / 255  # clipping to the pixel range only shrinks a change


def prediction(logits: torch.Tensor, classes: Sequence[str], true_idx: int | None, k: int = 5,
               target_idx: int | None = None) -> Prediction:
    """Top-k of one image's logits ([1, C] or [C])."""
    probs = logits.reshape(-1).float().softmax(0)
    top = probs.topk(min(k, len(classes)))
    return Prediction([classes[i] for i in top.indices.tolist()], [round(float(p), 6) for p in top.values],
                      None if true_idx is None else float(probs[true_idx]),
                      None if true_idx is None else int(top.indices[0]) == true_idx,
                      None if target_idx is None else float(probs[target_idx]))


@torch.no_grad()
def predict(clf, x: torch.Tensor, classes: Sequence[str], true_idx: int | None, k: int = 5,
            target_idx: int | None = None) -> Prediction:
    return prediction(clf(x[None]), classes, true_idx, k, target_idx)


def compare(models: Sequence[ClipModel], image: torch.Tensor, classes: Sequence[str], true_label: str | None,
            settings: AttackSettings, templates: Sequence[str] = DEFAULT_TEMPLATES) -> Comparison:
    """Attack `image` (each model itself, or one source model transferred) and collect top-k verdicts,
    in the models' order: iter_compare run to its end."""
    for event in iter_compare(models, image, classes, true_label, settings, templates):
        pass
    return event["comparison"]


@dataclass
class _Attacked:
    """One model of a comparison: its classifier, its clean logits, and its attack while under way."""

    index: int  # position among the models compared
    model: ClipModel
    clf: torch.nn.Module
    clean_logits: torch.Tensor  # [1, C], judged once for the clean verdict and the attack
    passes: Iterator | None = None  # PGD.iterate's passes
    taken: int = 0  # gradient passes run so far
    steps: int | None = None  # ascents that made the adversarial image, once a margin stopped the attack
    clean_lead: float = -math.inf  # how far the attack's goal leads on the clean image (see _Setup.lead)
    lead: float = -math.inf  # the same at the attack's last pass
    alpha: float = 0.0  # the attack's step size
    pace: float = 0.0  # what one ascent should add to the attack loss, to first order (step x gradient norm)
    adv_logits: torch.Tensor | None = None  # the logits of the image a margin stop judged (no second forward)
    adv: torch.Tensor | None = None  # the adversarial image, once the attack is over
    precision: AttackPrecision | None = None  # its attack's passes (set by _Setup.start)


class _Setup:
    """The checked inputs of one comparison, and the steps every attack of it shares."""

    def __init__(self, models, image, classes, true_label, settings: AttackSettings, templates):
        check(len(models) > 0, "Load at least one model.")
        self.classes = [c.strip() for c in classes]
        settings.validate(self.classes, [m.name for m in models])
        check(true_label is not None or settings.target is not None,
              "Give the true label (untargeted attack) or a target class (targeted attack).")
        check(true_label is None or true_label in self.classes, f"The true label '{true_label}' is not among the labels.")
        self.models, self.settings, self.templates, self.true_label = list(models), settings, templates, true_label
        self.x = prepare_image(image, settings.max_side)
        self.true_idx = self.classes.index(true_label) if true_label is not None else None
        self.target_idx = self.classes.index(settings.target) if settings.target is not None else None
        # The class the attack moves toward (targeted) or away from (untargeted).
        self.goal = self.target_idx if self.target_idx is not None else self.true_idx

    @torch.no_grad()
    def judge_clean(self, index: int, m: ClipModel) -> _Attacked:
        if self.settings.gate is not None:  # the labels' text features, batch by batch, each in its turn
            m.text_features(self.classes, self.templates, turn=self.settings.gate)
        with self.settings.turn():
            clf = m.classifier(self.classes, self.templates).eval()  # text features cached per (model, labels)
            logits = clf(self.x[None].to(m.device))
        lead = self.lead(logits)
        return _Attacked(index, m, clf, logits, clean_lead=lead, lead=lead)

    def lead(self, logits: torch.Tensor) -> float:
        """How far the attack's goal leads, in logits: the best wrong class over the true one
        (untargeted), the target over the best other class (targeted); > 0 means fooled."""
        y = torch.tensor([self.goal], device=logits.device)
        margin = float(margin_loss(logits.float(), y)[0])
        return -margin if self.target_idx is not None else margin

    def pgd(self, clf, eot: int | None = None, dtype: torch.dtype | None = None) -> PGD:
        """The comparison's attack on `clf`, its passes in `dtype` (None: fp32); with `eot`, through a
        randomised defense (EOTPGD)."""
        s = self.settings
        kind, extra = (PGD, {}) if eot is None else (EOTPGD, {"eot": eot})
        return kind(clf, s.eps, s.step_size, s.steps, s.norm, s.loss, random_start=False, dtype=dtype, **extra)

    def labels(self, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the attack's labels, its target or None) as PGD.run takes them."""
        y = torch.tensor([self.goal], device=device)
        return y, (y if self.target_idx is not None else None)

    def start(self, job: _Attacked) -> None:
        job.precision = attack_precision(job.model.device, job.model.visual, self.settings.precision)
        pgd = self.pgd(job.clf, dtype=job.precision.dtype)
        job.alpha = pgd.alpha
        y, target = self.labels(job.clean_logits.device)
        job.passes = pgd.iterate(self.x[None].to(y.device), y, target=target, clean_logits=job.clean_logits)

    def advance(self, job: _Attacked) -> torch.Tensor | None:
        """One gradient pass of `job`'s attack; the adversarial image (quantized) once it is over:
        after its last step, or, with a stop margin, at the first iterate that leads by the margin
        and still fools the model once quantized."""
        try:
            with self.settings.turn():
                step = next(job.passes)
        except StopIteration as end:
            job.passes = None
            return self.quantized(end.value.adv[0])
        job.taken += 1
        job.lead = self.lead(step.logits)
        # An ascent of alpha along sign(grad) (Linf) or grad/|grad| (L2) gains alpha * the dual norm.
        job.pace = job.alpha * float(step.grad.abs().sum() if self.settings.norm == "Linf" else step.grad.norm())
        margin = self.settings.stop_margin
        # Not at the starting point: the image shown must be one the attack made, a step or more in.
        if margin is not None and step.step >= 1 and job.lead >= margin:
            adv = self.quantized(step.images[0])
            with torch.no_grad(), self.settings.turn():
                logits = job.clf(adv[None].to(job.clean_logits.device))
            if self.lead(logits) > 0:  # what the page shows fools the model: stop here
                job.passes, job.adv_logits, job.steps = None, logits, step.step
                return adv
        return None

    def passes_to_stop(self, job: _Attacked) -> float:
        """A guess of the passes `job` still needs to lead by the stop margin, at its first-order pace
        (it only decides which model goes next)."""
        return (self.settings.stop_margin - job.lead) / job.pace if job.pace > 0 else math.inf

    def quantized(self, adv: torch.Tensor) -> torch.Tensor:
        return quantize_in_ball(self.x, adv.detach().cpu(), self.settings.eps, self.settings.norm)

    def verdict(self, job: _Attacked, adv: torch.Tensor, attacked_by: str, steps_taken: int | None,
                precision: AttackPrecision | None) -> ModelVerdict:
        """`job`'s model on the clean image and on `adv`, both judged in fp32 (`adv` is on the 8-bit grid)."""
        logits = job.adv_logits
        if logits is None:
            with torch.no_grad(), self.settings.turn():
                logits = job.clf(adv[None].to(job.clean_logits.device))
        judged = [prediction(lg, self.classes, self.true_idx, target_idx=self.target_idx)
                  for lg in (job.clean_logits, logits)]
        return ModelVerdict(job.model.name, *judged, attacked_by, adv, steps_taken, precision,
                            self.settings.stop_margin if steps_taken is not None else None,
                            self.behind_defense(job, adv) if self.settings.defense != "none" else None)

    def behind_defense(self, job: _Attacked, adv: torch.Tensor) -> DefendedVerdict:
        """The model behind settings.defense: on the clean image, on `adv` (an attack unaware of the
        defense) and on its own image attacked through the defense (EOT, run to its end)."""
        s, dev = self.settings, job.model.device
        defended = defend(job.model, job.clf, s.defense)
        y, target = self.labels(dev)
        passes = self.pgd(defended, s.eot).iterate(self.x[None].to(dev), y, target=target)
        while True:  # pass by pass, each in its turn
            try:
                with s.turn():
                    next(passes)
            except StopIteration as end:
                through = self.quantized(end.value.adv[0])
                break
        defended.reseed()  # the verdicts' draws do not depend on how many the attack took
        with s.turn():
            judge = [predict(defended, img.to(dev), self.classes, self.true_idx, target_idx=self.target_idx)
                     for img in (self.x, adv, through)]
        return DefendedVerdict(s.defense, *judge, through)


def iter_compare(models: Sequence[ClipModel], image: torch.Tensor, classes: Sequence[str], true_label: str | None,
                 settings: AttackSettings, templates: Sequence[str] = DEFAULT_TEMPLATES) -> Iterator[dict]:
    """compare() as a stream of events, each model's verdict as soon as that model is done.

    Events (dicts with an "event" key, as Trainer.run yields): "step" after every gradient pass
    (model, step, steps, done, total), "verdict" (verdict, done, total) in the order the models
    finish, then "done" with the Comparison, its verdicts in the models' order. Without a stop
    margin the models are attacked in their order, exactly as compare() always did: one after the
    other, or settings.lanes at a time (the same attacks, sooner on a CPU with several threads).
    With settings.stop_margin, a model's attack stops once an iterate fools it by that many logits
    (checked on the 8-bit image it would show; a step or more in), and after every model's first
    pass the models go on in the order in which the steepness of their loss says they will be
    fooled, so a non-robust original CLIP reports first. Each model's clean image is judged once,
    for its verdict and its attack; its text features come from the model's cache
    (ClipModel.text_features).
    """
    setup = _Setup(models, image, classes, true_label, settings, templates)
    total = len(setup.models)
    out = Comparison(setup.x, setup.classes, true_label)
    done: list[ModelVerdict | None] = [None] * total

    counting = threading.Lock()  # lanes finish models concurrently: each verdict event counts once

    def finished(job: _Attacked, adv: torch.Tensor, attacked_by: str, steps_taken: int | None,
                 precision: AttackPrecision | None) -> dict:
        verdict = setup.verdict(job, adv, attacked_by, steps_taken, precision)
        with counting:
            done[job.index] = verdict
            return {"event": "verdict", "verdict": verdict, "done": sum(v is not None for v in done), "total": total}

    def ascents(job: _Attacked) -> int:
        """The steps that made the job's adversarial image: all of them unless a margin stopped it."""
        return job.steps if job.steps is not None else settings.steps

    def step_event(job: _Attacked) -> dict:
        return {"event": "step", "model": job.model.name, "step": job.taken, "steps": settings.steps,
                "done": sum(v is not None for v in done), "total": total}

    def attack(job: _Attacked, passes: float = math.inf) -> Iterator[dict]:
        """Up to `passes` more passes of `job`'s attack, a step event after each; its adversarial
        image on the job once the attack is over, and then (attacked itself) its verdict."""
        for _ in range(passes) if passes != math.inf else iter(int, 1):
            if job.passes is None:
                return
            adv = setup.advance(job)
            if adv is None:
                yield step_event(job)
                continue
            job.adv = adv
            if not settings.source:
                yield finished(job, adv, job.model.name, ascents(job), job.precision)
            return

    jobs = [setup.judge_clean(i, m) for i, m in enumerate(setup.models)]
    if settings.source:
        source = next(j for j in jobs if j.model.name == settings.source)
        setup.start(source)
        yield from attack(source)
        for job in [source] + [j for j in jobs if j is not source]:
            yield finished(job, source.adv, settings.source, ascents(source) if job is source else None,
                           source.precision)
    else:
        for job in jobs:
            setup.start(job)
        lanes = min(settings.lanes, total)
        order = jobs
        if settings.stop_margin is not None:
            # Every model's first pass (which every attack runs) shows how steep its loss is there:
            # the models likeliest to be fooled soonest (a non-robust original CLIP) go first.
            yield from _in_lanes([attack(job, 1) for job in jobs], lanes)
            order = sorted(jobs, key=setup.passes_to_stop)
        yield from _in_lanes([attack(job) for job in order], lanes)
    out.verdicts = list(done)
    yield {"event": "done", "comparison": out}


def cpu_lanes(models: Sequence[ClipModel]) -> int:
    """How many models to attack at once: on a CPU, one per torch thread (up to the models), since
    separate passes on one core each beat one small pass spread over every core (ViT-B/32, one
    image, 2 cores: 1.4x); on a GPU, 1 (the device is shared, its kernels already parallel)."""
    if any(m.device.type != "cpu" for m in models):
        return 1
    return max(1, min(torch.get_num_threads(), len(models)))


_LANE_DONE = object()


def _in_lanes(streams: list[Iterator[dict]], lanes: int) -> Iterator[dict]:
    """The streams' events (each stream one model's attack, an event per gradient pass) as they
    come, with one lane in this thread, stream after stream; with more, advanced by `lanes` worker
    threads one event at a time: the first unfinished stream in the list (the model likeliest to
    be fooled soonest) whenever it is free, the others, fewest events first, on the remaining lanes,
    so the last ones finish together rather than one after another on a single lane.

    Each worker runs torch on its share of this thread's CPU threads, set for that worker alone
    (pmg_core.core.threads): the process-wide count, which threads starting torch work meanwhile copy,
    never changes. A stream's events keep their order. Closing the stream stops the workers after
    their current pass; a worker's error is raised here.
    """
    if lanes <= 1:
        for stream in streams:
            yield from stream
        return
    events: queue.Queue = queue.Queue()
    stop, turn = threading.Event(), threading.Condition()
    ready, finished, taken = set(range(len(streams))), set(), [0] * len(streams)
    busy = 0  # streams being advanced right now
    threads = torch.get_num_threads()

    def pick() -> int:
        head = min(i for i in range(len(streams)) if i not in finished)
        return min(ready, key=lambda i: (i != head, taken[i], i))

    def worker() -> None:
        with own_threads(max(1, threads // lanes)):
            work()

    def work() -> None:
        nonlocal busy
        try:
            while True:
                with turn:
                    while not stop.is_set() and not ready and busy:
                        turn.wait()
                    if stop.is_set() or not ready:
                        return
                    i = pick()
                    ready.discard(i)
                    busy += 1
                event = None  # a pass that raises ends its stream
                try:
                    event = next(streams[i], None)
                    if event is not None:
                        events.put(event)  # before the stream is free again: its events stay in order
                finally:
                    with turn:
                        busy -= 1
                        taken[i] += 1
                        (ready if event is not None else finished).add(i)
                        turn.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            events.put(e)
        finally:
            events.put(_LANE_DONE)

    workers = [threading.Thread(target=worker, daemon=True, name=f"pmg-lane-{i}") for i in range(lanes)]
    for w in workers:
        w.start()
    try:
        ended = 0
        while ended < lanes:
            event = events.get()
            if event is _LANE_DONE:
                ended += 1
            elif isinstance(event, BaseException):
                raise event
            else:
                yield event
    finally:
        stop.set()
        with turn:
            turn.notify_all()
        for w in workers:
            w.join()


# The robustness radius's bisection: eps from 0 to RADIUS_HIGH_255 grey levels, to within
# RADIUS_TOLERANCE_255 (one grey level: a Linf change smaller than that cannot be written in an 8-bit PNG).
RADIUS_HIGH_255 = 16.0
RADIUS_TOLERANCE_255 = 1.0


@dataclass
class Radius:
    """One model's robustness radius on one image: the smallest eps at which PGD changes its answer."""

    model: str
    radius_255: float | None  # None: still right at high_255 (it holds beyond it); 0: wrong on the clean image
    high_255: float
    tolerance_255: float
    steps: int  # PGD steps of each attack of the bisection (step size 2.5 eps / steps)
    attacks: int  # PGD runs the bisection took


def radius_attacks(high_255: float = RADIUS_HIGH_255, tolerance_255: float = RADIUS_TOLERANCE_255) -> int:
    """The most PGD runs one model's bisection takes (the cost policy counts them like a sweep's radii)."""
    return 1 + max(0, math.ceil(math.log2(high_255 / tolerance_255)))


def robustness_radius(model: ClipModel, image: torch.Tensor, classes: Sequence[str], true_label: str,
                      settings: AttackSettings, high_255: float = RADIUS_HIGH_255,
                      tolerance_255: float = RADIUS_TOLERANCE_255,
                      templates: Sequence[str] = DEFAULT_TEMPLATES) -> Radius:
    """The smallest eps (in /255, to within tolerance_255) at which an untargeted PGD of settings.steps
    steps, judged on its 8-bit image as every verdict is, makes `model` answer other than `true_label`.

    Bisection: first PGD at high_255 (not fooled there: radius None), then halving [right, fooled]
    until it is tolerance_255 wide; the radius is its fooled end. It assumes that a larger eps fools at
    least as easily, which PGD makes likely but does not guarantee. Each attack stops at its first
    iterate whose 8-bit image fools the model. The tab's norm and loss are kept; its eps, step size,
    target, source and defense are not (the step size follows each eps: 2.5 eps / steps).
    """
    check(high_255 > 0 and tolerance_255 > 0, "The radius's upper bound and tolerance must be above 0.")
    probe = AttackSettings(eps=high_255 / 255, steps=settings.steps, norm=settings.norm, loss=settings.loss,
                           max_side=settings.max_side, gate=settings.gate)  # each pass in its turn, as the attack's
    setup = _Setup([model], image, classes, true_label, probe, templates)
    check(setup.true_idx is not None, "The robustness radius needs the true label.")
    job = setup.judge_clean(0, model)
    done = Radius(model.name, 0.0, high_255, tolerance_255, settings.steps, 0)
    if job.clean_logits.argmax(1).item() != setup.true_idx:
        return done  # already wrong on the clean image

    def fooled(eps_255: float) -> bool:
        done.attacks += 1
        setup.settings.eps = eps_255 / 255
        pgd = setup.pgd(job.clf)
        y, _ = setup.labels(job.clean_logits.device)
        passes = pgd.iterate(setup.x[None].to(y.device), y, clean_logits=job.clean_logits)
        while True:
            try:
                with setup.settings.turn():
                    step = next(passes)
            except StopIteration as end:
                return _wrong(setup, job, setup.quantized(end.value.adv[0]))
            if step.step >= 1 and int(step.logits.argmax(1)) != setup.true_idx \
                    and _wrong(setup, job, setup.quantized(step.images[0])):
                return True

    if not fooled(high_255):
        done.radius_255 = None
        return done
    low, high = 0.0, high_255
    while high - low > tolerance_255 + 1e-9:
        mid = (low + high) / 2
        low, high = (low, mid) if fooled(mid) else (mid, high)
    done.radius_255 = round(high, 4)
    return done


@torch.no_grad()
def _wrong(setup: _Setup, job: _Attacked, adv: torch.Tensor) -> bool:
    """Whether the model's top-1 on `adv` (an 8-bit image) is not the true label."""
    with setup.settings.turn():
        return int(job.clf(adv[None].to(job.clean_logits.device)).argmax(1)) != setup.true_idx


# Where an attack starts when nobody typed one (the app's tabs, the `attack` command): the benchmark
# protocol's threat model for the models at hand. eps is in pixel units of the image at its own size,
# so one number cannot fit every image: the paper's 1/255 (PGD-10, step 1/255: protocol tecoa16-pgd)
# is for CLIP ViT-B/32 on 224 px photos; on the embedded world's 32 px images it barely moves the
# original tiny CLIP, so its fine-tunes were trained, and are benchmarked, at 8/255 (PGD-10, step
# 2/255: protocol mini; docs/BENCHMARK.md, "Choosing eps for 32x32 images"). Read from the protocols
# themselves, so that a default and the benchmark never disagree.
EMBEDDED_PROTOCOL = "mini"
REAL_CLIP_PROTOCOL = "tecoa16-pgd"


@dataclass(frozen=True)
class StartingAttack:
    protocol: str
    eps_255: float
    steps: int
    step_255: float

    @property
    def why(self) -> str:
        """A note for an eps field: where its first value comes from."""
        return f"starts at {self.eps_255:g}: the `{self.protocol}` benchmark's eps for these models"


def is_real_clip(models: Sequence[ClipModel]) -> bool:
    """Models that see photos at a real CLIP's size (not the embedded world's 32 px)."""
    return any(m.image_size >= 128 for m in models)


def starting_attack(real_clip: bool) -> StartingAttack:
    """The first threat model of the protocol that fits the models (see the comment above)."""
    from .protocols import get_protocol

    name = REAL_CLIP_PROTOCOL if real_clip else EMBEDDED_PROTOCOL
    threat = get_protocol(name).threats[0]
    return StartingAttack(name, threat.eps_255[0], threat.steps, threat.step_size_255)


def label_presets(real_clip: bool) -> dict[str, list[str]]:
    """Label presets for one image: the embedded world's tasks, plus common sets for a real CLIP."""
    from ..data import synthetic

    out = {name: list(synthetic.TASKS[name].classes) for name in list_groups().get("mini", [])
           if name in synthetic.TASKS}
    if real_clip:
        imagenet = list(imagenet_names().values())
        out = {"CIFAR-10": CIFAR10, "ImageNet (1000 classes)": imagenet,
               "ImageNet (first 20 classes)": imagenet[:20], **out}
    return out
