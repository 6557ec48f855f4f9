"""Viewers: every tensor of the diffusion process as a picture.

What each function draws, in the course's notation (Ho et al. 2020, "DDPM"):
- noising_frames / forward_strip / noising_frame / noise_slider: the forward process in closed form,
  eq. 4:  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  eps ~ N(0, I),
  with one fixed eps per image, so only t changes from picture to picture.
- plot_schedules: beta_t, alpha_bar_t = prod_{s<=t} (1 - beta_s) and log SNR(t) = log(alpha_bar_t / (1 - alpha_bar_t)).
- plot_loss: the training loss L_simple (eq. 14), raw and smoothed.
- TrajectoryRecorder / plot_trajectory / denoising_gif: the reverse process (Algorithm 2), showing x_t,
  the predicted noise eps_theta(x_t, t) and the predicted clean image x0_pred (eq. 15) at chosen steps.

Display conventions (images in [-1, 1], gray or RGB, noise as eps / 3): ``sdlearn.viz.images``.

Every plotting function returns a ``matplotlib.figure.Figure`` that is already closed in pyplot, so
nothing is left open in pyplot's global list and nothing is shown twice; no function calls
``plt.show()``. In Jupyter the returned Figure displays itself (as the cell's value, or with
``display(fig)``); in a script call ``fig.savefig("name.png")``. Any backend works (Agg included).
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from .images import (_as_batch, _check_channels, _imshow, _new_figure, _png_bytes, _to_pil, channel_grid, image_grid,
                     noise_to_display, to_display)


# ---------------------------------------------------------------------------- forward process
def _single(x: torch.Tensor, name: str) -> torch.Tensor:
    """(C, H, W) or (1, C, H, W) -> (1, C, H, W)."""
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"{name} must be one image, (C, H, W) or (1, C, H, W); got {tuple(x.shape)}.")
    return x


def noising_frames(x0: torch.Tensor, scheduler, timesteps: Sequence[int], eps: torch.Tensor) -> torch.Tensor:
    """x_t for one image at each t in ``timesteps``, all with the same eps (eq. 4, via scheduler.add_noise).

    x0, eps: (C, H, W) or (1, C, H, W). Returns (len(timesteps), C, H, W). Pure: no random draws.
    """
    x0, eps = _single(x0, "x0"), _single(eps, "eps")
    if x0.shape != eps.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must have the same shape.")
    t = torch.as_tensor(list(timesteps), dtype=torch.long, device=x0.device)  # (N,)
    n = t.numel()
    # x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, one row per t
    return scheduler.add_noise(x0.expand(n, -1, -1, -1), eps.expand(n, -1, -1, -1), t)  # (N, C, H, W)


def noising_frame(x0: torch.Tensor, eps: torch.Tensor, t: int, scheduler) -> np.ndarray:
    """What the slider draws at step t: x_t = add_noise(x0, eps, t) mapped to [0, 1], as (H, W, C).

    x0, eps: one image (C, H, W) / (1, C, H, W), or a batch (B, C, H, W), which is drawn as one row
    (with 1-pixel white padding). Pure: the same inputs give the same pixels.
    """
    x0 = x0.unsqueeze(0) if x0.ndim == 3 else x0
    eps = eps.unsqueeze(0) if eps.ndim == 3 else eps
    if x0.shape != eps.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must have the same shape.")
    timesteps = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=x0.device)
    x_t = scheduler.add_noise(x0, eps, timesteps)  # (B, C, H, W), eq. 4
    if x_t.shape[0] == 1:
        _check_channels(x_t, "noising_frame")
        return to_display(x_t[0]).permute(1, 2, 0).cpu().numpy()  # (H, W, C) in [0, 1]
    return image_grid(x_t, nrow=x_t.shape[0])


def _draw_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """eps ~ N(0, I) shaped like ``like``, drawn on the generator's device (CPU by default) for reproducibility."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(like.shape, generator=generator, device=gen_device).to(like.device, like.dtype)


