"""Checking what people type or upload in the app, one readable sentence per mistake.

Everything here turns raw UI values (strings, floats that may be NaN, file payloads) into clean
Python values or raises `UserError`. Nothing here knows about Gradio.
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.errors import check, check_number
from ..core.units import from_255

MAX_LABELS = 1000
MAX_LABEL_CHARS = 200
# Text that is split is measured first: splitting 40 MB of commas makes millions of strings.
MAX_LABEL_TEXT = MAX_LABELS * (MAX_LABEL_CHARS + 2)  # characters: every label at its longest, with ", "
MAX_NUMBER_LIST_TEXT = 1000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # also passed to Gradio's launch(max_file_size=...)
CHECKPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # what people type as a number


@dataclass(frozen=True)
class Limits:
    """The ranges the app accepts for what people type: how long a job one person starts may run (a
    public server shares its device with everyone, so it lowers these) and how large an attack or
    a training setting may be. Radii and step sizes are in /255, as people type them."""

    train_steps: int = 10_000
    eval_samples: int = 100_000
    where: str = ""  # said in the refusal when the limit is lower than the library's
    eps_255: float = 64  # Linf radius of an attack, a sweep or an evaluation
    eps_l2_255: float = 2550  # L2 radius of an attack or a sweep
    attack_steps: int = 200  # PGD steps of an attack, a sweep or an evaluation
    step_size_255: float = 255  # one PGD step of the Attack tab
    eval_step_size_255: float = 64
    train_eps_255: float = 32
    train_attack_steps: int = 20
    lr: tuple[float, float] = (1e-8, 1.0)
    batch_size: int = 512
    loss_weight: float = 100  # alpha and beta of PMG-AFT
    sweep_values: int = 12  # radii of one eps sweep or feature-distance plot
    # What one request may cost (studio/policy.py checks them before any work; None: no cap).
    attack_work: int | None = None  # models x (PGD steps + 1) x radii, on one image
    eval_work: int | None = None  # images x models x (PGD steps + 1), over every dataset
    train_work: int | None = None  # images x (PGD steps + 2) over the run
    train_memory_mb: float | None = None  # one step's activations, from the architecture and batch
    work_per_minute: int | None = None  # model-passes of attacks, sweeps and label text per visitor and minute
    visitor_checkpoints: int | None = None  # checkpoints visitors may keep; the oldest expire
    visitor_checkpoint_mb: float | None = None  # and their disk budget

    def eps_max_255(self, norm: str) -> float:
        return self.eps_255 if norm == "Linf" else self.eps_l2_255


LOCAL = Limits()
# A public server shares one device with everyone: no request may hold a lane for minutes.
PUBLIC = Limits(train_steps=500, eval_samples=2_000, where=" on this public server", attack_steps=50,
                train_attack_steps=10, batch_size=64, sweep_values=6, attack_work=600, eval_work=100_000,
                train_work=200_000, train_memory_mb=4096, work_per_minute=3_000, visitor_checkpoints=8,
                visitor_checkpoint_mb=2048)


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def parse_labels(text: str | Sequence[str] | None) -> list[str]:
    """'cat, dog ,bird' (or a list) -> ['cat', 'dog', 'bird']; refuses empty, duplicate and control characters."""
    if text is None:
        text = ""
    if isinstance(text, str):
        check(len(text) <= MAX_LABEL_TEXT and text.count(",") <= MAX_LABELS,
              f"The labels are too long: give at most {MAX_LABELS} labels of at most {MAX_LABEL_CHARS} characters "
              f"({MAX_LABEL_TEXT:,} characters in all); got {len(text):,} characters.")
    else:
        check(len(text) <= MAX_LABELS, f"Give at most {MAX_LABELS} labels; got {len(text)}.")
    parts = text.split(",") if isinstance(text, str) else list(text)
    labels = [str(p).strip() for p in parts]
    if isinstance(text, str) and labels and labels[-1] == "" and len(labels) > 1:
        labels = labels[:-1]  # a trailing comma is harmless
    check(any(labels), "Give the class labels as comma-separated text, e.g. 'cat, dog, bird'.")
    check(all(labels), "One of the labels is empty: remove the doubled or stray comma.")
    check(len(labels) <= MAX_LABELS, f"Give at most {MAX_LABELS} labels; got {len(labels)}.")
    for label in labels:
        check(not _has_control_chars(label), f"The label {label[:40]!r} contains control characters; use plain text.")
        check(len(label) <= MAX_LABEL_CHARS, f"A label is longer than {MAX_LABEL_CHARS} characters: {label[:40]!r}...")
    seen: set[str] = set()
    dupes = [lab for lab in labels if lab in seen or seen.add(lab)]
    check(not dupes, f"The label '{dupes[0] if dupes else ''}' appears more than once; each label must be distinct.")
    return labels


def parse_choice(name: str, value, choices: Sequence[str], optional: bool = False) -> str | None:
    """A value that must be one of `choices` (None/'' allowed when optional)."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        check(optional, f"Choose the {name}.")
        return None
    value = str(value).strip()
    shown = ", ".join(list(choices)[:10]) + ("..." if len(choices) > 10 else "")
    check(value in choices, f"The {name} '{value[:60]}' is not among the choices ({shown}).")
    return value


