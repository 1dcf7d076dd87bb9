"""The embedded captioned world: procedurally drawn 32x32 scenes with captions, offline and seeded.

What the world holds
- Shape scenes: one to four objects of one shape (circle, square, triangle, diamond, cross, star),
  one colour, one fill pattern (solid, striped, checkered, outlined) and one size (small, medium,
  large), at a named position (single objects), on one background (black, gray, white, noisy).
- Digit scenes: procedurally drawn, hand-written-looking glyphs 0-9 (random stroke jitter, slant,
  thickness). Half of the pretraining digits are drawn the way a low-resolution scan looks (white
  ink on black, 8x8 then upsampled) so that zero-shot transfer to real hand-written digits
  (scikit-learn's `load_digits`) is possible. No real image is ever used for pretraining.
- Captions from several templates that mention a random subset of the attributes
  ("a photo of two small red circles", "this is a photo of a striped shape on a white background").

Everything is deterministic by seed: attributes come from numpy's PCG64 seeded with a tuple
(namespace, task, split, seed), pixels are rendered with vectorised torch ops from those
attributes and stored as uint8 (so eps = k/255 is exactly k grey levels). Pretraining, each
task's train split and each task's test split use different seed tuples.

Held-out combinations (`HELDOUT_COMBOS`, colour x shape) are never drawn in pretraining, in any
evaluation task but `synth-heldout`, or in the fine-tuning set: `synth-heldout` asks for them.

Registered datasets (see `TASKS`): the benchmark group "mini" (ten zero-shot tasks, one of them
real images) and the fine-tuning set "synth-finetune" (group "finetune"), whose classes (shape x
pattern) are not the label set of any evaluation task.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .datasets import ZeroShotDataset, register_dataset, register_group
from ..core.errors import check, check_number

IMAGE_SIZE = 32

# --- the world's vocabulary -------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
SHAPE_PLURALS = ("circles", "squares", "triangles", "diamonds", "crosses", "stars")
COLOURS = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.72, 0.15),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.95, 0.88, 0.10),
    "purple": (0.58, 0.15, 0.80),
    "pink": (1.00, 0.50, 0.78),
    "cyan": (0.10, 0.85, 0.90),
    "brown": (0.60, 0.34, 0.12),
}
COLOUR_NAMES = tuple(COLOURS)
DIGIT_INK = "white"  # extra ink colour used only by digit scenes (hand-written look)
PATTERNS = ("solid", "striped", "checkered", "outlined")
SIZES = ("small", "medium", "large")
SIZE_RADIUS = ((3.4, 4.4), (5.8, 7.0), (9.8, 11.2))  # pixel radius ranges per size
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
POSITION_XY = ((9.5, 9.5), (22.5, 9.5), (9.5, 22.5), (22.5, 22.5), (16.0, 16.0))
COUNT_WORDS = ("one", "two", "three", "four")
BACKGROUNDS = ("black", "gray", "white", "noisy")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# colour x shape pairs never shown before evaluation: a 2x2 block and another 2x2 block, so that
# telling them apart needs both attributes (each colour and each shape appears in two of them).
HELDOUT_COMBOS = (("red", "circle"), ("red", "square"), ("blue", "circle"), ("blue", "square"),
                  ("green", "triangle"), ("green", "star"), ("yellow", "triangle"), ("yellow", "star"))
_HELDOUT_IDX = np.zeros((len(COLOURS), len(SHAPES)), dtype=bool)
for _c, _s in HELDOUT_COMBOS:
    _HELDOUT_IDX[COLOUR_NAMES.index(_c), SHAPES.index(_s)] = True

KIND_SHAPES, KIND_DIGIT, KIND_SCAN = 0, 1, 2  # shape scene, clean digit, scanned-looking digit

TEMPLATES = ("This is a photo of a {}", "a photo of a {}", "a {}")
TEMPLATES_BARE = ("This is a photo of {}", "a photo of {}", "{}")  # classes that carry their own article
CAPTION_PREFIXES = ("", "a photo of ", "this is a photo of ", "an image of ", "a picture of ")

# seed namespaces: pretraining stream, task splits
_NS_PRETRAIN, _NS_TASK = 0x50524554, 0x5441534B
SPLITS = ("train", "test")


def article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


# --- scenes: the attributes of a batch of images ---------------------------------------------------

@dataclass
class Scenes:
    """Attributes of N images (numpy arrays, one entry per image; -1 where not applicable)."""

    kind: np.ndarray  # KIND_*
    shape: np.ndarray
    colour: np.ndarray  # index into COLOUR_NAMES; len(COLOURS) = white (digits only)
    pattern: np.ndarray
    size: np.ndarray
    position: np.ndarray  # -1 for several objects
    count: np.ndarray  # 1..4 (1 for digits)
    background: np.ndarray
    digit: np.ndarray
    seed: int = 0  # seed of the pixel-level randomness (jitter, noise, glyph strokes)
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.kind)

    def attributes(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("seed", "extra")}

    def select(self, idx) -> "Scenes":
        return Scenes(**{k: v[idx] for k, v in self.attributes().items()}, seed=self.seed)


def _choice(rng: np.random.Generator, n: int, options) -> np.ndarray:
    options = np.asarray(options)
    return options[rng.integers(0, len(options), size=n)]


def sample_scenes(rng: np.random.Generator, n: int, *, kind=(KIND_SHAPES,), shape=None, colour=None,
                  pattern=None, size=None, position=None, count=(1,), background=None, digit=None,
                  heldout: str = "exclude") -> Scenes:
    """Sample N scenes. Each keyword restricts an attribute to the given index options (None: any).

    heldout: "exclude" redraws (colour, shape) pairs in HELDOUT_COMBOS, "only" draws only them.
    Single objects of size "large" are always in the center (they fill the frame).
    """
    kind_a = _choice(rng, n, kind)
    count_a = np.where(kind_a == KIND_SHAPES, _choice(rng, n, count), 1)
    shape_a = _choice(rng, n, shape if shape is not None else range(len(SHAPES)))
    colour_a = _choice(rng, n, colour if colour is not None else range(len(COLOURS)))
    if heldout == "only":
        pairs = np.array([(COLOUR_NAMES.index(c), SHAPES.index(s)) for c, s in HELDOUT_COMBOS])
        pick = pairs[rng.integers(0, len(pairs), size=n)]
        colour_a, shape_a = pick[:, 0], pick[:, 1]
    elif heldout == "exclude":
        for _ in range(100):
            bad = _HELDOUT_IDX[colour_a, shape_a] & (kind_a == KIND_SHAPES)
            if not bad.any():
                break
            k = int(bad.sum())
            shape_a[bad] = _choice(rng, k, shape if shape is not None else range(len(SHAPES)))
            colour_a[bad] = _choice(rng, k, colour if colour is not None else range(len(COLOURS)))
        check(not (_HELDOUT_IDX[colour_a, shape_a] & (kind_a == KIND_SHAPES)).any(),
              "These attribute restrictions only allow held-out colour-shape combinations.")
    pattern_a = _choice(rng, n, pattern if pattern is not None else range(len(PATTERNS)))
    size_a = _choice(rng, n, size if size is not None else range(len(SIZES)))
    size_a = np.where(count_a > 1, 0, size_a)  # several objects are always small
    pos_a = _choice(rng, n, position if position is not None else range(len(POSITIONS)))
    pos_a = np.where(size_a == 2, POSITIONS.index("center"), pos_a)
    pos_a = np.where(count_a > 1, -1, pos_a)
    bg_a = _choice(rng, n, background if background is not None else range(len(BACKGROUNDS)))
    digit_a = _choice(rng, n, digit if digit is not None else range(10))
    is_digit = kind_a != KIND_SHAPES
    # digits: no shape/pattern/size/position; scanned digits are white ink on black
    shape_a = np.where(is_digit, -1, shape_a)
    pattern_a = np.where(is_digit, -1, pattern_a)
    size_a = np.where(is_digit, -1, size_a)
    pos_a = np.where(is_digit, -1, pos_a)
    digit_a = np.where(is_digit, digit_a, -1)
    scan = kind_a == KIND_SCAN
    colour_a = np.where(scan, len(COLOURS), colour_a)
    bg_a = np.where(scan, BACKGROUNDS.index("black"), bg_a)
    seed = int(rng.integers(0, 2**63 - 1))
    as_int = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return Scenes(as_int(kind_a), as_int(shape_a), as_int(colour_a), as_int(pattern_a), as_int(size_a),
                  as_int(pos_a), as_int(count_a), as_int(bg_a), as_int(digit_a), seed)


# --- rendering ------------------------------------------------------------------------------------

def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    return c.view(1, 1, IMAGE_SIZE), c.view(1, IMAGE_SIZE, 1)  # x (columns), y (rows)


def _sdf_one(shape: int, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance (pixels, < 0 inside) of one shape kind; x, y in the object's frame."""
    if shape == 0:  # circle
        return torch.sqrt(x * x + y * y) - r
    if shape == 1:  # square
        return torch.maximum(x.abs(), y.abs()) - 0.86 * r
    if shape == 2:  # triangle pointing up (y grows downwards), circumradius 1.2 r, nudged up to look centered
        return torch.maximum(torch.maximum(y, 0.866 * x - 0.5 * y), -0.866 * x - 0.5 * y) - 0.5 * r
    if shape == 3:  # diamond
        return (x.abs() + y.abs() - 1.22 * r) / math.sqrt(2.0)
    if shape == 4:  # cross
        ax, ay, half = x.abs(), y.abs(), 0.36 * r
        return torch.minimum(torch.maximum(ax - r, ay - half), torch.maximum(ax - half, ay - r))
    # five-pointed star, in polar coordinates
    seg = 2 * math.pi / 5
    a = torch.remainder(torch.atan2(x, -y), seg)  # angle from the top
    a = (a - seg / 2).abs() / (seg / 2)  # 1 at a point, 0 between points
    return (torch.sqrt(x * x + y * y) - r * (0.52 + 0.70 * a)) * 0.75


