"""Tests for sdlearn.viz.diffusion: the pictures show exactly the tensors they claim to show."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from sdlearn.viz import diffusion as viz
from sdlearn.viz import images as viz_images
from sdlearn.pipelines import DDPMPipeline
from sdlearn.schedulers import DDPMScheduler
from sdlearn.models.unet_2d import UNet2DModel, UNetConfig


def images(b=3, c=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, c, h, w), generator=g) * 2 - 1  # (B, C, H, W) in [-1, 1]


@pytest.fixture(scope="module")
def tiny_pipe():
    torch.manual_seed(0)
    cfg = UNetConfig(sample_size=8, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)
    return DDPMPipeline(UNet2DModel(cfg).eval(), DDPMScheduler(num_train_timesteps=50))


# ---------------------------------------------------------------------------- grids
def test_image_grid_layout_and_values():
    x = images(b=5, c=1, h=4, w=6)
    grid = viz_images.image_grid(x, nrow=3, padding=1)
    # 2 rows of 3 tiles: H' = 2 * (4 + 1) + 1, W' = 3 * (6 + 1) + 1, one channel kept
    assert grid.shape == (11, 22, 1)
    assert grid.min() >= 0 and grid.max() <= 1
    # image 4 sits in row 1, column 1, mapped with (x + 1) / 2
    np.testing.assert_array_equal(grid[6:10, 8:14, 0], ((x[4, 0] + 1) / 2).numpy())
    assert (grid[0, :, 0] == 1.0).all()  # white padding
    assert (grid[6:10, 15:21] == 1.0).all()  # the empty sixth tile is padding too


def test_image_grid_rgb_and_clamping():
    x = images(b=2, c=3) * 3  # out of [-1, 1]: clamped for display
    grid = viz_images.image_grid(x, nrow=8, padding=0)
    assert grid.shape == (8, 16, 3)
    assert grid.min() == 0.0 and grid.max() == 1.0
    np.testing.assert_array_equal(grid[:, 8:], ((x[1] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy())


@pytest.mark.parametrize("bad", [torch.zeros(2, 4, 8, 8), torch.zeros(2, 2, 8, 8)])
def test_image_grid_rejects_other_channel_counts(bad):
    with pytest.raises(ValueError, match="channel_grid"):
        viz_images.image_grid(bad)


def test_image_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="unsqueeze"):
        viz_images.image_grid(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="NaN"):
        viz_images.image_grid(torch.full((1, 1, 4, 4), float("nan")))


def test_channel_grid_shows_latents_per_channel():
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 5
    grid = viz_images.channel_grid(z, padding=1)
    assert grid.shape == (2 * 9 + 1, 4 * 9 + 1, 1)  # rows = samples, columns = channels
    tile = grid[1:9, 1 + 9 * 2 : 9 + 9 * 2, 0]  # sample 0, channel 2, stretched to [0, 1]
    assert tile.min() == pytest.approx(0.0) and tile.max() == pytest.approx(1.0)


def test_show_images_returns_figure_with_the_grid():
    x = images(b=4, c=1)
    fig = viz_images.show_images(x, nrow=2, title="digits")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_title() == "digits"
    np.testing.assert_array_equal(ax.images[0].get_array(), viz_images.image_grid(x, nrow=2)[..., 0])


# ---------------------------------------------------------------------------- forward process
def test_noising_frames_match_add_noise():
    sched = DDPMScheduler(num_train_timesteps=100)
    x0, eps = images(b=1, c=1), images(b=1, c=1, seed=3)
    ts = [0, 10, 50, 99]
    frames = viz.noising_frames(x0[0], sched, ts, eps[0])
    assert frames.shape == (4, 1, 8, 8)
    for k, t in enumerate(ts):
        expected = sched.add_noise(x0, eps, torch.tensor([t]))
        torch.testing.assert_close(frames[k : k + 1], expected, rtol=0, atol=0)


@pytest.mark.parametrize("t", [0, 1, 137, 500, 999])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_slider_frame_is_add_noise_pixel_exact(t, schedule):
    sched = DDPMScheduler(beta_schedule=schedule)
    x0 = images(b=1, c=1, h=32, w=32)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    frame = viz.noising_frame(x0, eps, t, sched)
    x_t = sched.add_noise(x0, eps, torch.tensor([t]))  # (1, 1, 32, 32)
    expected = ((x_t[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()  # the same [-1, 1] -> [0, 1] mapping
    assert frame.shape == (32, 32, 1) and frame.dtype == np.float32
    np.testing.assert_array_equal(frame, expected)


def test_noising_frame_batch_is_a_row():
    sched = DDPMScheduler()
    x0, eps = images(b=3, c=3), images(b=3, c=3, seed=5)
    frame = viz.noising_frame(x0, eps, 250, sched)
    np.testing.assert_array_equal(frame, viz_images.image_grid(sched.add_noise(x0, eps, torch.full((3,), 250)), nrow=3))


def test_forward_strip_rows_are_images_columns_are_t():
    sched = DDPMScheduler()
    x0 = images(b=2, c=1)
    ts = [0, 100, 999]
    fig = viz.forward_strip(x0, sched, ts, generator=torch.Generator().manual_seed(0))
    arr = fig.axes[0].images[0].get_array()
    assert arr.shape == (2 * 9 + 1, 3 * 9 + 1)
    # t = 0 keeps sqrt(alpha_bar_0) = 0.99995 of x0: the first column is x0 up to the tiny noise
    np.testing.assert_allclose(arr[1:9, 1:9], ((x0[0, 0] + 1) / 2).clamp(0, 1).numpy(), atol=0.03)
    labels = [tick.get_text() for tick in fig.axes[0].get_xticklabels()]
    assert labels[0].startswith("t=0") and labels[2].startswith("t=999")
    # same generator -> the same strip
    fig2 = viz.forward_strip(x0, sched, ts, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(arr, fig2.axes[0].images[0].get_array())


def test_noise_slider_draws_noising_frame():
    import ipywidgets as widgets

    sched = DDPMScheduler()
    x0 = images(b=1, c=1)
    box = viz.noise_slider(x0[0], sched, generator=torch.Generator().manual_seed(2), scale=1)
    (controls, image, label) = box.children
    play, slider = controls.children
    assert isinstance(play, widgets.Play) and isinstance(slider, widgets.IntSlider)
    assert slider.max == 999 and play.max == 999
    slider.value = 400
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))  # the slider's eps
    expected = np.round(viz.noising_frame(x0, eps, 400, sched) * 255).astype(np.uint8)[..., 0]
    import io

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.value))), expected)
    assert label.value.startswith("t = 400")


# ---------------------------------------------------------------------------- plots
def test_plot_schedules_curves():
    from sdlearn.schedulers.schedules import make_betas

    betas = {"linear": make_betas("linear"), "cosine": make_betas("cosine")}
    fig = viz.plot_schedules(betas)
    ax_beta, ax_ab, ax_snr = fig.axes
    assert len(ax_ab.lines) == 2
    alpha_bar = torch.cumprod(1 - betas["linear"].double(), 0)
    np.testing.assert_allclose(ax_ab.lines[0].get_ydata(), alpha_bar.numpy())
    np.testing.assert_allclose(ax_snr.lines[0].get_ydata(), torch.log(alpha_bar / (1 - alpha_bar)).numpy(), rtol=1e-9)
    # schedulers are accepted too
    assert len(viz.plot_schedules({"ddpm": DDPMScheduler()}).axes[0].lines) == 1


def test_plot_loss_smoothing():
    losses = [1.0, 3.0] * 50
    fig = viz.plot_loss(losses, smooth=2)
    raw, smooth = fig.axes[0].lines
    np.testing.assert_array_equal(raw.get_ydata(), losses)
    np.testing.assert_allclose(smooth.get_ydata()[1:], 2.0)  # the mean of every 2 neighbours
    assert viz.plot_loss([0.5]).axes[0].lines[1].get_ydata()[0] == 0.5  # fewer steps than the window
    with pytest.raises(ValueError, match="empty"):
        viz.plot_loss([])


def test_moving_average():
    np.testing.assert_allclose(viz.moving_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])


# ---------------------------------------------------------------------------- reverse process
@pytest.mark.parametrize("num_keep, steps, expected", [(4, 10, [0, 3, 6, 9]), (8, 5, [0, 1, 2, 3, 4]), (1, 6, [0])])
def test_recorder_even_spacing_includes_first_and_last(num_keep, steps, expected):
    rec = viz.TrajectoryRecorder(num_keep=num_keep)
    got = rec.steps_to_keep(steps)
    assert got == expected
    if num_keep > 1:
        assert got[0] == 0 and got[-1] == steps - 1


def test_recorder_with_pipeline_keeps_listed_steps(tiny_pipe):
    rec = viz.TrajectoryRecorder(keep_steps=[0, 2, -1])
    out = tiny_pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                    output_type="pt", callback_on_step_end=rec, progress=False)
    assert [f["i"] for f in rec.frames] == [0, 2, 4]
    timesteps = tiny_pipe.scheduler.timesteps.tolist()
    assert [f["t"] for f in rec.frames] == [timesteps[0], timesteps[2], timesteps[4]]
    for f in rec.frames:
        for key in ("x_t", "model_output", "x0_pred", "x_prev"):
            assert f[key].shape == (2, 1, 8, 8) and f[key].device.type == "cpu"
    # the last kept x_prev is the pipeline's output, and x0_pred follows eq. 15 (then clipped)
    torch.testing.assert_close(((rec.frames[-1]["x_prev"] + 1) / 2).clamp(0, 1), out.images)
    f = rec.frames[1]
    ab = tiny_pipe.scheduler.alphas_cumprod[f["t"]]
    x0_pred = ((f["x_t"] - (1 - ab).sqrt() * f["model_output"]) / ab.sqrt()).clamp(-1, 1)
    torch.testing.assert_close(f["x0_pred"], x0_pred)
    # a second call starts a fresh recording
    tiny_pipe(batch_size=1, num_inference_steps=4, generator=torch.Generator().manual_seed(1),
              output_type="pt", callback_on_step_end=rec, progress=False)
    assert [f["i"] for f in rec.frames] == [0, 2, 3] and rec.frames[0]["x_t"].shape[0] == 1


def test_recorder_rejects_out_of_range_steps(tiny_pipe):
    rec = viz.TrajectoryRecorder(keep_steps=[7])
    with pytest.raises(ValueError, match="outside the loop"):
        tiny_pipe(batch_size=1, num_inference_steps=5, callback_on_step_end=rec, progress=False, output_type="pt")


def test_plot_trajectory_and_gif(tiny_pipe, tmp_path):
    rec = viz.TrajectoryRecorder(num_keep=4)
    tiny_pipe(batch_size=3, num_inference_steps=8, generator=torch.Generator().manual_seed(0),
              output_type="pt", callback_on_step_end=rec, progress=False)
    assert [f["i"] for f in rec.frames] == [0, 2, 5, 7]

    fig = viz.plot_trajectory(rec, sample=1)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 4
    # row 0 is x_t, row 1 the noise / 3, row 2 x0_pred, all of sample 1
    axes = np.array(fig.axes).reshape(3, 4)
    f = rec.frames[2]
    np.testing.assert_array_equal(axes[0, 2].images[0].get_array(), ((f["x_t"][1, 0] + 1) / 2).clamp(0, 1).numpy())
    noise_shown = ((f["model_output"][1, 0] / 3).clamp(-1, 1) + 1) / 2
    np.testing.assert_allclose(axes[1, 2].images[0].get_array(), noise_shown.numpy(), atol=1e-7)
    np.testing.assert_array_equal(axes[2, 2].images[0].get_array(), ((f["x0_pred"][1, 0] + 1) / 2).clamp(0, 1).numpy())
    assert axes[0, 3].get_title() == f"i=7, t={rec.frames[3]['t']}"

    path = viz.denoising_gif(rec, tmp_path / "sub" / "denoise.gif", fps=10, scale=2)
    with Image.open(path) as gif:
        assert gif.n_frames == len(rec.frames) + 1  # every kept x_t, then the finished sample
        assert gif.size == (2 * (3 * 9 + 1), 2 * (8 + 2))  # three samples in a row, enlarged twice
        assert gif.info["loop"] == 0
    path = viz.denoising_gif([f["x0_pred"] for f in rec.frames], tmp_path / "x0.gif", sample=0)
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (32, 32)


def test_trajectory_errors_are_clear():
    with pytest.raises(ValueError, match="callback_on_step_end"):
        viz.plot_trajectory(viz.TrajectoryRecorder())
    with pytest.raises(ValueError, match="Nothing to animate"):
        viz.denoising_gif([], "/tmp/never.gif")


def test_every_figure_renders(tiny_pipe):
    """Drawing (not just building) each figure: catches bad LaTeX in labels and layout errors."""
    import io

    rec = viz.TrajectoryRecorder(num_keep=2)
    tiny_pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
              output_type="pt", callback_on_step_end=rec, progress=False)
    sched = DDPMScheduler()
    figures = [viz_images.show_images(images(b=2), title="$x_0$"), viz.forward_strip(images(b=1), sched, [0, 999], title="s"),
               viz.plot_schedules({"linear": sched.betas}), viz.plot_loss([1.0, 0.5, 0.25]), viz.plot_trajectory(rec)]
    for fig in figures:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_are_not_left_open_in_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    viz_images.show_images(images(b=2))
    viz.plot_loss([1.0, 0.5])
    assert plt.get_fignums() == before  # returned figures are closed: no leak, no double display in Jupyter


def test_show_gif_reaches_the_html_page(tmp_path):
    """Issue 17: IPython's Image of a GIF showed in nbconvert's HTML page as '<IPython.core.display.Image object>'.
    show_gif gives HTML (a data URI), which Jupyter and the HTML page both render."""
    import base64

    import pytest
    from nbconvert import HTMLExporter
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from sdlearn.viz import show_gif

    path = tmp_path / "a.gif"
    from PIL import Image as PILImage
    PILImage.new("L", (4, 4)).save(path, save_all=True, append_images=[PILImage.new("L", (4, 4), 255)])
    html = show_gif(path)._repr_html_()
    assert html.startswith('<img src="data:image/gif;base64,')
    assert base64.b64decode(html.split(",", 1)[1].split('"')[0]) == path.read_bytes()
    cell = new_code_cell("display(gif)", outputs=[new_output("display_data", data={"text/html": html,
                                                                                     "text/plain": "<gif>"})])
    body, _ = HTMLExporter().from_notebook_node(new_notebook(cells=[cell]))
    assert "data:image/gif;base64," in body
    with pytest.raises(ValueError, match="not a GIF"):
        show_gif(tmp_path.joinpath("x.png").write_bytes(b"\x89PNG") and tmp_path / "x.png")

