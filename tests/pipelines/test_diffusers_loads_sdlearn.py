"""The other direction: a pipeline built from sdlearn's own modules (shapes-t2i's layout: an f = 4 VAE, a UNet whose
first level has no attention, a linear-beta DDIM), saved by sdlearn, is loaded by diffusers' own pipeline classes and
draws the same images for the same prompt, seed and latents. And the shipped shapes-t2i, when it is there."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from sdlearn.models.unet_2d_condition import UNet2DConditionConfig, UNet2DConditionModel
from sdlearn.pipelines import (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                               StableDiffusionPipeline)
from sdlearn.schedulers import DDIMScheduler

diffusers = pytest.importorskip("diffusers")

CLASSES = {"text-to-image": StableDiffusionPipeline, "img2img": StableDiffusionImg2ImgPipeline,
           "inpaint": StableDiffusionInpaintPipeline}
DIFFUSERS_NAMES = {"text-to-image": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
                   "inpaint": "StableDiffusionInpaintPipeline"}


@pytest.fixture(scope="module")
def sdlearn_folder(tmp_path_factory, make_tiny_sd):
    """A tiny random pipeline of sdlearn's modules (only the text encoder and tokenizer are transformers'), saved."""
    text = make_tiny_sd("sd1")  # for its CLIPTextModel (32 wide) and tokenizer
    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderKLConfig.with_factor(4, (8, 16, 16), latent_channels=4, norm_num_groups=8,
                                                        sample_size=32, scaling_factor=0.7)).eval()
    unet = UNet2DConditionModel(UNet2DConditionConfig(
        sample_size=8, block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=32, attention_head_dim=(2, 4))).eval()
    for p in unet.parameters():  # random weights, larger than the init's zeros in conv_out: a visible image
        p.data.add_(0.05 * torch.randn_like(p))
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae, text["text_encoder"], text["tokenizer"], unet, scheduler)
    folder = tmp_path_factory.mktemp("sdlearn-saved")
    pipe.save_pretrained(folder)
    return folder


def inputs(kind: str) -> dict:
    g = torch.Generator().manual_seed(5)
    kwargs = dict(prompt=["a red circle", "a blue square"], num_inference_steps=5, guidance_scale=5.0,
                  negative_prompt=["blue", ""], output_type="np")
    if kind != "text-to-image":
        kwargs["image"] = torch.rand(2, 3, 32, 32, generator=g)  # [0, 1], as diffusers takes tensors
    if kind == "img2img":
        kwargs["strength"] = 0.6
    if kind == "inpaint":
        mask = torch.zeros(2, 1, 32, 32)
        mask[:, :, 8:24, 4:20] = 1  # on the latent grid (f = 4)
        kwargs["mask_image"] = mask
    return kwargs


@pytest.mark.parametrize("kind", list(CLASSES))
def test_diffusers_draws_the_same_images_from_sdlearns_folder(sdlearn_folder, kind):
    index = json.loads((sdlearn_folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["scheduler"] == ["diffusers",
                                                                                             "DDIMScheduler"]
    theirs = getattr(diffusers, DIFFUSERS_NAMES[kind]).from_pretrained(sdlearn_folder)
    theirs.set_progress_bar_config(disable=True)
    assert type(theirs.unet).__module__.startswith("diffusers") and theirs.vae_scale_factor == 4
    ours = CLASSES[kind].from_pretrained(sdlearn_folder)
    expected = theirs(generator=torch.Generator().manual_seed(0), **inputs(kind)).images
    got = ours(generator=torch.Generator().manual_seed(0), progress=False, **inputs(kind)).images
    assert got.shape == expected.shape == (2, 32, 32, 3)
    assert got.std() > 0.01  # a picture, not a flat grey: the comparison means something
    assert np.abs(got - expected).max() <= 1e-3, kind


def test_the_same_image_from_given_latents(sdlearn_folder):
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(sdlearn_folder)
    theirs.set_progress_bar_config(disable=True)
    ours = StableDiffusionPipeline.from_pretrained(sdlearn_folder)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    kwargs = dict(prompt="a red circle", latents=latents, num_inference_steps=4, guidance_scale=3.0, output_type="np")
    expected = theirs(**kwargs).images
    got = ours(progress=False, **kwargs).images
    assert np.abs(got - expected).max() <= 1e-3


def test_the_shipped_shapes_t2i_draws_the_same_image_in_diffusers():
    """Runs once shapes-t2i is shipped in sdlearn/pretrained (skipped before)."""
    from sdlearn.utils.files import resolve_pretrained

    try:
        folder = resolve_pretrained("shapes-t2i")
    except (FileNotFoundError, ValueError, KeyError):
        pytest.skip("shapes-t2i is not shipped yet")
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    theirs.set_progress_bar_config(disable=True)
    ours = StableDiffusionPipeline.from_pretrained(folder)
    kwargs = dict(prompt="a small red circle above a large blue square", num_inference_steps=10, guidance_scale=5.0,
                  output_type="np")
    expected = theirs(generator=torch.Generator().manual_seed(0), **kwargs).images
    got = ours(generator=torch.Generator().manual_seed(0), progress=False, **kwargs).images
    assert got.shape == (1, 64, 64, 3) and np.abs(got - expected).max() <= 1e-3


def test_the_step_callback_sees_the_predicted_z0_and_decode_latents_is_the_decoder(sdlearn_folder):
    """What chapter 7's per-step viewer reads: info["x0_pred"] is the scheduler's pred_original_sample (DDIM eq. 9 on
    latents), and decode_latents(z) = D(z / scaling_factor), the images the pipeline returns."""
    pipe = StableDiffusionPipeline.from_pretrained(sdlearn_folder)
    seen = []
    out = pipe("a red circle", num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
               output_type="latent", progress=False, callback_on_step_end=lambda p, i, t, info: seen.append((t, info)))
    assert len(seen) == 3
    t, info = seen[1]
    ab = pipe.scheduler.alphas_cumprod[int(t)]
    x0 = (info["x_t"] - (1 - ab).sqrt() * info["model_output"]) / ab.sqrt()  # eq. 9, epsilon prediction
    assert torch.allclose(info["x0_pred"], x0, atol=1e-5)
    images = pipe.decode(out.images, "pt").images  # [0, 1]
    assert torch.allclose(images, ((pipe.decode_latents(out.images) + 1) / 2).clamp(0, 1), atol=1e-6)