def _fill_one(pattern: int, sdf: torch.Tensor, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Ink coverage in [0,1] of objects with one fill pattern."""
    cov = (0.5 - sdf).clamp(0, 1)
    w = 2 * math.pi / 4.0  # pattern period: 4 pixels
    if pattern == 1:  # striped
        return cov * (torch.cos(w * y) * 2.5 + 0.5).clamp(0, 1)
    if pattern == 2:  # checkered
        return cov * (torch.cos(w * x) * torch.cos(w * y) * 4 + 0.5).clamp(0, 1)
    if pattern == 3:  # outlined
        return cov - (0.5 - (sdf + torch.clamp(0.2 * r, min=1.4))).clamp(0, 1)
    return cov


def _objects(shape: np.ndarray, pattern: np.ndarray, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Coverage [M, H, W] of M objects, computed kind by kind (each object only for its own shape)."""
    sdf = torch.empty(x.shape[0], IMAGE_SIZE, IMAGE_SIZE)
    for k in np.unique(shape):
        rows = torch.from_numpy(np.nonzero(shape == k)[0])
        sdf[rows] = _sdf_one(int(k), x[rows], y[rows], r[rows])
    out = torch.empty_like(sdf)
    for k in np.unique(pattern):
        rows = torch.from_numpy(np.nonzero(pattern == k)[0])
        out[rows] = _fill_one(int(k), sdf[rows], x[rows], y[rows], r[rows])
    return out


# Digit glyphs: polylines in a box x in [-0.6, 0.6], y in [-1, 1] (y down). Each digit has variants.
def _arc(cx, cy, rx, ry, a0, a1, n=8):
    t = np.linspace(math.radians(a0), math.radians(a1), n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _pl(*pts):
    return np.array(pts, dtype=np.float64)


GLYPHS: dict[int, list[list[np.ndarray]]] = {
    0: [[_arc(0, 0, 0.55, 0.95, -90, 270, 14)]],
    1: [[_pl((0.05, -0.95), (0.0, 0.95))],
        [_pl((-0.3, -0.55), (0.08, -0.95), (0.02, 0.95))],
        [_pl((-0.3, -0.55), (0.08, -0.95), (0.02, 0.95)), _pl((-0.35, 0.95), (0.4, 0.95))]],
    2: [[np.concatenate([_arc(0, -0.42, 0.5, 0.52, 195, 360, 7), _arc(0, -0.42, 0.5, 0.52, 0, 40, 3),
                         _pl((-0.55, 0.95), (0.6, 0.95))])],
        [np.concatenate([_arc(0, -0.45, 0.5, 0.5, 190, 390, 9), _pl((-0.55, 0.92), (0.6, 0.9))])]],
    3: [[np.concatenate([_arc(0, -0.5, 0.45, 0.45, 200, 450, 9), _arc(0, 0.45, 0.52, 0.5, -90, 160, 9)])],
        [_pl((-0.5, -0.95), (0.5, -0.95), (-0.05, -0.1)), _arc(0, 0.4, 0.52, 0.55, -100, 160, 9)]],
    4: [[_pl((0.25, -0.95), (-0.55, 0.35), (0.6, 0.35)), _pl((0.28, -0.35), (0.28, 0.95))],
        [_pl((-0.45, -0.95), (-0.5, 0.3), (0.6, 0.3)), _pl((0.3, -0.95), (0.3, 0.95))]],
    5: [[_pl((0.55, -0.95), (-0.4, -0.95), (-0.45, -0.1)), _arc(0, 0.4, 0.55, 0.55, -140, 150, 10)]],
    6: [[_arc(0.35, 0.4, 0.85, 1.35, -90, -180, 6), _arc(0, 0.45, 0.5, 0.5, 0, 360, 12)]],
    7: [[_pl((-0.55, -0.95), (0.6, -0.95), (-0.1, 0.95))],
        [_pl((-0.55, -0.95), (0.6, -0.95), (-0.1, 0.95)), _pl((-0.25, 0.0), (0.4, 0.0))]],
    8: [[_arc(0, -0.5, 0.42, 0.45, 0, 360, 12), _arc(0, 0.45, 0.52, 0.5, 0, 360, 12)]],
    9: [[_arc(0, -0.45, 0.48, 0.5, 0, 360, 12), _pl((0.48, -0.45), (0.35, 0.95))],
        [_arc(0, -0.45, 0.48, 0.5, 0, 360, 12), _pl((0.48, -0.45), (0.45, 0.3)), _arc(-0.05, 0.3, 0.5, 0.65, 0, 120, 5)]],
}


def _glyph_segments(rng: np.random.Generator, digit: int, scan: bool) -> np.ndarray:
    """Segments [S, 4] (x0, y0, x1, y1) in pixels for one randomly written glyph (S varies)."""
    variants = GLYPHS[digit]
    strokes = variants[rng.integers(0, len(variants))]
    if scan:  # fills the frame like an 8x8 scan: tall, centered
        sx, sy = rng.uniform(7.5, 11.0), rng.uniform(12.5, 14.5)
        tx, ty = 16 + rng.uniform(-1.5, 1.5), 16 + rng.uniform(-1.0, 1.0)
    else:
        sy = rng.uniform(8.5, 12.0)
        sx = sy * rng.uniform(0.75, 1.05)
        tx, ty = 16 + rng.uniform(-3, 3), 16 + rng.uniform(-2.5, 2.5)
    shear, rot = rng.uniform(-0.3, 0.25), math.radians(rng.uniform(-10, 10))
    c, s = math.cos(rot), math.sin(rot)
    segs = []
    for pts in strokes:
        p = pts + rng.normal(0, 0.05, size=pts.shape)
        x, y = p[:, 0] + shear * p[:, 1], p[:, 1]
        x, y = x * sx, y * sy
        x, y = c * x - s * y + tx, s * x + c * y + ty
        q = np.stack([x, y], 1)
        segs.append(np.concatenate([q[:-1], q[1:]], 1))
    return np.concatenate(segs, 0)


def _render_digits(segments: torch.Tensor, half_width: torch.Tensor) -> torch.Tensor:
    """Ink coverage [N, H, W] of glyphs given segments [N, S, 4] and stroke half-widths [N]."""
    gx, gy = _grid()
    px = gx.view(1, IMAGE_SIZE).expand(IMAGE_SIZE, IMAGE_SIZE).reshape(1, 1, -1)
    py = gy.view(IMAGE_SIZE, 1).expand(IMAGE_SIZE, IMAGE_SIZE).reshape(1, 1, -1)
    out = []
    for chunk, hw in zip(segments.split(64), half_width.split(64)):
        x0, y0, x1, y1 = (chunk[..., i : i + 1] for i in range(4))
        dx, dy = x1 - x0, y1 - y0
        ex, ey = px - x0, py - y0
        t = ((ex * dx + ey * dy) / (dx * dx + dy * dy + 1e-9)).clamp(0, 1)
        ex, ey = ex - t * dx, ey - t * dy
        d = torch.sqrt((ex * ex + ey * ey).amin(1))  # [n, HW]
        out.append((hw.view(-1, 1) + 0.5 - d).clamp(0, 1).view(-1, IMAGE_SIZE, IMAGE_SIZE))
    return torch.cat(out) if out else torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE)


def scan_degrade(img: torch.Tensor) -> torch.Tensor:
    """What an 8x8 scan with 17 grey levels looks like once upsampled back to 32x32 (as real digits)."""
    small = F.avg_pool2d(img, IMAGE_SIZE // 8)
    small = torch.round(small * 16) / 16
    return upsample8(small)


def upsample8(small: torch.Tensor) -> torch.Tensor:
    return F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


def render(scenes: Scenes) -> torch.Tensor:
    """uint8 images [N, 3, 32, 32] of the given scenes (deterministic given scenes.seed)."""
    n = len(scenes)
    rng = np.random.default_rng(scenes.seed)
    gx, gy = _grid()
    # backgrounds
    bg_level = np.array([0.06, 0.5, 0.94, 0.5])[scenes.background] + rng.uniform(-0.06, 0.06, n)
    bg_tint = rng.uniform(-0.03, 0.03, (n, 3))
    bg = torch.from_numpy((bg_level[:, None] + bg_tint).astype(np.float32)).view(n, 3, 1, 1)
    bg = bg.expand(n, 3, IMAGE_SIZE, IMAGE_SIZE).clone()
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))  # pixel noise: torch's CPU generator
    noisy = torch.from_numpy(np.nonzero(scenes.background == BACKGROUNDS.index("noisy"))[0])
    if len(noisy):
        bg[noisy] += (torch.rand(len(noisy), 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen) - 0.5) * 0.5
    # ink colours (white = index len(COLOURS), digits only)
    palette = np.array(list(COLOURS.values()) + [(0.97, 0.97, 0.97)])
    jitter = rng.uniform(-0.06, 0.06, (n, 3))
    jitter[scenes.kind == KIND_SCAN] = jitter[scenes.kind == KIND_SCAN, :1]  # scans stay grey
    ink = palette[scenes.colour] + jitter
    ink = torch.from_numpy(ink.astype(np.float32)).view(n, 3, 1, 1)
    coverage = torch.zeros(n, IMAGE_SIZE, IMAGE_SIZE)

    # shape scenes: up to four objects per image
    obj_rows = np.nonzero(scenes.kind == KIND_SHAPES)[0]
    if len(obj_rows):
        cells = np.array([(x, y) for y in (6.0, 16.0, 26.0) for x in (6.0, 16.0, 26.0)])
        img_idx, cx, cy = [], [], []
        for i in obj_rows:  # placement: a named position, or distinct cells of a 3x3 grid
            k = scenes.count[i]
            if k == 1:
                px, py = POSITION_XY[scenes.position[i]]
                j = 1.2 if scenes.size[i] < 2 else 0.8
                pts = np.array([[px, py]]) + rng.uniform(-j, j, (1, 2))
            else:
                pts = cells[rng.permutation(9)[:k]] + rng.uniform(-0.8, 0.8, (k, 2))
            img_idx += [i] * k
            cx += list(pts[:, 0])
            cy += list(pts[:, 1])
        img_idx = np.array(img_idx)
        m = len(img_idx)
        lo = np.array([a for a, _ in SIZE_RADIUS])[scenes.size[img_idx]]
        hi = np.array([b for _, b in SIZE_RADIUS])[scenes.size[img_idx]]
        radius = rng.uniform(lo, hi)
        angle = np.radians(rng.uniform(-15, 15, m))
        t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).view(-1, 1, 1)  # noqa: E731
        r, ca, sa = t(radius), t(np.cos(angle)), t(np.sin(angle))
        dx, dy = gx - t(cx), gy - t(cy)
        lx, ly = ca * dx + sa * dy, -sa * dx + ca * dy  # rotate into the object's frame
        fill = _objects(scenes.shape[img_idx], scenes.pattern[img_idx], lx, ly, r)
        slot = np.concatenate([np.arange(scenes.count[i]) for i in obj_rows])
        per_slot = torch.zeros(n, 4, IMAGE_SIZE, IMAGE_SIZE)
        per_slot[torch.from_numpy(img_idx), torch.from_numpy(slot)] = fill
        coverage = per_slot.amax(1)

    # digit scenes
    dig_rows = np.nonzero(scenes.kind != KIND_SHAPES)[0]
    if len(dig_rows):
        glyphs = [_glyph_segments(rng, int(scenes.digit[i]), scenes.kind[i] == KIND_SCAN) for i in dig_rows]
        most = max(len(g) for g in glyphs)  # pad by repeating a segment (does not change distances)
        segs = np.stack([np.concatenate([g, np.repeat(g[-1:], most - len(g), 0)]) for g in glyphs])
        scan = scenes.kind[dig_rows] == KIND_SCAN
        hw = np.where(scan, rng.uniform(2.0, 3.4, len(dig_rows)), rng.uniform(1.1, 1.9, len(dig_rows)))
        cov = _render_digits(torch.from_numpy(segs.astype(np.float32)), torch.from_numpy(hw.astype(np.float32)))
        coverage[torch.from_numpy(dig_rows)] = cov

    cov = coverage.unsqueeze(1)
    img = bg * (1 - cov) + ink * cov
    scan_rows = np.nonzero(scenes.kind == KIND_SCAN)[0]
    if len(scan_rows):
        rows = torch.from_numpy(scan_rows)
        img[rows] = scan_degrade(img[rows].clamp(0, 1))
    img = img + torch.randn(img.shape, generator=gen) * 0.015
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


