"""Tensors as pictures: the display conventions every viewer of the course shares.

- image_grid / show_images: a batch x_0 (B, C, H, W) in [-1, 1] as one picture; show_shapes adds captions.
- channel_grid: a latent's channels side by side, one gray picture per channel.

Display conventions (one place, used by every viewer):
- images and samples live in [-1, 1]; they are shown as (x + 1) / 2 clamped to [0, 1]
  (the same mapping as ``sdlearn.data.digits.to_unit_range`` and the pipelines' output);
- 1 channel is drawn in gray, 3 channels as RGB; other channel counts (4-channel latents in later
  chapters) are drawn one gray picture per channel with :func:`channel_grid`;
- predicted noise is not in [-1, 1] (it estimates eps ~ N(0, I)), so it is shown as eps / 3 clamped to
  [-1, 1]: +-3 standard deviations fill the gray range and the same gray means the same value in
  every column (see :func:`noise_to_display`).

Every plotting function returns a ``matplotlib.figure.Figure`` that is already closed in pyplot
(nothing is shown twice); in Jupyter it displays itself, in a script call ``fig.savefig("name.png")``.
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from matplotlib.figure import Figure

NOISE_DISPLAY_STD = 3.0  # predicted noise is shown as eps / 3: +-3 standard deviations span black..white


def to_display(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped: (x + 1) / 2. The single mapping every viewer uses."""
    return ((x.detach().float() + 1) / 2).clamp(0, 1)


def noise_to_display(eps: torch.Tensor, num_std: float = NOISE_DISPLAY_STD) -> torch.Tensor:
    """Map noise (about N(0, 1), not in [-1, 1]) into [-1, 1] for display: eps / num_std, clamped.

    A fixed scale (not each image's own min and max) keeps columns comparable: a predicted noise
    that shrinks towards zero looks grayer, instead of being stretched back to full contrast.
    """
    return (eps.detach().float() / num_std).clamp(-1, 1)


def _as_batch(images, name: str = "images") -> torch.Tensor:
    """Accept (B, C, H, W) or a single (C, H, W) image (tensor or array); return a float CPU (B, C, H, W)."""
    x = torch.as_tensor(images).detach().float().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(0)  # (1, C, H, W)
    if x.ndim != 4:
        raise ValueError(
            f"{name} must be shaped (B, C, H, W) (or (C, H, W) for one image), got {tuple(x.shape)}. "
            "Add the channel dimension of gray images with x.unsqueeze(1)."
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf; nothing sensible can be drawn. Check the model or sampler first.")
    return x


def _check_channels(x: torch.Tensor, what: str) -> None:
    c = x.shape[1]
    if c not in (1, 3):
        raise ValueError(
            f"{what} draws 1-channel (gray) or 3-channel (RGB) images, got C={c} in shape {tuple(x.shape)}. "
            "For latents or other multi-channel tensors, draw one picture per channel with "
            "sdlearn.viz.images.channel_grid(x) (or decode latents with the VAE first)."
        )


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile a batch (B, C, H, W) in [-1, 1] into one (H', W', C) float array in [0, 1].

    ``nrow`` images per row (as in torchvision's make_grid); ``padding`` pixels of ``pad_value``
    (1.0 = white) between and around the images. C must be 1 (kept as a trailing axis of size 1)
    or 3; see :func:`channel_grid` for anything else.
    """
    x = _as_batch(images)
    _check_channels(x, "image_grid")
    if nrow < 1 or padding < 0:
        raise ValueError(f"need nrow >= 1 and padding >= 0, got nrow={nrow}, padding={padding}.")
    x = to_display(x)  # (B, C, H, W) in [0, 1]
    B, C, H, W = x.shape
    ncol = min(nrow, B)  # images per row
    nrows = -(-B // ncol)  # ceil(B / ncol)
    grid = torch.full((C, nrows * (H + padding) + padding, ncol * (W + padding) + padding), float(pad_value))
    for k in range(B):
        r, c = divmod(k, ncol)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, top : top + H, left : left + W] = x[k]
    return grid.permute(1, 2, 0).numpy()  # (H', W', C)


def channel_grid(x: torch.Tensor, padding: int = 1, normalize: bool = True) -> np.ndarray:
    """One gray picture per channel: rows = samples, columns = channels; returns (H', W', 1) in [0, 1].

    For tensors that are not images, such as Stable Diffusion's 4-channel latents. With
    ``normalize`` each channel of each sample is stretched to its own [min, max]; otherwise
    values are taken to be in [-1, 1].
    """
    x = _as_batch(x, "x")
    B, C, H, W = x.shape
    flat = x.reshape(B * C, 1, H, W)  # (B*C, 1, H, W): every channel becomes a gray image
    if normalize:
        lo = flat.amin(dim=(1, 2, 3), keepdim=True)
        hi = flat.amax(dim=(1, 2, 3), keepdim=True)
        flat = (flat - lo) / (hi - lo).clamp_min(1e-8) * 2 - 1  # each channel to [-1, 1]
    return image_grid(flat, nrow=C, padding=padding)


def _imshow(ax, arr: np.ndarray) -> None:
    """Draw an (H, W, C) array in [0, 1]: gray for C = 1, RGB for C = 3; no ticks."""
    if arr.shape[-1] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(arr, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _new_figure(width: float, height: float) -> Figure:
    """A new Figure, already closed in pyplot: returned, never shown twice, never leaked.

    It is made through pyplot so that Jupyter's inline backend is loaded and displays the returned
    Figure; closing it at once removes it from pyplot's list of open figures (no leak, no second
    copy drawn at the end of the cell, no window from a script). Drawing and ``savefig`` still work.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(max(width, 1.0), max(height, 1.0)), layout="constrained")
    plt.close(fig)
    return fig


