"""LatentDiffusionPipeline: shapes, output types, decode consistency, save/load, errors; DDPMPipeline's eta."""

import pytest
import torch

from sdlearn.pipelines import DDPMPipeline, LatentDiffusionPipeline
from sdlearn.schedulers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from sdlearn.models.unet_2d import UNet2DModel, UNetConfig
from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

VAE_CFG = AutoencoderKLConfig.with_factor(4, (16, 16, 32), latent_channels=4, layers_per_block=1,
                                          norm_num_groups=8, sample_size=32, scaling_factor=0.7)
UNET_CFG = UNetConfig(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                      down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                      attention_head_dim=8, norm_num_groups=8)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return LatentDiffusionPipeline(AutoencoderKL(VAE_CFG).eval(), UNet2DModel(UNET_CFG).eval(),
                                   DDPMScheduler(num_train_timesteps=100))


def test_output_types_and_shapes(pipe):
    out = {}
    for kind in ("latent", "pt", "np", "pil"):
        out[kind] = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                         output_type=kind, progress=False).images
    assert out["latent"].shape == (2, 4, 8, 8)  # z_0: the UNet's sample size, not the image's
    assert out["pt"].shape == (2, 3, 32, 32) and 0 <= out["pt"].min() and out["pt"].max() <= 1
    assert out["np"].shape == (2, 32, 32, 3)
    assert len(out["pil"]) == 2 and out["pil"][0].size == (32, 32)
    # the image is the decoding of the latent, divided by the scaling factor first
    with torch.no_grad():
        x = pipe.vae.decode(out["latent"] / 0.7).sample.clamp(-1, 1)
    torch.testing.assert_close(out["pt"], (x + 1) / 2, atol=1e-5, rtol=0)


def test_same_seed_same_images_and_callback_sees_latents(pipe):
    seen = []

    def callback(p, i, t, info):
        seen.append((i, t, info["x_t"].shape, info["x0_pred"].shape))

    a = pipe(batch_size=1, num_inference_steps=4, generator=torch.Generator().manual_seed(7), output_type="latent",
             progress=False, callback_on_step_end=callback).images
    b = pipe(batch_size=1, num_inference_steps=4, generator=torch.Generator().manual_seed(7), output_type="latent",
             progress=False).images
    assert torch.equal(a, b)
    assert [s[0] for s in seen] == [0, 1, 2, 3] and all(s[2] == (1, 4, 8, 8) == s[3] for s in seen)


def test_every_scheduler_runs_in_the_latent_pipeline(pipe):
    for cls in (DDIMScheduler, EulerDiscreteScheduler):
        p = LatentDiffusionPipeline(pipe.vae, pipe.unet, cls.from_config(pipe.scheduler.config))
        z = p(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="latent",
              progress=False).images
        assert z.shape == (1, 4, 8, 8) and torch.isfinite(z).all()


def test_encode_images_is_scaled_mode(pipe):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = pipe.vae.encode(x).latent_dist.mode() * 0.7
    torch.testing.assert_close(pipe.encode_images(x), expected)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "ldm")
    again = LatentDiffusionPipeline.from_pretrained(tmp_path / "ldm")
    assert again.vae.config.scaling_factor == 0.7
    kw = dict(batch_size=1, num_inference_steps=3, output_type="pt", progress=False)
    torch.testing.assert_close(pipe(generator=torch.Generator().manual_seed(1), **kw).images,
                               again(generator=torch.Generator().manual_seed(1), **kw).images)
    with pytest.raises(ValueError, match="without a vae"):
        DDPMPipeline(pipe.unet, pipe.scheduler).save_pretrained(tmp_path / "ddpm")
        LatentDiffusionPipeline.from_pretrained(tmp_path / "ddpm")


def test_errors(pipe):
    with pytest.raises(ValueError, match="'latent'"):
        pipe(batch_size=1, num_inference_steps=2, output_type="tensor", progress=False)
    bad_unet = UNet2DModel(UNetConfig(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                               down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                               norm_num_groups=8))
    with pytest.raises(ValueError, match="latent_channels"):
        LatentDiffusionPipeline(pipe.vae, bad_unet, pipe.scheduler)
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe(batch_size=1, num_inference_steps=2, latents=torch.zeros(1, 3, 32, 32), progress=False)


def test_pipeline_eta_is_ddims():
    torch.manual_seed(0)
    unet = UNet2DModel(UNetConfig(sample_size=8, block_out_channels=(16, 16), down_block_types=("DownBlock2D",) * 2,
                           up_block_types=("UpBlock2D",) * 2, norm_num_groups=8, attention_head_dim=8)).eval()
    ddim = DDPMPipeline(unet, DDIMScheduler(num_train_timesteps=100))
    kw = dict(batch_size=2, num_inference_steps=5, output_type="pt", progress=False)
    plain = ddim(generator=torch.Generator().manual_seed(3), **kw).images
    eta0 = ddim(generator=torch.Generator().manual_seed(3), eta=0.0, **kw).images
    eta1 = ddim(generator=torch.Generator().manual_seed(3), eta=1.0, **kw).images
    assert torch.equal(plain, eta0)  # DDIMScheduler's default eta is 0
    assert not torch.allclose(eta0, eta1)
    with pytest.raises(ValueError, match="DDIMScheduler only"):
        DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=100))(eta=0.5, **kw)
    # use_clipped_model_output, as in diffusers' DDIMPipeline: the clipped x0's noise (the default DDIM clips, too)
    clip = DDPMPipeline(unet, DDIMScheduler(num_train_timesteps=100, clip_sample=True, clip_sample_range=0.1))
    own = clip(generator=torch.Generator().manual_seed(3), **kw).images
    assert torch.equal(own, clip(generator=torch.Generator().manual_seed(3), use_clipped_model_output=False, **kw).images)
    implied = clip(generator=torch.Generator().manual_seed(3), use_clipped_model_output=True, **kw).images
    assert not torch.allclose(own, implied)
    with pytest.raises(ValueError, match="use_clipped_model_output applies to DDIMScheduler only"):
        DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=100))(use_clipped_model_output=True, **kw)