# --- captions -------------------------------------------------------------------------------------

CAPTION_ATTRIBUTES = ("is_digit", "shape", "colour", "pattern", "size", "position", "count", "background", "digit")


def _noun_phrase(sc: Scenes, i: int, rng, p: float) -> tuple[str, dict[str, int]]:
    """A description of scene i mentioning each optional attribute with probability p, and what it says."""
    said = {"is_digit": int(sc.kind[i] != KIND_SHAPES)}
    if sc.kind[i] != KIND_SHAPES:
        words = []
        if rng.random() < p:
            words.append(DIGIT_INK if sc.colour[i] == len(COLOURS) else COLOUR_NAMES[sc.colour[i]])
            said["colour"] = int(sc.colour[i])
        words.append("digit")
        words.append(str(sc.digit[i]) if rng.random() < 0.7 else DIGIT_WORDS[sc.digit[i]])
        said["digit"] = int(sc.digit[i])
        phrase = article(" ".join(words))
    else:
        k = int(sc.count[i])
        said["count"] = k
        words = []
        if k == 1 and rng.random() < p:
            words.append(SIZES[sc.size[i]])
            said["size"] = int(sc.size[i])
        elif k > 1 and rng.random() < p * 0.5:
            words.append("small")
            said["size"] = 0
        if rng.random() < p:
            words.append(PATTERNS[sc.pattern[i]])
            said["pattern"] = int(sc.pattern[i])
        if rng.random() < p:
            words.append(COLOUR_NAMES[sc.colour[i]])
            said["colour"] = int(sc.colour[i])
        named = rng.random() < 0.5 + 0.5 * p
        if named:
            said["shape"] = int(sc.shape[i])
        if k == 1:
            words.append(SHAPES[sc.shape[i]] if named else "shape")
            phrase = " ".join(words)
            phrase = ("one " + phrase) if rng.random() > 0.75 else article(phrase)
        else:
            words.append(SHAPE_PLURALS[sc.shape[i]] if named else "shapes")
            phrase = COUNT_WORDS[k - 1] + " " + " ".join(words)
        if k == 1 and rng.random() < p:
            phrase += " in the " + POSITIONS[sc.position[i]]
            said["position"] = int(sc.position[i])
    if rng.random() < p:
        phrase += " on " + article(BACKGROUNDS[sc.background[i]] + " background")
        said["background"] = int(sc.background[i])
    return phrase, said


