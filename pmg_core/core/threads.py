"""torch's CPU threads for the calling thread alone, every other thread's left as it was.

`torch.set_num_threads` sets a process-wide count, which every thread copies when it first runs
torch work, besides the calling thread's own OpenMP and MKL counts. A worker that lowered it for a
while (the attack lanes did) made any thread whose first torch call fell in that window keep the
low count for good. `own_threads(n)` sets only the calling thread's counts: OpenMP's (per thread
in libgomp, the runtime torch's CPU wheels use) and MKL's thread-local one, through their C
functions in the libraries torch loaded, and puts them back on exit. Where they cannot be found
(another parallel backend) it changes nothing: the thread runs on the process's count, correct
and only slower when several such threads share the cores.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path
from typing import Iterator

import torch


@functools.lru_cache(maxsize=1)
def _runtime() -> tuple | None:
    """(omp_set_num_threads, omp_get_max_threads, MKL_Set_Num_Threads_Local or None), or None."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    loaded = ctypes.CDLL(None)  # torch loads its OpenMP runtime with global symbols
    omp_set, omp_get = (getattr(loaded, name, None) for name in ("omp_set_num_threads", "omp_get_max_threads"))
    if omp_set is None or omp_get is None:
        return None
    mkl = getattr(loaded, "MKL_Set_Num_Threads_Local", None)  # MKL's C API (lower-case names are Fortran's)
    cpu = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if mkl is None and torch.backends.mkl.is_available() and cpu.is_file():
        with contextlib.suppress(OSError):
            mkl = getattr(ctypes.CDLL(str(cpu)), "MKL_Set_Num_Threads_Local", None)  # MKL linked into torch
    return omp_set, omp_get, mkl


@contextlib.contextmanager
def own_threads(n: int) -> Iterator[bool]:
    """torch work in this thread uses `n` CPU threads inside the block; other threads and the process-wide
    count are untouched. Yields whether the count could be set (False: the process's count applies)."""
    runtime = _runtime()
    if runtime is None:
        yield False
        return
    omp_set, omp_get, mkl = runtime
    before = torch.get_num_threads()  # also torch's first-use setup of this thread, which would overwrite ours
    omp_set(max(1, int(n)))
    mkl_before = mkl(max(1, int(n))) if mkl is not None else None
    try:
        yield omp_get() == max(1, int(n))
    finally:
        omp_set(before)
        if mkl is not None:
            mkl(mkl_before)
