"""Reading images people give us, and writing adversarial images without losing the perturbation.

Reading is bounded at every stage of an image's life, not only at its decode (a 40 kB palette PNG of
6324 px became 660 MB once converted to RGBA at full size):
- **From the header**: at most MAX_PIXELS, and every stage's bytes summed (`ReadPlan`) at most
  MAX_DECODED_BYTES, before any pixel is decoded.
- **Decoded small where the format allows**: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (its DCT
  does it for free, `Image.draft`); other formats are decoded whole and shrunk band by band
  (`Image.reduce`) before any mode conversion, alpha compositing or EXIF rotation, so those only
  ever touch a band or the shrunk image.
- **In flight**: the process holds at most MAX_IMAGE_BYTES_IN_FLIGHT of images being read at once;
  a read that would go over is refused in one sentence (`ImageBytes`), never queued: many large
  images at once cost the server one sentence each, not gigabytes.
"""
from __future__ import annotations

import contextlib
import io
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

from ..core.errors import UserError, check

MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding
# What reading one image may hold at its peak, every stage counted (ReadPlan): about 20 megapixels
# of 8-bit colour in a PNG (a JPEG up to MAX_PIXELS, decoded at a fraction of its size).
MAX_DECODED_BYTES = 128 * 2**20
# Images being read at once, all requests together: one at the cap and a smaller one beside it.
MAX_IMAGE_BYTES_IN_FLIGHT = 192 * 2**20
MAX_SIDE = 1024  # larger images are downscaled (the models see at most 336 px anyway)
BAND_PIXELS = 2**19  # pixels converted to RGB at once while a large image is shrunk
ACCEPTED = "a PNG, JPEG, WebP, BMP, GIF or TIFF image"
# The decoders PIL may use (the formats ACCEPTED names): never EPS, which runs Ghostscript, nor the rest.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
TOO_LARGE = (f"The image is too large to decode safely: give {ACCEPTED} of at most "
             f"{MAX_PIXELS // 1_000_000} megapixels")
HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I", "F")
# EXIF orientation -> the transpose that shows the picture upright (values 2-8 of the EXIF standard).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


