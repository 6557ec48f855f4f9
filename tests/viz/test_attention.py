"""sdlearn.viz.attention: cross-attention maps over the image, one panel per token."""

from __future__ import annotations

import torch


def test_plot_token_maps_draws_one_panel_per_word():
    from sdlearn.viz.attention import plot_token_maps

    tokens = ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "<|endoftext|>", "<|endoftext|>"]
    fig = plot_token_maps(torch.rand(3, 16, 16), torch.rand(6, 4, 4), tokens, title="step 10")
    assert len(fig.axes) == 1 + 5  # the image, then start, three words, one end token
    assert [ax.get_xlabel() for ax in fig.axes][1:] == ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]