def captions(scenes: Scenes, rng: np.random.Generator, return_mentions: bool = False):
    """One caption per scene, mentioning a random subset of its attributes, from random templates.

    With return_mentions, also an int array [N, len(CAPTION_ATTRIBUTES)]: the value each caption
    states for each attribute, -1 where it says nothing about it.
    """
    out, said = [], np.full((len(scenes), len(CAPTION_ATTRIBUTES)), -1, dtype=np.int64)
    for i in range(len(scenes)):
        p = rng.choice([0.25, 0.5, 0.8, 1.0])  # how much this caption says
        prefix = CAPTION_PREFIXES[rng.integers(0, len(CAPTION_PREFIXES))]
        phrase, mentioned = _noun_phrase(scenes, i, rng, p)
        out.append(prefix + phrase)
        for key, value in mentioned.items():
            said[i, CAPTION_ATTRIBUTES.index(key)] = value
    return (out, said) if return_mentions else out


def scene_attribute_matrix(scenes: Scenes) -> np.ndarray:
    """[N, len(CAPTION_ATTRIBUTES)] attribute values of the scenes, in the order captions report them."""
    cols = {"is_digit": (scenes.kind != KIND_SHAPES).astype(np.int64)}
    return np.stack([cols.get(k, getattr(scenes, k, None)) for k in CAPTION_ATTRIBUTES], 1)


