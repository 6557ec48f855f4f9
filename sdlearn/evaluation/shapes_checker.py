"""The shapes checker: reads an image of ``sdlearn.data.shapes`` back into shapes, colours, sizes and positions.

Checker (``read_shapes``): the same equation read backwards. For a pixel p and palette colour c the
coverage is the projection alpha_c = <p - bg, c - bg> / |c - bg|^2 (clipped to [0, 1]), and the
residual |p - bg - alpha_c (c - bg)| says how well "c at coverage alpha_c" explains p. Then:
1. rough images (neighbouring pixels differ almost everywhere) are "noise";
2. pixels with alpha >= 1/2, or that no palette colour explains, are ink; connected ink regions
   (8-neighbours) are objects, specks aside; none is "blank";
3. an object's colour is the palette colour that explains its interior; its area and centroid come
   from its coverage; its shape is the circle, square or triangle of the same area and centroid that
   overlaps it best, and it must fit that template well (else "malformed shape" or "merged shapes");
   its size class comes from the area; an unknown colour, two colours, or a faded blob is rejected.

Used to measure the shapes VAE's reconstructions and the latent DDPM's samples (chapters 3-5).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.shapes import (
    AREA_FACTOR,
    BACKGROUND,
    COLOURS,
    MIN_SIZE,
    PALETTE,
    SHAPES,
    SIZE_JITTER,
    SIZE_RADIUS,
    SIZES,
    ShapeSpec,
    _coverage_patch,
    _get,
)


# checker thresholds (colours in [0, 1] units, lengths as fractions of the image side)
ROUGHNESS_MAX = 0.1  # median step between neighbouring pixels; pure noise is ~0.3, shapes ~0.02
DIM_MIN = 0.25  # away from ink, pixels this far from the background are a faded shape
PIXEL_TOL = 0.25  # a pixel further than this from every "palette colour at some coverage" is unexplained
COLOUR_TOL = 0.2  # the interior's mean colour must be this close to "palette colour at some coverage"
PEAK_MIN = 0.85  # ... and reach this coverage (90th percentile of the object's pixels)
PURITY_MIN = 0.75  # share of an object's interior that must be of its colour
TEMPLATE_BLUR = (0.0, 0.8, 1.5)  # templates are compared sharp and blurred (pixels)
# mask IoU with the best template must be >= 1 - EDGE_SLACK / r: about this many pixels of disagreement along
# the edge (0.88 for a small shape at 64 x 64, 0.93 for a large one); a 45-degree diamond scores 0.86
EDGE_SLACK = 0.75
SIZE_SPLIT = math.sqrt(SIZE_RADIUS["small"] * SIZE_RADIUS["large"])  # 0.13: small below, large above
SIZE_RANGE = (0.06, 0.25)  # r outside this range is no shape of the data set
SPECK = 0.25  # ink regions below this share of the smallest shape's area are ignored
MAX_OBJECTS = 6
POSITION_TOL = 0.15  # matches(): centres within 0.15 of the image side




@dataclass
class ShapeReading:
    """What the checker read in one image. Each object is a dict: shape, colour, size, x, y (centroid in
    [0, 1]), area (share of the image), radius_px, fit (IoU with its shape template), ok, reason."""

    objects: list[dict] = field(default_factory=list)
    well_formed: bool = False
    reason: str = ""  # why not well-formed: "noise", "blank", "too many objects", or an object's reason


_PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS])  # (K, 3)
_C = _PALETTE_RGB - np.array(BACKGROUND)  # (K, 3) colour - background
_C2 = (_C * _C).sum(1)  # (K,) |c - bg|^2


def _to_pixels(image) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) float64 in [0, 1], with clear errors for anything else."""
    x = torch.as_tensor(image).detach().float().cpu()
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"read_shapes reads one RGB image shaped (3, H, W), got {tuple(x.shape)}. "
                         "For a batch (B, 3, H, W) call read_shapes_batch.")
    if x.shape[1] != x.shape[2] or x.shape[1] < MIN_SIZE:
        raise ValueError(f"the checker reads square images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise ValueError("the image holds NaN or inf values; check the model or sampler that produced it.")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.5 or hi > 1.5:
        raise ValueError(f"images should be in [-1, 1] (the model range), got values in [{lo:.2f}, {hi:.2f}]. "
                         "Map [0, 1] images with x * 2 - 1 and [0, 255] images with x / 127.5 - 1.")
    return ((x.permute(1, 2, 0).double().numpy() + 1) / 2).clip(0, 1)


def _shift_reduce(mask: np.ndarray, reduce) -> np.ndarray:
    """3x3 neighbourhood min/max of a 2-D array (edge pixels see only the inside)."""
    H, W = mask.shape
    fill = mask.max() if reduce is np.minimum else mask.min()
    p = np.pad(mask, 1, constant_values=fill)
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            out = reduce(out, p[dy : dy + H, dx : dx + W])
    return out


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask (8-neighbours): labels (H, W) with 0 = background, 1..n.

    Every ink pixel starts with its own index as label and repeatedly takes the smallest label in its
    3x3 neighbourhood; "pointer jumping" (take the label of the pixel your label names) speeds it up.
    """
    H, W = mask.shape
    big = H * W
    lab = np.where(mask, np.arange(big).reshape(H, W), big)
    while True:
        new = np.where(mask, _shift_reduce(lab, np.minimum), big)
        flat = new.ravel()
        ink = flat < big
        flat[ink] = flat[flat[ink]]  # pointer jumping: the pixel named by a label is in the same component
        if np.array_equal(new, lab):
            break
        lab = new
    roots, inverse = np.unique(lab[mask], return_inverse=True)
    out = np.zeros((H, W), dtype=np.int64)
    out[mask] = inverse + 1
    return out, len(roots)


def _explain_pixels(p: np.ndarray):
    """For each pixel, the palette colour k that best explains it as bg + alpha (c_k - bg).

    Returns (k, alpha, residual), each (H, W).
    """
    d = p - np.array(BACKGROUND)  # (H, W, 3)
    dot = d @ _C.T  # (H, W, K)
    alpha = (dot / _C2).clip(0, 1)  # coverage if the pixel were colour k
    resid2 = (d * d).sum(-1, keepdims=True) - 2 * alpha * dot + alpha**2 * _C2  # |d - alpha c_k|^2
    k = resid2.argmin(-1)
    pick = k[..., None]
    return k, np.take_along_axis(alpha, pick, -1)[..., 0], np.sqrt(np.take_along_axis(resid2, pick, -1)[..., 0].clip(0))


def _object_colour(pix: np.ndarray, reg: np.ndarray, k: np.ndarray):
    """The colour of one object, from crops: pixels (h, w, 3), its mask, per-pixel best colour (-1: none).

    The palette colour whose direction from the background best explains the mean of the object's
    interior (its mask eroded by one pixel, away from the blurred edge) is the candidate. It is the
    object's colour if it explains that mean within COLOUR_TOL and reaches nearly full strength
    (90th percentile of the coverage >= PEAK_MIN): a dim or washed-out colour is no palette colour.
    Returns (name or None, purity: share of the interior whose own best colour agrees, two_colours: the
    interior is two palette colours, coverage (h, w) by the candidate divided by its full strength).
    """
    interior = ~_shift_reduce(~reg, np.maximum) if reg.sum() > 9 else reg
    interior = interior if interior.any() else reg
    best, _, resid = _explain_pixels(pix[interior].mean(0)[None, None])  # (1, 1) each
    ci = int(best[0, 0])
    alpha = ((pix - np.array(BACKGROUND)) @ _C[ci] / _C2[ci]).clip(0, 1)  # (h, w) coverage by colour ci
    peak = float(np.percentile(alpha[reg], 90))
    known = resid[0, 0] <= COLOUR_TOL and peak >= PEAK_MIN
    counts = np.sort(np.bincount(k[interior & (k >= 0)], minlength=len(COLOURS)))  # explained pixels per colour
    two_colours = counts[-2] >= 0.1 * interior.sum() and counts[-2:].sum() >= 0.9 * interior.sum()
    purity = float((k[interior] == ci).mean())
    return COLOURS[ci] if known else None, purity, two_colours, (alpha / max(peak, 1e-6)).clip(0, 1)


def _template_fits(alpha: np.ndarray, region: np.ndarray, box: tuple, cx: float, cy: float) -> tuple[dict, dict]:
    """Compare one object with a circle, a square and a triangle of its area and centroid (pixels).

    ``alpha``: the object's coverage on the crop ``box`` = (y0, y1, x0, x1); ``region``: its ink mask on
    the whole image. Returns two dicts shape -> score:
    - soft: sum min(alpha, t) / sum max(alpha, t), the soft intersection over union with the template t
      drawn sharp or blurred (TEMPLATE_BLUR, the best of them): picks the shape, even when blurred;
    - fit: intersection over union of the masks, leaving out the template's edge pixels (coverage
      between 1/4 and 3/4), which blur, noise or a wobbly edge can tip either way: says how well it fits.
    """
    y0, y1, x0, x1 = box
    S, area = region.shape[0], float(alpha.sum())
    soft, fit = {}, {}
    for shape in SHAPES:
        ty, tx, patch = _coverage_patch(shape, cx, cy, math.sqrt(area / AREA_FACTOR[shape]), S)
        th, tw = patch.shape
        canvas = np.zeros((y1 - y0 + 6, x1 - x0 + 6))  # the crop and 3 more pixels, for the blur
        a0, b0, a1, b1 = max(ty, y0 - 3), max(tx, x0 - 3), min(ty + th, y1 + 3), min(tx + tw, x1 + 3)
        canvas[a0 - y0 + 3 : a1 - y0 + 3, b0 - x0 + 3 : b1 - x0 + 3] = patch[a0 - ty : a1 - ty, b0 - tx : b1 - tx]
        overlap = max(float(np.minimum(alpha, _blur(canvas, sigma)[3:-3, 3:-3]).sum()) for sigma in TEMPLATE_BLUR)
        soft[shape] = overlap / (2 * area - overlap)  # the template's area is the object's area
        inside, edge = patch >= 0.75, (patch > 0.25) & (patch < 0.75)
        window = region[ty : ty + th, tx : tx + tw]
        inter = int((inside & window).sum())
        counted = int(region.sum()) - int((edge & window).sum())  # the object's pixels off the template's edge
        fit[shape] = inter / (int(inside.sum()) + counted - inter)
    return soft, fit


def _read_object(region: np.ndarray, p: np.ndarray, k: np.ndarray, others: np.ndarray) -> dict:
    """Measure one ink region (a boolean (H, W) mask): colour, area, centroid, shape, size, and whether it is fine."""
    S = region.shape[0]
    ys, xs = np.nonzero(region)
    box = y0, y1, x0, x1 = max(ys.min() - 2, 0), min(ys.max() + 3, S), max(xs.min() - 2, 0), min(xs.max() + 3, S)
    reg = region[y0:y1, x0:x1]  # the object on a crop with 2 pixels of margin
    colour, purity, two_colours, alpha = _object_colour(p[y0:y1, x0:x1], reg, k[y0:y1, x0:x1])
    # area and centroid from the coverage (sub-pixel, as the generator drew it) on the region and its rim
    near = _shift_reduce(reg, np.maximum) & ~others[y0:y1, x0:x1]
    alpha = alpha * near if colour is not None else reg.astype(float)
    area = float(alpha.sum())
    cy = float((alpha.sum(1) * (np.arange(y0, y1) + 0.5)).sum() / area)  # pixel i spans [i, i+1)
    cx = float((alpha.sum(0) * (np.arange(x0, x1) + 0.5)).sum() / area)
    soft, fit = _template_fits(alpha, region, box, cx, cy)
    shape = max(soft, key=soft.get)
    r = math.sqrt(area / AREA_FACTOR[shape]) / S  # half-width as a share of the image side
    if two_colours:
        reason = "merged shapes"  # shapes of two colours touching
    elif colour is None or purity < PURITY_MIN:
        reason = "unknown colour"
    elif ys.min() == 0 or xs.min() == 0 or ys.max() == S - 1 or xs.max() == S - 1:
        reason = "cut off at the border"
    elif fit[shape] < 1 - EDGE_SLACK / (r * S):
        reason = "merged shapes" if _splits(reg) else "malformed shape"
    elif not SIZE_RANGE[0] <= r <= SIZE_RANGE[1]:
        reason = "wrong size"
    else:
        reason = ""
    return dict(shape=shape, colour=colour, size="small" if r < SIZE_SPLIT else "large", x=cx / S, y=cy / S,
                area=area / S**2, radius_px=r * S, fit=fit[shape], ok=not reason, reason=reason)


@functools.lru_cache(maxsize=256)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix that blurs a length-n signal with a Gaussian of ``sigma`` pixels (zeros outside)."""
    i = np.arange(n)
    radius = np.arange(-int(4 * sigma) - 1, int(4 * sigma) + 2)
    g = np.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2))
    g /= np.exp(-(radius**2) / (2 * sigma**2)).sum()
    g.setflags(write=False)  # cached and shared: nobody may change it
    return g


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D array (separable: rows, then columns); sigma 0 returns it unchanged."""
    if sigma == 0:
        return x
    return _gaussian_matrix(x.shape[0], sigma) @ x @ _gaussian_matrix(x.shape[1], sigma).T


def _splits(reg: np.ndarray) -> bool:
    """Does eroding the region twice break it into two or more sizeable parts (two shapes joined by a neck)?"""
    eroded = reg
    for _ in range(2):
        eroded = ~_shift_reduce(~eroded, np.maximum)
    labels, n = label_components(eroded)
    return n >= 2 and np.sort(np.bincount(labels.ravel())[1:])[-2] >= 4


def read_shapes(image: torch.Tensor) -> ShapeReading:
    """Read one image (3, H, W) in [-1, 1] back into objects; say whether it is well-formed and why not."""
    p = _to_pixels(image)  # (H, W, 3) in [0, 1]
    S = p.shape[0]
    # 1. noise: drawn shapes are flat with sharp edges, so most neighbouring pixels are equal
    roughness = float(np.median(np.abs(np.diff(p, axis=1)).max(-1)))
    if roughness > ROUGHNESS_MAX:
        return ShapeReading([], False, "noise")
    # 2. ink: pixels covered at least half by a palette colour, or explained by no palette colour at all
    k, alpha, resid = _explain_pixels(p)
    ink = (alpha >= 0.5) | (resid > PIXEL_TOL)
    k = np.where(resid <= PIXEL_TOL, k, -1)  # -1: no palette colour explains the pixel
    labels, n = label_components(ink)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    smallest = AREA_FACTOR["triangle"] * (SIZE_RADIUS["small"] * (1 - SIZE_JITTER) * S) ** 2
    keep = np.flatnonzero(sizes >= SPECK * smallest) + 1  # drop specks
    if len(keep) > MAX_OBJECTS:
        return ShapeReading([], False, "too many objects")
    objects = [_read_object(labels == j, p, k, (labels != j) & (labels > 0)) for j in keep]
    bad = [o["reason"] for o in objects if not o["ok"]]
    # 3. a faded shape: clearly-not-background pixels, in a blob, more than 2 pixels away from every object
    near_objects = np.isin(labels, keep)
    for _ in range(2):
        near_objects = _shift_reduce(near_objects, np.maximum)
    faint = (np.linalg.norm(p - np.array(BACKGROUND), axis=-1) >= DIM_MIN) & ~near_objects
    if faint.sum() >= SPECK * smallest and np.bincount(label_components(faint)[0].ravel())[1:].max() >= SPECK * smallest:
        bad.append("unknown colour")
    if not objects:
        bad.append("blank")
    return ShapeReading(objects, not bad, bad[0] if bad else "")


def read_shapes_batch(images: torch.Tensor) -> list[ShapeReading]:
    """read_shapes for every image of a batch (B, 3, H, W)."""
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise ValueError(f"read_shapes_batch reads a batch shaped (B, 3, H, W), got {tuple(images.shape)}.")
    return [read_shapes(x) for x in images.detach().cpu()]


# ---------------------------------------------------------------------------- scoring readings against specs
def _attributes(obj) -> tuple:
    return (_get(obj, "shape"), _get(obj, "colour"), _get(obj, "size"))


def _has_position(obj) -> bool:
    return (isinstance(obj, dict) and "x" in obj and "y" in obj) or isinstance(obj, ShapeSpec)


def _relation_holds(a: dict, b: dict, rel: str, slack: float = 0.5) -> bool:
    """Is ``a`` <rel> ``b``? The named displacement must be positive and at least ``slack`` times the other
    one (lenient near the diagonal, where the caption's rule "the larger displacement wins" is a coin toss)."""
    dx, dy = b["x"] - a["x"], b["y"] - a["y"]  # from a to b
    along = {"above": dy, "below": -dy, "to the left of": dx, "to the right of": -dx}[rel]
    across = abs(dx) if rel in ("above", "below") else abs(dy)
    return along > 0 and along >= slack * across


def matches(reading: ShapeReading, specs: list, tolerance: float = POSITION_TOL) -> bool:
    """Does a well-formed reading show exactly these shapes? ``specs`` are ShapeSpecs or dicts (e.g. from
    parse_caption): the same multiset of (shape, colour, size); centres within ``tolerance`` of the image
    side where specs give x and y; and for two shapes, the caption's "relation" where a dict gives one."""
    if not reading.well_formed or len(reading.objects) != len(specs):
        return False
    for order in itertools.permutations(reading.objects):
        if all(_attributes(o) == _attributes(s) and (not _has_position(s) or
               math.hypot(o["x"] - _get(s, "x"), o["y"] - _get(s, "y")) <= tolerance) for o, s in zip(order, specs)):
            rel = specs[0].get("relation") if isinstance(specs[0], dict) and len(specs) == 2 else None
            if rel is None or _relation_holds(order[0], order[1], rel):
                return True
    return False


def _pair_up(objects: list[dict], specs: list) -> list:
    """Pair each spec with the nearest unused object (greedy by centre distance); None where none is left."""
    pairs = sorted((math.hypot(o["x"] - _get(s, "x"), o["y"] - _get(s, "y")), i, j)
                   for i, s in enumerate(specs) for j, o in enumerate(objects))
    found, used = [None] * len(specs), set()
    for _, i, j in pairs:
        if found[i] is None and j not in used:
            found[i] = objects[j]
            used.add(j)
    return found


def attribute_accuracy(readings: list[ShapeReading], specs_list: list[list], tolerance: float = POSITION_TOL) -> dict:
    """Share of specified shapes whose colour / shape / size / position was read right (each shape is paired
    with the nearest object read), the share of images with the right count, and the share that match()."""
    if len(readings) != len(specs_list):
        raise ValueError(f"got {len(readings)} readings but {len(specs_list)} spec lists; pass one per image.")
    if not all(_has_position(s) for specs in specs_list for s in specs):
        raise ValueError("attribute_accuracy pairs shapes by position: give specs with x and y (ShapeSpec or dicts).")
    right = Counter()
    num_objects = 0
    for reading, specs in zip(readings, specs_list):
        right["count"] += len(reading.objects) == len(specs)
        right["well_formed"] += reading.well_formed
        right["match"] += matches(reading, specs, tolerance)
        num_objects += len(specs)
        for s, o in zip(specs, _pair_up(reading.objects, specs)):
            if o is not None:
                right["colour"] += o["colour"] == _get(s, "colour")
                right["shape"] += o["shape"] == _get(s, "shape")
                right["size"] += o["size"] == _get(s, "size")
                right["position"] += math.hypot(o["x"] - _get(s, "x"), o["y"] - _get(s, "y")) <= tolerance
    per_object = {k: right[k] / max(num_objects, 1) for k in ("colour", "shape", "size", "position")}
    per_image = {k: right[k] / max(len(readings), 1) for k in ("count", "well_formed", "match")}
    return per_object | per_image


WELL_FORMED_BAR = 0.9  # chapter 4: of 256 samples, >= 90% well-formed, no colour or shape missing


def shapes_report(images: torch.Tensor, specs_list: list[list] | None = None) -> dict:
    """What the checker reads in a batch of generated images (B, 3, H, W) in [-1, 1].

    well_formed_share; the colours, shapes, sizes and object counts of the well-formed images (to compare
    with the training data, where every colour, shape and size is equally likely); the colours and shapes
    that never appear; why the others were rejected; ``meets_bar`` (chapter 4's quality bar); and with
    ``specs_list``, attribute_accuracy against what was asked.
    """
    readings = read_shapes_batch(images)
    good = [r for r in readings if r.well_formed]
    objects = [o for r in good for o in r.objects]
    colour_counts = {c: sum(o["colour"] == c for o in objects) for c in COLOURS}
    shape_counts = {s: sum(o["shape"] == s for o in objects) for s in SHAPES}
    report = dict(
        num_images=len(readings),
        well_formed_share=len(good) / max(len(readings), 1),
        colour_counts=colour_counts,
        shape_counts=shape_counts,
        size_counts={s: sum(o["size"] == s for o in objects) for s in SIZES},
        object_counts=dict(sorted(Counter(len(r.objects) for r in good).items())),
        missing_colours=[c for c, n in colour_counts.items() if n == 0],
        missing_shapes=[s for s, n in shape_counts.items() if n == 0],
        reasons=dict(Counter(r.reason for r in readings if not r.well_formed).most_common()),
    )
    report["meets_bar"] = (report["well_formed_share"] >= WELL_FORMED_BAR and not report["missing_colours"]
                           and not report["missing_shapes"])
    if specs_list is not None:
        report["accuracy"] = attribute_accuracy(readings, specs_list)
    return report
