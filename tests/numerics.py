"""Test helper: which precision matrix products really run in, under whatever autocast is active."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class MatmulDtypes(TorchDispatchMode):
    """Records the dtype of every matrix product that runs, forward and backward passes alike
    (`seen`), and with it the shape of each product's result (`products`)."""
    OPS = {"mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu",
           "_scaled_dot_product_flash_attention_for_cpu_backward", "convolution", "convolution_backward"}

    def __init__(self):
        super().__init__()
        self.seen: list[torch.dtype] = []
        self.products: list[tuple[torch.dtype, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in self.OPS:
            dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor))
            self.seen.append(dtype)
            if isinstance(out, torch.Tensor):
                self.products.append((dtype, tuple(out.shape)))
        return out
