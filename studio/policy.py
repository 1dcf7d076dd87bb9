"""The public-server policy: what one request may cost, how long each lane's queue may grow, what visitors keep.

A public server shares one device, one disk and one queue with every visitor, so the policy holds
by construction rather than per endpoint:
- **Cost before work.** Each handler states its request's size (images x models x steps, radii,
  the training memory its architecture and batch need) and `check_*` refuses it, in one sentence
  naming the cap, before any model runs. The caps are `pmg_core.inputs.Limits` (PUBLIC); locally
  they are None, so the researcher on their own machine keeps the full range.
- **Lanes with their own queues.** `limit_queues` gives each concurrency lane its own queue size,
  each visitor (Gradio session) a few places per lane and each network address a few more (a
  client can open new sessions at will, not new addresses), so a flood of Train requests fills the
  jobs lane only and attacks keep being answered.
- **Visitors' checkpoints expire.** `make_room` keeps at most `visitor_checkpoints` files made by
  visitors within `visitor_checkpoint_mb`, deleting the oldest (and their .state files) first.
- **Memory returned.** `release_memory` after a run hands freed heap and device cache back.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from pmg_core.checkpoints import read_metadata
from pmg_core.errors import UserError, check
from pmg_core.inputs import Limits
from pmg_core.models import ClipModel

if TYPE_CHECKING:
    import gradio as gr

    from .state import Studio

log = logging.getLogger("pmg_studio")
# Bytes of activations one training image keeps per (token x width x layer) of the image tower: the
# issue's measurement of a PMG-AFT step on ViT-B/32 (~72 MB per image; 50 tokens, width 768, 12 layers).
ACTIVATION_BYTES = 160
VISITOR_MARK = "visitor on a public server"  # metadata "made_by" of checkpoints that may expire
# Places each lane's queue holds, and those one visitor may take in it, on a public server.
LANE_QUEUE = {"interactive": 32, "preview": 16, "jobs": 6}
PER_VISITOR = 2
PER_ADDRESS = 4  # all sessions from one network address (one client's many, or the users behind one NAT)


def unique_names(names: Sequence[str]) -> list[str]:
    """Model names without repeats (order kept): a name ticked twice is one model, run once."""
    return list(dict.fromkeys(names))


def _over(what: str, parts: str, total: int, cap: int | None, fewer: str, limits: Limits) -> None:
    if cap is None:
        return
    check(total <= cap, f"This {what} asks for {parts} = {total:,}; at most {cap:,}{limits.where}: choose {fewer}.")


def check_attack(limits: Limits, models: int, steps: int, radii: int = 1, defended_eot: int = 0) -> None:
    """One image attacked by every model (PGD steps + 1 passes each), at each radius of a sweep; behind a
    test-time defense each model is attacked again through it with `defended_eot` gradients per step."""
    each = 1 + defended_eot
    defense = f" x {each} (attacks through the defense)" if defended_eot else ""
    _over("attack", f"{models} model(s) x {steps + 1} passes x {radii} radii{defense}", models * (steps + 1) * radii * each,
          limits.attack_work, "fewer models, steps or radii", limits)


def check_attack_extras(limits: Limits, models: int, steps: int, radius_attacks: int, map_passes: int) -> None:
    """The Attack tab's extras after a comparison: each model's robustness radius (`radius_attacks` PGD
    runs of steps + 1 passes, a bisection counted like a sweep's radii) and its maps (`map_passes`)."""
    _over("radius and maps request", f"{models} model(s) x ({radius_attacks} attacks x {steps + 1} passes + "
          f"{map_passes} map passes)", models * (radius_attacks * (steps + 1) + map_passes), limits.attack_work,
          "fewer models or steps, or leave out the radius", limits)


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


def visitor_address(request) -> str | None:
    """The network address a request came from, where it can be trusted; None where it cannot be told.

    A peer with a public address is the visitor. A peer on a private network or loopback is a proxy
    (a Space's): the visitor is the rightmost public address in its X-Forwarded-For, the one the
    edge proxy wrote (entries to its left are the client's own words). No public address: None,
    so a local reverse proxy that sends none does not make all its users one visitor.
    """
    peer = getattr(getattr(request, "client", None), "host", None)
    try:
        if ipaddress.ip_address(peer).is_global:
            return peer
    except ValueError:
        return None
    headers = getattr(request, "headers", None) or {}
    for entry in reversed(headers.get("x-forwarded-for", "").split(",")):
        try:
            if ipaddress.ip_address(entry.strip()).is_global:
                return entry.strip()
        except ValueError:
            continue
    return None


def limit_queues(demo: "gr.Blocks", lane_sizes: dict[str, int], per_visitor: int,
                 per_address: int | None = None) -> bool:
    """Each concurrency lane gets its own queue size, each session `per_visitor` places in it and each
    network address (`visitor_address`) `per_address` places, whatever its number of sessions.

    Gradio has one queue size for all lanes, so a flood of one kind (17 Trains) refused everyone's
    attack with "Queue is full". This wraps the queue's admission (call after demo.queue()); what
    it refuses gets one sentence, as Gradio's own queue-full answer does. The hook is Gradio's
    private queue: a Gradio whose queue looks otherwise keeps its one shared size (still bounded by
    demo.queue's max_size) and the app starts anyway; returns whether the lanes were installed.
    """
    from gradio import route_utils

    queue = getattr(demo, "_queue", None)
    if not (callable(getattr(queue, "push", None)) and callable(getattr(route_utils, "get_fn", None))
            and isinstance(getattr(queue, "event_queue_per_concurrency_id", None), dict)):
        log.warning("this Gradio's queue has no per-lane hook: all lanes share one queue size")
        return False
    admit = queue.push

    def waiting_in_lane(body) -> tuple[str, list] | None:
        """The events waiting in `body`'s lane, or None when this Gradio's internals do not say."""
        try:
            lane = route_utils.get_fn(queue.blocks, None, body).concurrency_id
            waiting = queue.event_queue_per_concurrency_id.get(lane)
            return lane, (waiting.queue if waiting is not None else [])
        except (AttributeError, KeyError, TypeError, IndexError):
            return None

    def refusal(body, request, lane: str, events: list) -> tuple[str, str] | None:
        """(sentence, Gradio's state) for a request the lane cannot take. A full lane is "queue_full"
        (HTTP 503, which the page words as "currently busy"); a visitor over their own places is
        "error" (HTTP 400), whose sentence the page shows as it is: the wait is theirs to end."""
        size = lane_sizes.get(lane)
        if size is not None and len(events) >= size:
            return f"Queue is full: {size} requests of this kind are waiting; try again shortly.", "queue_full"
        mine = sum(getattr(e, "session_hash", None) == body.session_hash for e in events)
        if body.session_hash is not None and mine >= per_visitor:
            return (f"Queue is full for you: {per_visitor} of your requests of this kind are already waiting; "
                    "let them finish or cancel them.", "error")
        address = visitor_address(request) if per_address is not None else None
        if address is not None and sum(visitor_address(getattr(e, "request", None)) == address
                                       for e in events) >= per_address:
            return (f"Queue is full for your network address: {per_address} requests of this kind from it are "
                    "already waiting; let them finish or cancel them.", "error")
        return None

    async def push(body, request, username):
        found = waiting_in_lane(body) if body.fn_index is not None else None
        refused = refusal(body, request, *found) if found is not None else None
        if refused is not None:
            return False, *refused
        return await admit(body, request, username)

    queue.push = push
    return True


def visitor_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints visitors made on a public server, oldest first (unreadable headers are skipped)."""
    found = []
    for path in directory.glob("*.safetensors"):
        with contextlib.suppress(UserError, OSError):
            if read_metadata(path).get("made_by") == VISITOR_MARK:
                found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def make_room(studio: "Studio", limits: Limits, new_mb: float) -> list[str]:
    """Delete the oldest visitor checkpoints until one more of `new_mb` fits the count and the disk
    budget; their models leave the lists. Returns the names that expired."""
    if limits.visitor_checkpoints is None:
        return []
    kept = visitor_checkpoints(studio.checkpoint_dir)
    budget_mb = limits.visitor_checkpoint_mb if limits.visitor_checkpoint_mb is not None else float("inf")
    expired = []
    while kept and (len(kept) + 1 > limits.visitor_checkpoints
                    or sum(p.stat().st_size for p in kept) / 2**20 + new_mb > budget_mb):
        oldest = kept.pop(0)
        with contextlib.suppress(OSError):
            oldest.unlink()
            oldest.with_suffix(".state").unlink(missing_ok=True)
        expired.append(oldest.stem)
    studio.forget(expired)
    if expired:
        log.info("visitor checkpoints expired: %s", ", ".join(expired))
    return expired


def checkpoint_mb(model: ClipModel) -> float:
    """What a fine-tune's file takes: its image tower's weights."""
    return sum(p.numel() * p.element_size() for p in model.visual.parameters()) / 2**20


def release_memory() -> None:
    """Hand what a finished run freed back to the system (glibc keeps freed arenas otherwise)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
