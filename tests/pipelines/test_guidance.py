"""Classifier-free guidance and class-conditional pipelines; DiffusionPipeline.from_pretrained for any folder."""

from __future__ import annotations

import json

import pytest
import torch

from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from sdlearn.models.unet_2d import UNet2DModel, UNetConfig
from sdlearn.pipelines import DDPMPipeline, DiffusionPipeline, LatentDiffusionPipeline
from sdlearn.pipelines.ddpm import guided
from sdlearn.schedulers import DDIMScheduler, DDPMScheduler

COND = UNetConfig(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                  layers_per_block=1, attention_head_dim=8, norm_num_groups=4, num_class_embeds=4)  # 3 classes + null
PLAIN = UNetConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
                   down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)


@pytest.fixture
def pipe():
    torch.manual_seed(0)
    unet = UNet2DModel(COND).eval()
    with torch.no_grad():
        unet.class_embedding.weight.mul_(20)  # make the label matter in a random net
    return DDPMPipeline(unet, DDIMScheduler(num_train_timesteps=100, clip_sample=False))


def test_the_guidance_formula_at_0_1_and_7_5():
    uncond, cond = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(guided(uncond, cond, 0.0), uncond)  # s = 0: the unconditional model
    assert torch.allclose(guided(uncond, cond, 1.0), cond, atol=1e-6)  # s = 1: the conditional model
    w = 6.5  # the paper's (1 + w) eps_cond - w eps_uncond with s = 1 + w
    assert torch.allclose(guided(uncond, cond, 7.5), (1 + w) * cond - w * uncond, atol=1e-6)


def test_guided_step_runs_both_branches_as_one_batch(pipe):
    """Each step's model output is eps_null + s (eps_c - eps_null), from one UNet call on a batch of 2B."""
    calls, seen = [], []
    original = pipe.unet.forward

    def spy(sample, t, class_labels=None):
        calls.append((sample.shape[0], class_labels.tolist()))
        return original(sample, t, class_labels=class_labels)

    pipe.unet.forward = spy
    g = torch.Generator().manual_seed(0)
    pipe(class_labels=[0, 2], guidance_scale=3.0, num_inference_steps=3, generator=g, output_type="pt",
         progress=False, callback_on_step_end=lambda p, i, t, info: seen.append((t, info["x_t"], info["model_output"])))
    assert calls == [(4, [3, 3, 0, 2])] * 3  # the null class (3) first, then the requested ones
    pipe.unet.forward = original
    t, x_t, output = seen[0]
    with torch.no_grad():
        eps_null = pipe.unet(x_t, t, class_labels=torch.tensor([3, 3]))
        eps_cond = pipe.unet(x_t, t, class_labels=torch.tensor([0, 2]))
    assert torch.allclose(output, eps_null + 3.0 * (eps_cond - eps_null), atol=1e-5)


def test_guidance_one_is_the_conditional_model_alone_and_labels_change_images(pipe):
    def draw(labels, s):
        g = torch.Generator().manual_seed(1)
        return pipe(class_labels=labels, guidance_scale=s, num_inference_steps=4, generator=g, output_type="pt",
                    progress=False).images

    assert torch.equal(draw([1, 1], 1.0), draw([1, 1], 1.0))  # same seed, same images
    assert not torch.allclose(draw([1, 1], 1.0), draw([2, 2], 1.0))  # the label steers the sample
    assert not torch.allclose(draw([1, 1], 1.0), draw([1, 1], 3.0))  # guidance changes it


def test_class_label_errors(pipe):
    with pytest.raises(ValueError, match="pass class_labels"):
        pipe(batch_size=2, num_inference_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        pipe(class_labels=[0, 3], num_inference_steps=2, progress=False)  # 3 is the null class
    with pytest.raises(ValueError, match="disagree"):
        pipe(batch_size=3, class_labels=[0, 1], num_inference_steps=2, progress=False)
    plain = DDPMPipeline(UNet2DModel(COND.__class__(**{**COND.to_dict(), "num_class_embeds": None})),
                         DDPMScheduler(num_train_timesteps=100))
    with pytest.raises(ValueError, match="unconditional"):
        plain(class_labels=[0], num_inference_steps=2, progress=False)


def test_latent_pipeline_takes_class_labels_and_round_trips_through_diffusion_pipeline(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderKLConfig.with_factor(2, (8, 8), in_channels=1, out_channels=1, latent_channels=1,
                                                        layers_per_block=1, norm_num_groups=4, sample_size=16))
    pipe = LatentDiffusionPipeline(vae.eval(), UNet2DModel(COND).eval(), DDIMScheduler(num_train_timesteps=100))
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is LatentDiffusionPipeline and type(loaded.scheduler) is DDIMScheduler

    def draw(p):
        return p(class_labels=[0, 1, 2], guidance_scale=2.0, num_inference_steps=3,
                 generator=torch.Generator().manual_seed(0), output_type="np", progress=False).images

    assert draw(loaded).shape == (3, 16, 16, 1) and (draw(loaded) == draw(pipe)).all()


def test_diffusion_pipeline_loads_every_shipped_pipeline_and_reads_both_spellings(tmp_path):
    assert type(DiffusionPipeline.from_pretrained("mnist-ddpm")) is DDPMPipeline  # written as ["sdlearn", ...]
    assert type(DiffusionPipeline.from_pretrained("shapes-ldm")) is LatentDiffusionPipeline
    pipe = DDPMPipeline(UNet2DModel(PLAIN),
                        DDPMScheduler(num_train_timesteps=100))
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index == {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                     "scheduler": ["diffusers", "DDPMScheduler"]}
    index["safety_checker"] = [None, None]  # an optional component left out loads as None (and is ignored here)
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert type(DiffusionPipeline.from_pretrained(tmp_path)) is DDPMPipeline
    index["_class_name"] = "KandinskyPipeline"
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="KandinskyPipeline"):
        DiffusionPipeline.from_pretrained(tmp_path)


def test_diffusers_loads_an_sdlearn_pipeline_folder_and_draws_the_same_image(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = UNet2DModel(PLAIN).eval()
    ours = DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=100))
    ours.save_pretrained(tmp_path)
    theirs = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    x = noise.clone()
    theirs.scheduler.set_timesteps(5)
    ours.scheduler.set_timesteps(5)
    with torch.no_grad():
        for t in theirs.scheduler.timesteps:
            x = theirs.scheduler.step(theirs.unet(x, t).sample, t, x, generator=torch.Generator().manual_seed(int(t))
                                      ).prev_sample
        y = noise.clone()
        for t in ours.scheduler.timesteps:
            y = ours.scheduler.step(ours.unet(y, t), t, y, generator=torch.Generator().manual_seed(int(t))).prev_sample
    assert (x - y).abs().max() < 1e-4