def caption_matches(scenes: Scenes, mentions: np.ndarray) -> np.ndarray:
    """bool [N images, M captions]: caption j is a true description of image i."""
    attrs = scene_attribute_matrix(scenes)[:, None, :]
    said = mentions[None, :, :]
    return ((said == -1) | (said == attrs)).all(-1)


def full_caption(scenes: Scenes, i: int) -> str:
    """The caption that mentions everything (for display)."""
    return _noun_phrase(scenes, i, _AlwaysRng(), 1.0)[0]


class _AlwaysRng:
    """Stands in for a Generator so that every optional attribute is mentioned."""

    def random(self) -> float:
        return 0.0


# --- pretraining stream ---------------------------------------------------------------------------

PRETRAIN_MIX = {"shapes_one": 0.45, "shapes_many": 0.25, "digits": 0.15, "digits_scan": 0.15}


def sample_pretraining(rng: np.random.Generator, n: int) -> Scenes:
    """Scenes as pretraining sees them (held-out colour-shape combinations excluded)."""
    kinds = rng.choice(4, size=n, p=list(PRETRAIN_MIX.values()))
    counts = np.where(kinds == 1, rng.integers(2, 5, n), 1)
    sc = sample_scenes(rng, n, kind=(KIND_SHAPES,), heldout="exclude")
    sc.count = counts.astype(np.int64)
    sc.kind = np.select([kinds == 2, kinds == 3], [KIND_DIGIT, KIND_SCAN], KIND_SHAPES).astype(np.int64)
    return _normalise(sc, rng)


