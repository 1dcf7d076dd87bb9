"""One checkpoint format: a safetensors file of weights whose header carries JSON metadata.

- kind "base": the whole open_clip model (``arch`` names the architecture), e.g. clip-tiny.
- kind "finetune": only the image encoder's tensors (keys ``visual.*``) and ``base``, the spec
  of the model they fine-tune; the text tower comes from the base, unless the metadata says
  ``text_tower`` (a published model whose text encoder was fine-tuned too, e.g. LEAF): then the
  file also holds the text tower under open_clip's own key names (no ``visual.`` prefix).
Training state for exact resume (optimizer, scheduler, RNG) is a second safetensors file next
to it. Files are written atomically (temp file + rename) and read without unpickling anything.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..core.errors import UserError, check

FORMAT_VERSION = 1
META_KEY = "pmg_core"


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write weights + metadata atomically. metadata must say kind ('base'|'finetune')."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    check(metadata.get("kind") in ("base", "finetune"), "Checkpoint metadata must say kind 'base' or 'finetune'.")
    meta = {"format_version": FORMAT_VERSION, "pmg_core_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **metadata}
    _atomic_save(tensors, path, {META_KEY: json.dumps(meta, sort_keys=True)})
    return path


def header_metadata(path: str | Path) -> str | None:
    """The raw pmg_core entry of a safetensors file's header (None if it has none), read without the weights."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"'{path.name}' is not a readable safetensors checkpoint (truncated or corrupt?): {e}") from None


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of a checkpoint, read from the header only (cheap)."""
    path = Path(path)
    check(path.is_file(), f"Checkpoint file '{path}' does not exist.")
    raw = header_metadata(path)
    check(raw is not None, f"'{path.name}' has no pmg_core metadata; import foreign checkpoints with `python -m pmg_core import`.")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise UserError(f"'{path.name}' has corrupt metadata (not JSON).") from None
    check(isinstance(meta, dict) and meta.get("kind") in ("base", "finetune"),
          f"'{path.name}' has metadata without a valid kind ('base' or 'finetune').")
    return meta


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"'{Path(path).name}' is not a readable safetensors file (truncated or corrupt?): {e}") from None


def visual_state(model) -> dict[str, torch.Tensor]:
    return {f"visual.{k}": v for k, v in model.visual.state_dict().items()}


def save_finetune(path: str | Path, model, metadata: dict) -> Path:
    """Save the image encoder of `model` (a ClipModel) as a fine-tune of its base."""
    return save_checkpoint(path, visual_state(model), {"kind": "finetune", "base": model.base, **metadata})


def save_base(path: str | Path, model, metadata: dict) -> Path:
    """Save a whole model (e.g. a pretrained tiny CLIP) as a base checkpoint."""
    arch = metadata.get("arch") or model.spec
    return save_checkpoint(path, dict(model.clip.state_dict()), {"kind": "base", "arch": arch, **metadata})


def _check_fits(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], refusal: str) -> None:
    """Refuse, in one sentence starting with `refusal`, tensors whose keys or shapes differ from `own`."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad_shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or bad_shapes:
        raise UserError(f"{refusal}: {len(missing)} missing, {len(unexpected)} unexpected and {len(bad_shapes)} "
                        f"mis-shaped tensors (e.g. {(missing + unexpected + bad_shapes)[0]}).")


def load_visual_into(model, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load `visual.*` tensors into model.visual, refusing any key or shape mismatch in one sentence."""
    state = {k[len("visual."):]: v for k, v in tensors.items() if k.startswith("visual.")}
    own = model.visual.state_dict()
    _check_fits(own, state, f"{source} does not fit the image encoder of {model.base}")
    model.visual.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def text_keys(model) -> dict[str, torch.Tensor]:
    """The open_clip model's tensors outside the image tower (text tower, logit scale)."""
    return {k: v for k, v in model.clip.state_dict().items() if not k.startswith("visual.")}


def load_text_into(model, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load a fine-tuned text tower (every non-``visual.*`` tensor) into model.clip, refusing any key
    or shape mismatch and any NaN in one sentence. `model` must own its text side (ClipModel.own_text_side)."""
    state = {k: v for k, v in tensors.items() if not k.startswith("visual.")}
    own = text_keys(model)
    if "logit_scale" in own and "logit_scale" not in state:  # a file without it keeps the base's scale
        state["logit_scale"] = own["logit_scale"]
    _check_fits(own, state, f"{source} does not fit the text encoder of {model.base}")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    check(bad is None, f"{source} has NaN or infinite values in '{bad}'; refused.")
    model.clip.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def save_finetune_with_text(path: str | Path, model, metadata: dict) -> Path:
    """Save the image encoder and the text tower of `model` (a fine-tune of both towers)."""
    return save_checkpoint(path, {**visual_state(model), **text_keys(model)},
                           {"kind": "finetune", "base": model.base, "text_tower": True, **metadata})


# --- training state for exact resume -------------------------------------------------------------

def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer, scheduler, step: int,
                        extra: dict | None = None, weights: dict[str, torch.Tensor] | None = None,
                        device: torch.device | None = None) -> Path:
    """Optimizer buffers, scheduler and RNG state, written atomically beside the checkpoint.

    `weights` (``visual.*`` tensors) makes the state self-contained: resume then does not depend on
    the checkpoint file having been written at the same step. `device`: the run's device; a CUDA
    device's RNG state is saved as the run's own, so a resume on another GPU (another local rank,
    another world size) continues its stream.
    """
    path = Path(path)
    opt = optimizer.state_dict()
    tensors, state_meta = dict(weights or {}), {}
    for pid, st in opt["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{name}"] = val
            else:
                state_meta[f"{pid}.{name}"] = val
    tensors["rng.torch"] = torch.get_rng_state()
    if device is not None and torch.device(device).type == "cuda":
        tensors["rng.device"] = torch.cuda.get_rng_state(device)
    meta = {"step": step, "param_groups": opt["param_groups"], "opt_scalars": state_meta,
            "scheduler": scheduler.state_dict() if scheduler is not None else None, **(extra or {})}
    _atomic_save(tensors, path, {META_KEY: json.dumps(meta)})
    return path


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer, scheduler,
                        device: torch.device | None = None) -> dict:
    """Restore what save_training_state wrote (the device RNG into `device`); returns its JSON part."""
    path = Path(path)
    check(path.is_file(), f"Training state '{path}' does not exist; resume needs the .state.safetensors file.")
    tensors = load_tensors(path)
    raw = header_metadata(path)
    try:
        meta = json.loads(raw or "")
    except json.JSONDecodeError:
        meta = None
    # A checkpoint or foreign file put where the state belongs must not surface as a KeyError.
    check(isinstance(meta, dict) and {"step", "param_groups", "opt_scalars"} <= set(meta) and "rng.torch" in tensors,
          f"Training state '{path.name}' is incomplete or not a training state; resume needs the file a stopped run wrote.")
    state: dict = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for key, val in meta["opt_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as e:
        raise UserError(f"Training state '{path.name}' does not fit this run's optimizer: {e}") from None
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if device is not None and torch.device(device).type == "cuda":
        dev = torch.device(device)
        # States written before "rng.device" existed hold every GPU's state as rng.cuda.<index>.
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        rng = tensors.get("rng.device", tensors.get(f"rng.cuda.{index}"))
        if rng is not None:
            torch.cuda.set_rng_state(rng, dev)
    return meta
