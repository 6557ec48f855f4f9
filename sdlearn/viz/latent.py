"""Chapter 4's pictures: diffusion in a VAE's latent space, seen as latents and as images, and what it costs.

Latent diffusion (Rombach et al. 2022) runs the reverse process of DDPM on z_t (B, c, h, w), the scaled
latents z_0 = scaling_factor * E(x); an image exists only after decoding, x = D(z / scaling_factor).
The viewers show both side by side, at the steps a :class:`sdlearn.viz.diffusion.TrajectoryRecorder` kept:

- :func:`decode_trajectory`: one sample's z_t and predicted z_0 (x0_pred, DDPM eq. 15 on latents) at every
  kept step, and their decodings (``pipe.decode_latents``), computed once;
- :func:`plot_latent_trajectory`: columns = kept steps; rows = z_t, D(z_t), predicted z_0, D(predicted z_0);
- :func:`plot_latent_step` and :func:`latent_step_slider`: the same four pictures for one step, and an
  ipywidgets slider over the kept steps that redraws them;
- :func:`plot_cost_table`: the pixel-against-latent benchmark (``benchmarks/pixel_vs_latent.py``) as bars;
  its Markdown table is ``sdlearn.evaluation.pixel_vs_latent.markdown_table``.

Latents are drawn on a fixed scale, like noise in sdlearn.viz.diffusion: the scaled latents have about unit variance,
so z / 3 clamped to [-1, 1] (+-3 standard deviations span black..white), and the same grey means the same
value in every column. ``view="pca"`` draws the c channels as one RGB picture instead (the 3 principal
components of the channel vectors, ``sdlearn.viz.vae.pca_rgb``). Every function returns a matplotlib Figure
already closed in pyplot (sdlearn.viz.diffusion's convention): it displays itself in Jupyter; ``fig.savefig`` in a script.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from .vae import pca_rgb
from .diffusion import TrajectoryRecorder
from .images import _imshow, _new_figure, image_grid, noise_to_display

LATENT_VIEWS = ("channels", "pca")
LATENT_RANGE = 3.0  # scaled latents have about unit variance: +-3 standard deviations span the grey (or colour) range


@dataclass
class LatentFrames:
    """One sample's recorded latents and their decodings: what the latent viewers draw (CPU tensors)."""

    steps: list[int]  # loop index i of each kept step (0 = the first step, from pure noise)
    timesteps: list  # the timestep t of each kept step
    z_t: torch.Tensor  # (n, c, h, w): the latent the step started from
    x0_pred: torch.Tensor  # (n, c, h, w): the model's estimate of the clean latent z_0 at that step
    z_t_decoded: torch.Tensor  # (n, C, H, W) in [-1, 1]: D(z_t / scaling_factor)
    x0_pred_decoded: torch.Tensor  # (n, C, H, W) in [-1, 1]: D(x0_pred / scaling_factor)

    def __len__(self) -> int:
        return len(self.steps)


def _frames_of(recorder) -> list[dict]:
    frames = recorder.frames if isinstance(recorder, TrajectoryRecorder) else list(recorder)
    if not frames:
        raise ValueError("The recorder has no frames: pass it as callback_on_step_end to a pipeline call first, "
                         "e.g. pipe(batch_size=4, num_inference_steps=50, callback_on_step_end=recorder).")
    missing = [k for k in ("x_t", "x0_pred") if k not in frames[0]]
    if missing:
        raise ValueError(f"the recorded frames have no {missing}: record them with sdlearn.viz.diffusion.TrajectoryRecorder.")
    return frames