def _normalise(sc: Scenes, rng: np.random.Generator) -> Scenes:
    """Re-apply the consistency rules of sample_scenes after kind/count were changed."""
    n = len(sc)
    is_digit = sc.kind != KIND_SHAPES
    sc.size = np.where(sc.count > 1, 0, sc.size)
    sc.position = np.where(sc.size == 2, POSITIONS.index("center"), sc.position)
    sc.position = np.where(sc.count > 1, -1, sc.position)
    for name in ("shape", "pattern", "size", "position"):
        setattr(sc, name, np.where(is_digit, -1, getattr(sc, name)))
    sc.digit = np.where(is_digit, rng.integers(0, 10, n), -1)
    sc.colour = np.where(sc.kind == KIND_SCAN, len(COLOURS), sc.colour)
    sc.background = np.where(sc.kind == KIND_SCAN, BACKGROUNDS.index("black"), sc.background)
    return sc


def pretraining_stream(batch_size: int, seed: int = 0, steps: int | None = None
                       ) -> Iterator[tuple[torch.Tensor, list[str], torch.Tensor]]:
    """Like `pretraining_batches`, plus a bool matrix [B, B]: caption j truly describes image i.

    The matrix lets a contrastive loss treat captions that also fit another image of the batch
    ("a red shape") as positives rather than negatives.
    """
    check_number("batch size", batch_size, low=1, integer=True)
    rng = np.random.default_rng([_NS_PRETRAIN, int(seed)])
    step = 0
    while steps is None or step < steps:
        sc = sample_pretraining(rng, batch_size)
        images = to_float(render(sc))
        text, said = captions(sc, rng, return_mentions=True)
        yield images, text, torch.from_numpy(caption_matches(sc, said))
        step += 1


