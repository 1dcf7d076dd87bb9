"""Instruments: timing, memory and FLOP counting for any callable on any device.

Nothing here knows what is being measured (no methods, no attacks, no PMG-AFT): the yardsticks and
studies of this package hand these functions closures. Timing interleaves the callables round by
round so that load from other processes hits all of them alike, drops warm-up rounds and keeps the
median; on CUDA every timing and memory read waits for the device.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

# Dense (no sparsity) bf16 tensor-core peak of known accelerators, from the vendors' datasheets, for
# "achieved vs peak"; the first name contained in the device's name wins, so variants come first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0))


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device,
                     memory: PeakMemory) -> dict[str, dict]:
    """Round-robin over `fns` (warm-up rounds dropped); per name: median seconds, all seconds, peak memory."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    peaks: dict[str, float] = {k: 0.0 for k in fns}
    extra: dict[str, float] = {k: 0.0 for k in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            memory.reset()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            dt = time.perf_counter() - t0
            peak = memory.read_mib()
            peaks[name], extra[name] = max(peaks[name], peak), max(extra[name], peak - memory.start_mib)
            if r >= warmup:
                times[name].append(dt)
    return {k: {"seconds": statistics.median(v), "seconds_all": [round(t, 4) for t in v],
                "peak_memory_mib": round(peaks[k], 1), "step_memory_mib": round(extra[k], 1)}
            for k, v in times.items()}


def best_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """The fastest of `repeats` calls after one untimed call: a cost with as little noise as possible."""
    fn()
    ts = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return min(ts)


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


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        info["name"] = name
        info["peak_bf16_tflops"] = next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)
        info["matmul_bf16_tflops"] = round(matmul_tflops(device), 1)
    else:
        info["name"] = cpu_name()
        info["cores"] = os.cpu_count()
    return info


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """bf16 n x n x n matrix products per second on this device: the datasheet peak is rarely
    reached, so this is the practical ceiling that the step's achieved TFLOP/s is also set against."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"