@torch.no_grad()
def decode_trajectory(recorder, pipe, sample: int = 0) -> LatentFrames:
    """Pick one sample of every kept step and decode its z_t and predicted z_0 (one batched decoder call).

    ``recorder``: a TrajectoryRecorder (or its ``frames``) filled by a latent pipeline's run; ``pipe``: anything
    with ``decode_latents(z)`` (scaled latents -> images in [-1, 1]), such as LatentDiffusionPipeline.
    """
    if isinstance(recorder, LatentFrames):
        return recorder
    frames = _frames_of(recorder)
    B = frames[0]["x_t"].shape[0]
    if not -B <= sample < B:
        raise ValueError(f"sample {sample} is out of range for a batch of {B}.")
    if frames[0]["x_t"].ndim != 4:
        raise ValueError(f"expected latents shaped (B, c, h, w), got {tuple(frames[0]['x_t'].shape)}.")
    z_t = torch.stack([f["x_t"][sample] for f in frames]).float().cpu()  # (n, c, h, w)
    x0_pred = torch.stack([f["x0_pred"][sample] for f in frames]).float().cpu()  # (n, c, h, w)
    decoded = pipe.decode_latents(torch.cat([z_t, x0_pred])).float().cpu()  # (2n, C, H, W): D(z / scaling_factor)
    n = len(frames)
    return LatentFrames(steps=[int(f["i"]) for f in frames], timesteps=[f["t"] for f in frames], z_t=z_t,
                        x0_pred=x0_pred, z_t_decoded=decoded[:n], x0_pred_decoded=decoded[n:])


def _channel_tile(z: torch.Tensor, channels: int) -> np.ndarray:
    """One latent (c, h, w) -> its first ``channels`` channels as grey pictures in a near-square tile, (H', W', 1).

    Fixed scale: z / 3 clamped to [-1, 1], so black is -3, mid grey 0, white +3 (scaled latents have about unit variance).
    """
    k = min(channels, z.shape[0])
    ncol = math.ceil(math.sqrt(k))  # 4 channels -> 2 x 2
    return image_grid(noise_to_display(z[:k], LATENT_RANGE).unsqueeze(1), nrow=ncol, padding=1)  # (k, 1, h, w) tiled


def _check_view(view: str, channels: int) -> None:
    if view not in LATENT_VIEWS:
        raise ValueError(f"view must be one of {LATENT_VIEWS}, got {view!r}.")
    if view == "channels" and channels < 1:
        raise ValueError(f"channels must be at least 1 (how many latent channels to draw), got {channels}.")


def _latent_pictures(frames: LatentFrames, view: str, channels: int) -> tuple[list, list]:
    """The z_t row and the predicted-z_0 row as (H', W', C) arrays in [0, 1], one per kept step."""
    if view == "channels":
        return ([_channel_tile(z, channels) for z in frames.z_t], [_channel_tile(z, channels) for z in frames.x0_pred])
    # One PCA for both rows (the same colour, the same vector), on values clamped to +-3 as in the channel view:
    # early predictions of z_0 are huge (eq. 15 divides by sqrt(alpha_bar_t) ~ 0.006) and would wash out the rest.
    rgb, _ = pca_rgb(torch.cat([frames.z_t, frames.x0_pred]).clamp(-LATENT_RANGE, LATENT_RANGE))
    n = len(frames)
    return list(rgb[:n]), list(rgb[n:])


def _image(x: torch.Tensor) -> np.ndarray:
    return image_grid(x.unsqueeze(0), padding=0)  # (C, H, W) in [-1, 1] -> (H, W, C) in [0, 1]


def _latent_label(view: str, channels: int, c: int) -> str:
    return "PCA of the channels as RGB" if view == "pca" else f"{min(channels, c)} channels, z / 3"


def plot_latent_trajectory(recorder, pipe, sample: int = 0, channels: int = 4, view: str = "channels") -> Figure:
    """The reverse process in latent space and in pixel space: one column per kept step, four rows:

    1. the latent z_t (its first ``channels`` channels, or with ``view="pca"`` one RGB picture of all of them);
    2. its decoding D(z_t / scaling_factor): what the noisy latent would look like as an image;
    3. the predicted clean latent z_0 (x0_pred, DDPM eq. 15 applied to latents);
    4. its decoding: the image the model is heading for at that step.
    """
    _check_view(view, channels)
    frames = decode_trajectory(recorder, pipe, sample)
    z_row, x0_row = _latent_pictures(frames, view, channels)
    c = frames.z_t.shape[1]
    label = _latent_label(view, channels, c)
    rows = [(f"$z_t$\n({label})", z_row), ("decoded $z_t$", [_image(x) for x in frames.z_t_decoded]),
            (f"predicted $\\hat z_0$\n({label})", x0_row),
            (r"decoded $\hat z_0$", [_image(x) for x in frames.x0_pred_decoded])]
    n = len(frames)
    fig = _new_figure(1.4 + 1.25 * n, 5.6)
    axes = np.asarray(fig.subplots(4, n, squeeze=False))
    for r, (name, pictures) in enumerate(rows):
        for j, picture in enumerate(pictures):
            _imshow(axes[r, j], picture)
        axes[r, 0].set_ylabel(name, fontsize=8)
    for j in range(n):
        axes[0, j].set_title(f"i={frames.steps[j]}, t={frames.timesteps[j]}", fontsize=8)
    h, w = frames.z_t.shape[-2:]
    H, W = frames.z_t_decoded.shape[-2:]
    fig.suptitle(f"latents ({c} x {h} x {w}) and their decodings ({frames.z_t_decoded.shape[1]} x {H} x {W})",
                 fontsize=9)
    return fig


