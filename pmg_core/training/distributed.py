"""Running under torchrun: one process per device, PyTorch's own process group and DDP.

`init()` reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT),
picks the backend (nccl for CUDA devices, gloo otherwise) and the device of this local rank, and
returns a `Dist` that the trainer and the evaluator take. Without torchrun it returns the
single-process context and starts nothing, so the same code path serves both.

A rank that dies makes the others fail instead of hang: gloo notices the closed connection at the
next collective, and every collective carries the process group's timeout (PMG_DIST_TIMEOUT
seconds, default 600) for peers that vanish without closing it. On NCCL, PyTorch's watchdog
(TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default) turns the same timeout into an abort.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..core.errors import UserError, check
from ..core.env import check_device, default_device

TIMEOUT_ENV = "PMG_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among `world` processes and the device it drives."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None and default is not None:
        return default
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"The environment variable {name}={raw!r} must be an integer (torchrun sets it).") from None


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    check(value > 0, f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds.")
    return value


def local_device(local_rank: int, device: str | None = None) -> torch.device:
    """The device of this local rank: cuda:<local_rank> for a bare 'cuda' (or by default on a GPU host)."""
    dev = torch.device(device or default_device())
    if dev.type == "cuda" and dev.index is None:
        check(local_rank < torch.cuda.device_count(),
              f"Local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
              "start at most that many processes per node (--nproc_per_node).")
        dev = torch.device("cuda", local_rank)
    return dev


def init(device: str | None = None) -> Dist:
    """Join the torchrun process group (if launched by torchrun with WORLD_SIZE > 1)."""
    check_device(device)
    if not launched_by_torchrun():
        return Dist(device=torch.device(device or default_device()))
    rank, world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK", 0)
    dev = local_device(local_rank, device)
    if world == 1:
        return Dist(rank, world, local_rank, dev)
    if dist.is_initialized():  # a caller that set the group up itself
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()),
                            device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local_rank, dev)


def all_reduce_sum(values: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """Sum a tensor over all ranks (a copy; exact for integer counts)."""
    if not ctx.enabled:
        return values.clone()
    # NCCL reduces on the GPU; gloo on the CPU.
    out = values.detach().to(ctx.device if dist.get_backend() == "nccl" else "cpu").clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def describe_failure(ctx: Dist, error: BaseException) -> str:
    """One sentence for a collective that failed because another process died or stopped answering."""
    text = str(error).strip()
    first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(error).__name__
    return (f"rank {ctx.rank}/{ctx.world} stopped: another process of the run died or stopped answering "
            f"(within the {timeout_seconds():.0f} s limit set by {TIMEOUT_ENV}); cause: {first}")


def is_distributed_failure(error: BaseException) -> bool:
    """Whether an exception came from the process group (lost peer, timeout), not from our code."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        w in text for w in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe"))
