"""Inputs a model cannot use as they are (issue 17, item 6): refused with advice that fits the case, or warned about.

A wrong channel count is an error that says what the channels mean and what to do for the case at hand; an input of
another spatial size than config.sample_size runs (convolutions take any size) but warns; a pipeline refuses it.
"""

from __future__ import annotations

import pytest
import torch

from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from sdlearn.models.unet_2d import UNet2DModel, UNetConfig
from sdlearn.pipelines import DDPMPipeline, LatentDiffusionPipeline
from sdlearn.schedulers import DDPMScheduler

# mnist-ddpm's shape of model, tiny: 1 channel, trained at 32x32
DIGITS_UNET = UNetConfig(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                         down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                         layers_per_block=1, attention_head_dim=8, norm_num_groups=4)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(DIGITS_UNET).eval()


@pytest.mark.parametrize("shape, advice", [
    ((2, 3, 32, 32), r"expects grayscale \(1 channel\) and was given RGB \(3\).*x\.mean\(dim=1, keepdim=True\)"),
    ((2, 32, 32), r"channel dimension is missing.*x\.unsqueeze\(1\)"),
    ((2, 32, 32, 1), r"channels come last.*permute\(0, 3, 1, 2\)"),
])
def test_unet_channel_errors_fit_the_case(unet, shape, advice):
    with pytest.raises(ValueError, match=advice) as info:
        unet(torch.zeros(shape), 10)
    if shape[1] == 3:  # the advice that was given for every case: wrong for RGB
        assert "unsqueeze" not in str(info.value)


def test_rgb_unet_given_grayscale_and_latent_unet_given_images():
    rgb = UNet2DModel(UNetConfig(**{**DIGITS_UNET.to_dict(), "in_channels": 3, "out_channels": 3})).eval()
    with pytest.raises(ValueError, match=r"expects RGB.*repeat\(1, 3, 1, 1\)"):
        rgb(torch.zeros(1, 1, 32, 32), 10)
    latent = UNet2DModel(UNetConfig(**{**DIGITS_UNET.to_dict(), "in_channels": 4, "out_channels": 4})).eval()
    with pytest.raises(ValueError, match=r"4-channel latents.*vae\.encode"):
        latent(torch.zeros(1, 3, 32, 32), 10)


def test_unet_warns_at_another_size_and_says_how_to_pad_digits(unet):
    with pytest.warns(UserWarning, match=r"trained on 32x32.*given 28x28.*pad\(x, \(2, 2, 2, 2\), value=-1\.0\)"):
        out = unet(torch.zeros(1, 1, 28, 28), 10)
    assert out.shape == (1, 1, 28, 28)  # it still runs
    with pytest.warns(UserWarning, match=r"given 16x16.*Pad or resize the inputs to 32x32"):
        unet(torch.zeros(1, 1, 16, 16), 10)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unet(torch.zeros(1, 1, 32, 32), 10)  # the trained size: no warning


def test_vae_warns_when_digits_are_not_padded():
    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderKLConfig.with_factor(4, (8, 8, 8), in_channels=1, out_channels=1, latent_channels=4,
                                                        layers_per_block=1, norm_num_groups=4, sample_size=32)).eval()
    with pytest.warns(UserWarning, match=r"trained on 32x32.*given 28x28.*value=-1\.0"):
        z = vae.encode(torch.zeros(1, 1, 28, 28)).latent_dist.mode()
    assert z.shape == (1, 4, 7, 7)
    with pytest.raises(ValueError, match=r"expects grayscale.*RGB"):
        vae.encode(torch.zeros(1, 3, 32, 32))


def test_pipelines_refuse_another_size(unet):
    pipe = DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=10))
    with pytest.raises(ValueError, match=r"trained on 32x32.*asked for 28x28"):
        pipe.denoise((1, 1, 28, 28), 2, progress=False)
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe(batch_size=1, num_inference_steps=2, latents=torch.zeros(1, 1, 28, 28), progress=False)
    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderKLConfig.with_factor(4, (8, 8, 8), latent_channels=4, layers_per_block=1,
                                                        norm_num_groups=4, sample_size=32)).eval()
    latent_unet = UNet2DModel(UNetConfig(**{**DIGITS_UNET.to_dict(), "in_channels": 4, "out_channels": 4,
                                            "sample_size": 8})).eval()
    ldm = LatentDiffusionPipeline(vae, latent_unet, DDPMScheduler(num_train_timesteps=10))
    with pytest.raises(ValueError, match=r"trained on 8x8 latents.*32x32 images.*these images are 28x28"):
        ldm.encode_images(torch.zeros(1, 3, 28, 28))
    assert ldm.encode_images(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 8, 8)
