"""sdlearn.viz.pipeline: chapter 7's pictures draw what they are given, and refuse mismatched inputs."""

import pytest
import torch
from matplotlib.figure import Figure

from sdlearn.viz import pipeline as pipeline_viz


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_strength_sweep_has_one_column_per_strength_and_the_original():
    fig = pipeline_viz.plot_strength_sweep(images(3), {0.2: images(3, 1), 0.6: images(3, 2)}, ["a", "b", "c"])
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["original", "strength 0.2", "strength 0.6"]
    with pytest.raises(ValueError, match="one edit per original"):
        pipeline_viz.plot_strength_sweep(images(3), {0.2: images(2)})


def test_edit_sweep_draws_three_curves():
    rows = [{"strength": s, "n": 8, "right_share": 0.5, "new_colour_share": 0.7, "centre_within_bar_share": 0.9}
            for s in (0.2, 0.5, 1.0)]
    fig = pipeline_viz.plot_edit_sweep(rows, bar=0.8)
    assert len(fig.axes[0].lines) == 4  # three curves and the bar
    with pytest.raises(ValueError, match="no sweep rows"):
        pipeline_viz.plot_edit_sweep([])


def test_inpainting_outlines_the_mask_on_every_picture_and_marks_wrong_cases():
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:12, 2:10] = 1
    fig = pipeline_viz.plot_inpainting(images(2), masks, {"painted": images(2, 3)}, ["p", "q"], ["", "wrong colour"])
    assert len(fig.axes) == 4 and all(len(ax.patches) == 1 for ax in fig.axes)
    x0, y0 = fig.axes[0].patches[0].get_xy()
    assert (x0, y0, fig.axes[0].patches[0].get_width(), fig.axes[0].patches[0].get_height()) == (1.5, 3.5, 8, 8)
    assert fig.axes[3].get_xlabel() == "wrong colour" and fig.axes[2].get_xlabel() == "right"
    with pytest.raises(ValueError, match="one"):
        pipeline_viz.plot_inpainting(images(2), masks[:1], {})


def test_safety_flags_frame_the_flagged_images():
    fig = pipeline_viz.plot_safety_flags(images(3), ["x", "y", "z"], [True, False, True], [0.5, 0.1, 0.3], 0.2)
    assert [("FLAGGED" in ax.get_xlabel()) for ax in fig.axes] == [True, False, True]
    assert "cos 0.500" in fig.axes[0].get_xlabel()
    with pytest.raises(ValueError, match="one each"):
        pipeline_viz.plot_safety_flags(images(3), ["x"], [True, False, True])
