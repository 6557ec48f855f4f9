"""Cross-attention maps drawn over the image: one panel per token (chapter 5).

Each panel is a token's map (``sdlearn.evaluation.attention_maps.cross_attention_maps``), upsampled to the image and
laid over it as a heat map: bright where the picture listened to that word at that step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from .images import _imshow, _new_figure


def plot_token_maps(image: torch.Tensor, maps: torch.Tensor, tokens: list[str], max_tokens: int | None = None,
                    title: str | None = None) -> Figure:
    """image (3, H, W) in [0, 1]; maps (T, h, w) for one prompt at one step; tokens: their strings. Panels for the
    start token, every word, and the first end token (the padding that follows repeats it)."""
    end = tokens.index("<|endoftext|>") + 1 if "<|endoftext|>" in tokens else len(tokens)
    keep = list(range(min(end, max_tokens or end)))
    fig = _new_figure(1.5 * (len(keep) + 1), 1.9)
    ax = fig.add_subplot(1, len(keep) + 1, 1)
    _imshow(ax, image.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xlabel("image", fontsize=7)
    H, W = image.shape[-2:]
    for n, t in enumerate(keep):
        m = F.interpolate(maps[t][None, None].float(), size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        m = (m - m.min()) / (m.max() - m.min()).clamp(min=1e-12)
        ax = fig.add_subplot(1, len(keep) + 1, n + 2)
        _imshow(ax, (image.permute(1, 2, 0).clamp(0, 1) * 0.35).numpy())
        ax.imshow(m.numpy(), cmap="inferno", alpha=0.65, extent=(-0.5, W - 0.5, H - 0.5, -0.5))
        ax.set_xlabel(tokens[t].replace("</w>", ""), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


def plot_guidance_direction(result: dict, title: str | None = None) -> Figure:
    """``sdlearn.evaluation.guidance.guidance_directions``'s record as one row per step: the clean image the
    unconditional, conditional and guided predictions imply, and |eps_cond - eps_uncond| (the norm over latent
    channels, upsampled to the image) drawn over the guided one."""
    steps = result["steps"]
    columns = ("x0 from eps_uncond", "x0 from eps_cond", "x0 guided", "|eps_cond - eps_uncond|")
    fig = _new_figure(1.7 * len(columns), 1.75 * len(steps) + 0.3)
    for row, (i, rec) in enumerate(steps.items()):
        H, W = rec["x0_guided"].shape[-2:]
        strength = rec["direction"].norm(dim=0)[None, None]  # (1, 1, h, w)
        strength = F.interpolate(strength, size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        for col, name in enumerate(columns):
            ax = fig.add_subplot(len(steps), len(columns), row * len(columns) + col + 1)
            if col < 3:
                _imshow(ax, rec[("x0_uncond", "x0_cond", "x0_guided")[col]].permute(1, 2, 0).numpy())
            else:
                _imshow(ax, (rec["x0_guided"].permute(1, 2, 0) * 0.35).numpy())
                ax.imshow(strength.numpy(), cmap="inferno", alpha=0.7, extent=(-0.5, W - 0.5, H - 0.5, -0.5))
            if row == len(steps) - 1:
                ax.set_xlabel(name, fontsize=7)
            if col == 0:
                ax.set_ylabel(f"step {i}\nt = {result['timesteps'][i]}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig
