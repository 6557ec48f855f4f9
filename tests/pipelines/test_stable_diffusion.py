"""StableDiffusionPipeline: diffusers' images from sdlearn's code, diffusers' folders both ways, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdlearn.pipelines import DiffusionPipeline
from sdlearn.pipelines.stable_diffusion import StableDiffusionPipeline
from sdlearn.schedulers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

diffusers = pytest.importorskip("diffusers")

PROMPTS = ["a red circle", "a blue square above a red circle"]


def both(folder, scheduler: str = "DDIMScheduler"):
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    ours = StableDiffusionPipeline.from_pretrained(folder)
    if scheduler != "DDIMScheduler":
        extra = {"skip_prk_steps": True} if scheduler == "PNDMScheduler" else {}  # SD 1.x's PNDM setting
        theirs.scheduler = getattr(diffusers, scheduler).from_config(theirs.scheduler.config, **extra)
        ours.scheduler = {"EulerDiscreteScheduler": EulerDiscreteScheduler, "PNDMScheduler": PNDMScheduler,
                          "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}[scheduler].from_config(
            {**dict(ours.scheduler.config), **extra})
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                                       "PNDMScheduler"])
def test_same_images_as_diffusers_with_guidance(tiny_sd_folder, scheduler):
    version, folder = tiny_sd_folder
    ours, theirs = both(folder, scheduler)
    kwargs = dict(prompt=PROMPTS, negative_prompt=["blue", "green"], num_inference_steps=4, guidance_scale=5.0,
                  num_images_per_prompt=2, output_type="np")
    expected = theirs(generator=torch.Generator().manual_seed(0), **kwargs).images
    got = ours(generator=torch.Generator().manual_seed(0), progress=False, **kwargs).images
    assert got.shape == expected.shape == (4, 16, 16, 3)
    assert np.abs(got - expected).max() <= 1e-3, (version, scheduler)


def test_same_images_from_given_latents_and_embeddings(tiny_sd_folder):
    _, folder = tiny_sd_folder
    ours, theirs = both(folder)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    embeds = ours.text_encoder(ours.tokenize(["a red circle"]))[0]
    expected = theirs(prompt_embeds=embeds, latents=latents, num_inference_steps=3, output_type="np").images
    got = ours(prompt_embeds=embeds, latents=latents, num_inference_steps=3, output_type="np", progress=False).images
    assert np.abs(got - expected).max() <= 1e-3
    unguided = ours(prompt_embeds=embeds, latents=latents, num_inference_steps=3, guidance_scale=1.0,
                    output_type="np", progress=False).images
    assert np.abs(unguided - got).max() > 1e-4  # s <= 1 turns guidance off


def test_save_and_load_both_ways_and_by_diffusion_pipeline(tiny_sd_folder, tmp_path):
    _, folder = tiny_sd_folder
    ours = DiffusionPipeline.from_pretrained(folder)
    assert type(ours) is StableDiffusionPipeline
    ours.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["text_encoder"] == ["transformers",
                                                                                                 "CLIPTextModel"]
    assert index["safety_checker"] == [None, None]
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path)  # diffusers reads sdlearn's folder
    theirs.set_progress_bar_config(disable=True)
    expected = theirs("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(1),
                      output_type="np").images
    got = ours("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="np",
               progress=False).images
    assert np.abs(got - expected).max() <= 1e-3


def test_same_seed_same_images_and_output_types(tiny_sd_folder):
    _, folder = tiny_sd_folder
    pipe = StableDiffusionPipeline.from_pretrained(folder)

    def run(output_type, seed=0):
        return pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(seed),
                    output_type=output_type, progress=False).images

    assert np.array_equal(run("np"), run("np"))
    assert not np.array_equal(run("np"), run("np", seed=1))
    assert run("pt").shape == (1, 3, 16, 16) and run("latent").shape == (1, 4, 8, 8)
    assert run("pil")[0].size == (16, 16)


def test_every_scheduler_of_chapter_6_runs_in_it(tiny_sd_folder):
    _, folder = tiny_sd_folder
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    from sdlearn.schedulers import DDPMScheduler

    for cls in (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler, PNDMScheduler):
        pipe.scheduler = cls.from_config(dict(pipe.scheduler.config), **({"skip_prk_steps": True} if cls is PNDMScheduler
                                                                           else {}))
        out = pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np",
                   progress=False).images
        assert np.isfinite(out).all(), cls.__name__


def test_errors_and_the_truncation_warning(tiny_sd_folder):
    _, folder = tiny_sd_folder
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    run = dict(num_inference_steps=1, output_type="latent", progress=False)
    with pytest.raises(ValueError, match="empty"):
        pipe([], **run)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        pipe("a red circle", negative_prompt=["x", "y"], **run)
    with pytest.raises(ValueError, match="not both"):
        pipe("a red circle", prompt_embeds=torch.zeros(1, 16, 32), **run)
    with pytest.raises(ValueError, match="multiples of 4"):
        pipe("a red circle", height=18, width=16, **run)
    with pytest.warns(UserWarning, match="dropped"):
        pipe("a red circle above a blue square to the left", **run)
    no_text = StableDiffusionPipeline(pipe.vae, None, None, pipe.unet, pipe.scheduler)
    with pytest.raises(ValueError, match="no text encoder"):
        no_text("a red circle", **run)
    from transformers import CLIPTextConfig, CLIPTextModel

    wide = CLIPTextModel(CLIPTextConfig(hidden_size=48, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
                                        vocab_size=len(pipe.tokenizer), max_position_embeddings=16))
    with pytest.raises(ValueError, match="cross_attention_dim"):
        StableDiffusionPipeline(pipe.vae, wide, pipe.tokenizer, pipe.unet, pipe.scheduler)


def test_a_folder_missing_a_component_is_named(tiny_sd_folder, tmp_path):
    import shutil

    _, folder = tiny_sd_folder
    shutil.copytree(folder, tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "unet")
    with pytest.raises(FileNotFoundError, match="unet/"):
        StableDiffusionPipeline.from_pretrained(tmp_path / "copy")
