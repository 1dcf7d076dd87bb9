"""Contrastive (CLIP) pretraining of a small CLIP on the embedded captioned world.

`python -m pmg_core pretrain` trains an architecture (default pmg-tiny) from random weights on
fresh batches of `synthetic.pretraining_batches` (images + captions; held-out colour-shape
combinations never shown) with the symmetric InfoNCE loss, AdamW and a warm-up + cosine schedule,
then measures clean zero-shot accuracy on the "mini" benchmark and saves a base checkpoint
(checkpoints/clip-tiny.safetensors) whose metadata records how it was made and what it scored.
Seeded and reproducible on a given machine and thread count.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..core.errors import check, check_number
from .loop import cosine_with_warmup

CHECK_LIMIT = 100  # images per mini task of the quick reproduction check stored in the metadata
DEFAULT_NAME = "clip-tiny.safetensors"  # in the checkpoint folder (pmg_core.core.env.checkpoint_dir())


@dataclass
class PretrainConfig:
    arch: str = "pmg-tiny"
    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 150
    loss: str = "multi-positive"  # "clip": plain symmetric InfoNCE; "multi-positive": see multi_positive_loss
    seed: int = 0
    threads: int | None = 2
    out: str | None = None  # None: DEFAULT_NAME in the checkpoint folder
    eval_limit: int | None = None  # test images per mini task for the final accuracies (None: all)
    device: str = "cpu"

    def validate(self) -> None:
        check_number("steps", self.steps, low=1, integer=True)
        check_number("batch size", self.batch_size, low=2, integer=True)
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("weight decay", self.weight_decay, low=0)
        check_number("warmup", self.warmup, low=0, integer=True)
        check(self.loss in LOSSES, f"Unknown loss '{self.loss}': use one of {', '.join(LOSSES)}.")
        if self.threads is not None:
            check_number("threads", self.threads, low=1, integer=True)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (features L2-normalised, logit_scale already exponentiated)."""
    logits = logit_scale * image_features @ text_features.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def multi_positive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                        matches: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every caption that truly describes an image counts as its positive.

    matches[i, j] is True when caption j describes image i (the diagonal always is). The target of
    each image (each caption) is uniform over its matching captions (images), so a short caption
    such as "a red shape" is not pushed away from the other red shapes of the batch.
    """
    logits = logit_scale * image_features @ text_features.t()
    m = matches.to(logits.dtype)
    to_text = m / m.sum(1, keepdim=True)
    to_image = m.t() / m.t().sum(1, keepdim=True)
    loss_i = -(to_text * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(to_image * logits.t().log_softmax(1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


LOSSES = ("clip", "multi-positive")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on gains, biases, embeddings' positions or logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "positional_embedding" in name or "class_embedding" in name or "logit_scale" in name \
                or "token_embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def zero_shot_accuracies(model, names=None, limit: int | None = None, batch_size: int = 250) -> dict[str, float]:
    """Clean zero-shot top-1 accuracy (%) of a ClipModel on registered datasets (default: mini)."""
    from ..data.datasets import expand_names, get_dataset

    names = expand_names(names or "mini")
    out = {}
    model.clip.eval()
    for name in names:
        ds = get_dataset(name, split="test").limited(limit)
        clf = model.classifier(ds.classes, ds.templates).eval()
        loader = torch.utils.data.DataLoader(ds.data, batch_size=batch_size, shuffle=False)
        correct = total = 0
        for x, y in loader:
            pred = clf(x.to(model.device)).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
        out[name] = 100.0 * correct / total
    return out


def pretrain(cfg: PretrainConfig, progress: bool = True, log_every: int = 100):
    """Train and return (ClipModel, metadata). Does not save: see `run`."""
    from tqdm.auto import tqdm

    from ..data import synthetic
    from ..models.clip import create_architecture

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = create_architecture(cfg.arch, device=cfg.device)
    model.text_cache.clear()
    clip = model.clip
    clip.train()
    opt = torch.optim.AdamW(_param_groups(clip, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(cfg.warmup, cfg.steps))
    batches = synthetic.pretraining_stream(cfg.batch_size, seed=cfg.seed, steps=cfg.steps)
    start, losses = time.time(), []
    bar = tqdm(batches, total=cfg.steps, desc=f"pretrain {cfg.arch}", disable=not progress, mininterval=2)
    for step, (images, captions, matches) in enumerate(bar):
        images = images.to(cfg.device)
        tokens = model.tokenizer(captions).to(cfg.device)
        x = (images - images.new_tensor(model.mean).view(1, 3, 1, 1)) / images.new_tensor(model.std).view(1, 3, 1, 1)
        img_f = F.normalize(clip.encode_image(x), dim=-1)
        txt_f = F.normalize(clip.encode_text(tokens), dim=-1)
        if cfg.loss == "clip":
            loss = clip_loss(img_f, txt_f, clip.logit_scale.exp())
        else:
            loss = multi_positive_loss(img_f, txt_f, clip.logit_scale.exp(), matches.to(cfg.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}",
                            scale=f"{float(clip.logit_scale.detach().exp()):.1f}")
        if log_every and not progress and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{cfg.steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                  f"({time.time() - start:.0f}s)", flush=True)
    train_s = time.time() - start
    clip.eval()
    model.text_cache.clear()
    acc = zero_shot_accuracies(model, "mini", cfg.eval_limit)
    acc = {k: round(v, 2) for k, v in acc.items()}
    check_acc = {k: round(v, 2) for k, v in zero_shot_accuracies(model, "mini", CHECK_LIMIT).items()}
    meta = {
        "arch": cfg.arch,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "device")},
        "data": ("pmg_core.synthetic pretraining stream (procedural shapes, digit glyphs and captions; "
                 f"held-out colour-shape pairs excluded: {', '.join(' '.join(p) for p in synthetic.HELDOUT_COMBOS)})"),
        "loss": {"clip": "symmetric InfoNCE (CLIP)",
                 "multi-positive": "symmetric InfoNCE, captions that fit several images count as positives"}[cfg.loss],
        "mean": list(model.mean),
        "std": list(model.std),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "train_seconds": round(train_s, 1),
        "torch_threads": torch.get_num_threads(),
        "metrics": {"clean_zero_shot_accuracy": acc, "mini_average": round(sum(acc.values()) / len(acc), 2),
                    "eval_limit": cfg.eval_limit, "check_accuracy": check_acc, "check_limit": CHECK_LIMIT},
    }
    return model, meta


def add_parser(subparsers) -> argparse.ArgumentParser:
    d = PretrainConfig()
    p = subparsers.add_parser("pretrain", help="pretrain a tiny CLIP on the embedded captioned world",
                              description="Contrastive pretraining from random weights on the procedural world "
                                          "(synthetic.py); writes a base checkpoint with its zero-shot accuracies.")
    p.add_argument("--arch", default=d.arch, help="architecture (default %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default %(default)s")
    p.add_argument("--warmup", type=int, default=d.warmup, help="warm-up steps (default %(default)s)")
    p.add_argument("--loss", default=d.loss, choices=LOSSES, help="contrastive loss (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="default %(default)s")
    p.add_argument("--out", default=None, help=f"checkpoint path (default {DEFAULT_NAME} in the checkpoint folder, "
                                                "$PMG_CHECKPOINT_DIR or checkpoints/)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default %(default)s)")
    p.add_argument("--eval-limit", type=int, default=None, help="test images per mini task for the final accuracies")
    p.add_argument("--device", default=d.device, help="default %(default)s")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..models.checkpoints import save_base

    names = {f for f in PretrainConfig.__dataclass_fields__}
    cfg = PretrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    model, meta = pretrain(cfg, progress=True)
    from ..core.env import checkpoint_dir

    path = save_base(cfg.out or checkpoint_dir() / DEFAULT_NAME, model, meta)
    print(f"saved {path}")
    for name, a in meta["metrics"]["clean_zero_shot_accuracy"].items():
        print(f"  {name:<18} {a:6.2f}")
    print(f"  {'average':<18} {meta['metrics']['mini_average']:6.2f}")
    return 0
