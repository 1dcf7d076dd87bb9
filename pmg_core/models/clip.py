"""Loading CLIP models and the one contract every attack, method and metric uses: ZeroShotClassifier.

A model spec is one of
- a checkpoint name in checkpoints/ (``clip-tiny``, ``tecoa-tiny``...) or a path to a
  ``.safetensors`` checkpoint in this project's format (see checkpoints.py);
- ``hf-hub:org/repo`` (an open_clip model on the Hugging Face hub);
- ``ARCH:TAG`` with an open_clip architecture and pretrained tag (``ViT-B-32-quickgelu:openai``)
  or one of the aliases in ``ALIASES``;
- a bare architecture name (``pmg-tiny``, ``pmg-test``, ``ViT-B-32``...): random initialisation.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import string
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core import env
from .checkpoints import load_tensors, load_text_into, load_visual_into, read_metadata
from ..core.errors import UserError, check, first_line
from ..data.presets import DEFAULT_TEMPLATES, IMAGENET_MEAN, IMAGENET_STD, Preset, get_preset

CONFIG_DIR = Path(__file__).parent / "model_configs"
OPENAI_VIT_B32 = "ViT-B-32-quickgelu:openai"
ALIASES = {"openai": OPENAI_VIT_B32, "clip": OPENAI_VIT_B32, "clip-vit-b-32": OPENAI_VIT_B32}


@functools.cache
def _open_clip():
    import open_clip

    for cfg in sorted(CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(cfg)
    return open_clip


class TextFeatureCache(OrderedDict):
    """Text features by (classes, templates, device): the `max_entries` label sets used last.

    Bounded because every new label set a person types would otherwise stay for the server's life
    (~2 MB per 1,000 labels on ViT-B/32); a lock, because every session's attacks share it.
    """

    def __init__(self, max_entries: int = 64) -> None:
        super().__init__()
        self.max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self:
                return default
            self.move_to_end(key)
            return super().__getitem__(key)

    def __setitem__(self, key, value) -> None:
        with self._lock:
            super().__setitem__(key, value)
            self.move_to_end(key)
            while len(self) > self.max_entries:
                self.popitem(last=False)

    def __reduce__(self):  # a copied model starts with an empty cache (a lock cannot be copied)
        return type(self), (self.max_entries,)


@dataclass
class ClipModel:
    """A CLIP split the way this project uses it: a trainable image tower and a frozen text side.

    Fine-tunes of one base share the base's open_clip model (text tower) and text-feature cache
    and own only their `visual`.
    """

    name: str
    clip: nn.Module  # open_clip model; owns the text tower
    visual: nn.Module  # this model's image encoder (is clip.visual for a base model)
    tokenizer: Callable
    image_size: int
    mean: tuple
    std: tuple
    spec: str  # what load_model() takes to load it again
    base: str  # spec of the base model (== spec for a base model)
    metadata: dict = field(default_factory=dict)
    text_cache: "TextFeatureCache" = field(default_factory=lambda: TextFeatureCache(), repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.visual.parameters()).device

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) clamped to [1, 100] (CLIP's clamp of the log scale to [0, ln 100]), read
        without changing the parameter, which fine-tunes of one base share."""
        return float(self.clip.logit_scale.detach().exp().clamp(1.0, 100.0))

    def to(self, device) -> "ClipModel":
        self.clip.to(device)
        self.visual.to(device)
        return self

    @torch.no_grad()
    def text_features(self, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                      exact: bool = False, turn: Callable[[], ContextManager] | None = None) -> torch.Tensor:
        """L2-normalised class embeddings, one per class (template ensemble averaged as in CLIP).

        Typed labels are trimmed and must be distinct; `exact` takes a dataset's class names as they
        are, spaces and repeats included (the public code's prompts have both: paper_prompts.py).
        `turn`: what each batch of prompts waits for (a public server's turns, AttackSettings.gate);
        the batches are then small, so 1,000 labels are many short turns, not one long one."""
        classes, templates = _check_classes(classes, exact), _check_templates(templates)
        key = (classes, templates, str(self.device))
        cached = self.text_cache.get(key)
        if cached is None:
            prompts = [t.format(c) for c in classes for t in templates]
            feats = []
            was_training = self.clip.training
            self.clip.eval()
            batch = 256 if turn is None else 32
            for i in range(0, len(prompts), batch):
                with turn() if turn is not None else contextlib.nullcontext():
                    tokens = self.tokenizer(prompts[i : i + batch]).to(self.device)
                    feats.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1))
            self.clip.train(was_training)
            feats = torch.cat(feats).view(len(classes), len(templates), -1).mean(1)
            cached = self.text_cache[key] = F.normalize(feats, dim=-1)
        return cached

    @property
    def own_preset(self) -> str:
        """The numerics this model is judged with unless told otherwise: those it was fine-tuned with
        (a public-code fine-tune expects ImageNet normalisation), else the paper's."""
        return (self.metadata or {}).get("preset") or "paper"

    def classifier(self, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                   preset: str | Preset | None = None, exact: bool = False) -> "ZeroShotClassifier":
        """The zero-shot classifier over `classes`; `preset` None: the model's own (see own_preset);
        `exact`: see text_features."""
        preset = get_preset(preset or self.own_preset)
        mean, std = (self.mean, self.std) if preset.normalization == "model" else (IMAGENET_MEAN, IMAGENET_STD)
        scale = self.logit_scale if preset.logits == "scaled" else 1.0
        return ZeroShotClassifier(self.visual, self.text_features(classes, templates, exact), scale,
                                  self.image_size, mean, std)

    def fork(self, name: str, spec: str, metadata: dict | None = None) -> "ClipModel":
        """A model with its own copy of the image encoder that shares this one's text side."""
        return ClipModel(name, self.clip, copy.deepcopy(self.visual), self.tokenizer, self.image_size, self.mean,
                         self.std, spec, self.base, dict(metadata or {}), self.text_cache)

    def own_text_side(self) -> None:
        """Stop sharing the base's text side: a copy of the open_clip model (whose image tower stays
        the base's, the original encoder TTC consults) and a text-feature cache of its own, for a
        fine-tune that replaces the text tower too."""
        self.clip, self.text_cache = copy.deepcopy(self.clip), TextFeatureCache()


