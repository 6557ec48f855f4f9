"""Shapes: a seeded data set of coloured shapes with captions (chapters 3-5).

``make_shapes`` / ``load_shapes``: one to three shapes (circle, square, upward triangle) of
six colours and two sizes on a black background, never touching, never cut by the border, drawn with
plain numpy geometry at 4 x 4 supersampling (a pixel's coverage alpha is the share of its 16 sample
points inside the shape: anti-aliased edges) and composited with Porter and Duff's "over" (1984):
    pixel = background + alpha * (colour - background).
Image i comes from np.random.default_rng([seed, i]), so it is the same on every machine and for any
number of images. Captions follow a small grammar (see ``caption``) that ``parse_caption`` reads back.

Held-out compositions (issue 14, fixed so that results can be compared): the text-conditioned models (shapes-clip,
shapes-t2i) never see the colour-shape pairs in ``HELD_OUT_PAIRS`` (purple circle, yellow triangle, green square,
as one object) in training: they train on ``load_shapes("train", compositions="seen")``, which leaves out every
image that contains one, and are tested on them with ``load_shapes("test", compositions="held_out")``. The
default ``compositions="all"`` is every image of the split (what shapes-vae and shapes-ldm were trained on).
``flip_relation`` and ``swap_colours`` make the hard negative captions of Yuksekgonul et al. (2023).

The checker that reads such images back (``read_shapes``, ``matches``, ``shapes_report``) is in
``sdlearn.evaluation.shapes_checker``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch

# ---------------------------------------------------------------------------- the vocabulary
# Saturated colours, far apart as colours and as directions from the black background, so that a
# blurred edge (a darker version of the same colour) never looks like another palette colour.
# The closest pairs (red/orange, orange/yellow) are 0.5 apart in RGB; the checker accepts 0.25.
PALETTE = {
    "red": (1.0, 0.0, 0.0),
    "orange": (1.0, 0.5, 0.0),
    "yellow": (1.0, 1.0, 0.0),
    "green": (0.0, 0.8, 0.0),
    "blue": (0.1, 0.35, 1.0),
    "purple": (0.6, 0.1, 0.9),
}
BACKGROUND = (0.0, 0.0, 0.0)  # black: -1 in the model's [-1, 1] range, as the digits' background
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# r = half the width of a shape (circle radius, half the square's side, half the triangle's base),
# as a fraction of the image side; each shape gets r * (1 + SIZE_JITTER * u), u uniform in [-1, 1].
SIZE_RADIUS = {"small": 0.10, "large": 0.17}
SIZE_JITTER = 0.07
SQRT3 = math.sqrt(3.0)
AREA_FACTOR = {"circle": math.pi, "square": 4.0, "triangle": SQRT3}  # area = factor * r^2
SUPERSAMPLE = 4  # 4 x 4 sample points per pixel
MIN_SIZE = 16
SPLIT_SEEDS = {"train": 0, "test": 1}
SPLIT_SIZES = {"train": 20_000, "test": 1_000}
MAX_TRIES = 100  # position draws per shape before it is left out
# (colour, shape) pairs never shown to the text-conditioned models in training: the test of composition
HELD_OUT_PAIRS = (("purple", "circle"), ("yellow", "triangle"), ("green", "square"))
COMPOSITIONS = ("all", "seen", "held_out")

def _gap_px(size: int) -> int:
    """Empty pixels kept between shapes, and between a shape and the border."""
    return max(2, round(0.05 * size))


# ---------------------------------------------------------------------------- geometry
@dataclass
class ShapeSpec:
    """One shape: centre (x, y) in [0, 1] image coordinates (x right, y down; the triangle's centre is
    its centroid), ``radius_px`` = half its width in pixels, and the image side ``image_size``."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius_px: float
    image_size: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


def _extent(shape: str, r: float) -> tuple[float, float, float, float]:
    """Bounding box (left, top, right, bottom) relative to the centre, in pixels."""
    if shape == "triangle":
        h = SQRT3 * r  # equilateral, base 2r, centroid 1/3 of the height above the base
        return (-r, -2 * h / 3, r, h / 3)
    return (-r, -r, r, r)


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Which points (dx, dy) (pixels from the centre, y down) lie inside the shape."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":
        h = SQRT3 * r  # apex at dy = -2h/3, base at dy = h/3; half-width grows as (dy + 2h/3) / sqrt(3)
        return (dy <= h / 3) & (SQRT3 * np.abs(dx) <= dy + 2 * h / 3)
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}.")


