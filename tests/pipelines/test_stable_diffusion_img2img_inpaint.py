"""img2img (SDEdit) and inpainting (blended, and a 9-channel UNet): diffusers' images from sdlearn's code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdlearn.pipelines.image_processing import preprocess_image, preprocess_mask
from sdlearn.pipelines.stable_diffusion_img2img import StableDiffusionImg2ImgPipeline, img2img_timesteps
from sdlearn.pipelines.stable_diffusion_inpaint import StableDiffusionInpaintPipeline, blend_known
from sdlearn.schedulers import DDIMScheduler, EulerDiscreteScheduler

diffusers = pytest.importorskip("diffusers")


def image_and_mask():
    g = torch.Generator().manual_seed(7)
    image = torch.rand(1, 3, 16, 16, generator=g)  # in [0, 1], as diffusers expects tensors
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 2:10] = 1.0  # repaint this box
    return image, mask


def load(cls_name, folder, scheduler="DDIMScheduler"):
    theirs = getattr(diffusers, cls_name).from_pretrained(folder, safety_checker=None)
    ours = {"StableDiffusionImg2ImgPipeline": StableDiffusionImg2ImgPipeline,
            "StableDiffusionInpaintPipeline": StableDiffusionInpaintPipeline}[cls_name].from_pretrained(folder)
    if scheduler == "EulerDiscreteScheduler":
        theirs.scheduler = diffusers.EulerDiscreteScheduler.from_config(theirs.scheduler.config)
        ours.scheduler = EulerDiscreteScheduler.from_config(dict(ours.scheduler.config))
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerDiscreteScheduler"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_img2img_same_images_as_diffusers(tiny_sd_folder, scheduler, strength):
    _, folder = tiny_sd_folder
    ours, theirs = load("StableDiffusionImg2ImgPipeline", folder, scheduler)
    image, _ = image_and_mask()
    kwargs = dict(prompt=["a red circle", "a blue square"], image=image, strength=strength, num_inference_steps=6,
                  guidance_scale=4.0, num_images_per_prompt=2, output_type="np")
    expected = theirs(generator=torch.Generator().manual_seed(0), **kwargs).images
    got = ours(generator=torch.Generator().manual_seed(0), progress=False, **kwargs).images
    assert got.shape == (4, 16, 16, 3) and np.abs(got - expected).max() <= 1e-3


def test_img2img_start_step_from_strength():
    s = DDIMScheduler(num_train_timesteps=1000, steps_offset=1)
    s.set_timesteps(50)
    timesteps, t_start = img2img_timesteps(s, 50, 0.6)
    assert t_start == 20 and len(timesteps) == 30 and int(timesteps[0]) == int(s.timesteps[20])  # int(50 * 0.6) = 30
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            img2img_timesteps(s, 50, bad)


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_inpaint_with_a_text_to_image_unet_same_as_diffusers(tiny_sd_folder, strength):
    _, folder = tiny_sd_folder
    ours, theirs = load("StableDiffusionInpaintPipeline", folder)
    image, mask = image_and_mask()
    kwargs = dict(prompt="a red circle", image=image, mask_image=mask, strength=strength, num_inference_steps=5,
                  guidance_scale=4.0, output_type="np")
    expected = theirs(generator=torch.Generator().manual_seed(0), **kwargs).images
    got = ours(generator=torch.Generator().manual_seed(0), progress=False, **kwargs).images
    assert np.abs(got - expected).max() <= 1e-3


@pytest.fixture(scope="module")
def nine_channel_folder(make_tiny_sd, tmp_path_factory):
    """A tiny random SD inpainting pipeline (UNet in_channels = 9: latents, mask, masked-image latents)."""
    pipe = diffusers.StableDiffusionInpaintPipeline(**make_tiny_sd("sd1", in_channels=9), requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("tiny-inpaint")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_inpaint_with_a_nine_channel_unet_same_as_diffusers(nine_channel_folder, strength):
    ours, theirs = load("StableDiffusionInpaintPipeline", nine_channel_folder)
    assert ours.unet.config.in_channels == 9
    image, mask = image_and_mask()
    kwargs = dict(prompt=["a red circle", "a blue square"], image=image, mask_image=mask, strength=strength,
                  num_inference_steps=5, guidance_scale=4.0, output_type="np")
    expected = theirs(generator=torch.Generator().manual_seed(0), **kwargs).images
    got = ours(generator=torch.Generator().manual_seed(0), progress=False, **kwargs).images
    assert np.abs(got - expected).max() <= 1e-3


def test_blending_keeps_the_known_region_and_takes_the_rest_from_the_model():
    z, known = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    out = blend_known(z, known, mask)
    assert torch.equal(out[..., :2, :], z[..., :2, :]) and torch.equal(out[..., 2:, :], known[..., 2:, :])


def test_same_seed_same_images_for_img2img_and_inpaint(tiny_sd_folder):
    _, folder = tiny_sd_folder
    image, mask = image_and_mask()
    for cls, extra in ((StableDiffusionImg2ImgPipeline, {}), (StableDiffusionInpaintPipeline, {"mask_image": mask})):
        pipe = cls.from_pretrained(folder)

        def run(seed):
            return pipe("a red circle", image=image, num_inference_steps=3, generator=torch.Generator().manual_seed(seed),
                        output_type="np", progress=False, **extra).images

        assert np.array_equal(run(0), run(0)) and not np.array_equal(run(0), run(1)), cls.__name__


def test_bad_images_masks_and_unets_are_refused(tiny_sd_folder, nine_channel_folder):
    _, folder = tiny_sd_folder
    image, mask = image_and_mask()
    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(folder)
    inpaint = StableDiffusionInpaintPipeline.from_pretrained(folder)
    run = dict(num_inference_steps=2, output_type="latent", progress=False)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        img2img("a red circle", image=image, strength=0.0, **run)
    with pytest.raises(ValueError, match="multiples of 4"):
        img2img("a red circle", image=torch.rand(1, 3, 18, 16), **run)
    with pytest.raises(ValueError, match="same size"):
        inpaint("a red circle", image=image, mask_image=torch.zeros(1, 1, 8, 8), **run)
    with pytest.raises(ValueError, match="single-channel"):
        inpaint("a red circle", image=image, mask_image=torch.zeros(1, 3, 16, 16), **run)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        inpaint("a red circle", image=image, mask_image=mask * 255, **run)
    nine = StableDiffusionInpaintPipeline.from_pretrained(nine_channel_folder)
    from sdlearn.pipelines.stable_diffusion import StableDiffusionPipeline

    with pytest.raises(ValueError, match="inpainting UNet"):
        StableDiffusionPipeline(nine.vae, nine.text_encoder, nine.tokenizer, nine.unet, nine.scheduler)("a", **run)
    with pytest.raises(ValueError, match="input channels"):
        bad_unet = type(nine.unet)(nine.unet.config.__class__(**{**nine.unet.config.to_dict(), "in_channels": 5}))
        StableDiffusionInpaintPipeline(nine.vae, nine.text_encoder, nine.tokenizer, bad_unet, nine.scheduler)


def test_image_inputs_pil_numpy_and_tensor_agree():
    from PIL import Image

    arr = (np.random.default_rng(0).random((16, 16, 3)) * 255).round().astype(np.uint8)
    from_pil = preprocess_image(Image.fromarray(arr), 4)
    from_np = preprocess_image(arr.astype(np.float32) / 255, 4)
    from_pt = preprocess_image(torch.from_numpy(arr).permute(2, 0, 1).float() / 255, 4)
    assert from_pil.shape == (1, 3, 16, 16) and torch.allclose(from_pil, from_np) and torch.allclose(from_np, from_pt)
    assert from_pil.min() >= -1 and from_pil.max() <= 1
    m = preprocess_mask(Image.fromarray((np.eye(16) * 255).astype(np.uint8)), 4)  # mode "L"
    assert m.shape == (1, 1, 16, 16) and set(m.unique().tolist()) == {0.0, 1.0}
