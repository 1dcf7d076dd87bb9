"""Facts about where pmg_core runs, in one place: network, device, CPU share and folders.

Every folder is read from its environment variable at the moment it is asked for, so a variable set
after import (a test, a notebook) is honoured everywhere:
- checkpoints: $PMG_CHECKPOINT_DIR, else checkpoints/ beside the package (the shipped tiny models);
- downloads (published checkpoints of the zoo): $PMG_CACHE_DIR, else $XDG_CACHE_HOME/pmg-aft-studio,
  else ~/.cache/pmg-aft-studio;
- datasets: the folder given (``--data-root``), else $PMG_DATA_ROOT, else ./data.
Offline means told so (PMG_OFFLINE, HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE) or the hub not answering
a bounded probe; a machine found offline stays so for the process (the probe runs once).
CPU threads: torch starts one per visible core, but a container (a Space) may see every core of its
host under a quota of two; fit_threads() brings torch down to the share it may really use.
bf16 on a CPU: fast only where the cores have bf16 instructions (x86 AVX512-BF16 or AMX, Arm's BF16
extension) and torch runs its AVX512 kernels; elsewhere torch emulates it, slower than fp32.
cpu_bf16() reads the flags the kernel reports (/proc/cpuinfo) and torch's kernel level.
"""
from __future__ import annotations

import functools
import os
import socket
import threading
from pathlib import Path

import torch

CHECKPOINT_DIR_ENV = "PMG_CHECKPOINT_DIR"
CACHE_DIR_ENV = "PMG_CACHE_DIR"
DATA_ROOT_ENV = "PMG_DATA_ROOT"
OFFLINE_ENVS = ("PMG_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
SHIPPED_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
PROBE_HOST = ("huggingface.co", 443)
PROBE_TIMEOUT_S = 1.5  # the whole network probe, name lookup included
CGROUP = Path("/sys/fs/cgroup")
CPUINFO = Path("/proc/cpuinfo")
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names; Arm lists its extension as "bf16"


def checkpoint_dir() -> Path:
    """Where checkpoints are found by name and new ones are written."""
    return Path(os.environ.get(CHECKPOINT_DIR_ENV) or SHIPPED_CHECKPOINTS).expanduser()


def cache_dir() -> Path:
    """Where downloaded files are kept (created on first use by whoever writes there)."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "pmg-aft-studio"


def data_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device) -> None:
    """A device people may name (--device, recipes): None (the default), 'cpu', 'cuda' or 'cuda:N' of a GPU this
    machine has."""
    import re

    from .errors import check, shorten

    check(device is None or (isinstance(device, str) and re.fullmatch(r"cpu|cuda(:\d{1,2})?", device) is not None),
          f"device must be 'cpu', 'cuda' or 'cuda:N' (a GPU's number); got {shorten(device)}.")
    if device is None or device == "cpu":
        return
    # Named before any work: torch would fail later, deep inside, with "no NVIDIA driver" or "invalid device ordinal".
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check(count > 0, f"device {device} is not available: this machine has no usable CUDA GPU; use --device cpu.")
    index = int(device.partition(":")[2] or 0)
    check(index < count, f"device {device} is not available: this machine has {count} GPU{'s' if count > 1 else ''} "
                         f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}).")


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """CPUs' worth of time this process's cgroup may use (cgroup v2, else v1); None when unlimited or unknown."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """Cores this process may run on, capped by its CPU quota (a quota of 2.5 CPUs gives 2 threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, int(quota))) if quota else cores


def fit_threads(cgroup: Path = CGROUP) -> int:
    """Lower torch's CPU threads to usable_cpus(): more threads than the quota only queue for it.

    An explicit OMP_NUM_THREADS is the user's choice and is left alone. Returns the thread count.
    """
    if not os.environ.get("OMP_NUM_THREADS"):
        usable = usable_cpus(cgroup)
        if usable < torch.get_num_threads():
            torch.set_num_threads(usable)
    return torch.get_num_threads()


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The first core's instruction-set flags ("flags" on x86, "Features" on Arm); empty when unknown."""
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        return set()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16(cpuinfo: Path = CPUINFO, capability: str | None = None) -> str | None:
    """The bf16 instructions this CPU has that torch uses (e.g. 'avx512_bf16'), or None.

    On x86 torch needs its AVX512 kernels too (`capability`: torch's kernel level, read when None):
    a build or ATEN_CPU_CAPABILITY held to AVX2 emulates bf16 even on a core that has it.
    """
    flags = cpu_flags(cpuinfo)
    x86 = [f for f in X86_BF16_FLAGS if f in flags]
    if x86:
        capability = capability if capability is not None else torch.backends.cpu.get_cpu_capability()
        return "+".join(x86) if capability.upper().startswith("AVX512") else None
    return "bf16" if "bf16" in flags and "asimd" in flags else None


def told_offline() -> bool:
    return any(os.environ.get(var, "").lower() in ("1", "true", "yes", "on") for var in OFFLINE_ENVS)


def is_offline() -> bool:
    """True when told to stay offline or when the hub cannot be reached (probed once, PROBE_TIMEOUT_S max)."""
    return told_offline() or not hub_reachable()


@functools.cache
def hub_reachable() -> bool:
    # In a daemon thread: create_connection's timeout does not cover the DNS lookup, which can
    # block for many seconds on a machine without network; an unfinished probe counts as offline.
    reached = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection(PROBE_HOST, timeout=PROBE_TIMEOUT_S).close()
            reached.set()
        except OSError:
            pass

    threading.Thread(target=probe, daemon=True, name="pmg-hub-probe").start()
    return reached.wait(PROBE_TIMEOUT_S)


def go_offline() -> None:
    """Make huggingface_hub answer from its cache instead of retrying downloads for ~45 s."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass
