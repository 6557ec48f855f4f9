"""Shapes: the seeded generator, captions and their grammar, and the attribute checker.

The checker is measured both ways: it must read clean and blurred-plus-noisy images right (>= 98% and
>= 95% per attribute), and it must reject what is not there (noise, blank images, off-palette or
wrong colours, merged shapes) at >= 95%. Each test prints its figure (run pytest with -s to see them).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdlearn.data import shapes as sh
from sdlearn.viz.images import show_shapes
from sdlearn.evaluation import shapes_checker as checker
from sdlearn.evaluation.classifier import gaussian_blur
from sdlearn.data.shapes import (
    COLOURS,
    PALETTE,
    SHAPES,
    SIZES,
    ShapeSpec,
    load_shapes,
    make_shapes,
    parse_caption,
    render,
    render_coverage,
)
from sdlearn.evaluation.shapes_checker import (
    attribute_accuracy,
    matches,
    read_shapes,
    read_shapes_batch,
    shapes_report,
)

N_CHECK = 300  # images per checker measurement
N_REJECT = 200  # images per rejection category
# sha256 of make_shapes(16, seed=0).images: the same bytes on every machine and numpy version
GOLDEN_64 = "6bfda9eb12f74bea4379624ed2d80e0ca02b9ef0cb5a1ff57fad726356eeadb3"


def degrade(x: torch.Tensor, seed: int = 0, sigma: float = 0.8, noise_std: float = 0.03) -> torch.Tensor:
    """What a VAE reconstruction or a generated sample looks like: Gaussian blur and additive noise (in [-1, 1] units)."""
    g = torch.Generator().manual_seed(seed)
    return (gaussian_blur(x, sigma) + noise_std * torch.randn(x.shape, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def held_out():
    return load_shapes("test", num_images=N_CHECK)


# ---------------------------------------------------------------------------- the generator
def test_images_ranges_and_dataset_protocol():
    d = make_shapes(50, seed=3)
    assert d.images.shape == (50, 3, 64, 64) and d.images.dtype == torch.float32
    assert d.images.min() == -1.0 and d.images.max() == 1.0
    assert len(d) == 50 and len(d.captions) == 50 and len(d.specs) == 50
    image, caption = d[7]
    assert torch.equal(image, d.images[7]) and caption == d.captions[7]
    assert all(1 <= len(s) <= 3 for s in d.specs)
    # the background is black and the border rows and columns are empty
    assert torch.all(d.images[:, :, :2] == -1) and torch.all(d.images[:, :, :, -2:] == -1)
    for specs in d.specs:
        for s in specs:
            assert s.shape in SHAPES and s.colour in COLOURS and s.size in SIZES and 0 < s.x < 1 and 0 < s.y < 1
            base = sh.SIZE_RADIUS[s.size] * 64
            assert abs(s.radius_px / base - 1) <= sh.SIZE_JITTER + 1e-9


def test_same_seed_same_bytes_and_image_i_independent_of_count():
    a, b = make_shapes(16, seed=0), make_shapes(16, seed=0)
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes() and a.captions == b.captions
    assert hashlib.sha256(a.images.numpy().tobytes()).hexdigest() == GOLDEN_64
    longer = make_shapes(40, seed=0)
    assert torch.equal(longer.images[:16], a.images) and longer.captions[:16] == a.captions
    assert longer.specs[:16] == a.specs
    other = make_shapes(16, seed=1)
    assert not torch.equal(other.images, a.images)


def test_splits_are_fixed_seeds():
    assert sh.SPLIT_SIZES == {"train": 20_000, "test": 1_000}
    train, test = load_shapes("train", 12), load_shapes("test", 12)
    assert torch.equal(train.images, make_shapes(12, seed=sh.SPLIT_SEEDS["train"]).images)
    assert torch.equal(test.images, make_shapes(12, seed=sh.SPLIT_SEEDS["test"]).images)
    assert not torch.equal(train.images, test.images)
    with pytest.raises(ValueError, match="split"):
        load_shapes("validation", 4)


@pytest.mark.parametrize("size", [16, 32, 48, 64, 100, 128])
def test_other_image_sizes(size):
    d = make_shapes(20, size=size, seed=4)
    assert d.images.shape == (20, 3, size, size)
    for specs in d.specs:
        for s in specs:
            assert s.image_size == size
            assert abs(s.radius_px / (sh.SIZE_RADIUS[s.size] * size) - 1) <= sh.SIZE_JITTER + 1e-9


def _pixels(spec: ShapeSpec) -> np.ndarray:
    return np.argwhere(render_coverage(spec) > 0)  # (n, 2) rows and columns the shape touches


def test_shapes_do_not_touch_and_stay_inside(held_out):
    gap = sh._gap_px(64)
    for specs in held_out.specs:
        pix = [_pixels(s) for s in specs]
        for p in pix:  # at least gap empty rows / columns to the border
            assert p.min() >= gap and p.max() <= 63 - gap
        for i in range(len(pix)):
            for j in range(i + 1, len(pix)):
                chebyshev = np.abs(pix[i][:, None, :] - pix[j][None, :, :]).max(-1)  # (n_i, n_j)
                assert chebyshev.min() >= gap  # at least gap - 1 empty pixels between two shapes


def test_coverage_area_and_centroid_follow_the_formulas():
    """area = AREA_FACTOR * r^2 (pi r^2, (2r)^2, sqrt(3) r^2) and the centre (x, y) is the centroid."""
    for shape in SHAPES:
        spec = ShapeSpec(shape, "red", "large", 0.473, 0.518, 20.3, 128)
        a = render_coverage(spec)
        # 4 x 4 sample points per pixel put each edge on a quarter-pixel grid: about 1% of this area
        assert a.sum() == pytest.approx(sh.AREA_FACTOR[shape] * 20.3**2, rel=0.015)
        rows, cols = np.indices(a.shape) + 0.5  # pixel centres
        assert (a * cols).sum() / a.sum() == pytest.approx(0.473 * 128, abs=0.13)
        assert (a * rows).sum() / a.sum() == pytest.approx(0.518 * 128, abs=0.13)  # within the sample grid
    tri = render_coverage(ShapeSpec("triangle", "red", "large", 0.5, 0.5, 20.0, 128)) > 0.5
    rows, cols = np.nonzero(tri)
    assert (cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1) == pytest.approx(2 / math.sqrt(3), rel=0.05)
    assert tri[rows.min()].sum() < tri[rows.max()].sum()  # pointing up: narrow on top
    # a spec scales with the image: the same scene at twice the size has twice the width
    big = render_coverage(ShapeSpec("square", "red", "small", 0.5, 0.5, 6.0, 64), 128)
    assert big.sum() == pytest.approx(4 * 12.0**2)


def test_every_colour_shape_size_appears_evenly():
    d = make_shapes(2000, seed=2)
    objects = [s for specs in d.specs for s in specs]
    for attribute, values in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES)):
        counts = Counter(getattr(s, attribute) for s in objects)
        expected = len(objects) / len(values)
        for v in values:  # within 5 standard deviations of a uniform draw
            assert abs(counts[v] - expected) < 5 * math.sqrt(expected), (attribute, counts)
    per_image = Counter(len(s) for s in d.specs)
    assert all(abs(per_image[k] - 2000 / 3) < 5 * math.sqrt(2000 / 3) for k in (1, 2, 3)), per_image


# ---------------------------------------------------------------------------- captions
def test_caption_grammar_examples():
    a = ShapeSpec("circle", "red", "small", 0.5, 0.2, 6.4)
    b = ShapeSpec("square", "blue", "large", 0.45, 0.7, 10.9)
    c = ShapeSpec("triangle", "green", "small", 0.8, 0.75, 6.4)
    assert sh.caption([a]) == "a small red circle"
    assert sh.caption([a, b]) == "a small red circle above a large blue square"
    assert sh.caption([b, a]) == "a large blue square below a small red circle"
    assert sh.caption([b, c]) == "a large blue square to the left of a small green triangle"
    assert sh.caption([c, b]) == "a small green triangle to the right of a large blue square"
    assert sh.caption([a, b, c]) == "a small red circle, a large blue square and a small green triangle"
    assert parse_caption("a small red circle above a large blue square") == [
        dict(size="small", colour="red", shape="circle", relation="above"),
        dict(size="large", colour="blue", shape="square"),
    ]


def test_captions_parse_back_to_the_specs(held_out):
    for text, specs in zip(held_out.captions, held_out.specs):
        parsed = parse_caption(text)
        assert [(o["shape"], o["colour"], o["size"]) for o in parsed] == [(s.shape, s.colour, s.size) for s in specs]
        if len(specs) == 2:
            assert parsed[0]["relation"] == sh.relation(specs[0], specs[1])


@pytest.mark.parametrize("text", [
    "", "a huge red circle", "a small red circle near a large blue square", "a small red circle and a large blue square",
    "a small red circle, a large blue square, a small green triangle", "the small red circle", "a small red circle.",
])
def test_parse_caption_rejects_what_the_grammar_does_not_make(text):
    with pytest.raises(ValueError, match="cannot parse caption"):
        parse_caption(text)


# ---------------------------------------------------------------------------- the checker reads right
@pytest.mark.parametrize("kind, bar", [("clean", 0.98), ("degraded", 0.95)])
def test_checker_attribute_accuracy(held_out, kind, bar):
    images = held_out.images if kind == "clean" else degrade(held_out.images)
    acc = attribute_accuracy(read_shapes_batch(images), held_out.specs)
    print(f"\n{kind} ({N_CHECK} held-out images):", {k: round(v, 4) for k, v in acc.items()})
    for attribute in ("colour", "shape", "size", "position", "count", "well_formed", "match"):
        assert acc[attribute] >= bar, (attribute, acc)


def test_matches_accepts_parsed_captions(held_out):
    readings = read_shapes_batch(held_out.images[:100])
    assert np.mean([matches(r, parse_caption(c)) for r, c in zip(readings, held_out.captions)]) >= 0.98
    # two shapes that differ (for two alike, "A above B" and "A below B" are both true)
    two = [i for i in range(100) if len(held_out.specs[i]) == 2 and checker._attributes(held_out.specs[i][0]) != checker._attributes(held_out.specs[i][1])]
    flip = {"above": "below", "below": "above", "to the left of": "to the right of", "to the right of": "to the left of"}
    for i in two:  # the opposite relation must fail
        parsed = parse_caption(held_out.captions[i])
        parsed[0]["relation"] = flip[parsed[0]["relation"]]
        assert not matches(readings[i], parsed)


def test_reading_fields(held_out):
    r = read_shapes(held_out.images[0])
    assert r.well_formed and r.reason == ""
    for o in r.objects:
        assert set(o) >= {"shape", "colour", "size", "x", "y", "area", "radius_px", "fit", "ok", "reason"}
        assert o["ok"] and 0 < o["area"] < 1 and 0 < o["fit"] <= 1


# ---------------------------------------------------------------------------- the checker rejects what is not there
def _off_palette(rng) -> np.ndarray:
    """A colour at least 0.35 from every palette colour and from the background."""
    palette = np.array(list(PALETTE.values()))
    while True:
        c = rng.random(3)
        if np.linalg.norm(palette - c, axis=1).min() >= 0.35 and np.linalg.norm(c - sh.BACKGROUND) >= 0.35:
            return c


def _recoloured(specs, j, rgb) -> torch.Tensor:
    """The image of ``specs`` with shape j painted in ``rgb`` (any colour)."""
    image = render([s for i, s in enumerate(specs) if i != j]).double()
    alpha = torch.from_numpy(render_coverage(specs[j]))
    image += 2 * alpha * torch.tensor(np.asarray(rgb) - sh.BACKGROUND)[:, None, None]
    return image.clamp(-1, 1).float()


def _merged_pair(rng, size=64):
    """Two same-colour shapes that overlap by at least one pixel of area, drawn as their union."""
    colour = COLOURS[int(rng.random() * len(COLOURS))]
    while True:
        specs = []
        for _ in range(2):
            shape, kind = SHAPES[int(rng.random() * 3)], SIZES[int(rng.random() * 2)]
            specs.append(ShapeSpec(shape, colour, kind, 0, 0, sh.SIZE_RADIUS[kind] * size, size))
        specs[0].x, specs[0].y = 0.3 + 0.4 * rng.random(2)
        step = rng.uniform(0.4, 1.0) * (specs[0].radius_px + specs[1].radius_px) / size
        angle = rng.uniform(0, 2 * math.pi)
        specs[1].x, specs[1].y = specs[0].x + step * math.cos(angle), specs[0].y + step * math.sin(angle)
        if not (0.22 < specs[1].x < 0.78 and 0.22 < specs[1].y < 0.78):
            continue
        # render the union at 4x resolution, then average down (a max of coverages is not a union)
        fine = [render_coverage(s, 4 * size) for s in specs]
        if np.minimum(fine[0], fine[1]).sum() >= 16:  # at least one pixel of overlap at the final size
            union = F.avg_pool2d(torch.from_numpy(np.maximum(fine[0], fine[1]))[None], 4)[0]
            rgb = torch.tensor(np.array(PALETTE[colour]) - sh.BACKGROUND)[:, None, None]
            return ((torch.tensor(sh.BACKGROUND)[:, None, None] + union * rgb) * 2 - 1).float(), specs


def _rejection_set(kind: str):
    """(images, specs or None) for one category of things that are not well-formed data-set images."""
    g = torch.Generator().manual_seed(11)
    rng = np.random.default_rng(11)
    n = N_REJECT
    if kind == "gaussian noise":
        return torch.randn(n, 3, 64, 64, generator=g).clamp(-1, 1), None
    if kind == "uniform noise":
        return torch.rand(n, 3, 64, 64, generator=g) * 2 - 1, None
    if kind == "blank":
        return degrade(torch.full((n, 3, 64, 64), -1.0), seed=1), None
    if kind == "blank colour":
        colours = [c for c in rng.random((4 * n, 3)) if np.linalg.norm(c - sh.BACKGROUND) >= 0.3][:n]
        flat = torch.tensor(np.array(colours), dtype=torch.float32)[:, :, None, None].expand(n, 3, 64, 64) * 2 - 1
        return degrade(flat, seed=2), None
    specs_list = load_shapes("test", n).specs
    if kind == "off-palette colour":
        return degrade(torch.stack([_recoloured(s, int(rng.random() * len(s)), _off_palette(rng)) for s in specs_list]), 3), specs_list
    if kind == "other palette colour":
        images = []
        for specs in specs_list:
            j, wrong = int(rng.random() * len(specs)), [copy.copy(s) for s in specs]
            wrong[j].colour = [c for c in COLOURS if c != specs[j].colour][int(rng.random() * (len(COLOURS) - 1))]
            images.append(render(wrong))
        return degrade(torch.stack(images), 4), specs_list
    if kind == "merged shapes":
        pairs = [_merged_pair(rng) for _ in range(n)]
        return degrade(torch.stack([p[0] for p in pairs]), 5), [p[1] for p in pairs]
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["gaussian noise", "uniform noise", "blank", "blank colour", "off-palette colour",
                                  "other palette colour", "merged shapes"])
def test_checker_rejects(kind):
    images, specs_list = _rejection_set(kind)
    readings = read_shapes_batch(images)
    not_well_formed = np.mean([not r.well_formed for r in readings])
    figure = f"\n{kind}: not well-formed {not_well_formed:.3f}"
    if specs_list is None:
        assert not_well_formed >= 0.95, Counter(r.reason for r in readings)
    else:  # the image was meant to show specs but does not: matches() must say no
        rejected = np.mean([not (r.well_formed and matches(r, s)) for r, s in zip(readings, specs_list)])
        figure += f", rejected by matches() {rejected:.3f}"
        assert rejected >= 0.95, Counter(r.reason for r in readings)
        if kind == "off-palette colour":
            assert not_well_formed >= 0.95
    print(figure, dict(Counter(r.reason for r in readings)))


# ---------------------------------------------------------------------------- the report of chapter 4's bar
def test_shapes_report(held_out):
    report = shapes_report(held_out.images[:120], held_out.specs[:120])
    assert report["num_images"] == 120 and report["well_formed_share"] >= 0.98 and report["meets_bar"]
    assert report["missing_colours"] == [] and report["missing_shapes"] == []
    assert sum(report["colour_counts"].values()) == sum(report["shape_counts"].values()) == sum(
        k * v for k, v in report["object_counts"].items())
    assert report["accuracy"]["colour"] >= 0.98
    noise = shapes_report(torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert noise["well_formed_share"] == 0 and not noise["meets_bar"] and noise["reasons"] == {"noise": 8}
    assert noise["missing_colours"] == list(COLOURS)
    only_red = [i for i, s in enumerate(held_out.specs) if all(x.colour == "red" for x in s)]
    assert shapes_report(held_out.images[only_red])["missing_colours"] == [c for c in COLOURS if c != "red"]


# ---------------------------------------------------------------------------- pieces and errors
def test_label_components_agrees_with_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for density in (0.2, 0.45, 0.6):
        mask = rng.random((40, 50)) < density
        ours, n = checker.label_components(mask)
        ref, n_ref = ndimage.label(mask, structure=np.ones((3, 3)))
        assert n == n_ref
        pairs = set(zip(ours[mask].tolist(), ref[mask].tolist()))
        assert len(pairs) == n  # one-to-one: the same partition into components


def test_bad_inputs_say_what_to_do():
    image = make_shapes(1).images[0]
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        read_shapes(image[:1])
    with pytest.raises(ValueError, match="read_shapes_batch"):
        read_shapes(image[None])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        read_shapes((image + 1) * 127.5)
    with pytest.raises(ValueError, match="NaN"):
        read_shapes(torch.full_like(image, float("nan")))
    with pytest.raises(ValueError, match="square"):
        read_shapes(image[:, :, :40])
    with pytest.raises(ValueError, match="batch"):
        read_shapes_batch(image)
    with pytest.raises(ValueError, match=">= 16"):
        make_shapes(2, size=12)
    with pytest.raises(ValueError, match="min_shapes <= max_shapes"):
        make_shapes(2, min_shapes=3, max_shapes=2)
    with pytest.raises(ValueError, match="min_shapes"):
        make_shapes(2, min_shapes=0)
    with pytest.raises(ValueError, match="readings"):
        attribute_accuracy([], [[]])
    assert read_shapes(image * 1.2).well_formed  # a slight overshoot (a decoder's output) is clamped, not an error


def test_show_shapes_draws_captions(held_out):
    from matplotlib.figure import Figure

    fig = show_shapes(held_out.images[:6], held_out.captions[:6], nrow=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    assert isinstance(show_shapes(held_out.images[:4]), Figure)


def _solid(mask: np.ndarray, rgb=(1.0, 0.0, 0.0)) -> torch.Tensor:
    """A (3, H, W) image in [-1, 1]: colour ``rgb`` where ``mask`` is true, background elsewhere."""
    m = torch.from_numpy(mask.astype(np.float64))
    return ((torch.tensor(sh.BACKGROUND)[:, None, None] + m * (torch.tensor(rgb) - torch.tensor(sh.BACKGROUND))[:, None, None]) * 2 - 1).float()


def test_checker_on_shapes_outside_the_data_set():
    """Shapes the generator never draws are not well-formed; a slightly dim palette colour still is."""
    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    odd = {
        "diamond": np.abs(cols - 32.3) + np.abs(rows - 31.8) <= 12,
        "ellipse": ((cols - 32) / 14) ** 2 + ((rows - 32) / 8) ** 2 <= 1,
        "rectangle": (np.abs(cols - 32) <= 14) & (np.abs(rows - 32) <= 8),
        "triangle pointing down": render_coverage(ShapeSpec("triangle", "red", "large", 0.5, 0.5, 10.9))[::-1] > 0.5,
        "cut by the border": render_coverage(ShapeSpec("circle", "red", "large", 0.05, 0.5, 10.9)) > 0.5,
        "too large": render_coverage(ShapeSpec("circle", "red", "large", 0.5, 0.5, 25.0)) > 0.5,
    }
    for name, mask in odd.items():
        assert not read_shapes(_solid(mask)).well_formed, name
    touching = render([ShapeSpec("square", "red", "large", 0.4, 0.5, 10.9), ShapeSpec("circle", "blue", "large", 0.736, 0.5, 10.9)])
    assert read_shapes(touching).reason == "merged shapes"
    square = render([ShapeSpec("square", "green", "large", 0.5, 0.5, 10.9)])
    assert read_shapes((square + 1) * 0.85 - 1).well_formed  # 85% strength
    assert read_shapes((square + 1) * 0.5 - 1).reason == "unknown colour"  # half strength: no palette colour


@pytest.mark.parametrize("size", [32, 128])
def test_checker_reads_other_sizes(size):
    d = make_shapes(60, size=size, seed=1)
    acc = attribute_accuracy(read_shapes_batch(d.images), d.specs)
    assert min(acc.values()) >= 0.98, acc
