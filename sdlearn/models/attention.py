"""Attention: one class for self- and cross-attention, and the self-attention block of the UNet and the VAE.

Scaled dot-product attention (Vaswani et al. 2017, eq. 1): Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V.
- Self-attention: Q, K and V all come from the image's tokens. In a UNet every pixel of a feature map is a
  token: a (B, C, H, W) map becomes H*W tokens of C channels, so far-apart parts of the image talk to each other.
- Cross-attention (Rombach et al. 2022, eq. 3): Q = W_Q phi(z_t) from the image, K = W_K tau(y) and V = W_V tau(y)
  from the condition's tokens (a text encoder's output): every pixel asks which words concern it.

The arithmetic is done by an *attention processor* (diffusers' word): ``AttnProcessor`` calls
``torch.nn.functional.scaled_dot_product_attention``; ``AttentionStore`` computes the probabilities
softmax(Q K^T / sqrt(d)) explicitly and keeps them, so the chapter can draw where each word looks.
Parameter names follow diffusers (``to_q``, ``to_k``, ``to_v``, ``to_out.0``, ``group_norm``) so that
weights move between the two libraries unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads*d) -> (B, heads, T, d)"""
    B, T, C = x.shape
    return x.view(B, T, heads, C // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, d) -> (B, T, heads*d)"""
    B, heads, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, heads * d)


class AttnProcessor:
    """softmax(Q K^T / sqrt(d) + mask) V with torch's fused kernel (the default; nothing is kept)."""

    def __call__(self, attn: "Attention", q, k, v, attention_mask=None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)  # (B, heads, T_q, d)


class AttentionStore:
    """An attention processor that records the probabilities softmax(Q K^T / sqrt(d)) of every call.

    ``records`` gets one dict per call of a watched layer: ``{"step": self.step, "layer": name,
    "probs": (B, heads, T_q, T_k) on the CPU}``. Set ``step`` before each UNet call to tag the records
    (the pipelines' callback is a good place). ``cross_only`` (default) watches cross-attention layers only.
    The output equals AttnProcessor's up to float rounding (the same formula, computed step by step).
    """

    def __init__(self, cross_only: bool = True):
        self.cross_only = cross_only
        self.records: list[dict] = []
        self.step = None

    def __call__(self, attn: "Attention", q, k, v, attention_mask=None) -> torch.Tensor:
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, heads, T_q, T_k): Q K^T / sqrt(d)
        if attention_mask is not None:
            scores = scores + attention_mask  # additive: 0 keeps a key, a large negative value drops it
        probs = scores.softmax(dim=-1)  # each query's weights over the keys sum to 1
        if attn.is_cross_attention or not self.cross_only:
            self.records.append({"step": self.step, "layer": attn.layer_name, "probs": probs.detach().float().cpu()})
        return probs.to(v.dtype) @ v  # (B, heads, T_q, d)


class Attention(nn.Module):
    """Multi-head attention over token sequences (B, T, C): self-attention, or cross-attention when
    ``cross_attention_dim`` is given (keys and values then come from ``encoder_hidden_states``)."""

    def __init__(self, query_dim: int, cross_attention_dim: int | None = None, heads: int = 1,
                 dim_head: int | None = None, bias: bool = False, out_bias: bool = True):
        super().__init__()
        dim_head = dim_head or query_dim // heads
        inner = heads * dim_head
        self.heads = heads
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=out_bias), nn.Dropout(0.0)])
        self.processor = AttnProcessor()
        self.layer_name = ""  # set by the model that owns it (its module path), for AttentionStore's records

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (B, T, C) -> (B, T, C). Keys and values from ``encoder_hidden_states`` (B, T_k, C_k)
        for cross-attention; ``attention_mask``: additive, broadcastable to (B, heads, T, T_k)."""
        if self.is_cross_attention and encoder_hidden_states is None:
            raise ValueError("this is a cross-attention layer: pass encoder_hidden_states (the condition's tokens).")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = split_heads(self.to_q(hidden_states), self.heads)  # (B, heads, T, d)
        k = split_heads(self.to_k(context), self.heads)  # (B, heads, T_k, d)
        v = split_heads(self.to_v(context), self.heads)  # (B, heads, T_k, d)
        h = self.processor(self, q, k, v, attention_mask)  # (B, heads, T, d)
        return self.to_out[0](merge_heads(h))  # (B, T, C)


class SelfAttentionBlock(Attention):
    """GroupNorm -> multi-head self-attention over the H*W positions -> residual add (the UNet's and VAE's block)."""

    def __init__(self, channels: int, head_dim: int | None, norm_groups: int, eps: float = 1e-5):
        head_dim = head_dim or channels  # None: a single head spanning all channels
        if channels % head_dim != 0:
            raise ValueError(f"channels ({channels}) must be divisible by attention head_dim ({head_dim}).")
        super().__init__(channels, heads=channels // head_dim, dim_head=head_dim, bias=True)
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=eps)

    def forward(self, x: torch.Tensor, encoder_hidden_states=None, attention_mask=None) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W). The extra arguments are ignored: this block attends to the image only."""
        B, C, H, W = x.shape
        h = self.group_norm(x).view(B, C, H * W).transpose(1, 2)  # (B, HW, C): one token per pixel
        h = super().forward(h)  # (B, HW, C)
        return x + h.transpose(1, 2).reshape(B, C, H, W)  # residual


def set_attn_processor(model: nn.Module, processor) -> None:
    """Give every Attention layer of ``model`` this processor (and its module path as ``layer_name``)."""
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            module.processor = processor
            module.layer_name = name


def attn_processors(model: nn.Module) -> dict:
    """{module path: processor} of every Attention layer of ``model``."""
    return {name: m.processor for name, m in model.named_modules() if isinstance(m, Attention)}
