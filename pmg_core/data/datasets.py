"""Dataset registry: a name -> images in [0,1], class names written for prompts, prompt templates.

Every dataset, built in or on disk, comes out as a `ZeroShotDataset`: a torch Dataset of
(float image CHW in [0,1], int label) plus `classes` and `templates`. Builders are registered by
name with `register_dataset`; groups (e.g. "mini", the embedded world's benchmark tasks) expand
to several names. An existing directory path is read as an ImageFolder tree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset, Subset

from ..core.errors import UserError, check
from .presets import DEFAULT_TEMPLATES


@dataclass
class ZeroShotDataset:
    """Images plus what zero-shot classification needs to turn labels into prompts."""

    name: str
    data: Dataset  # items: (FloatTensor[C,H,W] in [0,1], int)
    classes: list[str]
    templates: Sequence[str] = DEFAULT_TEMPLATES
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.data)

    def limited(self, limit: int | None, seed: int = 0) -> "ZeroShotDataset":
        """A fixed, seeded random subset of at most `limit` samples (all of them when None)."""
        if limit is None or limit >= len(self.data):
            return self
        check(limit > 0, f"limit must be a positive number of samples; got {limit}.")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.data), generator=g)[:limit].sort().values.tolist()
        return ZeroShotDataset(self.name, Subset(self.data, idx), self.classes, self.templates, self.info)


Builder = Callable[..., ZeroShotDataset]  # builder(split=..., root=..., image_size=...) -> dataset


@dataclass
class DatasetEntry:
    name: str
    builder: Builder
    description: str
    group: str  # "mini", "paper", "finetune", ...


_REGISTRY: dict[str, DatasetEntry] = {}
_GROUPS: dict[str, list[str]] = {}
_BUILTINS_LOADED = False


def register_dataset(name: str, description: str = "", group: str = "") -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = DatasetEntry(name, fn, description, group)
        return fn

    return deco


def register_group(name: str, members: Sequence[str]) -> None:
    _GROUPS[name] = list(members)


def _load_builtins() -> None:
    # Built-in dataset modules register themselves on import; imported lazily to keep this light.
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from . import synthetic  # noqa: F401
        try:
            from . import paper_datasets  # noqa: F401
        except ImportError:
            pass


def list_datasets() -> list[DatasetEntry]:
    _load_builtins()
    return list(_REGISTRY.values())


def list_groups() -> dict[str, list[str]]:
    _load_builtins()
    return dict(_GROUPS)


def expand_names(names: str | Sequence[str]) -> list[str]:
    """'mini,digits' -> the mini group's members then 'digits' (duplicates dropped, order kept)."""
    _load_builtins()
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    out: list[str] = []
    for n in names:
        if not n:
            continue
        for m in _GROUPS.get(n, [n]):
            if m not in out:
                out.append(m)
    check(bool(out), "Give at least one dataset name.")
    return out


def get_dataset(name: str, split: str = "test", root: str | None = None, **kwargs) -> ZeroShotDataset:
    """Build a registered dataset, or read `name` as an ImageFolder directory if it is one."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name].builder(split=split, root=root, **kwargs)
    if os.path.isdir(name):
        return image_folder(name, **kwargs)
    known = ", ".join(sorted(_REGISTRY)) or "none"
    raise UserError(f"Unknown dataset '{name}': use a registered name ({known}) or an existing ImageFolder directory.")


def readable_class_name(folder: str) -> str:
    return folder.replace("_", " ").strip()


def image_folder(path: str, resize: int | None = 224, crop: int | None = 224, **_) -> ZeroShotDataset:
    """An ImageFolder tree (root/class_name/image.ext); folder names become prompt class names."""
    from torchvision import datasets, transforms

    check(os.path.isdir(path), f"Dataset directory '{path}' does not exist.")
    steps = []
    if resize:
        steps.append(transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC))
    if crop:
        steps.append(transforms.CenterCrop(crop))
    steps += [transforms.Lambda(lambda im: im.convert("RGB")), transforms.ToTensor()]
    try:
        ds = datasets.ImageFolder(path, transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"'{path}' is not an ImageFolder tree (one sub-directory of images per class): {e}") from None
    classes = [readable_class_name(c) for c in ds.classes]
    return ZeroShotDataset(os.path.basename(os.path.normpath(path)), ds, classes, DEFAULT_TEMPLATES, {"path": path})
