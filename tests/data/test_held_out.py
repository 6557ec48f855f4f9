"""Held-out compositions (issue 14): the training split of the text-conditioned models never names a held-out
colour-shape pair, the default split is unchanged, and the hard negatives keep to the caption grammar."""

from __future__ import annotations

import pytest
import torch

from sdlearn.data import shapes as sh
from sdlearn.data.shapes import (HELD_OUT_PAIRS, flip_relation, has_held_out_pair, load_shapes, parse_caption,
                                 swap_colours)


def _named_pairs(text: str) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in parse_caption(text)}


def test_seen_split_never_names_a_held_out_pair():
    every = load_shapes("train", 1500)
    seen = load_shapes("train", 1500, compositions="seen")
    held = load_shapes("train", 1500, compositions="held_out")
    assert all(not (_named_pairs(c) & set(HELD_OUT_PAIRS)) for c in seen.captions)
    assert all(_named_pairs(c) & set(HELD_OUT_PAIRS) for c in held.captions)
    assert sorted(seen.indices + held.indices) == list(range(1500))  # the two parts make up the split
    assert len(held) > 0.2 * len(every)  # each of ~2 objects is a held-out pair with probability 1/6
    for i, k in enumerate(seen.indices[:50]):  # the kept images are the split's own, untouched
        assert seen.captions[i] == every.captions[k] and torch.equal(seen.images[i], every.images[k])


def test_default_split_is_unchanged():
    """shapes-vae and shapes-ldm trained on load_shapes("train"): the default keeps every image, in order."""
    every = load_shapes("train", 200)
    made = sh.make_shapes(200, seed=sh.SPLIT_SEEDS["train"])
    assert every.captions == made.captions and torch.equal(every.images, made.images) and every.indices is None


def test_held_out_test_captions_contain_a_pair():
    held = load_shapes("test", compositions="held_out")
    assert len(held) > 200 and all(has_held_out_pair(s) for s in held.specs)
    for pair in HELD_OUT_PAIRS:  # every pair can be tested
        assert any(pair in _named_pairs(c) for c in held.captions), pair


def test_bad_compositions_value():
    with pytest.raises(ValueError, match="'seen' for training"):
        load_shapes("train", 10, compositions="unseen")


def test_hard_negatives():
    two = "a small red circle above a large blue square"
    assert flip_relation(two) == "a small red circle below a large blue square"
    assert flip_relation("a small red circle to the left of a large blue square") == \
        "a small red circle to the right of a large blue square"
    assert swap_colours(two) == "a small blue circle above a large red square"
    three = "a small red circle, a large blue square and a small green triangle"
    assert flip_relation(three) is None
    assert swap_colours(three) == "a small blue circle, a large red square and a small green triangle"
    assert flip_relation("a small red circle") is None and swap_colours("a small red circle") is None
    assert swap_colours("a small red circle above a large red square") is None  # nothing would change
    for text in load_shapes("test", 100).captions:  # negatives stay in the grammar, and differ from the caption
        for negative in (flip_relation(text), swap_colours(text)):
            if negative is not None:
                assert negative != text and len(parse_caption(negative)) == len(parse_caption(text))
