"""What several test files share: tiny models for the app, its example inputs, ports and waiting."""
import contextlib
import ctypes
import gc
import os
from pathlib import Path

import pytest
import torch

from pmg_core.models import load_model
from studio.one_image import EACH_MODEL as EACH  # noqa: F401 - re-exported: "each model attacks itself"
from studio.visitors import TRUSTED_PROXIES_ENV
from public_server import EXAMPLE, ROOT, free_port, wait_for  # noqa: F401 - light, shared with scripts/public_load.py

LABELS = "circle, square, triangle, diamond, cross, star"


def tiny_models():
    """Three models sharing one text side: 'clip' and two differently perturbed image encoders."""
    torch.manual_seed(0)
    base = load_model("pmg-test")
    base.name = "clip"
    out = [base]
    for i, name in enumerate(("tecoa", "pmg-aft")):
        m = base.fork(name, name)
        with torch.no_grad():
            for p in m.visual.parameters():
                p.add_(0.05 * (i + 1) * torch.randn_like(p))
        out.append(m)
    return out


def first_step_shown(job) -> bool:
    """Whether a streamed Train job (gradio_client Job) has shown a training step yet."""
    return any("Step" in str(o[0]) for o in job.outputs())


def rss_mb() -> float:
    """This process's resident memory (the server runs in it), after handing freed heap back to the system."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed arenas of finished threads otherwise
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this system")


@contextlib.contextmanager
def behind_loopback_proxy():
    """An app built inside believes X-Forwarded-For from 127.0.0.1: test clients there stand for
    visitors from the addresses they name, as a Space's proxy's clients do."""
    before = os.environ.get(TRUSTED_PROXIES_ENV)
    os.environ[TRUSTED_PROXIES_ENV] = "127.0.0.1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRUSTED_PROXIES_ENV, None)
        else:
            os.environ[TRUSTED_PROXIES_ENV] = before
