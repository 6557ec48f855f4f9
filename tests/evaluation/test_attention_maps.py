"""Cross-attention maps per token: recorded during sampling, summing to one per pixel, and scored against objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdlearn.data.shapes import PALETTE
from sdlearn.evaluation.attention_maps import (attention_in_objects, colour_regions, cross_attention_maps,
                                               mass_inside, word_token_index)


def test_maps_are_recorded_per_step_and_sum_to_one_per_pixel(tiny_sd_folder):
    from sdlearn.pipelines import StableDiffusionPipeline

    _, folder = tiny_sd_folder
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    before = pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np",
                  progress=False).images
    images, maps, tokens = cross_attention_maps(pipe, ["a red circle", "a blue square"], num_inference_steps=3,
                                                generator=torch.Generator().manual_seed(0))
    assert sorted(maps) == [0, 1, 2] and maps[0].shape == (2, pipe.tokenizer.model_max_length, 8, 8)
    assert torch.allclose(maps[1].sum(1), torch.ones(2, 8, 8), atol=1e-4)  # each pixel's weights over the tokens
    assert tokens[0][0] == "<|startoftext|>" and len(tokens[1]) == pipe.tokenizer.model_max_length
    after = pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np",
                 progress=False).images
    assert np.abs(after - before).max() < 1e-5  # the recording processor was taken out again
    assert images.shape == (2, 3, 16, 16)


def test_word_tokens_colour_regions_and_mass_inside():
    tokens = ["<|startoftext|>", "a</w>", "small</w>", "red</w>", "circle</w>", "<|endoftext|>"]
    assert word_token_index(tokens, "a small red circle") == {0: 1, 1: 2, 2: 3, 3: 4}
    assert word_token_index(["<|startoftext|>", "a</w>", "sm", "all</w>"], "a small red") == {0: 1}
    image = torch.zeros(3, 8, 8)
    image[:, :4, :4] = torch.tensor(PALETTE["red"])[:, None, None]
    image[:, 4:, 4:] = torch.tensor(PALETTE["blue"])[:, None, None]
    regions = colour_regions(image)
    assert regions["red"].sum() == 16 and regions["blue"].sum() == 16 and not regions["green"].any()
    focused = torch.zeros(4, 4)
    focused[:2, :2] = 1.0  # a map on the top-left quarter: where red is
    assert mass_inside(focused, regions["red"]) > 0.8 and mass_inside(focused, regions["blue"]) < 0.2  # bilinear blur


def test_attention_in_objects_scores_words_that_look_at_their_object():
    caption = "a large red square above a large blue circle"
    words = caption.split()
    tokens = [["<|startoftext|>", *(w + "</w>" for w in words), "<|endoftext|>"]]
    image = torch.zeros(1, 3, 8, 8)
    image[0, :, :4] = torch.tensor(PALETTE["red"])[:, None, None]  # red on top
    image[0, :, 4:] = torch.tensor(PALETTE["blue"])[:, None, None]  # blue below
    maps = torch.full((1, len(tokens[0]), 8, 8), 1e-3)
    top, bottom = slice(0, 4), slice(4, 8)
    for word, rows in (("red", top), ("square", top), ("blue", bottom), ("circle", bottom)):
        maps[0, words.index(word) + 1, rows] = 1.0
    good = attention_in_objects(image, {0: maps}, tokens, [caption])
    assert good["colour"]["share"] == 1.0 and good["shape"]["share"] == 1.0
    assert good["colour"]["peak_share"] == 1.0 and good["colour"]["own_object_share"] == 1.0
    swapped = maps.clone()
    swapped[0, words.index("red") + 1], swapped[0, words.index("blue") + 1] = maps[0, words.index("blue") + 1], \
        maps[0, words.index("red") + 1]
    bad = attention_in_objects(image, {0: swapped}, tokens, [caption])
    assert bad["colour"]["share"] == 0.0 and bad["shape"]["share"] == 1.0 and bad["colour"]["peak_share"] == 0.0
    assert bad["colour"]["own_object_share"] == 0.0 and bad["shape"]["own_object_share"] == 1.0
    same_colour = attention_in_objects(image, {0: maps}, tokens, ["a large red square above a small red circle"])
    assert np.isnan(same_colour["colour"]["share"])  # skipped: the colours cannot tell the objects apart


def test_a_diffuse_map_fails_the_mass_share_but_passes_own_object_when_denser_there():
    """A word's map spread over a large background: under half its mass on its object, yet denser there than on
    the other object: the literal measure says no, own_object_share says yes."""
    caption = "a small red square above a small blue circle"
    words = caption.split()
    tokens = [["<|startoftext|>", *(w + "</w>" for w in words), "<|endoftext|>"]]
    image = torch.zeros(1, 3, 16, 16)
    image[0, :, 2:5, 2:5] = torch.tensor(PALETTE["red"])[:, None, None]
    image[0, :, 10:13, 10:13] = torch.tensor(PALETTE["blue"])[:, None, None]
    maps = torch.full((1, len(tokens[0]), 16, 16), 0.1)
    maps[0, words.index("red") + 1, 2:5, 2:5] = 0.5
    report = attention_in_objects(image, {0: maps}, tokens, [caption])
    assert report["colour"]["share"] == 0.0 and report["colour"]["own_object_share"] == 0.5  # red yes, blue: a tie
