"""The shipped text-to-image shapes model: it loads by name in diffusers' layout, its scheduler gives the card's
figures with default arguments, it draws one-shape captions, and its card shows its quality.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sdlearn.evaluation.shapes_checker import read_shapes_batch
from sdlearn.evaluation.text_to_image import draw_captions, one_shape_right
from sdlearn.pipelines import StableDiffusionPipeline
from sdlearn.utils.files import resolve_pretrained


def test_shipped_shapes_t2i_loads_by_name_and_draws_one_shape_captions():
    folder = Path(resolve_pretrained("shapes-t2i"))
    index = json.loads((folder / "model_index.json").read_text())
    assert {"vae", "text_encoder", "tokenizer", "unet", "scheduler"} <= set(index)
    pipe = StableDiffusionPipeline.from_pretrained("shapes-t2i")
    cfg = pipe.scheduler.config
    assert cfg["clip_sample"] is False and cfg["steps_offset"] == 1 and cfg["timestep_spacing"] == "leading"
    captions = draw_captions(32, seed=3)["one_shape"]["captions"][:8]
    quality = json.loads((folder / "quality.json").read_text())
    run = dict(guidance_scale=quality["guidance_scale"], num_inference_steps=25, output_type="pt", progress=False)
    images = pipe(captions, generator=torch.Generator().manual_seed(0), **run).images
    again = pipe(captions, generator=torch.Generator().manual_seed(0), **run).images
    assert torch.equal(images, again)  # same seed, same images on the CPU
    right = [one_shape_right(r, c) for r, c in zip(read_shapes_batch(images * 2 - 1), captions)]
    assert sum(right) >= 6  # the card: 94.1% of 256 at 50 steps; 8 at 25 steps leave room for chance


def test_the_card_shows_the_measured_figures():
    folder = Path(resolve_pretrained("shapes-t2i"))
    quality = json.loads((folder / "quality.json").read_text())
    card = (folder / "README.md").read_text()
    g = quality["groups"]
    assert f"| {g['one_shape']['right']:.1%} |" in card and f"| {g['held_out']['right']:.1%} |" in card
    assert quality["guidance_scale"] in (3.0, 5.0, 7.5) and sorted(quality["sweep"]) == ["3", "5", "7.5"]
    assert f"passes the bar: **{quality['passes_bar']}**" in card
