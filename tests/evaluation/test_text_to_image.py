"""evaluate_t2i on stand-in pipelines: one that draws what every caption asks (reads ~100%), one that draws the wrong
colours (reads ~0%). No model is trained or sampled here."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sdlearn.data.shapes import COLOURS, HELD_OUT_PAIRS, SIZE_RADIUS, ShapeSpec, parse_caption, render
from sdlearn.evaluation.text_to_image import (T2I_BAR, draw_captions, evaluate_t2i, group_sizes, held_out_objects,
                                              two_shape_right)
from sdlearn.evaluation.shapes_checker import read_shapes

# where a stand-in puts the objects of a caption: one in the middle, two as the relation says, three in a triangle
PLACES = {1: [(0.5, 0.5)], 3: [(0.25, 0.27), (0.75, 0.27), (0.5, 0.75)],
          "above": [(0.5, 0.28), (0.5, 0.72)], "below": [(0.5, 0.72), (0.5, 0.28)],
          "to the left of": [(0.28, 0.5), (0.72, 0.5)], "to the right of": [(0.72, 0.5), (0.28, 0.5)]}


def draw(caption: str, wrong_colours: bool = False, swap_relation: bool = False) -> torch.Tensor:
    """The caption drawn as the data would draw it, (3, 64, 64) in [-1, 1]. ``wrong_colours``: every object in the
    first palette colour the caption does not name (so no asked colour-shape pair can appear by accident)."""
    objects = parse_caption(caption)
    key = objects[0].get("relation", len(objects))
    places = PLACES[key][::-1] if swap_relation else PLACES[key]
    unnamed = next(c for c in COLOURS if c not in {o["colour"] for o in objects})
    specs = [ShapeSpec(o["shape"], unnamed if wrong_colours else o["colour"], o["size"], x, y,
                       SIZE_RADIUS[o["size"]] * 64) for o, (x, y) in zip(objects, places)]
    return render(specs)


class StandIn:
    """Called like StableDiffusionPipeline; records each call's arguments."""

    def __init__(self, wrong_colours: bool = False, swap_relation: bool = False):
        self.wrong_colours, self.swap_relation, self.calls = wrong_colours, swap_relation, []
        self.scheduler = SimpleNamespace()

    def __call__(self, prompt, num_inference_steps, guidance_scale, generator, output_type, **kwargs):
        assert output_type == "pt" and isinstance(generator, torch.Generator)
        self.calls.append(dict(n=len(prompt), steps=num_inference_steps, guidance=guidance_scale))
        images = torch.stack([draw(p, self.wrong_colours, self.swap_relation) for p in prompt])
        return SimpleNamespace(images=(images + 1) / 2)  # [0, 1], as the pipeline's "pt" output


def test_the_split_is_half_a_quarter_a_quarter():
    assert group_sizes(512) == {"one_shape": 256, "two_shape": 128, "held_out": 128}
    assert sum(group_sizes(7).values()) == 7
    with pytest.raises(ValueError, match="at least 3"):
        group_sizes(2)


def test_captions_are_drawn_by_seed_and_fall_in_their_groups():
    drawn = draw_captions(512, seed=0)
    assert {g: len(d["captions"]) for g, d in drawn.items()} == group_sizes(512)
    assert all(len(parse_caption(c)) == 1 and not held_out_objects(c) for c in drawn["one_shape"]["captions"])
    assert all(len(parse_caption(c)) == 2 and not held_out_objects(c) for c in drawn["two_shape"]["captions"])
    held = drawn["held_out"]["captions"]
    assert all(set(held_out_objects(c)) <= set(HELD_OUT_PAIRS) and held_out_objects(c) for c in held)
    assert drawn["two_shape"]["images"].shape == (128, 3, 64, 64)
    assert draw_captions(512, seed=0)["two_shape"]["captions"] == drawn["two_shape"]["captions"]
    assert draw_captions(512, seed=1)["two_shape"]["captions"] != drawn["two_shape"]["captions"]


def test_the_real_test_images_are_read_as_their_captions():
    """The checker and the group rules agree with the data itself: real two-shape images pass both tests."""
    drawn = draw_captions(24, seed=0)["two_shape"]
    results = [two_shape_right(read_shapes(x), c) for x, c in zip(drawn["images"], drawn["captions"])]
    assert sum(o and r for o, r in results) >= len(results) - 1


def test_a_pipeline_that_draws_the_caption_reads_about_100_percent():
    pipe = StandIn()
    report, picture = evaluate_t2i(pipe, num_samples=48, guidance_scale=7.5, num_inference_steps=3, batch_size=10,
                                   progress=False, clip_model=None)
    g = report["groups"]
    assert g["one_shape"]["right"] == 1.0 and g["held_out"]["right"] == 1.0
    assert g["two_shape"]["objects_right"] == 1.0 and g["two_shape"]["relation_right_among_those"] == 1.0
    assert report["passes_bar"] and all(report["bars_met"].values()) and report["bar"] == T2I_BAR
    assert report["group_sizes"] == {"one_shape": 24, "two_shape": 12, "held_out": 12}
    assert {c["steps"] for c in pipe.calls} == {3} and {c["guidance"] for c in pipe.calls} == {7.5}
    assert max(c["n"] for c in pipe.calls) == 10 and sum(c["n"] for c in pipe.calls) == 48
    assert picture.shape[1:] == (3, 64, 64) and picture.min() >= -1 and picture.max() <= 1


