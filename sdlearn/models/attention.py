"""Attention blocks for the UNet.

Self-attention (Vaswani et al. 2017, eq. 1): Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,
computed by ``torch.nn.functional.scaled_dot_product_attention``. In the UNet every pixel of a
feature map is a token: a (B, C, H, W) map becomes H*W tokens of C channels, so attention lets
far-apart parts of the image talk to each other (DDPM uses it at the 16x16 resolution).

Parameter names follow diffusers (``group_norm``, ``to_q``, ``to_k``, ``to_v``, ``to_out.0``)
so that weights move between the two libraries unchanged. Chapter 5 adds cross-attention, where
the keys and values come from a text encoder instead of the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttentionBlock(nn.Module):
    """GroupNorm -> multi-head self-attention over the H*W positions -> residual add."""

    def __init__(self, channels: int, head_dim: int | None, norm_groups: int, eps: float = 1e-5):
        super().__init__()
        head_dim = head_dim or channels  # None: a single head spanning all channels
        if channels % head_dim != 0:
            raise ValueError(f"channels ({channels}) must be divisible by attention head_dim ({head_dim}).")
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).view(B, C, H * W).transpose(1, 2)  # (B, HW, C): one token per pixel
        q, k, v = (split_heads(proj(h), self.heads) for proj in (self.to_q, self.to_k, self.to_v))  # (B, heads, HW, d)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, (B, heads, HW, d)
        h = self.to_out[0](merge_heads(h))  # (B, HW, C)
        return x + h.transpose(1, 2).reshape(B, C, H, W)  # residual


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads*d) -> (B, heads, T, d)"""
    B, T, C = x.shape
    return x.view(B, T, heads, C // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, d) -> (B, T, heads*d)"""
    B, heads, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, heads * d)
