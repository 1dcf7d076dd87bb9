"""The public-server policy: what one request may cost (label text too), what visitors keep, memory returned.

A public server shares one device, one disk and one queue with every visitor, so the policy holds
by construction rather than per endpoint:
- **Cost before work.** Each handler states its request's size (images x models x steps, radii,
  the training memory its architecture and batch need) and `check_*` refuses it, in one sentence
  naming the cap, before any model runs. The caps are `pmg_core.data.inputs.Limits` (PUBLIC); locally
  they are None, so the researcher on their own machine keeps the full range.
- **Work counted.** `check_attack` returns a request's model-passes and `text_passes` what encoding
  its labels costs in the same unit, which a visitor's budget per minute is charged (turns.py);
  who a visitor is, their places in each lane's queue and their turn there are visitors.py's.
- **Visitors' checkpoints expire.** `make_room` keeps at most `visitor_checkpoints` files made by
  visitors within `visitor_checkpoint_mb`, deleting the oldest (and their .state files) first.
- **Memory returned.** `return_large_blocks` at start gives large blocks (decoded images) pages of their
  own, handed back when freed; `release_memory` after a run hands freed heap and device cache back.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from pathlib import Path
from typing import Sequence

import torch

from pmg_core.models.checkpoints import read_metadata
from pmg_core.core.errors import UserError, check
from pmg_core.data.inputs import Limits
from pmg_core.models.clip import ClipModel

log = logging.getLogger("pmg_studio")
# Bytes of activations one training image keeps per (token x width x layer) of the image tower: the
# issue's measurement of a PMG-AFT step on ViT-B/32 (~72 MB per image; 50 tokens, width 768, 12 layers).
ACTIVATION_BYTES = 160
VISITOR_MARK = "visitor on a public server"  # metadata "made_by" of checkpoints that may expire
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK_BYTES = 8 * 2**20  # PIL decodes into 16 MB blocks; a pass's tensors are mostly smaller
# What a preview is charged: reading the largest image the app accepts takes a CPU about as long as 20
# passes of ViT-B/32 (a few seconds), and runs in one turn.
PREVIEW_PASSES = 20


def _over(what: str, parts: str, total: int, cap: int | None, fewer: str, limits: Limits) -> None:
    if cap is None:
        return
    check(total <= cap, f"This {what} asks for {parts} = {total:,}; at most {cap:,}{limits.where}: choose {fewer}.")


def check_attack(limits: Limits, models: int, steps: int, radii: int = 1, defended_eot: int = 0) -> int:
    """One image attacked by every model (PGD steps + 1 passes each), at each radius of a sweep; behind a
    test-time defense each model is attacked again through it with `defended_eot` gradients per step.
    Returns the model-passes."""
    each = 1 + defended_eot
    defense = f" x {each} (attacks through the defense)" if defended_eot else ""
    passes = models * (steps + 1) * radii * each
    _over("attack", f"{models} model(s) x {steps + 1} passes x {radii} radii{defense}", passes,
          limits.attack_work, "fewer models, steps or radii", limits)
    return passes


def text_passes(models: Sequence[ClipModel], labels: int) -> float:
    """What encoding `labels` labels costs `models`, in image gradient passes: per label, a forward of
    the text tower (tokens x width x depth) against a forward and backward (about 3 forwards) of the
    image tower. 1,000 labels are about 60 passes of each embedded tiny model, 340 of ViT-B/32."""
    total = 0.0
    for m in models:
        text = getattr(m.clip, "transformer", None)
        image = getattr(m.visual, "transformer", None)
        grid = getattr(m.visual, "grid_size", None)
        if text is None or image is None or grid is None:  # not a ViT: as ViT-B/32
            total += labels * 0.34
            continue
        tokens = getattr(m.clip, "context_length", 77)
        total += labels * tokens * text.width * text.layers / (3 * (grid[0] * grid[1] + 1) * image.width * image.layers)
    return total


def check_attack_extras(limits: Limits, models: int, steps: int, radius_attacks: int, map_passes: int) -> int:
    """The Attack tab's extras after a comparison: each model's robustness radius (`radius_attacks` PGD
    runs of steps + 1 passes, a bisection counted like a sweep's radii) and its maps (`map_passes`).
    Returns the model-passes."""
    passes = models * (radius_attacks * (steps + 1) + map_passes)
    _over("radius and maps request", f"{models} model(s) x ({radius_attacks} attacks x {steps + 1} passes + "
          f"{map_passes} map passes)", passes, limits.attack_work, "fewer models or steps, or leave out the radius",
          limits)
    return passes


def check_evaluate(limits: Limits, models: int, images: int, steps: int) -> None:
    """`images`: the samples of every dataset together (each limited to the sample limit)."""
    _over("evaluation", f"{images:,} images x {models} model(s) x {steps + 1} passes", images * models * (steps + 1),
          limits.eval_work, "fewer models, datasets, samples or steps", limits)


def image_memory_mb(model: ClipModel) -> float:
    """Training activations per image, from the image tower's tokens, width and depth."""
    visual = model.visual
    grid = getattr(visual, "grid_size", None)
    blocks = getattr(visual, "transformer", None)
    if grid is None or blocks is None:  # not a ViT: scale ViT-B/32's figure by the image area
        return 72 * (model.image_size / 224) ** 2
    tokens = grid[0] * grid[1] + 1
    return tokens * blocks.width * blocks.layers * ACTIVATION_BYTES / 2**20


def check_train(limits: Limits, model: ClipModel, steps: int, batch: int, attack_steps: int) -> None:
    """A run's work (each image: PGD steps + a clean and an adversarial pass) and one step's memory."""
    _over("training run", f"{steps} steps x {batch} images x {attack_steps + 2} passes", steps * batch * (attack_steps + 2),
          limits.train_work, "fewer steps, a smaller batch or fewer PGD steps", limits)
    if limits.train_memory_mb is not None:
        need = batch * image_memory_mb(model)
        check(need <= limits.train_memory_mb,
              f"Batch {batch} on {model.name} needs about {need:,.0f} MB for one step; at most "
              f"{limits.train_memory_mb:,.0f} MB{limits.where}: use a batch of at most "
              f"{max(1, int(limits.train_memory_mb // image_memory_mb(model)))}.")


def visitor_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints visitors made on a public server, oldest first (unreadable headers are skipped)."""
    found = []
    for path in directory.glob("*.safetensors"):
        with contextlib.suppress(UserError, OSError):
            if read_metadata(path).get("made_by") == VISITOR_MARK:
                found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def make_room(directory: Path, limits: Limits, new_mb: float) -> list[str]:
    """Delete the oldest visitor checkpoints until one more of `new_mb` fits the count and the disk
    budget. Returns the names that expired (their models should leave the lists)."""
    if limits.visitor_checkpoints is None:
        return []
    kept = visitor_checkpoints(directory)
    budget_mb = limits.visitor_checkpoint_mb if limits.visitor_checkpoint_mb is not None else float("inf")
    expired = []
    while kept and (len(kept) + 1 > limits.visitor_checkpoints
                    or sum(p.stat().st_size for p in kept) / 2**20 + new_mb > budget_mb):
        oldest = kept.pop(0)
        with contextlib.suppress(OSError):
            oldest.unlink()
            oldest.with_suffix(".state").unlink(missing_ok=True)
        expired.append(oldest.stem)
    if expired:
        log.info("visitor checkpoints expired: %s", ", ".join(expired))
    return expired


def checkpoint_mb(model: ClipModel) -> float:
    """What a fine-tune's file takes: its image tower's weights."""
    return sum(p.numel() * p.element_size() for p in model.visual.parameters()) / 2**20


def return_large_blocks(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Blocks of `threshold` bytes or more get pages of their own, handed back to the system when freed.
    glibc raises that threshold by itself once such a block is freed, and the next decoded images then
    stay in the heap: 16 previews of image bombs kept 340 MB instead of 17. Returns whether it was set."""
    with contextlib.suppress(OSError, AttributeError):
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    return False


def release_memory() -> None:
    """Hand what a finished run freed back to the system (glibc keeps freed arenas otherwise)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
