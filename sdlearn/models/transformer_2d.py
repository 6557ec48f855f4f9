"""The transformer block that Stable Diffusion's UNet puts at every attention site (Rombach et al. 2022, sec. 3.3).

    h = GroupNorm(x);  h = proj_in(h)                    # 1x1 conv (SD 1.x) or, use_linear_projection, a Linear (SD 2.x)
    tokens (B, HW, C), then for each BasicTransformerBlock:
        h = h + attn1(LayerNorm(h))                      # self-attention among the pixels
        h = h + attn2(LayerNorm(h), context)             # cross-attention: Q from pixels, K and V from the text
        h = h + ff(LayerNorm(h))                         # GEGLU feed-forward (Shazeer 2020)
    out = x + proj_out(h)                                # residual around the whole block

Module names follow diffusers' ``Transformer2DModel`` and ``BasicTransformerBlock`` (``norm``, ``proj_in``,
``transformer_blocks.i.attn1``, ``attn2``, ``ff.net.0.proj``, ``ff.net.2``, ``proj_out``), so SD weights load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020): proj(x) = [a, b];  a * GELU(b)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)  # (B, T, dim_out) each
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to 4x the width, dropout, back to the width (``net.0``, ``net.1``, ``net.2`` as diffusers)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, feed-forward; each pre-normalised (LayerNorm) with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head)  # Q, K, V from the pixels
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=dim_head)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, h: torch.Tensor, context: torch.Tensor, attention_mask=None) -> torch.Tensor:
        h = h + self.attn1(self.norm1(h))  # (B, HW, C)
        h = h + self.attn2(self.norm2(h), context, attention_mask)  # LDM eq. 3: softmax(Q K^T / sqrt(d)) V
        return h + self.ff(self.norm3(h))


class Transformer2DModel(nn.Module):
    """A feature map (B, C, H, W) in, the same shape out: the transformer blocks over its H*W pixel tokens."""

    def __init__(self, heads: int, dim_head: int, in_channels: int, cross_attention_dim: int, num_layers: int = 1,
                 norm_num_groups: int = 32, use_linear_projection: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)  # diffusers (and the LDM code) use 1e-6 here
        self.proj_in = nn.Linear(in_channels, inner) if use_linear_projection else nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim) for _ in range(num_layers)])
        self.proj_out = nn.Linear(inner, in_channels) if use_linear_projection else nn.Conv2d(inner, in_channels, 1)

    def forward(self, x: torch.Tensor, encoder_hidden_states: torch.Tensor, attention_mask=None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if not self.use_linear_projection:
            h = self.proj_in(h)  # 1x1 conv on the map
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, -1)  # (B, HW, inner): one token per pixel
        if self.use_linear_projection:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, encoder_hidden_states, attention_mask)
        if self.use_linear_projection:
            h = self.proj_out(h)
        h = h.reshape(B, H, W, -1).permute(0, 3, 1, 2)  # (B, C, H, W)
        if not self.use_linear_projection:
            h = self.proj_out(h)
        return x + h  # residual