def _coverage_patch(shape: str, cx: float, cy: float, r: float, size: int, supersample: int = SUPERSAMPLE):
    """Coverage alpha in [0, 1] of the pixels around one shape (centre and r in pixels).

    Returns (top, left, patch (h, w)): the patch covers rows top..top+h, columns left..left+w.
    Pixel (i, j) spans [j, j+1) x [i, i+1); its n x n sample points sit at the centres of a sub-grid.
    """
    left, top, right, bottom = _extent(shape, r)
    x0, x1 = max(0, math.floor(cx + left)), min(size, math.ceil(cx + right))
    y0, y1 = max(0, math.floor(cy + top)), min(size, math.ceil(cy + bottom))
    n = supersample
    offsets = (np.arange(n) + 0.5) / n
    xs = (np.arange(x0, x1)[:, None] + offsets).ravel() - cx  # (w * n,)
    ys = (np.arange(y0, y1)[:, None] + offsets).ravel() - cy  # (h * n,)
    inside = _inside(shape, xs[None, :], ys[:, None], r)  # (h * n, w * n)
    patch = inside.reshape(y1 - y0, n, x1 - x0, n).mean(axis=(1, 3))  # (h, w): share of sample points
    return y0, x0, patch


def _in_pixels(spec: ShapeSpec, size: int) -> tuple[float, float, float]:
    """Centre and half-width of a shape in pixels of a size x size image (specs scale with the image)."""
    return spec.x * size, spec.y * size, spec.radius_px * size / spec.image_size