def forward_strip(x0: torch.Tensor, scheduler, timesteps: Sequence[int], generator: torch.Generator | None = None,
                  title: str | None = None) -> Figure:
    """Images dissolving into noise: rows = images of x0 (B, C, H, W), columns = t in ``timesteps``.

    Each row uses one eps for all its columns (eq. 4), so the only thing changing along a row is t.
    Column labels give t and sqrt(alpha_bar_t), the share of x_0 left in x_t.
    """
    x0 = _as_batch(x0, "x0")
    timesteps = [int(t) for t in timesteps]
    if not timesteps:
        raise ValueError("timesteps is empty: pass the t values to show, e.g. [0, 100, 250, 500, 999].")
    eps = _draw_noise(x0, generator)  # (B, C, H, W)
    rows = [noising_frames(x0[b], scheduler, timesteps, eps[b]) for b in range(x0.shape[0])]
    frames = torch.cat(rows)  # (B * N, C, H, W), row-major: image b at column j is b * N + j
    padding = 1
    grid = image_grid(frames, nrow=len(timesteps), padding=padding)
    H, W = x0.shape[-2:]
    fig = _new_figure(1.0 + 0.9 * len(timesteps), 0.6 + 0.9 * x0.shape[0])
    ax = fig.add_subplot()
    _imshow(ax, grid)
    centres = [padding + j * (W + padding) + (W - 1) / 2 for j in range(len(timesteps))]
    alpha_bar = scheduler.alphas_cumprod.cpu()
    ax.set_xticks(centres, [f"t={t}\n{alpha_bar[t].sqrt():.2f}" for t in timesteps], fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel(r"t  and  $\sqrt{\bar\alpha_t}$ (share of $x_0$ in $x_t$)", fontsize=9)
    if title:
        ax.set_title(title)
    return fig


def noise_slider(x0: torch.Tensor, scheduler, generator: torch.Generator | None = None, scale: int = 6,
                 play_step: int = 10, interval_ms: int = 60):
    """An ipywidgets viewer of q(x_t | x_0): a Play button and a slider over t = 0..T-1.

    x0: one image (C, H, W) or a small batch (B, C, H, W) shown as a row. eps is drawn once (from
    ``generator``) and kept, so moving the slider only changes t. The drawing is
    :func:`noising_frame`, a plain function that the tests compare with ``scheduler.add_noise``.
    Needs a live Jupyter kernel: in a static page the widget does not move.
    """
    import ipywidgets as widgets

    x0 = x0.unsqueeze(0) if x0.ndim == 3 else x0
    eps = _draw_noise(x0, generator)
    T = len(scheduler.alphas_cumprod)
    alpha_bar = scheduler.alphas_cumprod.cpu()

    def caption(t: int) -> str:
        ab = float(alpha_bar[t])
        return (f"t = {t}:  sqrt(alpha_bar_t) = {ab ** 0.5:.3f},  sqrt(1 - alpha_bar_t) = {(1 - ab) ** 0.5:.3f},  "
                f"SNR = {ab / (1 - ab):.3g}")

    image = widgets.Image(value=_png_bytes(noising_frame(x0, eps, 0, scheduler), scale), format="png")
    label = widgets.Label(caption(0))
    slider = widgets.IntSlider(value=0, min=0, max=T - 1, step=1, description="t", continuous_update=True)
    play = widgets.Play(value=0, min=0, max=T - 1, step=play_step, interval=interval_ms, description="Play")
    widgets.jslink((play, "value"), (slider, "value"))  # the Play button moves the slider in the browser

    def redraw(change) -> None:
        t = int(change["new"])
        image.value = _png_bytes(noising_frame(x0, eps, t, scheduler), scale)
        label.value = caption(t)

    slider.observe(redraw, names="value")
    return widgets.VBox([widgets.HBox([play, slider]), image, label])


# ---------------------------------------------------------------------------- schedules and losses
def plot_schedules(betas_by_name: dict) -> Figure:
    """Three panels per schedule: beta_t (log scale), alpha_bar_t, and log SNR(t) (natural log).

    Values may be betas tensors (T,) or schedulers (their ``.betas`` is used).
    alpha_bar_t = prod_{s<=t} (1 - beta_s);  SNR(t) = alpha_bar_t / (1 - alpha_bar_t); log SNR = 0 where
    signal and noise have equal power.
    """
    if not betas_by_name:
        raise ValueError("betas_by_name is empty: pass e.g. {'linear': make_betas('linear')}.")
    fig = _new_figure(12, 3.4)
    ax_beta, ax_ab, ax_snr = fig.subplots(1, 3)
    for name, betas in betas_by_name.items():
        betas = getattr(betas, "betas", betas)
        betas = torch.as_tensor(betas).detach().double().cpu()  # (T,)
        alpha_bar = torch.cumprod(1 - betas, dim=0)  # alpha_bar_t
        log_snr = torch.log(alpha_bar) - torch.log1p(-alpha_bar)  # log(alpha_bar / (1 - alpha_bar))
        t = np.arange(len(betas))
        ax_beta.plot(t, betas.numpy(), label=name)
        ax_ab.plot(t, alpha_bar.numpy(), label=name)
        ax_snr.plot(t, log_snr.numpy(), label=name)
    ax_beta.set(title=r"$\beta_t$", xlabel="t", yscale="log")
    ax_ab.set(title=r"$\bar\alpha_t=\prod_{s\leq t}(1-\beta_s)$", xlabel="t", ylim=(-0.02, 1.02))
    ax_snr.axhline(0.0, color="gray", lw=0.8, ls="--")
    ax_snr.set(title=r"$\log\,\mathrm{SNR}(t)=\log\frac{\bar\alpha_t}{1-\bar\alpha_t}$", xlabel="t")
    for ax in (ax_beta, ax_ab, ax_snr):
        ax.grid(alpha=0.3)
    ax_ab.legend(loc="lower left")  # the corner the falling curves leave empty
    return fig


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (shorter at the start); same length as values."""
    v = np.asarray(values, dtype=np.float64)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    start = np.maximum(idx - window, 0)
    return (c[idx] - c[start]) / (idx - start)


def plot_loss(losses: Sequence[float], smooth: int = 50, title: str = "training loss (L_simple, eq. 14)") -> Figure:
    """Loss per step (faint) and its moving average over ``smooth`` steps (bold), log y axis."""
    losses = np.asarray([float(v) for v in losses], dtype=np.float64)
    if losses.size == 0:
        raise ValueError("losses is empty: train for at least one step (TrainResult.losses) before plotting.")
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1 step, got {smooth}.")
    fig = _new_figure(6.5, 3.4)
    ax = fig.add_subplot()
    steps = np.arange(len(losses))
    ax.plot(steps, losses, alpha=0.3, lw=0.8, label="per step")
    window = min(smooth, len(losses))
    ax.plot(steps, moving_average(losses, window), lw=2, label=f"mean of last {window}")
    if (losses > 0).all():
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


# ---------------------------------------------------------------------------- reverse process
class TrajectoryRecorder:
    """Keep x_t, the model output and x0_pred at chosen steps of a sampling loop.

    Pass it as ``callback_on_step_end`` to a pipeline (``pipe(..., callback_on_step_end=recorder)``).
    It keeps the loop indices i (0 = first step, from pure noise) in ``keep_steps`` (negative counts
    from the end, -1 = the last step), or, when ``keep_steps`` is None, ``num_keep`` indices evenly
    spaced from the first step to the last, both included. ``frames`` holds one dict per kept step:
    {"i", "t", "x_t", "model_output", "x0_pred", "x_prev"} with CPU tensors (B, C, H, W).
    A new pipeline call (i = 0 again) starts a fresh recording.
    """

    def __init__(self, keep_steps: Iterable[int] | None = None, num_keep: int = 8):
        if keep_steps is None and num_keep < 1:
            raise ValueError(f"num_keep must be >= 1, got {num_keep}.")
        self.keep_steps = None if keep_steps is None else [int(i) for i in keep_steps]
        self.num_keep = num_keep
        self.frames: list[dict] = []
        self.num_steps: int | None = None
        self._keep: set[int] = set()

    def steps_to_keep(self, num_steps: int) -> list[int]:
        """The loop indices this recorder keeps in a loop of ``num_steps`` steps (sorted)."""
        if self.keep_steps is None:
            n = min(self.num_keep, num_steps)
            return sorted({int(round(v)) for v in np.linspace(0, num_steps - 1, n)})
        keep = []
        for i in self.keep_steps:
            j = i + num_steps if i < 0 else i
            if not 0 <= j < num_steps:
                raise ValueError(
                    f"keep_steps has index {i}, outside the loop's steps 0..{num_steps - 1} "
                    f"(or -{num_steps}..-1); pick indices of the loop, not timesteps t."
                )
            keep.append(j)
        return sorted(set(keep))

    def __call__(self, pipe, i: int, t, info: dict):
        if i == 0 or self.num_steps is None:
            self.num_steps = len(pipe.scheduler.timesteps)  # the loop runs over scheduler.timesteps
            self._keep = set(self.steps_to_keep(self.num_steps))
            self.frames = []
        if i in self._keep:
            frame = {"i": int(i), "t": t}
            for key in ("x_t", "model_output", "x0_pred", "x_prev"):
                if key in info:
                    frame[key] = info[key].detach().to("cpu", copy=True)
            self.frames.append(frame)
        return info  # diffusers' callbacks return their keyword dict; returning it unchanged is harmless

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        kept = [f["i"] for f in self.frames]
        return f"TrajectoryRecorder(num_steps={self.num_steps}, kept steps={kept})"


def _frame_image(x: torch.Tensor, sample: int | None) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (H, W, C) in [0, 1]: one sample, or all of them in a row."""
    if sample is not None:
        x = x[sample : sample + 1]
    if x.shape[1] not in (1, 3):
        return channel_grid(x)
    if x.shape[0] == 1:
        return to_display(x[0]).permute(1, 2, 0).numpy()
    return image_grid(x, nrow=x.shape[0])


def plot_trajectory(recorder, sample: int = 0) -> Figure:
    """The reverse process at the recorded steps: rows x_t, predicted noise, x0_pred; one column per step.

    x_t and x0_pred are shown like images ((x + 1) / 2, clamped); the predicted noise as eps / 3
    (see :func:`noise_to_display`).
    """
    frames = recorder.frames if isinstance(recorder, TrajectoryRecorder) else list(recorder)
    if not frames:
        raise ValueError("The recorder has no frames: pass it as callback_on_step_end to a pipeline call first.")
    B = frames[0]["x_t"].shape[0]
    if not -B <= sample < B:
        raise ValueError(f"sample {sample} is out of range for a batch of {B}.")
    rows = [("$x_t$", "x_t", lambda x: x),
            (r"predicted noise $\epsilon_\theta$ (/3)", "model_output", noise_to_display),
            (r"predicted $\hat x_0$ (eq. 15)", "x0_pred", lambda x: x)]
    n = len(frames)
    fig = _new_figure(1.2 + 1.3 * n, 4.4)
    axes = np.asarray(fig.subplots(3, n, squeeze=False))
    for j, frame in enumerate(frames):
        for r, (label, key, prepare) in enumerate(rows):
            ax = axes[r, j]
            _imshow(ax, _frame_image(prepare(frame[key]), sample))
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
        axes[0, j].set_title(f"i={frame['i']}, t={frame['t']}", fontsize=8)
    return fig


def denoising_gif(recorder_or_frames, path: str | os.PathLike, fps: int = 8, sample: int | None = None,
                  scale: int = 4, hold_last_s: float = 1.0) -> str:
    """Write an animated GIF of the denoising (Pillow) and return its path.

    From a TrajectoryRecorder (or its ``frames``): one GIF frame per kept step showing x_t, then one
    last frame with the result of the last kept step (its x_prev; the finished sample when the last
    step was kept), held ``hold_last_s`` seconds: len(frames) + 1 frames. From a list of tensors
    (B, C, H, W) or (C, H, W) in [-1, 1]: one GIF frame per tensor. ``sample=None`` draws the whole
    batch in a row, an int draws that sample. Pixels are enlarged ``scale`` times.
    """
    if isinstance(recorder_or_frames, TrajectoryRecorder):
        items = recorder_or_frames.frames
    else:
        items = list(recorder_or_frames)
    if not items:
        raise ValueError("Nothing to animate: record a sampling loop first "
                         "(a TrajectoryRecorder passed as callback_on_step_end).")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}.")
    if isinstance(items[0], dict):
        tensors = [f["x_t"] for f in items]
        if "x_prev" in items[-1]:
            tensors.append(items[-1]["x_prev"])  # the finished (or least noisy) sample
    else:
        tensors = [torch.as_tensor(x) for x in items]
    images = [_to_pil(_frame_image(_as_batch(x, "frame"), sample), scale) for x in tensors]
    mode = images[0].mode
    images = [im.convert(mode) for im in images]
    frame_ms = int(round(1000 / fps))
    durations = [frame_ms] * (len(images) - 1) + [max(frame_ms, int(hold_last_s * 1000))]
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path
