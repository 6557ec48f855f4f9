"""sdlearn.models.autoencoder_kl: closed forms, parity with diffusers' AutoencoderKL, save/load, training objective, errors."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from sdlearn.models.autoencoder_kl import (
    AutoencoderKL,
    AutoencoderKLConfig,
    DiagonalGaussianDistribution,
    encode_dataset,
    measure_scaling_factor,
)
from sdlearn.training.losses import VAELoss, vae_loss

SMALL = AutoencoderKLConfig.with_factor(4, (16, 32, 32), in_channels=3, out_channels=3, latent_channels=4,
                                        layers_per_block=1, norm_num_groups=8, sample_size=32)
DIGITS = AutoencoderKLConfig.with_factor(2, (16, 32), in_channels=1, out_channels=1, latent_channels=2,
                                         layers_per_block=1, norm_num_groups=8, sample_size=32,
                                         mid_block_add_attention=False, use_quant_conv=False)
# Stable Diffusion's structure (4 levels, f = 8, two residual blocks per level, mid-block attention,
# 32 GroupNorm groups), with narrower channels so the test stays fast.
SD_SHAPED = AutoencoderKLConfig(block_out_channels=(32, 64, 128, 128), sample_size=64)


def diffusers_twin(cfg: AutoencoderKLConfig):
    diffusers = pytest.importorskip("diffusers")
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()}
    return diffusers.AutoencoderKL(**kwargs).eval()


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every parameter (GroupNorm scales and biases included, which start at 1 and 0), so parity
    tests exercise every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


# ---------------------------------------------------------------------------- closed forms
def test_kl_of_diagonal_gaussian_matches_direct_computation():
    torch.manual_seed(0)
    params = torch.randn(3, 8, 5, 5)
    post = DiagonalGaussianDistribution(params)
    q = torch.distributions.Normal(post.mean, post.std)
    p = torch.distributions.Normal(torch.zeros_like(post.mean), torch.ones_like(post.std))
    direct = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3))
    torch.testing.assert_close(post.kl(), direct, rtol=1e-5, atol=1e-5)
    # N(0, I) against itself: zero
    assert DiagonalGaussianDistribution(torch.zeros(2, 8, 3, 3)).kl().abs().max() < 1e-7


def test_reparameterised_sample_has_the_posterior_mean_and_variance():
    mean = torch.tensor([0.5, -2.0, 3.0, 0.0]).view(1, 4, 1, 1).expand(20000, 4, 1, 1)
    logvar = torch.log(torch.tensor([0.25, 1.0, 4.0, 0.01])).view(1, 4, 1, 1).expand(20000, 4, 1, 1)
    post = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    z = post.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0).flatten(), torch.tensor([0.5, -2.0, 3.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(z.var(0).flatten(), torch.tensor([0.25, 1.0, 4.0, 0.01]), rtol=0.05, atol=1e-3)
    assert torch.equal(post.mode(), post.mean)
    # the same generator seed gives the same sample; gradients flow through mean and std
    params = torch.randn(2, 8, 3, 3, requires_grad=True)
    a = DiagonalGaussianDistribution(params).sample(torch.Generator().manual_seed(1))
    b = DiagonalGaussianDistribution(params).sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    a.sum().backward()
    assert params.grad.abs().sum() > 0


def test_scaling_factor_is_one_over_std():
    z = torch.randn(1000, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 5.0
    assert measure_scaling_factor(z) == pytest.approx(0.2, rel=0.01)
    with pytest.raises(ValueError, match="two latent values"):
        measure_scaling_factor(torch.zeros(1))


# ---------------------------------------------------------------------------- structure and parity
@pytest.mark.parametrize("cfg", [SMALL, DIGITS, SD_SHAPED], ids=["f4", "f2-digits", "sd-shaped-f8"])
def test_parity_with_diffusers_autoencoderkl(cfg):
    theirs = diffusers_twin(cfg)
    randomize(theirs, seed=1)
    ours = AutoencoderKL(cfg).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())  # the same parameter names
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        p_ours, p_theirs = ours.encode(x).latent_dist, theirs.encode(x).latent_dist
        torch.testing.assert_close(p_ours.mean, p_theirs.mean, atol=1e-4, rtol=0)
        torch.testing.assert_close(p_ours.logvar, p_theirs.logvar, atol=1e-4, rtol=0)
        torch.testing.assert_close(p_ours.kl(), p_theirs.kl(), atol=1e-3, rtol=1e-5)
        z = p_theirs.mode()
        torch.testing.assert_close(ours.decode(z).sample, theirs.decode(z).sample, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours(x).sample, theirs(x).sample, atol=1e-4, rtol=0)
        f = cfg.downsampling_factor
        assert p_ours.mean.shape == (2, cfg.latent_channels, cfg.sample_size // f, cfg.sample_size // f)


def test_default_config_is_stable_diffusions_vae():
    cfg = AutoencoderKLConfig()
    assert cfg.downsampling_factor == 8 and cfg.latent_channels == 4 and cfg.scaling_factor == 0.18215
    n = sum(p.numel() for p in AutoencoderKL(cfg).parameters())
    assert n == 83_653_863  # the parameter count of SD 1.x's vae/diffusion_pytorch_model


@pytest.mark.parametrize("direction", ["diffusers->sdlearn", "sdlearn->diffusers"])
def test_folders_load_across_libraries(tmp_path, direction):
    diffusers = pytest.importorskip("diffusers")
    cfg = dataclasses.replace(SMALL, scaling_factor=0.5)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    if direction == "diffusers->sdlearn":
        theirs = diffusers_twin(cfg)
        randomize(theirs, seed=4)
        theirs.save_pretrained(tmp_path)
        ours = AutoencoderKL.from_pretrained(tmp_path)
    else:
        ours = AutoencoderKL(cfg).eval()
        randomize(ours, seed=4)
        ours.save_pretrained(tmp_path)
        theirs = diffusers.AutoencoderKL.from_pretrained(tmp_path).eval()
    assert ours.config.scaling_factor == theirs.config.scaling_factor == 0.5
    with torch.no_grad():
        torch.testing.assert_close(ours(x).sample, theirs(x).sample, atol=1e-4, rtol=0)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(DIGITS).eval()
    vae.save_pretrained(tmp_path / "vae")
    again = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert again.config == vae.config
    for (k, a), (_, b) in zip(vae.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    # a pipeline folder: from_pretrained finds its vae component
    assert AutoencoderKL.from_pretrained(tmp_path).config == vae.config


def test_with_factor_builds_the_asked_downsampling():
    for f in (1, 2, 4, 8):
        cfg = AutoencoderKLConfig.with_factor(f, 16, norm_num_groups=8)
        assert cfg.downsampling_factor == f
        z = AutoencoderKL(cfg).encode(torch.zeros(1, 3, 16, 16)).latent_dist.mean
        assert z.shape[-1] == 16 // f
    with pytest.raises(ValueError, match="power of two"):
        AutoencoderKLConfig.with_factor(3)
    with pytest.raises(ValueError, match="levels"):
        AutoencoderKLConfig.with_factor(4, (16, 32))


# ---------------------------------------------------------------------------- errors that teach
def test_bad_input_gives_clear_errors():
    vae = AutoencoderKL(SMALL)
    with pytest.raises(ValueError, match=r"expects RGB.*given grayscale"):
        vae.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="batch dimension"):
        vae.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="divisible by the downsampling factor f = 4"):
        vae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vae.encode(torch.full((1, 3, 32, 32), 255.0))
    with pytest.raises(ValueError, match="scaling_factor"):
        vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="divisible by norm_num_groups"):
        AutoencoderKLConfig(block_out_channels=(30,), down_block_types=("DownEncoderBlock2D",),
                            up_block_types=("UpDecoderBlock2D",), norm_num_groups=8)
    with pytest.raises(ValueError, match="one block type per level"):
        AutoencoderKLConfig(block_out_channels=(32, 32))
    with pytest.raises(ValueError, match="shift_factor"):
        AutoencoderKLConfig.from_dict({"shift_factor": 0.1})


# ---------------------------------------------------------------------------- the training objective
def test_vae_loss_is_reconstruction_plus_weighted_kl():
    torch.manual_seed(0)
    vae = AutoencoderKL(DIGITS)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    for rec_kind, beta in (("l1", 1e-6), ("l2", 0.5)):
        loss, terms = vae_loss(vae, x, torch.Generator().manual_seed(5), kl_weight=beta, reconstruction=rec_kind)
        post = vae.encode(x).latent_dist
        z = post.sample(torch.Generator().manual_seed(5))
        err = vae.decode(z).sample - x
        rec = (err.abs() if rec_kind == "l1" else err.pow(2)).sum(dim=(1, 2, 3)).mean()
        torch.testing.assert_close(terms["reconstruction"], rec.detach())
        torch.testing.assert_close(loss, rec + beta * post.kl().mean())
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        vae_loss(vae, x, torch.Generator(), reconstruction="l3")


def test_training_the_vae_lowers_the_loss_and_resume_checks_the_loss(tmp_path):
    from sdlearn.training.loop import TrainConfig, train

    torch.manual_seed(0)
    images = torch.rand(64, 1, 16, 16) * 2 - 1
    images[:, :, 4:12, 4:12] = 1.0  # a little structure to learn
    vae = AutoencoderKL(dataclasses.replace(DIGITS, sample_size=16))
    cfg = TrainConfig(steps=40, batch_size=16, lr=2e-3, warmup_steps=5, checkpoint_every=20)
    result = train(vae, None, images, cfg, run_dir=tmp_path, progress=False, loss_fn=VAELoss(kl_weight=1e-3))
    assert sum(result.losses[-5:]) / 5 < 0.8 * sum(result.losses[:5]) / 5
    with pytest.raises(ValueError, match="different loss"):
        train(AutoencoderKL(dataclasses.replace(DIGITS, sample_size=16)), None, images,
              cfg, run_dir=tmp_path, progress=False, loss_fn=VAELoss(kl_weight=1.0))


def test_encode_dataset_batches_and_mode():
    torch.manual_seed(0)
    vae = AutoencoderKL(DIGITS).eval()
    x = torch.rand(10, 1, 32, 32) * 2 - 1
    z = encode_dataset(vae, x, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(z, vae.encode(x).latent_dist.mode(), atol=1e-5, rtol=1e-5)
    assert not math.isnan(measure_scaling_factor(z))


# ---------------------------------------------------------------------------- the shipped autoencoders
@pytest.mark.parametrize("name", ["mnist-vae", "shapes-vae"])
def test_shipped_scaling_factor_is_recomputed_from_training_data(name):
    """config.scaling_factor = 1 / std of the training images' latents: recompute it from (part of) the data."""
    from sdlearn.utils.files import PRETRAINED_DIR
    from sdlearn.training.recipes import get_recipe, training_images

    if not (Path(PRETRAINED_DIR) / name / "config.json").is_file():
        pytest.skip(f"{name} is not shipped in this checkout")
    vae = AutoencoderKL.from_pretrained(name)
    images = training_images(get_recipe(name).data)
    images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:2000]]  # every class
    latents = encode_dataset(vae, images)
    assert measure_scaling_factor(latents) == pytest.approx(vae.config.scaling_factor, rel=0.03)
    z0 = latents * vae.config.scaling_factor
    assert 0.9 < float(z0.std()) < 1.1  # the diffusion model sees latents of about unit variance
