"""Shared fixtures for the sdlearn test suite.

Tests are kept small (tiny UNets, 4x4 to 16x16 images) so the whole suite runs in about a minute
on a 2-core CPU. Tests that compare against diffusers skip themselves when it is not installed
(``pip install sdlearn[test]`` brings it).
"""

from __future__ import annotations

import pytest
import torch

from sdlearn.models.unet_2d import UNet2DModel, UNetConfig

# A UNet small enough to run a forward pass in milliseconds: two levels (16 -> 8 pixels),
# attention at the lower one, GroupNorm with 4 groups.
TINY_UNET = UNetConfig(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    attention_head_dim=8,
    norm_num_groups=4,
)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds (deselect with -m 'not slow')")


@pytest.fixture
def tiny_unet_config() -> UNetConfig:
    return TINY_UNET


@pytest.fixture
def tiny_unet() -> UNet2DModel:
    """A freshly initialised tiny UNet with seeded weights, in eval mode."""
    torch.manual_seed(0)
    return UNet2DModel(TINY_UNET).eval()