def show_images(images: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None) -> Figure:
    """Draw a batch (B, C, H, W) in [-1, 1] as a grid; returns the Figure (draws into ``ax`` if given)."""
    grid = image_grid(images, nrow=nrow)
    if ax is None:
        h, w = grid.shape[:2]
        inches_per_pixel = min(1.0 / 32, 10.0 / w)  # about an inch per 32-pixel image, at most 10 inches wide
        fig = _new_figure(w * inches_per_pixel + 0.2, h * inches_per_pixel + (0.5 if title else 0.2))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    _imshow(ax, grid)
    if title:
        ax.set_title(title)
    return fig


def _png_bytes(frame: np.ndarray, scale: int = 6) -> bytes:
    """(H, W, C) in [0, 1] -> PNG bytes, enlarged ``scale`` times with nearest-neighbour pixels."""
    import io

    img = _to_pil(frame, scale)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _to_pil(frame: np.ndarray, scale: int = 1):
    """(H, W, C) in [0, 1] -> a PIL image ("L" for gray, "RGB"), enlarged ``scale`` times (nearest)."""
    from PIL import Image

    arr8 = np.round(np.clip(frame, 0, 1) * 255).astype(np.uint8)
    img = Image.fromarray(arr8[..., 0]) if arr8.shape[-1] == 1 else Image.fromarray(arr8)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def show_shapes(images: torch.Tensor, captions: list[str] | None = None, nrow: int = 8):
    """Draw images (B, 3, H, W) in [-1, 1] as a grid, each with its caption below; returns the Figure."""
    if captions is None:
        return show_images(images, nrow=nrow)
    x = to_display(torch.as_tensor(images))  # (B, 3, H, W) in [0, 1]
    ncol = min(nrow, len(x))
    nrows = -(-len(x) // ncol)
    fig = _new_figure(1.6 * ncol, 1.9 * nrows)
    for i, (img, text) in enumerate(zip(x, captions)):
        ax = fig.add_subplot(nrows, ncol, i + 1)
        _imshow(ax, img.permute(1, 2, 0).numpy())
        ax.set_xlabel(textwrap.fill(text, 24), fontsize=6)
    return fig


class AnimatedImage:
    """A GIF that shows as a picture in Jupyter *and* in the HTML page nbconvert makes of the executed notebook.

    ``IPython.display.Image`` hands Jupyter the bytes as image/gif, which nbconvert's HTML page does not render: it
    shows the text "<IPython.core.display.Image object>" instead. This object gives HTML with the GIF inside
    (a data URI), which both render. ``display(show_gif(path))``.
    """

    def __init__(self, data: bytes, width: int | None = None):
        if not data.startswith((b"GIF87a", b"GIF89a")):
            raise ValueError("not a GIF: the data should start with 'GIF87a' or 'GIF89a' (write one with "
                             "sdlearn.viz.denoising_gif).")
        self.data, self.width = data, width

    def _repr_html_(self) -> str:
        import base64

        width = f' width="{self.width}"' if self.width else ""
        return f'<img src="data:image/gif;base64,{base64.b64encode(self.data).decode("ascii")}"{width}/>'


def show_gif(path, width: int | None = None) -> AnimatedImage:
    """The GIF at ``path`` as a displayable picture (see :class:`AnimatedImage`)."""
    with open(path, "rb") as f:
        return AnimatedImage(f.read(), width)


def figure_slider(figures: dict, description: str = "value", dpi: int = 80):
    """An ipywidgets viewer over pictures made in advance: {slider value: Figure}. Moving the slider shows that
    value's picture (nothing is recomputed, so it is instant in FAST mode). Returns a VBox [slider, image]; needs
    a live Jupyter kernel to move (a static HTML page keeps only the first picture: show a static grid beside it)."""
    import io

    import ipywidgets as widgets

    if not figures:
        raise ValueError("figures is empty: give {slider value: matplotlib Figure}.")
    pngs = {}
    for value, fig in figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        pngs[value] = buf.getvalue()
    values = list(pngs)
    slider = widgets.SelectionSlider(options=values, value=values[0], description=description,
                                     continuous_update=False, style={"description_width": "initial"})
    image = widgets.Image(value=pngs[values[0]], format="png")
    slider.observe(lambda change: setattr(image, "value", pngs[change["new"]]), names="value")
    return widgets.VBox([slider, image])
