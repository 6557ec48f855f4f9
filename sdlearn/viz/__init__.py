"""Viewers: every tensor of the course as a picture, one module per theme.

- ``images``: the display conventions every viewer shares (grids, channels, noise as eps / 3).
- ``diffusion``: the forward process, schedules, the loss, the reverse trajectory and its GIF (chapters 1-2).
- ``vae``: reconstructions, latent channels, PCA-to-RGB latents, the KL sweep (chapter 3).
- ``latent``: the latent trajectory decoded step by step, the pixel-vs-latent cost (chapter 4).
- ``samplers``: timestep grids, samplers side by side, the quality-against-steps table, inversion (chapter 6).
- ``pipeline``: img2img strength sweeps, inpainting masks and results, the safety checker's flags (chapter 7).

The pictures every chapter uses (``images`` and ``diffusion``) are importable from here: ``viz.show_images``.
"""

from .diffusion import (
    TrajectoryRecorder,
    denoising_gif,
    forward_strip,
    moving_average,
    noise_slider,
    noising_frame,
    noising_frames,
    plot_loss,
    plot_schedules,
    plot_trajectory,
)
from .images import channel_grid, image_grid, noise_to_display, show_gif, show_images, show_shapes, to_display

__all__ = [
    "TrajectoryRecorder", "channel_grid", "denoising_gif", "forward_strip", "image_grid", "moving_average",
    "noise_slider", "noise_to_display", "noising_frame", "noising_frames", "plot_loss", "plot_schedules",
    "plot_trajectory", "show_gif", "show_images", "show_shapes", "to_display",
]