class ImageBytes:
    """A ceiling on the bytes of images being read at once in this process, refused when full."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, need: int) -> Iterator[None]:
        with self._lock:
            check(self.used + need <= self.limit,
                  f"The server is reading other large images right now (at most {self.limit // 2**20} MB of them at "
                  "once); try again in a few seconds, or give a smaller image.")
            self.used += need
        try:
            yield
        finally:
            with self._lock:
                self.used -= need


IN_FLIGHT = ImageBytes(MAX_IMAGE_BYTES_IN_FLIGHT)


@dataclass(frozen=True)
class ReadPlan:
    """How an image of `size` in `mode` (after any draft) is read into at most `max_side` px, and what
    each stage holds at its peak: the decode, one band converted to RGB (in PIL's modes, a float copy
    for 16/32-bit ones, RGBA and its composite on white), the image shrunk by `factor`, and the final
    downscale with its numpy and float tensor copies."""

    size: tuple[int, int]
    mode: str
    max_side: int

    @property
    def factor(self) -> int:
        """Whole-pixel shrink (box average) that leaves the longer side at least twice `max_side`,
        as PIL's thumbnail does before its resampling; 1 for images up to twice `max_side`."""
        return max(1, math.ceil(max(self.size) / (2 * self.max_side)))

    @property
    def band_rows(self) -> int:
        w, f = self.size[0], self.factor
        return f * max(1, BAND_PIXELS // (w * f))

    @property
    def bytes(self) -> int:
        (w, h), f = self.size, self.factor
        decoded = w * h * pixel_bytes(self.mode)
        band = min(h, self.band_rows) * w * (pixel_bytes(self.mode) + (8 if self.mode in HIGH_DEPTH else 0) + 1 + 16)
        shrunk = math.ceil(w / f) * math.ceil(h / f) * 4
        side = min(max(w, h), self.max_side)
        final = side * side * (4 + 3 + 3 + 12)  # the downscaled RGB, numpy and its copy, the float tensor
        return decoded + band + shrunk + final


def pixel_bytes(mode: str) -> int:
    """What PIL keeps per pixel of `mode`: every multi-band mode (RGB too) in 4 bytes, 32-bit modes
    (I, F) in 4, 16-bit ones in 2, the rest in 1."""
    try:
        bands = Image.getmodebands(mode)
    except (KeyError, ValueError):
        bands = 1
    return 4 if bands > 1 or mode in ("I", "F") else (2 if mode.startswith("I;16") else 1)


def load_image(src, max_side: int = MAX_SIDE) -> torch.Tensor:
    """A path, bytes, numpy array or PIL image -> float tensor [3,H,W] in [0,1].

    Any PIL mode (1, L, P, RGBA, I;16, CMYK...) is converted to RGB (alpha composited on white,
    16-bit scaled down), EXIF-rotated upright, and images with a side above `max_side` are downscaled
    keeping aspect; each stage bounded as the module docstring says.
    """
    img = _open(src)  # header only: the size is checked before any pixel is decoded
    check(img.width >= 1 and img.height >= 1, "The image is empty (0 pixels).")
    check(img.width * img.height <= MAX_PIXELS, f"{TOO_LARGE} (this one is {img.width}x{img.height} pixels).")
    longer = max(img.size)
    if longer > 2 * max_side:  # a JPEG decodes at the scale closest above twice max_side (others: no-op)
        with contextlib.suppress(OSError, ValueError):
            img.draft(None, tuple(max(1, round(2 * max_side * s / longer)) for s in img.size))
    plan = ReadPlan(img.size, img.mode, max_side)
    check(plan.bytes <= MAX_DECODED_BYTES,
          f"The image is too large to decode safely: {img.width}x{img.height} pixels of mode {img.mode} take "
          f"{plan.bytes / 2**20:,.0f} MB to read; give {ACCEPTED} of at most {MAX_DECODED_BYTES // 2**20} MB decoded "
          "(about 20 megapixels of 8-bit colour; more as a JPEG).")
    with IN_FLIGHT.hold(plan.bytes):
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"That image file is damaged or cut short and cannot be decoded ({type(e).__name__}); "
                            f"give {ACCEPTED}.") from None
        upright = UPRIGHT.get(_orientation(img))
        rgb = _shrunk_rgb(img, plan)
        if upright is not None:
            rgb = rgb.transpose(upright)
        if max(rgb.size) > max_side:
            rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        arr = np.asarray(rgb, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):  # a damaged EXIF block: as it is
        return 1


def _shrunk_rgb(img: Image.Image, plan: ReadPlan) -> Image.Image:
    """`img` in RGB, shrunk by plan.factor, converted band by band so no stage holds it whole in RGB."""
    (w, h), f, rows = img.size, plan.factor, plan.band_rows
    bands = [(top, min(h, top + rows)) for top in range(0, h, rows)]
    scale = _depth_scale(img, bands) if img.mode in HIGH_DEPTH else 0.0
    out = Image.new("RGB", (math.ceil(w / f), math.ceil(h / f)))
    for top, bottom in bands:
        band = _to_rgb(img.crop((0, top, w, bottom)), scale)
        out.paste(band.reduce(f) if f > 1 else band, (0, top // f))
    return out


def _depth_scale(img: Image.Image, bands: list[tuple[int, int]]) -> float:
    """The value a 16/32-bit image's white stands for: 65535 for 16-bit files and for any image whose
    values go above 255, else 255 (its largest value read band by band, NaN as 0)."""
    if img.mode.startswith("I;16"):
        return 65535.0
    w = img.size[0]
    top = max(float(np.nan_to_num(np.asarray(img.crop((0, a, w, b)), dtype=np.float64)).max(initial=0))
              for a, b in bands)
    return 65535.0 if top > 255 else 255.0


def _to_rgb(img: Image.Image, scale: float = 0.0) -> Image.Image:
    if img.mode in HIGH_DEPTH:
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))  # NaN pixels of float TIFFs -> 0
        img = Image.fromarray(np.clip(a / scale * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


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