def plot_latent_step(recorder, pipe, index: int, sample: int = 0, channels: int = 4, view: str = "channels") -> Figure:
    """One kept step (``index`` into the recorded steps, negative from the end): z_t, its decoding, the predicted
    z_0 and its decoding in a row. What :func:`latent_step_slider` draws; pass a :class:`LatentFrames`
    (from :func:`decode_trajectory`) as ``recorder`` to decode only once."""
    _check_view(view, channels)
    frames = decode_trajectory(recorder, pipe, sample)
    n = len(frames)
    if not -n <= index < n:
        raise ValueError(f"index {index} is out of range: {n} steps were recorded (0..{n - 1}).")
    index = index % n
    z_row, x0_row = _latent_pictures(frames, view, channels)
    label = _latent_label(view, channels, frames.z_t.shape[1])
    panels = [(f"$z_t$ ({label})", z_row[index]), ("decoded $z_t$", _image(frames.z_t_decoded[index])),
              (r"predicted $\hat z_0$", x0_row[index]), (r"decoded $\hat z_0$", _image(frames.x0_pred_decoded[index]))]
    fig = _new_figure(8.0, 2.5)
    axes = fig.subplots(1, 4)
    for ax, (title, picture) in zip(axes, panels):
        _imshow(ax, picture)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"step i = {frames.steps[index]} of the loop, t = {frames.timesteps[index]}", fontsize=9)
    return fig


def _png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def latent_step_slider(recorder, pipe, sample: int = 0, channels: int = 4, view: str = "channels", dpi: int = 80):
    """An ipywidgets viewer: an IntSlider over the recorded steps that redraws :func:`plot_latent_step`.

    The latents are decoded once, here; pictures are cached. Returns a VBox [slider, image]. Needs a live
    Jupyter kernel to move (a static page keeps only the first picture).
    """
    import ipywidgets as widgets

    _check_view(view, channels)
    frames = decode_trajectory(recorder, pipe, sample)
    cache: dict[int, bytes] = {}

    def png(index: int) -> bytes:
        if index not in cache:
            cache[index] = _png(plot_latent_step(frames, pipe, index, channels=channels, view=view), dpi)
        return cache[index]

    slider = widgets.IntSlider(value=0, min=0, max=len(frames) - 1, step=1, description="kept step",
                               continuous_update=False, style={"description_width": "initial"})
    image = widgets.Image(value=png(0), format="png")

    def redraw(change) -> None:
        image.value = png(int(change["new"]))

    slider.observe(redraw, names="value")
    return widgets.VBox([slider, image])


# ---------------------------------------------------------------------------- the cost of pixels
def _arm_label(arm: str, entry: dict) -> str:
    shape = entry.get("input_shape")
    if not shape:
        return arm
    return f"{arm}\n{'x'.join(map(str, shape))}\n{math.prod(shape):,} values"


def _bar_labels(ax, bars, texts) -> None:
    for bar, text in zip(bars, texts):
        if text:
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")


