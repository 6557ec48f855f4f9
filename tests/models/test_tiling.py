"""Attention slicing and VAE tiling: the same attention in slices; tiles blended so a local decoder is unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdlearn.models.attention import AttnProcessor
from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from sdlearn.models.tiling import SlicedAttnProcessor, tiled_decode


def test_sliced_attention_equals_the_fused_kernel_with_and_without_a_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 8, generator=g) for n in (10, 7, 7))
    mask = torch.zeros(2, 1, 1, 7)
    mask[..., -2:] = -1e4  # drop the last two keys
    for m in (None, mask):
        expected = AttnProcessor()(None, q, k, v, m)
        for size in (1, 3, 8):
            assert torch.allclose(SlicedAttnProcessor(size)(None, q, k, v, m), expected, atol=1e-5)
    with pytest.raises(ValueError, match="slice_size must be"):
        SlicedAttnProcessor(0)


def test_tiles_blend_back_to_the_untiled_result_for_a_local_decoder():
    """With a decoder that acts pixel by pixel (nearest upsampling), any tiling and overlap gives the same image:
    the ramps' weights sum out exactly."""
    z = torch.randn(1, 3, 11, 13, generator=torch.Generator().manual_seed(1))

    def local(latents):
        return F.interpolate(latents, scale_factor=4, mode="nearest")

    for tile, overlap in ((4, 0.25), (5, 0.5), (6, 0.0), (20, 0.25)):
        assert torch.allclose(tiled_decode(local, z, tile, overlap, 4), local(z), atol=1e-6)
    with pytest.raises(ValueError, match="overlap"):
        tiled_decode(local, z, 4, 1.0, 4)


def test_vae_tiling_decodes_large_latents_in_tiles_and_small_ones_whole():
    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderKLConfig(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                                            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                                            norm_num_groups=4, sample_size=8)).eval()
    small, large = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 10, 10)
    with torch.no_grad():
        whole_small, whole_large = vae.decode(small).sample, vae.decode(large).sample
        vae.enable_tiling()  # tiles of sample_size / f = 4 latents
        assert vae.tile_latent_size == 4
        assert torch.equal(vae.decode(small).sample, whole_small)  # fits in one tile: decoded whole
        tiled = vae.decode(large).sample
        vae.disable_tiling()
        assert torch.equal(vae.decode(large).sample, whole_large)
    assert tiled.shape == whole_large.shape and torch.isfinite(tiled).all()
    assert not torch.equal(tiled, whole_large)  # each tile's decoder sees only its tile
    with pytest.raises(ValueError, match="overlap"):
        vae.enable_tiling(overlap=1.5)


def test_the_pipeline_switches_both_on_and_off_and_slicing_keeps_the_image(tiny_sd_folder):
    from sdlearn.models.attention import Attention
    from sdlearn.pipelines import StableDiffusionPipeline

    _, folder = tiny_sd_folder
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    run = dict(num_inference_steps=2, output_type="np", progress=False)
    plain = pipe("a red circle", generator=torch.Generator().manual_seed(0), **run).images
    pipe.enable_attention_slicing("max")
    assert all(isinstance(m.processor, SlicedAttnProcessor) for m in pipe.unet.modules() if isinstance(m, Attention))
    sliced = pipe("a red circle", generator=torch.Generator().manual_seed(0), **run).images
    assert abs(sliced - plain).max() < 1e-4
    pipe.disable_attention_slicing()
    assert all(type(m.processor) is AttnProcessor for m in pipe.unet.modules() if isinstance(m, Attention))
    with pytest.raises(ValueError, match="slice_size is"):
        pipe.enable_attention_slicing("half")
    pipe.enable_vae_tiling()
    assert pipe.vae.tile_latent_size is not None
    pipe.disable_vae_tiling()
    assert pipe.vae.tile_latent_size is None