def render_coverage(spec: ShapeSpec, size: int | None = None) -> np.ndarray:
    """The coverage alpha (size, size) in [0, 1] of one shape (at its own image size unless ``size`` is given)."""
    size = size or spec.image_size
    out = np.zeros((size, size))
    y0, x0, patch = _coverage_patch(spec.shape, *_in_pixels(spec, size), size)
    out[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
    return out


def _paint(canvas: np.ndarray, specs: list[ShapeSpec], size: int) -> None:
    """Composite shapes onto a (3, size, size) canvas holding the background: p = bg + alpha (c - bg)."""
    for s in specs:
        y0, x0, patch = _coverage_patch(s.shape, *_in_pixels(s, size), size)
        colour = np.array(PALETTE[s.colour]) - np.array(BACKGROUND)
        canvas[:, y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] += colour[:, None, None] * patch


def render(specs: list[ShapeSpec], size: int | None = None) -> torch.Tensor:
    """Draw shapes into one image (3, size, size) in [-1, 1] (at the specs' image size unless ``size`` is given)."""
    size = size or (specs[0].image_size if specs else 64)
    canvas = np.broadcast_to(np.array(BACKGROUND)[:, None, None], (3, size, size)).copy()
    _paint(canvas, specs, size)
    return torch.from_numpy(canvas.clip(0, 1) * 2 - 1).float()


# ---------------------------------------------------------------------------- drawing specs
def _draw_specs(rng: np.random.Generator, size: int, min_shapes: int, max_shapes: int) -> list[ShapeSpec]:
    """Draw the shapes of one image. Only rng.random() is used (uniform doubles straight from PCG64),
    so the images do not depend on how a numpy version implements integers() or choice()."""
    u = rng.random
    count = min_shapes + int(u() * (max_shapes - min_shapes + 1))
    gap = _gap_px(size)
    boxes, specs = [], []
    for _ in range(count):
        shape, colour, size_name = SHAPES[int(u() * 3)], COLOURS[int(u() * len(COLOURS))], SIZES[int(u() * 2)]
        r = SIZE_RADIUS[size_name] * size * (1 + SIZE_JITTER * (2 * u() - 1))
        left, top, right, bottom = _extent(shape, r)
        for _ in range(MAX_TRIES):
            cx = gap - left + u() * (size - 2 * gap - (right - left))  # the box stays `gap` pixels inside
            cy = gap - top + u() * (size - 2 * gap - (bottom - top))
            box = (cx + left, cy + top, cx + right, cy + bottom)
            # axis-aligned boxes at least `gap` apart along x or along y never touch
            if all(box[0] >= b[2] + gap or b[0] >= box[2] + gap or box[1] >= b[3] + gap or b[1] >= box[3] + gap
                   for b in boxes):
                boxes.append(box)
                specs.append(ShapeSpec(shape, colour, size_name, cx / size, cy / size, r, size))
                break
    return specs


# ---------------------------------------------------------------------------- captions
_ARTICLE_PHRASE = "a {size} {colour} {shape}"
RELATIONS = ("above", "below", "to the left of", "to the right of")


def relation(a: ShapeSpec | dict, b: ShapeSpec | dict) -> str:
    """Where ``a`` is relative to ``b``, along the axis where their centres differ most (y points down)."""
    ax, ay, bx, by = _get(a, "x"), _get(a, "y"), _get(b, "x"), _get(b, "y")
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def _get(obj, key):
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


def caption(specs: list[ShapeSpec] | list[dict]) -> str:
    """The caption of one image. Grammar:

        caption  := object                              (1 shape)
                  | object " " relation " " object       (2 shapes: first relative to second)
                  | object ", " ... ", " object " and " object   (3 or more, in drawing order)
        object   := "a " size " " colour " " shape       e.g. "a small red circle"
        relation := "above" | "below" | "to the left of" | "to the right of"
    """
    phrases = [_ARTICLE_PHRASE.format(size=_get(s, "size"), colour=_get(s, "colour"), shape=_get(s, "shape"))
               for s in specs]
    if len(specs) == 0:
        raise ValueError("an image without shapes has no caption.")
    if len(specs) == 1:
        return phrases[0]
    if len(specs) == 2:
        return f"{phrases[0]} {relation(specs[0], specs[1])} {phrases[1]}"
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


_OBJECT_RE = re.compile(f"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")


def parse_caption(text: str) -> list[dict]:
    """Read a caption back: [{"size", "colour", "shape"}, ...] in caption order. For two shapes the
    first dict also holds "relation": where the first shape is relative to the second."""
    found = list(_OBJECT_RE.finditer(text))
    objects = [dict(size=m[1], colour=m[2], shape=m[3]) for m in found]
    joins = [text[a.end() : b.start()] for a, b in zip(found, found[1:])]
    ok = bool(found) and found[0].start() == 0 and found[-1].end() == len(text)
    if len(found) == 2:
        ok = ok and joins[0].strip() in RELATIONS and joins[0] == f" {joins[0].strip()} "
        if ok:
            objects[0]["relation"] = joins[0].strip()
    elif len(found) > 2:
        ok = ok and joins[-1] == " and " and all(j == ", " for j in joins[:-1])
    if not ok:
        raise ValueError(
            f"cannot parse caption {text!r}. Expected 'a <size> <colour> <shape>' phrases with size in {SIZES}, "
            f"colour in {COLOURS}, shape in {SHAPES}, joined by a relation {RELATIONS} (two shapes) "
            "or by ', ' and ' and ' (three or more)."
        )
    return objects


def has_held_out_pair(specs: list[ShapeSpec] | list[dict]) -> bool:
    """Whether any one object is a held-out (colour, shape) pair (``HELD_OUT_PAIRS``); takes specs or parsed captions."""
    return any((_get(s, "colour"), _get(s, "shape")) in HELD_OUT_PAIRS for s in specs)


def _compose(objects: list[dict], relation_text: str | None = None) -> str:
    """A caption from parsed objects (the grammar of ``caption``), with the given relation for two objects."""
    phrases = [_ARTICLE_PHRASE.format(**{k: o[k] for k in ("size", "colour", "shape")}) for o in objects]
    if len(objects) == 1:
        return phrases[0]
    if len(objects) == 2:
        return f"{phrases[0]} {relation_text} {phrases[1]}"
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


OPPOSITE = {"above": "below", "below": "above", "to the left of": "to the right of",
            "to the right of": "to the left of"}


def flip_relation(text: str) -> str | None:
    """The same two-object caption with its relation replaced by the opposite one ("above" <-> "below",
    "to the left of" <-> "to the right of"): false for the image, and made of the same words but one.
    None for captions without a relation (one object, or three and more)."""
    objects = parse_caption(text)
    if len(objects) != 2:
        return None
    return _compose(objects, OPPOSITE[objects[0]["relation"]])


def swap_colours(text: str) -> str | None:
    """The caption with the colours of its first two objects exchanged ("a red circle above a blue square" ->
    "a blue circle above a red square"): the same bag of words, bound the other way. None when there is one
    object or the two colours are the same (the swap would change nothing)."""
    objects = parse_caption(text)
    if len(objects) < 2 or objects[0]["colour"] == objects[1]["colour"]:
        return None
    objects[0]["colour"], objects[1]["colour"] = objects[1]["colour"], objects[0]["colour"]
    return _compose(objects, objects[0].get("relation"))


# ---------------------------------------------------------------------------- the data set
@dataclass
class Shapes(torch.utils.data.Dataset):
    """Images (N, 3, size, size) float32 in [-1, 1], one caption and one list of ShapeSpec per image."""

    images: torch.Tensor
    captions: list[str]
    specs: list[list[ShapeSpec]]
    indices: list[int] | None = None  # which images of the split these are (None: all, in order)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i):
        return self.images[i], self.captions[i]

    def __repr__(self) -> str:  # not the whole tensor
        return f"Shapes({len(self)} images {tuple(self.images.shape[1:])}, captions, specs)"


def make_shapes(num_images: int, size: int = 64, seed: int = 0, min_shapes: int = 1, max_shapes: int = 3) -> Shapes:
    """Generate ``num_images`` images. Image i is drawn from its own stream np.random.default_rng([seed, i])
    (PCG64), so it is the same whatever ``num_images`` is, and the same on every machine."""
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE} pixels (shapes need room), got {size!r}.")
    if not 1 <= min_shapes <= max_shapes:
        raise ValueError(f"need 1 <= min_shapes <= max_shapes, got min_shapes={min_shapes}, max_shapes={max_shapes}.")
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}.")
    images = np.empty((num_images, 3, size, size), dtype=np.float32)  # (N, 3, size, size)
    background = np.broadcast_to(np.array(BACKGROUND)[:, None, None], (3, size, size))
    all_specs, captions = [], []
    for i in range(num_images):
        specs = _draw_specs(np.random.default_rng([seed, i]), size, min_shapes, max_shapes)
        canvas = background.copy()  # (3, size, size) float64 while painting
        _paint(canvas, specs, size)
        images[i] = canvas.clip(0, 1) * 2 - 1  # [0, 1] -> [-1, 1]
        all_specs.append(specs)
        captions.append(caption(specs))
    return Shapes(torch.from_numpy(images), captions, all_specs)


