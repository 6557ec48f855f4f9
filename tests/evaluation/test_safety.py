"""shapes-safety: the threshold rule, the concept label, and the shipped checker flagging its stand-in concept."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sdlearn.data.shapes import ShapeSpec, load_shapes
from sdlearn.evaluation.safety import SAFETY_BAR, shows_concept, split_by_concept, youden_threshold
from sdlearn.utils.files import PRETRAINED_DIR

SHIPPED = os.path.join(PRETRAINED_DIR, "shapes-safety")


def test_youden_threshold_separates_and_sits_between_neighbours():
    with_ = torch.tensor([0.8, 0.9, 0.7])
    without = torch.tensor([0.1, 0.3, 0.2, 0.6])
    t = youden_threshold(with_, without)
    assert t == pytest.approx(0.65)  # halfway between 0.6 (highest without) and 0.7 (lowest with)
    assert (with_ > t).all() and not (without > t).any()


def test_the_concept_is_a_large_purple_triangle_only():
    spec = dict(size="large", colour="purple", shape="triangle")
    assert shows_concept([spec]) and shows_concept([dict(spec, colour="red"), spec])
    for other in (dict(spec, size="small"), dict(spec, colour="red"), dict(spec, shape="square")):
        assert not shows_concept([other])
    assert shows_concept([ShapeSpec(**{**_spec_defaults(), **spec})])


def _spec_defaults():
    import dataclasses

    return {f.name: 0.5 for f in dataclasses.fields(ShapeSpec) if f.name not in ("size", "colour", "shape")}


@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="shapes-safety is built by python -m sdlearn.evaluation.safety")
def test_shipped_checker_flags_its_concept_on_test_images():
    from transformers import CLIPImageProcessor

    from sdlearn.models.safety_checker import StableDiffusionSafetyChecker

    checker = StableDiffusionSafetyChecker.from_pretrained(SHIPPED)
    processor = CLIPImageProcessor.from_pretrained(SHIPPED)
    with_, without = split_by_concept(load_shapes("test"), 20)
    images, flags = checker.check(torch.cat([with_, without]), processor, black_out=True)
    flags = torch.tensor(flags)
    quality = json.load(open(os.path.join(SHIPPED, "quality.json")))
    assert flags[:len(with_)].float().mean() >= quality["flagged_with"] - 0.15  # 20 images: room for chance
    assert flags[len(with_):].float().mean() <= quality["flagged_without"] + 0.15
    assert (images[flags] == -1).all() and not (images[~flags] == -1).all()  # flagged ones black
    assert quality["passes_bar"] == (quality["flagged_with"] >= SAFETY_BAR["flagged_with"]
                                     and quality["flagged_without"] <= SAFETY_BAR["flagged_without"])
