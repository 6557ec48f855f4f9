"""shapes-t2i's plumbing: the frozen text encoder's tokens, the recipe, and the exported StableDiffusionPipeline."""

from __future__ import annotations

import dataclasses

import torch

from sdlearn.models.unet_2d_condition import UNet2DConditionModel
from sdlearn.pipelines import DiffusionPipeline, StableDiffusionPipeline
from sdlearn.training.recipes import TextToImageRecipe, get_recipe
from sdlearn.training.text_to_image import encode_captions, export_text_to_image, load_text_encoder


def test_recipe_fits_its_vae_and_text_encoder():
    recipe = get_recipe("shapes-t2i")
    assert isinstance(recipe, TextToImageRecipe) and recipe.compositions == "seen"
    text_encoder, tokenizer = load_text_encoder(recipe.text_encoder)
    assert text_encoder.config.hidden_size == recipe.unet.cross_attention_dim
    assert not any(p.requires_grad for p in text_encoder.parameters())  # frozen, as Stable Diffusion freezes CLIP
    tokens = encode_captions(text_encoder, tokenizer, ["a small red circle", ""])
    assert tokens.shape == (2, tokenizer.model_max_length, recipe.unet.cross_attention_dim)
    assert not torch.allclose(tokens[0], tokens[1])  # the empty prompt (guidance's null condition) differs


def test_export_writes_a_stable_diffusion_folder_that_generates(tmp_path):
    recipe = get_recipe("shapes-t2i")
    small = dataclasses.replace(recipe.unet, block_out_channels=(16, 16, 32), norm_num_groups=4)
    torch.manual_seed(0)
    export_text_to_image(recipe, UNet2DConditionModel(small), str(tmp_path))
    pipe = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(pipe) is StableDiffusionPipeline and type(pipe.scheduler).__name__ == "DDIMScheduler"
    images = pipe("a large blue square", num_inference_steps=2, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(0), output_type="np", progress=False).images
    assert images.shape == (1, 64, 64, 3)