def test_wrong_colours_read_about_0_percent_and_a_flipped_relation_fails_only_the_relation():
    report, _ = evaluate_t2i(StandIn(wrong_colours=True), num_samples=24, progress=False, clip_model=None)
    g = report["groups"]
    assert g["one_shape"]["right"] == 0.0 and g["two_shape"]["objects_right"] == 0.0 and g["held_out"]["right"] == 0.0
    assert not report["passes_bar"] and not report["bars_met"]["one_shape"]
    flipped, _ = evaluate_t2i(StandIn(swap_relation=True), num_samples=24, progress=False, clip_model=None)
    two = flipped["groups"]["two_shape"]
    assert two["objects_right"] == 1.0 and two["relation_right_among_those"] <= 0.2
    assert flipped["bars_met"] == {"one_shape": True, "two_shape_objects": True, "two_shape_relation": False,
                                   "held_out": True}


def test_clip_scores_of_drawn_captions_come_near_the_real_images():
    pytest.importorskip("transformers")
    report, _ = evaluate_t2i(StandIn(), num_samples=12, progress=False)
    wrong, _ = evaluate_t2i(StandIn(wrong_colours=True), num_samples=12, progress=False)
    assert report["clip_score_samples"] > wrong["clip_score_samples"]
    assert abs(report["clip_score_samples"] - report["clip_score_real"]) < 0.1
    assert set(report["seconds"]) == {"sampling", "checking", "clip"}


def test_a_non_pipeline_is_refused_with_what_to_give():
    with pytest.raises(TypeError, match="StableDiffusionPipeline or its folder"):
        evaluate_t2i(42, num_samples=3, clip_model=None)


@pytest.fixture
def t2i_recipe(monkeypatch):
    """A stand-in TextToImageRecipe named "shapes-t2i", whether or not the real recipe class exists yet."""
    from dataclasses import dataclass, field

    import importlib

    from sdlearn.evaluation import model_cards
    from sdlearn.training import recipes

    @dataclass(frozen=True)
    class TextToImageRecipe:
        name: str = "shapes-t2i"
        vae: str = "shapes-vae"
        text_encoder: str = "shapes-clip"
        unet: object = field(default_factory=lambda: SimpleNamespace(
            block_out_channels=(32, 64, 128), down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
            layers_per_block=1, cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8, in_channels=4,
            sample_size=16))
        scheduler: tuple = ("linear",)
        sampling_scheduler: tuple = ("DDIMScheduler", {"steps_offset": 1})
        compositions: str = "seen"
        notes: str = ""

    recipe = TextToImageRecipe()
    monkeypatch.setattr(recipes, "TextToImageRecipe", TextToImageRecipe, raising=False)
    for module in (importlib.import_module("sdlearn.evaluation.evaluate"), model_cards):  # the module, not the function
        monkeypatch.setattr(module, "get_recipe", lambda name: recipe)
    return recipe


def test_evaluate_routes_a_text_to_image_recipe_and_write_card_writes_its_card(t2i_recipe, tmp_path, monkeypatch):
    from sdlearn.evaluation import model_cards, text_to_image
    from sdlearn.evaluation.evaluate import evaluate

    report, picture = evaluate_t2i(StandIn(), num_samples=12, progress=False)
    seen = {}
    monkeypatch.setattr(text_to_image, "evaluate_t2i_card", lambda folder, **kw: seen.update(kw) or (report, picture))
    got, name, shown = evaluate(str(tmp_path / "shapes-t2i"), progress=False)
    assert got is report and name == "samples.png" and shown is picture and seen["num_samples"] == 512
    path = model_cards.write_card(str(tmp_path), "shapes-t2i", report, "a test machine")
    card = open(path).read()
    assert "| one shape | colour, shape and size right | 100.0% | 90% | True |" in card
    assert "relation right, among those" in card and "passes the bar: **True**" in card
    assert f"samples **{report['clip_score_samples']:.3f}**" in card


def test_the_card_measurement_sweeps_the_guidance_scales_and_picks_the_one_meeting_most_bars(t2i_recipe, tmp_path):
    from sdlearn.evaluation import model_cards
    from sdlearn.evaluation.text_to_image import evaluate_t2i_card

    class ScaleSensitive(StandIn):
        """Draws the caption right only at guidance 5: the sweep must pick 5."""

        def __call__(self, prompt, num_inference_steps, guidance_scale, generator, output_type, **kwargs):
            self.wrong_colours = guidance_scale != 5.0
            return super().__call__(prompt, num_inference_steps, guidance_scale, generator, output_type, **kwargs)

    report, _ = evaluate_t2i_card(ScaleSensitive(), num_samples=12, scales=(3.0, 5.0, 7.5), num_attention_captions=0,
                                  progress=False, clip_model=None)
    assert report["guidance_scale"] == 5.0 and sorted(report["sweep"]) == ["3", "5", "7.5"]
    assert report["sweep"]["3"]["groups"]["one_shape"]["right"] == 0.0 and report["passes_bar"]
    report["attention_in_objects"] = {"captions": 4, "steps": [10, 49], **{k: {
        "share": 0.25, "per_step": {10: 0.0, 49: 0.5}, "peak_share": 0.5, "own_object_share": 0.75, "words": 8}
        for k in ("colour", "shape")}}
    report["clip_score_samples"] = report["clip_score_real"] = 0.9
    for g in report["groups"].values():
        g["clip_score_samples"] = g["clip_score_real"] = 0.9
    card = open(model_cards.write_card(str(tmp_path), "shapes-t2i", report, "a test machine")).read()
    assert "| 5 | 100.0% | 100.0% | 100.0% | 100.0% | 4 of 4 |" in card and "| 3 | 0.0% |" in card
    assert "| colour (8 words) | 25.0% | 0% / 50% | 50.0% | 75.0% |" in card
