"""sdlearn.evaluation.guidance: the guidance direction eps_cond - eps_uncond along a run, and its picture."""

from __future__ import annotations

import pytest
import torch

from sdlearn.evaluation.guidance import guidance_directions
from sdlearn.pipelines import StableDiffusionPipeline
from sdlearn.viz.attention import plot_guidance_direction


def test_directions_are_the_difference_of_the_two_branches_and_the_run_is_the_pipelines(tiny_sd_folder):
    _, folder = tiny_sd_folder
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    result = guidance_directions(pipe, "a red circle", steps=[0, 2], guidance_scale=4.0, num_inference_steps=3,
                                 generator=torch.Generator().manual_seed(0))
    plain = pipe("a red circle", num_inference_steps=3, guidance_scale=4.0, output_type="pt",
                 generator=torch.Generator().manual_seed(0), progress=False).images[0]
    assert torch.equal(result["image"], plain)  # recording does not change the run
    assert sorted(result["steps"]) == [0, 2] and sorted(result["timesteps"]) == [0, 2]
    first = result["steps"][0]
    assert first["direction"].shape == (pipe.unet.config.in_channels, pipe.unet.config.sample_size,
                                        pipe.unet.config.sample_size)
    assert first["direction"].abs().max() > 0  # the prompt changes the prediction
    assert first["x0_guided"].shape == plain.shape and 0 <= first["x0_cond"].min() <= first["x0_cond"].max() <= 1
    fig = plot_guidance_direction(result, "a red circle")
    assert len(fig.axes) == 2 * 4


def test_guidance_off_or_steps_outside_the_run_are_refused(tiny_sd_folder):
    _, folder = tiny_sd_folder
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="guidance_scale must be > 1"):
        guidance_directions(pipe, "a red circle", steps=[0], guidance_scale=1.0, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"step indices in \[0, 1\]"):
        guidance_directions(pipe, "a red circle", steps=[5], num_inference_steps=2)


def test_figure_slider_shows_the_first_picture_and_refuses_nothing():
    from matplotlib.figure import Figure

    from sdlearn.viz.images import figure_slider

    figs = {}
    for s in (1.0, 3.0):
        fig = Figure(figsize=(1, 1))
        fig.add_subplot().plot([0, s])
        figs[s] = fig
    box = figure_slider(figs, "guidance scale")
    slider, image = box.children
    assert list(slider.options) == [1.0, 3.0] and image.value[:4] == b"\x89PNG"
    first = image.value
    slider.value = 3.0
    assert image.value != first
    with pytest.raises(ValueError, match="figures is empty"):
        figure_slider({})
