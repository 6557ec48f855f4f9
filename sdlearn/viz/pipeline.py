"""Chapter 7's pictures: what the Stable Diffusion pipelines do to an image, and what the safety checker says.

- :func:`plot_strength_sweep`: img2img (SDEdit) at several strengths, one row per image, the original first;
- :func:`plot_edit_sweep`: the measured sweep (share right, share in the new colour, centre kept) against strength,
  from ``sdlearn.evaluation.edits``;
- :func:`plot_inpainting`: originals with the mask's outline, and what inpainting painted there;
- :func:`plot_safety_flags`: images with the safety checker's verdict and cosine under each.

Images are (B, 3, H, W) in [-1, 1] (sdlearn.viz.images' convention); every function returns a closed Figure.
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .images import _imshow, _new_figure, to_display


def _pixels(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) in [0, 1]."""
    return to_display(x).permute(1, 2, 0).cpu().numpy()


def _batch(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().float().cpu()
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} should be RGB images shaped (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}.")
    return x


def plot_strength_sweep(originals: torch.Tensor, edits: dict, prompts: list[str] | None = None) -> Figure:
    """Rows: images; columns: the original, then its img2img edit at each strength (``edits``: strength ->
    (B, 3, H, W), in the order to show). ``prompts`` label the rows (the prompt each row was edited towards)."""
    originals = _batch(originals, "originals")
    edits = {s: _batch(x, f"edits[{s}]") for s, x in edits.items()}
    for s, x in edits.items():
        if x.shape != originals.shape:
            raise ValueError(f"edits at strength {s} are {tuple(x.shape)}; they must match the originals "
                             f"{tuple(originals.shape)}, one edit per original.")
    B, n = len(originals), len(edits) + 1
    fig = _new_figure(1.3 * n + 1.2, 1.35 * B + 0.4)
    axes = np.asarray(fig.subplots(B, n, squeeze=False))
    for r in range(B):
        _imshow(axes[r, 0], _pixels(originals[r]))
        for j, (s, x) in enumerate(edits.items(), start=1):
            _imshow(axes[r, j], _pixels(x[r]))
        if prompts is not None:
            axes[r, 0].set_ylabel(textwrap.fill(f'"{prompts[r]}"', 18), fontsize=7)
    axes[0, 0].set_title("original", fontsize=8)
    for j, s in enumerate(edits, start=1):
        axes[0, j].set_title(f"strength {s:g}", fontsize=8)
    return fig


def plot_edit_sweep(rows: list[dict], bar: float | None = None, max_shift_px: float = 4.0) -> Figure:
    """The strength sweep of ``sdlearn.evaluation.edits`` (its ``strength_sweep`` rows) as three curves."""
    if not rows:
        raise ValueError("no sweep rows to draw: run evaluate_colour_edits with sweep strengths.")
    fig = _new_figure(5.2, 3.2)
    ax = fig.add_subplot()
    s = [r["strength"] for r in rows]
    ax.plot(s, [r["right_share"] for r in rows], "o-", label=f"right: new colour, same shape, within {max_shift_px:g} px")
    ax.plot(s, [r["new_colour_share"] for r in rows], "s--", label="in the new colour")
    ax.plot(s, [r["centre_within_bar_share"] for r in rows], "^:", label=f"centre within {max_shift_px:g} px")
    if bar is not None:
        ax.axhline(bar, color="gray", lw=0.8)
    ax.set(xlabel="strength", ylabel=f"share of {rows[0]['n']} edits", ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def _box_of(mask: torch.Tensor) -> tuple[float, float, float, float] | None:
    """(x0, y0, width, height) of the mask's 1-region, in pixel-edge coordinates; None for an empty mask."""
    ys, xs = torch.nonzero(mask.reshape(mask.shape[-2:]) > 0.5, as_tuple=True)
    if len(ys) == 0:
        return None
    return xs.min().item() - 0.5, ys.min().item() - 0.5, xs.max().item() - xs.min().item() + 1, \
        ys.max().item() - ys.min().item() + 1


def plot_inpainting(images: torch.Tensor, masks: torch.Tensor, results: dict, prompts: list[str] | None = None,
                    verdicts: list[str] | None = None) -> Figure:
    """Columns: cases; rows: the image with the mask's box outlined (1 = repaint), then each entry of ``results``
    (name -> (B, 3, H, W)) with the same box. ``verdicts`` (one per case, "" = right) go under the first result."""
    images = _batch(images, "images")
    results = {k: _batch(v, f"results[{k!r}]") for k, v in results.items()}
    masks = torch.as_tensor(masks).detach().cpu()
    if masks.shape[0] != len(images) or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} should be one (1, H, W) mask per image {tuple(images.shape)}.")
    B, rows = len(images), [("image and mask", images), *results.items()]
    fig = _new_figure(1.35 * B + 0.8, 1.45 * len(rows) + 0.5)
    axes = np.asarray(fig.subplots(len(rows), B, squeeze=False))
    for r, (name, batch) in enumerate(rows):
        axes[r, 0].set_ylabel(name, fontsize=8)
        for c in range(B):
            _imshow(axes[r, c], _pixels(batch[c]))
            box = _box_of(masks[c])
            if box is not None:
                axes[r, c].add_patch(Rectangle(box[:2], box[2], box[3], fill=False, ec="white", lw=0.8, ls="--"))
    for c in range(B):
        if prompts is not None:
            axes[0, c].set_title(textwrap.fill(prompts[c], 22), fontsize=6)
        if verdicts is not None and len(rows) > 1:
            axes[1, c].set_xlabel(verdicts[c] or "right", fontsize=7, color="black" if not verdicts[c] else "red")
    return fig


def plot_safety_flags(images: torch.Tensor, captions: list[str], flags: list[bool],
                      cosines: list[float] | None = None, threshold: float | None = None,
                      nrow: int = 8) -> Figure:
    """Images with the caption they were asked for, and the checker's verdict (a red frame when flagged)."""
    images = _batch(images, "images")
    if not len(images) == len(captions) == len(flags):
        raise ValueError(f"{len(images)} images, {len(captions)} captions and {len(flags)} flags: give one each.")
    ncol = min(nrow, len(images))
    nrows = -(-len(images) // ncol)
    fig = _new_figure(1.6 * ncol, 2.0 * nrows + 0.3)
    for i, (x, caption, flagged) in enumerate(zip(images, captions, flags)):
        ax = fig.add_subplot(nrows, ncol, i + 1)
        _imshow(ax, _pixels(x))
        label = textwrap.fill(caption, 22) + ("\nFLAGGED" if flagged else "\nnot flagged")
        if cosines is not None:
            label += f"\ncos {cosines[i]:.3f}"
        ax.set_xlabel(label, fontsize=6, color="red" if flagged else "black")
        for side in ax.spines.values():
            side.set(color="red" if flagged else "gray", lw=2.5 if flagged else 0.5)
    if threshold is not None:
        fig.suptitle(f"flagged when the cosine with the concept exceeds its threshold {threshold:.3f}", fontsize=8)
    return fig
