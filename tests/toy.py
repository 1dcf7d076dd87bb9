"""A learnable toy task for tests: which colour dominates a noisy 32x32 image."""
import torch
from torch.utils.data import TensorDataset

from pmg_core.data.datasets import ZeroShotDataset, register_dataset

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


# --- hand-made models whose attacks go where a test says, for certain -------------------------------
# A "scripted line" classifier reads one number from an image: d, its mean shift from grey (0.5).
# A scripted defense adds a shift of +-SHIFT to every pixel; the classifier reads the attacker's own
# displacement e = d minus the nearest multiple of SHIFT, so its answer ignores the defense's draw.
# Its logits are [0, gap(e)] (label 0 is right while gap < 0); the gradient it hands back is not
# the true one but slope(d) on every pixel, so each PGD sign step moves d by exactly +-step
# (upward where slope > 0, for label 0), and what a step does depends on the draw it went through.
SHIFT = 0.3


class _ScriptedGap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gap, slope):
        d = x.mean((1, 2, 3)) - 0.5
        ctx.save_for_backward(d)
        ctx.shape, ctx.slope = x.shape, slope
        return gap(d - SHIFT * torch.round(d / SHIFT))

    @staticmethod
    def backward(ctx, grad):
        (d,) = ctx.saved_tensors
        per_sample = grad * ctx.slope(d) / ctx.shape[1:].numel()
        return per_sample.view(-1, 1, 1, 1).expand(ctx.shape), None, None


class ScriptedLine(torch.nn.Module):
    num_classes = 2

    def __init__(self, gap, slope=lambda d: torch.ones_like(d)):
        super().__init__()
        self.gap, self.slope = gap, slope
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # torchattacks asks for a device

    def forward(self, x):
        gap = _ScriptedGap.apply(x, self.gap, self.slope)
        return torch.stack([torch.zeros_like(gap), gap], 1)


def grey(n: int = 2, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """n grey images, all labelled 0 (the class a scripted line gets right at d = 0)."""
    return torch.full((n, 3, size, size), 0.5), torch.zeros(n, dtype=torch.long)


class _ScriptedLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, logits_at):
        d = x.mean((1, 2, 3)) - 0.5
        ctx.shape = x.shape
        return logits_at(d - SHIFT * torch.round(d / SHIFT))

    @staticmethod
    def backward(ctx, grad):
        return torch.ones(ctx.shape) / ctx.shape[1:].numel(), None  # every step raises d, whatever the loss


class ScriptedPath(torch.nn.Module):
    """A classifier whose logits are `logits_at(e)` ([batch, classes], e as for ScriptedLine) and
    whose gradient always points up: each PGD sign step raises e by exactly one step, so a test
    says what the model answers at each iterate (label 0 is the true one)."""

    def __init__(self, logits_at, classes: int):
        super().__init__()
        self.logits_at, self.num_classes = logits_at, classes
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x):
        return _ScriptedLogits.apply(x, self.logits_at)


def scripted_defense(shifts, randomised: bool = True):
    """A test-time defense adding shifts[k % len] to every pixel on its k-th draw (a fixed cycle,
    no noise), behind which `classifier` then answers; randomised=False makes it a deterministic one."""
    from pmg_core.attacks.defenses import Defense, DefenseSettings

    class Cycle(Defense):
        name = "scripted-cycle"
        draws = 0

        def purify(self, classifier, x, reference, generator):
            shift = shifts[self.draws % len(shifts)]
            self.draws += 1
            return (x.detach() + shift).clamp(0, 1)

    Cycle.randomised = randomised
    return Cycle(DefenseSettings())