def load_shapes(split: str = "train", num_images: int | None = None, size: int = 64,
                compositions: str = "all") -> Shapes:
    """The fixed shapes splits: "train" (seed 0, 20,000 images) and "test" (seed 1, 1,000 held-out
    images). ``num_images`` takes the first images of the split (image i is the same for any count).

    ``compositions`` chooses among those images by the held-out colour-shape pairs (``HELD_OUT_PAIRS``):
    "all" keeps every image (the default; shapes-vae and shapes-ldm trained on this), "seen" drops the images
    in which any object is a held-out pair (the training set of the text-conditioned models: their captions
    never contain one), "held_out" keeps only those images (captions to test composition with). The filter
    applies after ``num_images``; ``Shapes.indices`` says which images of the split were kept.
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}.")
    if compositions not in COMPOSITIONS:
        raise ValueError(f"compositions must be one of {COMPOSITIONS}, got {compositions!r}: 'all' for every image, "
                         "'seen' for training without the held-out pairs, 'held_out' for only the images with one.")
    data = make_shapes(SPLIT_SIZES[split] if num_images is None else num_images, size=size, seed=SPLIT_SEEDS[split])
    if compositions == "all":
        return data
    keep = [i for i, specs in enumerate(data.specs) if has_held_out_pair(specs) == (compositions == "held_out")]
    return Shapes(data.images[keep], [data.captions[i] for i in keep], [data.specs[i] for i in keep], keep)