def _check_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Prompt templates, each with exactly one '{}' for the class name (a single string is one template)."""
    templates = (templates,) if isinstance(templates, str) else tuple(templates)
    for t in templates:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None] if isinstance(t, str) else None
        except ValueError:  # an unmatched brace
            fields = None
        check(fields == [""], f"A prompt template must contain exactly one '{{}}' where the class name goes "
                              f"(write other braces as '{{{{' and '}}}}'); got {t!r}.")
    return templates or DEFAULT_TEMPLATES


def _check_classes(classes: Sequence[str], exact: bool = False) -> tuple[str, ...]:
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",")]
    classes = tuple(str(c) if exact else str(c).strip() for c in classes)
    check(len(classes) > 0 and all(c.strip() for c in classes), "Give at least one class name, none of them empty.")
    check(exact or len(set(classes)) == len(classes), "Class names must be distinct; remove the duplicates.")
    return classes


class ZeroShotClassifier(nn.Module):
    """Images in [0,1] (NCHW, any size) -> zero-shot logits.

    Resizes to the model's input size and normalises inside, so attacks work in pixel space with
    eps in units of the image's own pixels. logits = scale * cos(image_feature, text_feature)
    against text features computed once (they are a buffer: no grad, moved with the module).
    """

    def __init__(self, visual: nn.Module, text_features: torch.Tensor, logit_scale: float, image_size: int,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.visual = visual
        self.register_buffer("text_features", text_features.detach().clone(), persistent=False)
        # On the text features' device (the model's): a classifier built for a CUDA model must not hold CPU buffers.
        dev = text_features.device
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1), persistent=False)
        self.logit_scale = float(logit_scale)
        self.image_size = int(image_size)

    def with_visual(self, visual: nn.Module) -> "ZeroShotClassifier":
        """The same classifier (text features, logit scale, input size, normalisation) over another image encoder."""
        return ZeroShotClassifier(visual, self.text_features, self.logit_scale, self.image_size,
                                  self.mean.flatten().tolist(), self.std.flatten().tolist())

    @property
    def num_classes(self) -> int:
        return self.text_features.shape[0]

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        check(x.dim() == 4 and x.shape[1] in (1, 3), f"Images must be a batch NCHW with 1 or 3 channels; got shape {tuple(x.shape)}.")
        # uint8 pixels would be read as values up to 255 and give meaningless logits.
        check(x.is_floating_point(), f"Images must be floating point with values in [0,1]; got {x.dtype} "
                                     "(divide 8-bit images by 255 first).")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            down = min(x.shape[-2:]) > self.image_size
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=down)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encode(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.visual(self.preprocess(x))
        return F.normalize(feats, dim=-1) if normalize else feats

    def logits_from_features(self, feats: torch.Tensor, fp32: bool = True) -> torch.Tensor:
        """scale * cos(feats, text features). fp32 (the default) computes them in fp32 even under a
        caller's autocast: a bf16 matmul errs by up to ~0.06 logit at CLIP's x100 scale, the size of
        the differences PMG-AFT's KL terms measure. fp32=False leaves them to the autocast, as the
        public code's fp16 attack computes them (attacks.PublicCodePGD)."""
        if not fp32:
            return self.logit_scale * F.normalize(feats, dim=-1) @ self.text_features.t().to(feats.dtype)
        with torch.autocast(feats.device.type, enabled=False):
            feats = F.normalize(feats.float(), dim=-1)
            return self.logit_scale * feats @ self.text_features.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.visual(self.preprocess(x)))


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with no trainable parameters, in eval mode: the 'original model' f_o."""
    out = copy.deepcopy(module).eval()
    out.requires_grad_(False)
    return out


def list_architectures() -> list[str]:
    return _open_clip().list_models()


def list_checkpoints(directory: str | Path | None = None) -> list[Path]:
    d = Path(directory) if directory else env.checkpoint_dir()
    return sorted(d.glob("*.safetensors")) if d.is_dir() else []


def create_architecture(arch: str, device="cpu") -> ClipModel:
    """An open_clip architecture with random weights (tests, pretraining from scratch)."""
    oc = _open_clip()
    check(arch in oc.list_models(), f"Unknown model architecture '{arch}'; `python -m pmg_core models` lists them.")
    model = oc.create_model(arch, pretrained=None, device=device)
    return _wrap(arch, model, oc.get_tokenizer(arch), arch, arch)


def _wrap(name: str, model: nn.Module, tokenizer, spec: str, base: str, mean=None, std=None) -> ClipModel:
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    model.eval()
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = tuple(mean or pp.get("mean") or OPENAI_DATASET_MEAN)
    std = tuple(std or pp.get("std") or OPENAI_DATASET_STD)
    return ClipModel(name, model, model.visual, tokenizer, int(size), mean, std, spec, base)


def _load_pretrained(arch: str, tag: str, device) -> ClipModel:
    oc = _open_clip()
    check(arch in oc.list_models(), f"Unknown model architecture '{arch}'; `python -m pmg_core models` lists them.")
    cfg = oc.get_pretrained_cfg(arch, tag)
    check(bool(cfg) or os.path.isfile(tag),
          f"Unknown pretrained tag '{tag}' for {arch}; open_clip knows: {', '.join(oc.list_pretrained_tags_by_model(arch)) or 'none'}.")
    weights = tag
    if env.is_offline():
        env.go_offline()
        weights = _cached_hub_file(cfg.get("hf_hub", "")) if cfg else tag
        if not weights:
            raise UserError(f"Weights for {arch}:{tag} are not in the local cache and this machine is offline; "
                            "connect once to download them, or use the embedded default 'clip-tiny'.")
    try:
        model = oc.create_model(arch, pretrained=weights, device=device)
    except Exception as e:  # noqa: BLE001 - downloads and weight files fail in many ways
        raise UserError(f"Could not load the weights of {arch}:{tag} ({first_line(e)}); check the network "
                        "connection and the tag, or use the embedded default 'clip-tiny'.") from None
    # Given a cached file instead of the tag, open_clip falls back to OpenAI's mean/std: use the tag's.
    mean, std = (cfg.get("mean"), cfg.get("std")) if cfg else (None, None)
    return _wrap(f"{arch}:{tag}", model, oc.get_tokenizer(arch), f"{arch}:{tag}", f"{arch}:{tag}", mean, std)


def _cached_hub_file(hub: str) -> str | None:
    if not hub:
        return None
    from huggingface_hub import hf_hub_download

    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if filename.endswith((".bin", ".pt", ".pth")):
        names.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
    for name in names:
        try:
            return hf_hub_download(repo, name, local_files_only=True)
        except Exception:  # noqa: BLE001 - any failure means "not cached"
            continue
    return None


def _load_hf_hub(spec: str, device) -> ClipModel:
    """A hub model through pmg_core.models.hub_models: its files checked and its config normalised before open_clip builds it."""
    from .hub_models import load

    _open_clip()
    model, tokenizer = load(spec, device)  # every failure, offline and uncached included, is one UserError sentence
    return _wrap(spec, model, tokenizer, spec, spec)


def load_model(spec: str, device="cpu", base: ClipModel | None = None) -> ClipModel:
    """Load a model by spec (see module docstring). `base` lets fine-tunes share a loaded base."""
    check(isinstance(spec, str) and spec.strip() != "", "Give a model name.")
    spec = ALIASES.get(spec.strip(), spec.strip())
    path = checkpoint_path(spec)
    if path is not None:
        return load_checkpoint_model(path, device=device, base=base)
    if spec.startswith("hf-hub:"):
        return _load_hf_hub(spec, device)
    if ":" in spec:
        arch, tag = spec.split(":", 1)
        return _load_pretrained(arch, tag, device)
    if spec in _open_clip().list_models():
        return create_architecture(spec, device)
    names = ", ".join(p.stem for p in list_checkpoints()) or "none"
    raise UserError(f"Unknown model '{spec}': use a checkpoint ({names}), a .safetensors path, 'hf-hub:org/repo', "
                    f"'ARCH:TAG' such as {OPENAI_VIT_B32}, or an architecture name.")


def checkpoint_path(spec: str) -> Path | None:
    p = Path(spec)
    if p.suffix == ".safetensors":
        check(p.is_file(), f"Checkpoint file '{spec}' does not exist.")
        return p
    if "/" not in spec and ":" not in spec:
        candidate = env.checkpoint_dir() / f"{spec}.safetensors"
        if candidate.is_file():
            return candidate
    return None


@contextlib.contextmanager
def _no_random_init_warning():
    """Silence open_clip's "Model initialized randomly" (logged on the root logger) while an
    architecture is built only to receive a checkpoint's weights: it would tell users the opposite."""
    def keep(record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


# The checkpoint files whose bases are being loaded, per thread: a base that leads back to one is a cycle.
_BASES_LOADING = threading.local()


def load_checkpoint_model(path: str | Path, device="cpu", base: ClipModel | None = None) -> ClipModel:
    """Load a checkpoint file (checkpoints.py's format) as a ClipModel; a fine-tune loads its base
    first, or reuses `base` when that is it."""
    path = Path(path)
    meta = read_metadata(path)
    tensors = load_tensors(path)
    # Checkpoints in the checkpoint folder are known by name; others by path, so the spec loads them again.
    spec = path.stem if path.parent.resolve() == env.checkpoint_dir().resolve() else str(path)
    if meta["kind"] == "base":
        oc = _open_clip()
        arch = meta.get("arch", "")
        check(arch in oc.list_models(), f"'{path.name}' needs architecture '{arch}', which this install does not know.")
        with _no_random_init_warning():  # the weights come from the file right below
            model = oc.create_model(arch, pretrained=None, device="cpu")
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise UserError(f"'{path.name}' does not fit architecture '{arch}': {str(e).splitlines()[0]}") from None
        out = _wrap(path.stem, model, oc.get_tokenizer(arch), spec, spec, mean=meta.get("mean"), std=meta.get("std"))
        out.metadata = meta
        return out.to(device)
    base_spec = meta.get("base")
    check(bool(base_spec), f"'{path.name}' is a fine-tune that does not name its base model.")
    if base is None or base.spec != base_spec:
        chain = _BASES_LOADING.__dict__.setdefault("paths", [])
        here = path.resolve()
        check(here not in chain, f"'{path.name}' is its own base through "
              f"{' -> '.join(p.name for p in [*chain[chain.index(here) if here in chain else 0:], here])}; "
              "a fine-tune's base must be a model that is not a fine-tune of it.")
        chain.append(here)
        try:
            base = load_model(base_spec, device=device)
        finally:
            chain.pop()
    model = base.fork(path.stem, spec, meta)
    load_visual_into(model, tensors, f"'{path.name}'")
    if meta.get("text_tower"):
        model.own_text_side()
        load_text_into(model, tensors, f"'{path.name}'")
    model.metadata = meta
    return model.to(device)
