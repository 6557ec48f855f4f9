"""Memory savers for large images: attention in slices, and the VAE's decoder over overlapping tiles.

- ``SlicedAttnProcessor``: the same softmax(Q K^T / sqrt(d)) V, computed for a few (batch x head) rows at a time,
  so only those rows' (T_q, T_k) score matrices exist at once (diffusers' ``enable_attention_slicing``). The result
  is the same up to float rounding; the peak memory of the scores falls by the number of slices.
- ``tiled_decode``: decode latents in overlapping square tiles and blend them with linear ramps where they overlap
  (the idea of diffusers' ``enable_vae_tiling``). The decoder's memory then grows with the tile, not the image: a
  1024x1024 image decodes as 512x512 tiles. Not the same image as one decode (each tile's decoder sees only its
  tile, and the middle block's self-attention is global), which the ramps hide at the seams.
"""

from __future__ import annotations

import torch


class SlicedAttnProcessor:
    """Attention computed ``slice_size`` (batch x head) rows at a time (see the module docstring)."""

    def __init__(self, slice_size: int):
        if int(slice_size) < 1:
            raise ValueError(f"slice_size must be a whole number >= 1 of (batch x head) rows, got {slice_size!r}.")
        self.slice_size = int(slice_size)

    def __call__(self, attn, q, k, v, attention_mask=None) -> torch.Tensor:
        B, H, T, d = q.shape
        q2, k2, v2 = (x.reshape(B * H, x.shape[2], d) for x in (q, k, v))
        mask = None
        if attention_mask is not None:
            mask = attention_mask.expand(B, H, T, k.shape[2]).reshape(B * H, T, k.shape[2])
        out = torch.empty_like(q2)
        for start in range(0, B * H, self.slice_size):
            rows = slice(start, start + self.slice_size)
            scores = q2[rows] @ k2[rows].transpose(-1, -2) * d**-0.5  # (slice, T_q, T_k): Q K^T / sqrt(d)
            if mask is not None:
                scores = scores + mask[rows]
            out[rows] = scores.softmax(dim=-1) @ v2[rows]
        return out.view(B, H, T, d)


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one side: every ``stride``, the last one flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D blending weights of one tile: 1 inside, rising linearly over ``overlap`` pixels at an inner edge."""
    w = torch.ones(length)
    if overlap > 0:
        up = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)  # never 0: every pixel is covered
        if ramp_start:
            w[:overlap] = up
        if ramp_end:
            w[-overlap:] = up.flip(0)
    return w


def tiled_decode(decode, z: torch.Tensor, tile: int, overlap: float, factor: int) -> torch.Tensor:
    """``decode`` (latents -> images, ``factor`` pixels per latent) over ``tile`` x ``tile`` latent tiles overlapping
    by ``overlap`` of a tile, blended with linear ramps. Returns (B, C, h * factor, w * factor)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap is a share of a tile in [0, 1), got {overlap}.")
    B, _, h, w = z.shape
    stride = max(1, round(tile * (1 - overlap)))
    ys, xs = _starts(h, tile, stride), _starts(w, tile, stride)
    out = weight = None
    for y0 in ys:
        for x0 in xs:
            piece = decode(z[:, :, y0:y0 + tile, x0:x0 + tile])  # (B, C, th * f, tw * f)
            if out is None:
                out = piece.new_zeros(B, piece.shape[1], h * factor, w * factor)
                weight = piece.new_zeros(1, 1, h * factor, w * factor)
            ph, pw = piece.shape[-2:]
            seam = round(tile * overlap) * factor  # the overlap in pixels
            wy = _ramp(ph, seam, y0 > 0, y0 + tile < h)
            wx = _ramp(pw, seam, x0 > 0, x0 + tile < w)
            window = (wy[:, None] * wx[None, :]).to(piece)
            Y, X = y0 * factor, x0 * factor
            out[:, :, Y:Y + ph, X:X + pw] += piece * window
            weight[:, :, Y:Y + ph, X:X + pw] += window
    return out / weight