def plot_cost_table(results: dict) -> Figure:
    """The pixel-against-latent benchmark as four bar charts, one bar (group) per arm:

    training step time (cached latents, and with the encoder run inside the step; the ratio to the pixel step
    above each latent bar), 50 sampling steps of 16 images with decoding, peak memory (CUDA's peak allocation,
    or the process's ru_maxrss with the empty-process baseline dashed), and the share of well-formed samples
    after the same training budget (steps trained in the budget above each bar).
    ``results``: the JSON that ``benchmarks/pixel_vs_latent.py`` writes (``results["arms"]``).
    """
    arms = results.get("arms") or {}
    if not arms:
        raise ValueError("results has no 'arms': pass the JSON written by benchmarks/pixel_vs_latent.py "
                         "(benchmarks/results/pixel_vs_latent.json).")
    names = list(arms)
    entries = [arms[a] for a in names]
    x = np.arange(len(names))
    fig = _new_figure(9.0, 7.0)
    (ax_train, ax_sample), (ax_mem, ax_quality) = fig.subplots(2, 2)

    width = 0.38
    cached = [e.get("train_step_seconds", np.nan) for e in entries]
    encoding = [e.get("train_step_seconds_with_encoding", np.nan) for e in entries]
    bars = ax_train.bar(x - width / 2, cached, width, label="cached latents")
    _bar_labels(ax_train, bars, [f"{e['step_ratio_cached']:.1f}x" if "step_ratio_cached" in e else "" for e in entries])
    bars = ax_train.bar(x + width / 2, encoding, width, label="encoding in the step")
    _bar_labels(ax_train, bars, [f"{e['step_ratio_with_encoding']:.1f}x" if "step_ratio_with_encoding" in e else ""
                                 for e in entries])
    ax_train.set_ylabel("seconds")
    ax_train.set_title(f"one training step, batch {results.get('batch', '?')} (ratio to pixels)", fontsize=9)
    ax_train.legend(fontsize=7)

    ax_sample.bar(x, [e.get("sample_seconds", np.nan) for e in entries], color="tab:green")
    ax_sample.set_ylabel("seconds")
    ax_sample.set_title(f"sampling: {entries[0].get('sample_what', '?') if entries else '?'}", fontsize=9)

    cuda = any("cuda_peak_bytes" in e for e in entries)
    key = "cuda_peak_bytes" if cuda else "maxrss_bytes"
    ax_mem.bar(x, [e.get(key, np.nan) / 2**20 for e in entries], color="tab:purple")
    if not cuda and results.get("baseline_maxrss_bytes"):
        ax_mem.axhline(results["baseline_maxrss_bytes"] / 2**20, color="k", ls="--", lw=1,
                       label="a process doing nothing")
        ax_mem.legend(fontsize=7)
    ax_mem.set_ylabel("MiB")
    ax_mem.set_title("peak memory (" + ("CUDA allocated" if cuda else "process RSS") + ")", fontsize=9)

    quality = [e.get("quality") or {} for e in entries]
    if any("well_formed_share" in q for q in quality):
        bars = ax_quality.bar(x, [100 * q.get("well_formed_share", np.nan) for q in quality], color="tab:orange")
        _bar_labels(ax_quality, bars, [f"{q['train_steps_in_budget']} steps" if "train_steps_in_budget" in q else ""
                                       for q in quality])
        ax_quality.set_ylim(0, 110)
        budget = results.get("budget_seconds")
        ax_quality.set_ylabel("% well-formed")
        ax_quality.set_title("well-formed samples after " + (f"{budget:.0f} s of training" if budget is not None
                             else "the same training budget") + " (steps taken)", fontsize=9)
    else:
        ax_quality.text(0.5, 0.5, "quality not measured\n(the benchmark ran with --no-quality)", ha="center",
                        va="center", fontsize=8, transform=ax_quality.transAxes)
        ax_quality.set_title("quality after the same training budget", fontsize=9)
    for ax in (ax_train, ax_sample, ax_mem, ax_quality):
        ax.set_xticks(x, [_arm_label(a, e) for a, e in zip(names, entries)], fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        ax.set_axisbelow(True)
    machine = f" ({results['machine']})" if results.get("machine") else ""
    fig.suptitle(f"pixel against latent diffusion at 64 x 64 RGB, on {results.get('device', '?')}{machine}\n"
                 "under each arm: the UNet's input and its number of values", fontsize=10)
    return fig


__all__ = ["LatentFrames", "decode_trajectory", "plot_latent_trajectory", "plot_latent_step", "latent_step_slider",
           "plot_cost_table"]