def pretraining_batches(batch_size: int, seed: int = 0, steps: int | None = None) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Yield (images FloatTensor[B,3,32,32] in [0,1], captions) forever or for `steps` batches.

    The stream is deterministic by seed and never shows a held-out colour-shape combination.
    """
    for images, text, _ in pretraining_stream(batch_size, seed, steps):
        yield images, text


# --- tasks ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    label: str  # the Scenes attribute the label is, or "combo" / "shape_pattern"
    constraints: dict
    n_test: int = 500
    n_train: int = 2000
    group: str = "mini"


def _fmt(names, fmt):
    return tuple(fmt.format(n) for n in names)


_SINGLE = dict(count=(1,))
_BIG = dict(count=(1,), size=(1, 2))
TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("synth-shape", "Which shape is it? (6 shapes)", SHAPES, TEMPLATES, "shape", _BIG),
    TaskSpec("synth-colour", "Which colour is the shape? (8 colours)", _fmt(COLOUR_NAMES, "{} shape"), TEMPLATES,
             "colour", _BIG),
    TaskSpec("synth-pattern", "How is the shape filled? (solid, striped, checkered, outlined)",
             _fmt(PATTERNS, "{} shape"), TEMPLATES, "pattern", _BIG),
    TaskSpec("synth-size", "How big is the shape? (small, medium, large)", _fmt(SIZES, "{} shape"), TEMPLATES,
             "size", _SINGLE),
    TaskSpec("synth-position", "Where is the shape? (four corners or center)", _fmt(POSITIONS, "shape in the {}"),
             TEMPLATES, "position", dict(count=(1,), size=(0, 1))),
    TaskSpec("synth-count", "How many shapes are there? (one to four)",
             ("one shape", "two shapes", "three shapes", "four shapes"), TEMPLATES_BARE, "count",
             dict(count=(1, 2, 3, 4), size=(0,))),
    TaskSpec("synth-background", "What is the background? (black, gray, white, noisy)",
             _fmt(BACKGROUNDS, "shape on a {} background"), TEMPLATES, "background", _SINGLE),
    TaskSpec("synth-digit", "Which digit is drawn? (procedural glyphs 0-9)", _fmt(range(10), "digit {}"), TEMPLATES,
             "digit", dict(kind=(KIND_DIGIT,))),
    TaskSpec("synth-heldout", "Which colour-shape pair, among pairs never seen in pretraining? (8 pairs)",
             tuple(f"{c} {s}" for c, s in HELDOUT_COMBOS), TEMPLATES, "combo", _BIG),
    TaskSpec("synth-finetune", "Fine-tuning set: shape and fill pattern together (24 classes)",
             tuple(f"{p} {s}" for s in SHAPES for p in PATTERNS), TEMPLATES, "shape_pattern", _BIG,
             n_test=1000, n_train=10000, group="finetune"),
]}
REAL_DIGITS = "real-digits"
MINI = [n for n, t in TASKS.items() if t.group == "mini"] + [REAL_DIGITS]


def task_seed(name: str, split: str) -> list[int]:
    """Seed tuple of a task split: distinct per task and split, and distinct from pretraining's."""
    check(split in SPLITS, f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
    names = list(TASKS) + [REAL_DIGITS]
    return [_NS_TASK, names.index(name), SPLITS.index(split)]


def task_scenes(name: str, split: str = "test", n: int | None = None) -> tuple[Scenes, np.ndarray]:
    """The scenes of a task split and their labels (regenerable: same name/split/n, same result)."""
    spec = TASKS[name]
    n = (spec.n_test if split == "test" else spec.n_train) if n is None else n
    check_number("n", n, low=1, integer=True)
    rng = np.random.default_rng(task_seed(name, split))
    c = dict(spec.constraints)
    k = len(spec.classes)
    labels = np.arange(n) % k  # balanced classes, shuffled
    labels = labels[rng.permutation(n)]
    heldout = "exclude"
    if spec.label == "combo":
        heldout = "only"
    sc = sample_scenes(rng, n, heldout=heldout, **c)
    if spec.label in ("shape", "colour", "pattern", "size", "position", "background", "digit"):
        setattr(sc, spec.label, labels.copy())
        if spec.label == "size":
            sc.position = np.where(labels == 2, POSITIONS.index("center"), sc.position)
        if spec.label in ("shape", "colour"):  # redraw the other half of any held-out pair
            other = "colour" if spec.label == "shape" else "shape"
            pool = len(COLOURS) if other == "colour" else len(SHAPES)
            for _ in range(100):
                bad = _HELDOUT_IDX[sc.colour, sc.shape]
                if not bad.any():
                    break
                getattr(sc, other)[bad] = rng.integers(0, pool, int(bad.sum()))
    elif spec.label == "count":
        sc.count = labels + 1
        sc.size = np.zeros(n, dtype=np.int64)
        sc.position = np.where(sc.count > 1, -1, sc.position)
    elif spec.label == "combo":
        pairs = np.array([(COLOUR_NAMES.index(c_), SHAPES.index(s_)) for c_, s_ in HELDOUT_COMBOS])
        sc.colour, sc.shape = pairs[labels, 0].copy(), pairs[labels, 1].copy()
    elif spec.label == "shape_pattern":
        sc.shape, sc.pattern = labels // len(PATTERNS), labels % len(PATTERNS)
        for _ in range(100):
            bad = _HELDOUT_IDX[sc.colour, sc.shape]
            if not bad.any():
                break
            sc.colour[bad] = rng.integers(0, len(COLOURS), int(bad.sum()))
    return sc, labels


class ImageTensorDataset(Dataset):
    """uint8 images [N,3,H,W] + int labels -> (float image in [0,1], label)."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int]):
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255.0, int(self.labels[i])


def build_task(name: str, split: str = "test", n: int | None = None) -> ZeroShotDataset:
    spec = TASKS[name]
    sc, labels = task_scenes(name, split, n)
    info = {"description": spec.description, "split": split, "seed": task_seed(name, split),
            "attributes": sc.attributes(), "world": "pmg_core.synthetic"}
    return ZeroShotDataset(name, ImageTensorDataset(render(sc), labels), list(spec.classes), spec.templates, info)


def _register(spec: TaskSpec) -> None:
    @register_dataset(spec.name, spec.description, spec.group)
    def builder(split: str = "test", root: str | None = None, n: int | None = None, **_) -> ZeroShotDataset:
        return build_task(spec.name, split, n)


for _spec in TASKS.values():
    _register(_spec)


# --- the real-image task: scikit-learn's hand-written digits --------------------------------------

REAL_DIGITS_TEST = 500


def real_digit_images() -> tuple[torch.Tensor, np.ndarray]:
    """All 1797 scikit-learn digits as uint8 RGB [N,3,32,32] (8x8, 17 grey levels, upsampled) + labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # white ink on black
    big = upsample8(small).expand(-1, 3, -1, -1)
    return (big * 255).round().to(torch.uint8).contiguous(), d.target.astype(np.int64)


@register_dataset(REAL_DIGITS, "Real hand-written digits (scikit-learn load_digits, 8x8 upsampled to 32x32)", "mini")
def real_digits(split: str = "test", root: str | None = None, n: int | None = None, **_) -> ZeroShotDataset:
    check(split in SPLITS, f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
    images, labels = real_digit_images()
    perm = np.random.default_rng(task_seed(REAL_DIGITS, "test")).permutation(len(labels))
    idx = perm[:REAL_DIGITS_TEST] if split == "test" else perm[REAL_DIGITS_TEST:]
    if n is not None:
        check_number("n", n, low=1, integer=True)
        idx = idx[:n]
    idx = np.sort(idx)
    info = {"description": "scikit-learn load_digits, real images", "split": split, "indices": idx}
    return ZeroShotDataset(REAL_DIGITS, ImageTensorDataset(images[idx], labels[idx]), [f"digit {i}" for i in range(10)],
                           TEMPLATES, info)


register_group("mini", MINI)
register_group("finetune", ["synth-finetune"])