def parse_number(name: str, value, low: float | None = None, high: float | None = None,
                 integer: bool = False, where: str = "") -> float | int:
    """A number typed or picked in the UI (a float, int or plain decimal string) -> checked by check_number.
    Strings Python's float() reads but a person does not write as a number ('1_0', 'nan', ' inf') are refused."""
    if isinstance(value, str):
        text = value.strip()
        value = float(text) if DECIMAL.fullmatch(text) else text[:30]  # refused by check_number, with the range
    check_number(name, value, low=low, high=high, integer=integer, where=where)
    return int(value) if integer else float(value)


def parse_step_size(value, high_255: float) -> float | None:
    """A PGD step size typed in /255 -> pixel units; empty or 0 means automatic (None), as the fields say."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return from_255(parse_number("step size (/255)", value, 0, high_255)) or None


def parse_number_list(name: str, text, low: float, high: float, max_items: int = 12) -> list[float]:
    """'0, 1, 2, 4' -> sorted distinct floats in [low, high] (at most max_items)."""
    check(isinstance(text, str) and text.strip() != "", f"Give the {name} as comma-separated numbers, e.g. '0, 1, 2, 4'.")
    check(len(text) <= MAX_NUMBER_LIST_TEXT,
          f"The {name} text is too long: give at most {max_items} numbers ({MAX_NUMBER_LIST_TEXT} characters); "
          f"got {len(text):,} characters.")
    values = sorted({parse_number(name, part, low, high) for part in text.split(",") if part.strip()})
    check(0 < len(values) <= max_items, f"Give between 1 and {max_items} {name} values; got {len(values)}.")
    return values


def checkpoint_name(name) -> str:
    """A name for a new checkpoint file in checkpoints/: letters, digits, '.', '_', '-' (no paths)."""
    check(isinstance(name, str) and name.strip() != "", "Give the new checkpoint a name, e.g. 'my-pmg-aft'.")
    name = name.strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    check(CHECKPOINT_NAME.fullmatch(name) is not None and ".." not in name,
          f"The checkpoint name {name[:40]!r} is not allowed: use up to 64 letters, digits, '.', '_' or '-', "
          "starting with a letter or digit (no folders).")
    return name


def new_checkpoint_path(name, directory: str | Path) -> Path:
    """The file a new checkpoint called `name` goes to; stays inside `directory` and never overwrites."""
    directory = Path(directory).resolve()
    path = (directory / f"{checkpoint_name(name)}.safetensors").resolve()
    check(path.parent == directory, "The checkpoint must be saved inside the checkpoints folder.")
    check(not path.exists(), f"A checkpoint named '{path.stem}' already exists; choose another name.")
    return path


def upload_path(value, max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """The local file of an uploaded image (a path, or Gradio's {'path': ...}); refuses missing or huge files."""
    if isinstance(value, dict):
        value = value.get("path")
    check(value is not None and str(value) != "", "Upload an image first (or pick one of the examples).")
    path = str(value)
    check(os.path.isfile(path), "The uploaded file is gone; upload the image again.")
    size = os.path.getsize(path)
    check(size <= max_bytes, f"The file is {size / 1e6:.1f} MB, above the {max_bytes / 1e6:.0f} MB upload limit.")
    return path


def folder_path(value, allowed: bool) -> str:
    """An ImageFolder directory typed by a person (only when the app runs for its owner, not in public)."""
    check(allowed, "Reading folders from the server's disk is switched off on a public server; choose a registered dataset.")
    check(isinstance(value, str) and value.strip() != "", "Give the ImageFolder directory.")
    path = os.path.expanduser(value.strip())
    check(os.path.isdir(path), f"The directory '{path[:200]}' does not exist.")
    return path
