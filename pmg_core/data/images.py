"""Reading images people give us, and writing adversarial images without losing the perturbation."""
from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import UserError, check

MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding
# What one decode may hold (pixels x PIL's bytes per pixel in the file's mode), read from the header:
# 33 megapixels of RGB, 8k x 4k; a 6300x6300 float32 TIFF (a 252 kB file) is 159 MB and refused.
MAX_DECODED_BYTES = 128 * 2**20
MAX_SIDE = 1024  # larger images are downscaled (the models see at most 336 px anyway)
ACCEPTED = "a PNG, JPEG, WebP, BMP, GIF or TIFF image"
# The decoders PIL may use (the formats ACCEPTED names): never EPS, which runs Ghostscript, nor the rest.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
TOO_LARGE = (f"The image is too large to decode safely: give {ACCEPTED} of at most "
             f"{MAX_PIXELS // 1_000_000} megapixels")


def load_image(src, max_side: int = MAX_SIDE) -> torch.Tensor:
    """A path, bytes, numpy array or PIL image -> float tensor [3,H,W] in [0,1].

    Any PIL mode (1, L, P, RGBA, I;16, CMYK...) is converted to RGB (alpha composited on white,
    16-bit scaled down); images with a side above `max_side` are downscaled keeping aspect.
    """
    img = _open(src)  # header only: the size is checked before any pixel is decoded
    check(img.width >= 1 and img.height >= 1, "The image is empty (0 pixels).")
    check(img.width * img.height <= MAX_PIXELS, f"{TOO_LARGE} (this one is {img.width}x{img.height} pixels).")
    need = decoded_bytes(img)
    check(need <= MAX_DECODED_BYTES,
          f"The image is too large to decode safely: {img.width}x{img.height} pixels of mode {img.mode} take "
          f"{need / 2**20:,.0f} MB; give {ACCEPTED} of at most {MAX_DECODED_BYTES // 2**20} MB decoded "
          "(about 33 megapixels of 8-bit colour).")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"That image file is damaged or cut short and cannot be decoded ({type(e).__name__}); "
                        f"give {ACCEPTED}.") from None
    img = ImageOps.exif_transpose(img) or img
    if img.mode in HIGH_DEPTH and max(img.size) > max_side:  # scaled before the float copy _to_rgb makes
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    img = _to_rgb(img)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)


HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I", "F")


def decoded_bytes(img: Image.Image) -> int:
    """What decoding `img` takes, from its header: PIL keeps every multi-band mode (RGB too) in 4 bytes
    a pixel, 32-bit modes (I, F) in 4, 16-bit ones in 2, the rest in 1."""
    bands = len(img.getbands())
    each = 4 if bands > 1 or img.mode in ("I", "F") else (2 if img.mode.startswith("I;16") else 1)
    return img.width * img.height * each


def _open(src) -> Image.Image:
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if not isinstance(src, (bytes, bytearray)):
        check(Path(src).is_file(), f"Image file '{src}' does not exist.")
    try:
        return Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src, formats=FORMATS)
    except Image.DecompressionBombError:  # PIL refuses over ~179 megapixels from the header alone
        raise UserError(f"{TOO_LARGE}.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"That file is not a readable image ({type(e).__name__}); give {ACCEPTED}.") from None


def _from_array(a: np.ndarray) -> Image.Image:
    check(a.ndim in (2, 3) and a.size > 0, f"An image array must be HxW or HxWxC; got shape {a.shape}.")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        hi = 1.0 if a.max(initial=0) <= 1.0 else (255.0 if a.max() <= 255 else 65535.0)
        a = np.clip(np.nan_to_num(a) / hi * 255.0, 0, 255).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    check(a.ndim == 2 or a.shape[2] in (3, 4), f"An image array needs 1, 3 or 4 channels; got {a.shape[2]}.")
    return Image.fromarray(a)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in HIGH_DEPTH:
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))  # NaN pixels of float TIFFs -> 0
        hi = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def center_square(x: torch.Tensor) -> torch.Tensor:
    """Center crop [C,H,W] to a square (what CLIP's preprocessing does before resizing)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top : top + s, left : left + s]


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid: what a PNG stores. Stays in an eps-ball whose eps is k/255."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[3,H,W] in [0,1] -> HxWx3 uint8."""
    return (quantize(x) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def save_png(x: torch.Tensor, path: str | Path) -> Path:
    """Write losslessly; load_image(path) gives back quantize(x) exactly."""
    path = Path(path)
    Image.fromarray(to_uint8(x)).save(path, format="PNG")
    return path


def slug(name: str) -> str:
    """A model or class name as a safe piece of a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60]


def new_output_folder(root: str | Path, keep_seconds: float = 3600) -> Path:
    """A fresh folder under `root` for one request's files; folders older than `keep_seconds` are removed.

    Gradio copies returned files into its own cache, so old folders only cost disk.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - keep_seconds
    for old in root.iterdir():
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # another request removed it first
            continue
    return Path(tempfile.mkdtemp(dir=root))
