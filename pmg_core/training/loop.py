"""The fine-tuning loop: only the image encoder trains; the text side and f_o stay frozen.

`Trainer(cfg).run()` is a generator of progress events (dicts with an "event" key: start, step,
checkpoint, skipped, stopped, done) that the CLI shows with tqdm and the app streams; `train(cfg)`
runs it to the end. Runs are seeded and resumable exactly: the data order is a function of
(seed, epoch), and optimizer, schedule and RNG state are saved beside each checkpoint.

Under torchrun every rank is seeded alike and draws the random starts of the whole global batch
(keeping its own rows), so a run on N processes sees the noise a one-process run sees, every
rank's RNG state equals the one-process state, and a checkpoint resumes exactly on any world size.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from ..models.checkpoints import (load_tensors, load_training_state, load_visual_into, read_metadata, save_finetune,
                          save_training_state, visual_state)
from ..data.datasets import ZeroShotDataset, get_dataset
from ..core.errors import UserError, check, check_number, shorten
from ..core.env import check_device, default_device
from .methods import MethodSettings, get_method
from ..data.paper_prompts import check_prompts
from ..models.clip import ClipModel, ZeroShotClassifier, frozen_copy, load_model
from ..core.units import to_255


@dataclass
class TrainConfig:
    model: str = "clip-tiny"
    method: str = "pmg-aft"
    dataset: str = "synth-finetune"
    data_root: str | None = None
    eps: float = 1 / 255  # pixel units
    attack_steps: int = 2
    step_size: float | None = 1 / 255
    alpha: float = 1.0
    beta: float = 1.0
    tga_alpha: float = 0.08
    tga_beta: float = 0.05
    preset: str = "paper"
    prompts: str = "public-code"  # class names and templates of the paper's datasets (paper_prompts.py)
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 256  # global batch size (split across processes under torchrun)
    lr: float = 5e-5
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup: int = 1000
    seed: int = 0
    limit: int | None = None  # use at most this many training samples
    train_last_n: int | None = None  # train only the last N tensors of the image encoder
    out: str | None = None  # checkpoint path (.safetensors); None: no checkpoint
    download: bool | None = None  # fetch a missing dataset (None: when online; the public app: never)
    save_every: int = 0  # also checkpoint every N steps (0: only at the end / on stop)
    resume: bool = False  # continue from `out` and its .state file
    keep_state: bool = False  # keep the .state file after a finished run
    device: str | None = None
    amp: bool = True  # bf16 autocast for the loss passes on CUDA (CPU always runs fp32)
    # Also run the training attack under that autocast (on a CPU, under bf16 autocast of its own where
    # the CPU has bf16 instructions): faster, but not the paper's numerics (its attacks run in fp32, as
    # they do here by default). public-code's fp16 attacks ignore it.
    attack_amp: bool = False
    attack_tf32: bool = False  # the training attack's fp32 passes with TF32 matrix products on CUDA (off: the paper's)
    # torch.compile the image encoders (trained and frozen): the same losses and gradients within float
    # tolerance (tests/test_train.py), fewer launches on a GPU; the first steps pay the compilation.
    compile: bool = False
    num_workers: int = 0
    max_bad_steps: int = 10  # non-finite losses tolerated (each skipped) before stopping
    extra_metadata: dict = field(default_factory=dict)

    def validate(self) -> None:
        check_number("epochs", self.epochs, low=1, integer=True)
        if self.max_steps is not None:
            check_number("max steps", self.max_steps, low=1, integer=True)
        check_number("batch size", self.batch_size, low=1, integer=True)
        check_number("learning rate", self.lr, low=0, low_open=True)
        check_number("seed", self.seed, low=0, high=2**32 - 1, integer=True)  # torch seeds overflow beyond int64
        check_number("momentum", self.momentum, low=0, high=1)
        check_number("weight decay", self.weight_decay, low=0)
        check_number("warm-up steps", self.warmup, low=0, integer=True)
        check_number("save_every", self.save_every, low=0, integer=True)
        if self.train_last_n is not None:
            check_number("train_last_n", self.train_last_n, low=1, integer=True)
        check(not self.resume or bool(self.out), "resume needs the checkpoint path (out) to resume from.")
        check(isinstance(self.extra_metadata, dict) and all(isinstance(k, str) for k in self.extra_metadata),
              f"extra_metadata must be a mapping of names to values; got {shorten(self.extra_metadata)}.")
        check_device(self.device)
        check_prompts(self.prompts)
        self.method_settings().validate()

    def method_settings(self) -> MethodSettings:
        return MethodSettings(self.eps, self.attack_steps, self.step_size, self.alpha, self.beta, self.preset,
                              self.attack_amp, self.attack_tf32, tga_alpha=self.tga_alpha, tga_beta=self.tga_beta)


def state_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".state")


class EpochBatches(Sampler[list[int]]):
    """Global batches from a permutation fixed by (seed, epoch); rank r takes every world-th index.

    Resume skips `skip` batches of the first epoch, so a resumed run sees exactly the batches an
    uninterrupted run would have.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, skip: int = 0, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.epoch, self.skip, self.rank, self.world = n, batch_size, seed, epoch, skip, rank, world

    def __len__(self) -> int:
        return self.n // self.batch_size - self.skip

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch)).tolist()
        for b in range(self.skip, self.n // self.batch_size):
            yield perm[b * self.batch_size : (b + 1) * self.batch_size][self.rank :: self.world]


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """One fine-tune. `model` and `data` (a ZeroShotDataset) are loaded from cfg.model / cfg.dataset
    unless given: callers that build their own (the app, the benchmark's random images) pass them in."""

    def __init__(self, cfg: TrainConfig, model: ClipModel | None = None, rank: int = 0, world: int = 1,
                 data: ZeroShotDataset | None = None):
        cfg.validate()
        self.cfg, self.rank, self.world = cfg, rank, world
        check(cfg.batch_size % world == 0, f"The global batch size {cfg.batch_size} must divide evenly over {world} processes.")
        self.device = torch.device(cfg.device or default_device())
        self.method = get_method(cfg.method, cfg.method_settings())
        self.method.shard = (rank, world)
        self.data_name = cfg.dataset if data is None else data.name  # what the checkpoint records
        if data is None:
            data = get_dataset(cfg.dataset, split="train", root=cfg.data_root, prompts=cfg.prompts, download=cfg.download)
        data = data.limited(cfg.limit, cfg.seed)
        check(len(data) >= cfg.batch_size,
              f"The training set has {len(data)} samples, fewer than one batch of {cfg.batch_size}; lower the batch size.")
        self.data = data
        self.model = (model or load_model(cfg.model, device=self.device)).to(self.device)
        self.steps_per_epoch = len(data) // cfg.batch_size
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch

        visual = self.model.visual
        # Freeze the text side only: clip.visual may be another model's encoder (fork() shares clip).
        for name, p in self.model.clip.named_parameters():
            if not name.startswith("visual."):
                p.requires_grad_(False)
        visual.requires_grad_(False)
        params = list(visual.parameters())
        if cfg.train_last_n:
            params = params[-cfg.train_last_n :]
        for p in params:
            p.requires_grad_(True)
        self.params = params
        self.classifier: ZeroShotClassifier = self.model.classifier(data.classes, data.templates, cfg.preset, exact=True)
        self.original = None
        if self.method.needs_original:
            self.original = self.classifier.with_visual(frozen_copy(visual))
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(cfg.warmup, self.total_steps))
        self.step = 0
        self.bad_steps = 0
        # Hook for DDP: the module whose forward computes the loss passes (the classifier itself by default).
        if cfg.compile:
            check(world == 1, "compile runs in one process for now; leave it off under torchrun.")
            self._compile_encoders()
        self.train_module: torch.nn.Module = self.classifier
        if world > 1:
            self.train_module = self._ddp_classifier()

    def _compile_encoders(self) -> None:
        """torch.compile the encoders the step runs (the trained one and f_o); the model keeps the plain
        modules, so checkpoints and other classifiers of it are unchanged."""
        self.classifier.visual = torch.compile(self.classifier.visual)
        if self.original is not None:
            self.original.visual = torch.compile(self.original.visual)

    def _ddp_classifier(self) -> ZeroShotClassifier:
        """The classifier again, its image encoder wrapped in DDP (gradients averaged over ranks).

        Only the trained encoder is wrapped; the text features and f_o stay plain per-process
        modules. DDP broadcasts rank 0's weights here, so every rank starts from the same model.
        """
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(self.model.visual, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                      forward_sync_buffers=False)
        return self.classifier.with_visual(ddp)

    def _all_ranks(self, values: list[float]) -> list[float]:
        """Per-rank values summed over ranks (one small collective); identity in one process."""
        if self.world == 1:
            return values
        from .distributed import Dist, all_reduce_sum

        return all_reduce_sum(torch.tensor(values, dtype=torch.float64), Dist(self.rank, self.world, device=self.device)).tolist()

    # -- checkpoints ----------------------------------------------------------------------------
    def _metadata(self, metrics: dict) -> dict:
        c = self.cfg
        return {"method": c.method, "method_settings": asdict(c.method_settings()), "eps": c.eps,
                "eps_255": to_255(c.eps), "attack_steps": c.attack_steps, "data": self.data_name,
                "train_samples": len(self.data), "epochs": self.step / max(1, self.steps_per_epoch),
                "steps": self.step, "batch_size": c.batch_size, "lr": c.lr, "seed": c.seed, "preset": c.preset,
                "prompts": c.prompts, "metrics": metrics, **c.extra_metadata}

    def save(self, metrics: dict, with_state: bool) -> Path | None:
        if not self.cfg.out or self.rank != 0:
            return None
        path = save_finetune(self.cfg.out, self.model, self._metadata(metrics))
        if with_state:
            save_training_state(state_path(path), self.optimizer, self.scheduler, self.step,
                                {"bad_steps": self.bad_steps, "config": _jsonable(asdict(self.cfg))},
                                weights=visual_state(self.model), device=self.device)
        return path

    def _resume(self) -> None:
        path = Path(self.cfg.out).with_suffix(".safetensors")
        check(path.is_file(), f"Nothing to resume: '{path}' does not exist.")
        meta = read_metadata(path)
        check(meta.get("base") == self.model.base,
              f"'{path.name}' fine-tunes {meta.get('base')}, not {self.model.base}; resume with the same base model.")
        c = self.cfg
        for key, mine in (("method", c.method), ("data", self.data_name), ("batch_size", c.batch_size), ("lr", c.lr),
                          ("seed", c.seed), ("eps", c.eps), ("attack_steps", c.attack_steps)):
            check(key not in meta or meta[key] == mine,
                  f"'{path.name}' was trained with {key} {meta.get(key)!r}, not {mine!r}; resume with the run's own "
                  "settings, or start a new run with another --out.")
        load_visual_into(self.model, load_tensors(path), f"'{path.name}'")
        state = load_training_state(state_path(path), self.optimizer, self.scheduler, device=self.device)
        # The state holds the weights of its own step: a kill between writing the checkpoint and its
        # state must not pair step-k weights with the step-(k-1) optimizer and schedule.
        weights = {k: v for k, v in load_tensors(state_path(path)).items() if k.startswith("visual.")}
        if weights:
            load_visual_into(self.model, weights, f"'{state_path(path).name}'")
        self.step, self.bad_steps = int(state["step"]), int(state.get("bad_steps", 0))

    # -- the loop -------------------------------------------------------------------------------
    def _loader(self, epoch: int, skip: int) -> DataLoader:
        sampler = EpochBatches(len(self.data), self.cfg.batch_size, self.cfg.seed, epoch, skip, self.rank, self.world)
        # Its own generator: creating a loader must not draw from the global RNG that PGD uses.
        return DataLoader(self.data.data, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def autocast(self):
        """The precision of the loss passes: bf16 autocast on CUDA when cfg.amp, else a no-op."""
        enabled = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict | None:
        self.classifier.train()
        with self.autocast():
            out = self.method(self.train_module, self.original, x, y)
        # Every rank must skip together, or DDP's gradient all-reduce would wait forever.
        if self._all_ranks([float(not torch.isfinite(out.loss))])[0] > 0:
            return self._skip_bad_step()
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        # A finite loss can still give NaN/inf gradients (overflow inside backward): a bad step too,
        # or one optimizer step would poison the weights and every checkpoint after it.
        if not all(bool(torch.isfinite(p.grad).all()) for p in self.params if p.grad is not None):
            return self._skip_bad_step()
        self.optimizer.step()
        self.scheduler.step()
        # No logit-scale clamp here: the scale is frozen with the text side (and may be shared with
        # other models); ClipModel.logit_scale clamps what classifiers read to [1, 100].
        names = ["loss", *out.metrics]
        # Equal shares of the global batch: the mean of per-rank means is the global mean (methods
        # scale batch sums by world, see methods.py).
        values = self._all_ranks([out.loss.item(), *out.metrics.values()])
        return {k: v / self.world for k, v in zip(names, values)}

    def _skip_bad_step(self) -> None:
        """Count a step whose loss or gradients were NaN/inf and drop its gradients; too many stop the run."""
        self.bad_steps += 1
        check(self.bad_steps <= self.cfg.max_bad_steps,
              f"Training stopped: the loss or its gradients were NaN/inf on {self.bad_steps} steps "
              f"(limit {self.cfg.max_bad_steps}); lower the learning rate or eps. The last good checkpoint is kept.")
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, should_stop: Callable[[], bool] | None = None) -> Iterator[dict]:
        if self.cfg.resume:
            self._resume()  # restores the RNG state, which every rank shares whatever the world size
        if self.step == 0:
            torch.manual_seed(self.cfg.seed)
        start, metrics = time.time(), {}
        yield {"event": "start", "total": self.total_steps, "step": self.step, "train_samples": len(self.data),
               "classes": len(self.data.classes), "device": str(self.device)}
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        while self.step < self.total_steps:
            for x, y in self._loader(epoch, skip):
                if should_stop is not None and should_stop():
                    # Stopped before any step: nothing was learnt, so nothing is saved.
                    path = self.save(metrics, with_state=True) if self.step else None
                    yield {"event": "stopped", "step": self.step, "path": str(path) if path else None}
                    return
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                try:
                    m = self.train_step(x, y)
                except UserError:
                    if self.step:
                        self.save(metrics, with_state=True)
                    raise
                if m is None:
                    yield {"event": "skipped", "step": self.step, "bad_steps": self.bad_steps}
                    continue
                self.step += 1
                metrics = m
                yield {"event": "step", "step": self.step, "total": self.total_steps, "epoch": epoch,
                       "lr": self.scheduler.get_last_lr()[0], "elapsed": time.time() - start, **m}
                if self.cfg.save_every and self.step % self.cfg.save_every == 0 and self.step < self.total_steps:
                    path = self.save(metrics, with_state=True)
                    if path:
                        yield {"event": "checkpoint", "step": self.step, "path": str(path)}
                if self.step >= self.total_steps:
                    break
            epoch, skip = epoch + 1, 0
        path = self.save(metrics, with_state=self.cfg.keep_state)
        if path and not self.cfg.keep_state and state_path(path).exists():
            state_path(path).unlink()
        yield {"event": "done", "step": self.step, "path": str(path) if path else None, "metrics": metrics,
               "elapsed": time.time() - start}


def _jsonable(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, type(None), dict, list))}


def train(cfg: TrainConfig, progress: bool = True, model: ClipModel | None = None, rank: int = 0,
          world: int = 1) -> dict:
    """Run a fine-tune to the end; returns the final 'done' event. Shows a tqdm bar if progress.

    Under torchrun pass this process's rank and the world size: only rank 0 shows progress and
    writes the checkpoint.
    """
    from tqdm.auto import tqdm

    trainer = Trainer(cfg, model=model, rank=rank, world=world)
    progress = progress and rank == 0
    bar, last = None, {}
    for ev in trainer.run():
        if ev["event"] == "start" and progress:
            bar = tqdm(total=ev["total"], initial=ev["step"], desc=f"{cfg.method} on {cfg.dataset}", unit="step")
        elif ev["event"] == "step" and bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in ev.items() if k in ("loss", "adv_acc", "acc")})
        last = ev
    if bar is not None:
        bar.close()
    return last
