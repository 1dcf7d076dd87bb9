"""A learnable toy task for tests: which colour dominates a noisy 32x32 image."""
import torch
from torch.utils.data import TensorDataset

from pmg_core.data import ZeroShotDataset, register_dataset

# Close colours: learnable at a glance, but an eps of a few /255 can push one toward another.
COLOURS = {"red": (0.62, 0.45, 0.45), "green": (0.45, 0.62, 0.45), "blue": (0.45, 0.45, 0.62), "grey": (0.5, 0.5, 0.5)}


def make_toy(n: int, seed: int, size: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(COLOURS), (n,), generator=g)
    base = torch.tensor(list(COLOURS.values()))[y].view(n, 3, 1, 1)
    x = (base + 0.25 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return TensorDataset(x, y)


def register_toy() -> None:
    @register_dataset("toy-colours", "test-only: dominant colour of a noisy image", "test")
    def _build(split="test", root=None, **_):
        n, seed = (512, 1) if split == "train" else (96, 2)
        return ZeroShotDataset("toy-colours", make_toy(n, seed), list(COLOURS), ("a {} image",))
