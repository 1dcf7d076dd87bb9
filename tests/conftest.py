"""Shared fixtures: everything offline, tiny models, tiny generated images."""
import os

os.environ.setdefault("PMG_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The suite asserts CPU results (bit-exact resume, batch-size independence, tensors compared on
# the CPU), so it runs there even where a GPU is visible: on a GPU, Trainer and evaluation would
# move models to it. The GPU path is measured by `python -m pmg_core bench --device cuda`;
# PMG_TEST_DEVICE=cuda leaves the GPU visible to try the suite on it.
if os.environ.get("PMG_TEST_DEVICE", "cpu") == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

from toy import register_toy  # noqa: E402

register_toy()


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised pmg-test CLIP (fresh copy per use via .fork())."""
    from pmg_core.models.clip import load_model

    torch.manual_seed(0)
    return load_model("pmg-test")


@pytest.fixture
def model(tiny_model):
    """An independent copy (text side and logit scale included) that a test may change freely."""
    import copy

    return copy.deepcopy(tiny_model)
