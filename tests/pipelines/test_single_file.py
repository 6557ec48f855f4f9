"""Original single-file checkpoints: sdlearn's writer read back by diffusers' own converter, and sdlearn's reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sdlearn.pipelines.single_file import TEXT, UNET, VAE, _infer_unet_config, _infer_vae_config
from sdlearn.pipelines.stable_diffusion import StableDiffusionPipeline

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders import single_file_utils as sfu  # noqa: E402


@pytest.fixture(scope="module")
def sd1(tiny_sd_folder):
    version, folder = tiny_sd_folder
    if version != "sd1":
        pytest.skip("single files are written for SD 1.x's layout")
    return folder


def test_diffusers_converter_turns_our_single_file_back_into_the_original_state_dicts(sd1, tmp_path):
    ours = StableDiffusionPipeline.from_pretrained(sd1)
    path = tmp_path / "model.safetensors"
    ours.to_single_file(path)
    checkpoint = load_file(path)
    assert any(k.startswith(UNET) for k in checkpoint) and any(k.startswith(VAE) for k in checkpoint)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(sd1, safety_checker=None)
    for name, converted in (
        ("unet", sfu.convert_ldm_unet_checkpoint(checkpoint, dict(theirs.unet.config))),
        ("vae", sfu.convert_ldm_vae_checkpoint(checkpoint, dict(theirs.vae.config))),
        ("text_encoder", sfu.convert_ldm_clip_checkpoint(checkpoint)),
    ):
        original = getattr(theirs, name).state_dict()
        original = {k: v for k, v in original.items() if not k.endswith("position_ids")}
        converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
        if name == "text_encoder":  # the file says text_model.* as original SD files do; transformers 5 drops it
            assert all(k.startswith("text_model.") for k in converted)
            if not any(k.startswith("text_model.") for k in original):
                converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        assert sorted(converted) == sorted(original), name
        different = [k for k in original if not torch.equal(converted[k], original[k])]
        assert not different, (name, different[:3])


def test_from_single_file_gives_the_same_images(sd1, tmp_path):
    folder_pipe = StableDiffusionPipeline.from_pretrained(sd1)
    path = tmp_path / "model.safetensors"
    folder_pipe.to_single_file(path)
    file_pipe = StableDiffusionPipeline.from_single_file(path, config=sd1)

    def draw(pipe):
        return pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np",
                    progress=False).images

    assert np.abs(draw(file_pipe) - draw(folder_pipe)).max() <= 1e-5
    with pytest.raises(ValueError, match="no tokenizer"):
        StableDiffusionPipeline.from_single_file(path)  # no config folder, no tokenizer folder


def test_configs_are_inferred_from_the_tensors(sd1, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(sd1)
    path = tmp_path / "model.safetensors"
    pipe.to_single_file(path)
    sd = load_file(path)
    unet_cfg = _infer_unet_config({k[len(UNET):]: v for k, v in sd.items() if k.startswith(UNET)})
    c = pipe.unet.config
    assert (unet_cfg.block_out_channels, unet_cfg.layers_per_block, unet_cfg.cross_attention_dim) == \
        (c.block_out_channels, c.layers_per_block, c.cross_attention_dim)
    assert unet_cfg.down_block_types == c.down_block_types and unet_cfg.up_block_types == c.up_block_types
    assert unet_cfg.use_linear_projection is False and unet_cfg.heads == (8, 8)  # SD 1.x: 8 heads (not in the file)
    vae_cfg = _infer_vae_config({k[len(VAE):]: v for k, v in sd.items() if k.startswith(VAE)})
    assert vae_cfg.block_out_channels == pipe.vae.config.block_out_channels
    assert vae_cfg.latent_channels == pipe.vae.config.latent_channels


def test_pickles_and_unknown_layouts_are_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not opened")
    with pytest.raises(ValueError, match="pickle.*safetensors"):
        StableDiffusionPipeline.from_single_file(ckpt)
    odd = tmp_path / "odd.safetensors"
    save_file({"transformer.blocks.0.weight": torch.zeros(2), "vae.decoder.weight": torch.zeros(2)}, odd)
    with pytest.raises(ValueError, match="transformer.blocks.0.weight"):
        StableDiffusionPipeline.from_single_file(odd)
    assert TEXT == "cond_stage_model.transformer."
