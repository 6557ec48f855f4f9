"""DDPMPipeline: determinism, output types, the step callback, latents, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdlearn.pipelines import DDPMPipeline
from sdlearn.schedulers import DDPMScheduler

STEPS = 4


@pytest.fixture
def pipe(tiny_unet):
    return DDPMPipeline(tiny_unet, DDPMScheduler(num_train_timesteps=100))


def sample(pipe, seed=0, **kw):
    kw = dict(dict(batch_size=2, num_inference_steps=STEPS, output_type="pt", progress=False), **kw)
    return pipe(generator=torch.Generator().manual_seed(seed), **kw).images


def test_same_seed_same_images(pipe):
    a, b, c = sample(pipe, 0), sample(pipe, 0), sample(pipe, 1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("output_type", ["pt", "np", "pil"])
def test_output_types(pipe, output_type):
    images = sample(pipe, 0, batch_size=3, output_type=output_type)
    reference = sample(pipe, 0, batch_size=3, output_type="pt")  # (B, C, H, W) in [0, 1]
    assert reference.shape == (3, 1, 16, 16) and reference.dtype == torch.float32
    assert reference.min() >= 0 and reference.max() <= 1
    if output_type == "np":
        assert isinstance(images, np.ndarray) and images.shape == (3, 16, 16, 1)
        np.testing.assert_array_equal(images, reference.permute(0, 2, 3, 1).numpy())
    elif output_type == "pil":
        assert isinstance(images, list) and len(images) == 3
        assert all(isinstance(im, Image.Image) and im.size == (16, 16) and im.mode == "L" for im in images)
        expected = (reference[0, 0].numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(images[0]), expected)


def test_rgb_pil_output():
    from sdlearn.pipelines.ddpm import to_output_type

    images = to_output_type(torch.zeros(2, 3, 4, 4), "pil")
    assert images[0].mode == "RGB" and images[0].getpixel((0, 0)) == (128, 128, 128)  # 0 in [-1, 1] is mid-grey


def test_bad_arguments(pipe):
    with pytest.raises(ValueError, match="output_type must be 'pil', 'np' or 'pt'"):
        sample(pipe, 0, output_type="tensor")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        sample(pipe, 0, batch_size=0)
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 1, 16, 16\)"):
        sample(pipe, 0, latents=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="cannot be larger than num_train_timesteps"):
        sample(pipe, 0, num_inference_steps=101)


def test_callback_sees_every_step(pipe):
    calls = []

    def callback(p, i, t, info):
        assert p is pipe
        calls.append((i, t, {k: v.clone() for k, v in info.items()}))

    images = sample(pipe, 0, callback_on_step_end=callback)
    assert [i for i, _, _ in calls] == list(range(STEPS))
    assert [t for _, t, _ in calls] == pipe.scheduler.timesteps.tolist()
    assert all(isinstance(t, int) for _, t, _ in calls)
    for _, t, info in calls:
        assert set(info) == {"x_t", "model_output", "x0_pred", "x_prev"}
        assert all(v.shape == (2, 1, 16, 16) for v in info.values())
    # consecutive steps chain: x_prev of one step is x_t of the next
    for (_, _, a), (_, _, b) in zip(calls, calls[1:]):
        assert torch.equal(a["x_prev"], b["x_t"])
    # the model output is the UNet's prediction at that step
    _, t0, first = calls[0]
    with torch.no_grad():
        torch.testing.assert_close(first["model_output"], pipe.unet(first["x_t"], t0))
    # the last x_prev is the returned image (before the [0, 1] conversion)
    torch.testing.assert_close(images, ((calls[-1][2]["x_prev"] + 1) / 2).clamp(0, 1))


def test_latents_argument_and_manual_loop(pipe):
    """With given latents the pipeline is exactly the loop of Algorithm 2 written by hand."""
    latents = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    images = pipe(batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(9),
                  latents=latents, output_type="pt", progress=False).images
    scheduler, g = DDPMScheduler(num_train_timesteps=100), torch.Generator().manual_seed(9)
    scheduler.set_timesteps(STEPS)
    x = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(pipe.unet(scheduler.scale_model_input(x, t), t), t, x, generator=g).prev_sample
    assert torch.equal(images, ((x + 1) / 2).clamp(0, 1))
    # the noise drawn without latents is the same as randn of the generator
    g = torch.Generator().manual_seed(5)
    drawn = torch.randn(2, 1, 16, 16, generator=g)
    from_latents = pipe(batch_size=2, num_inference_steps=STEPS, generator=g, latents=drawn, output_type="pt",
                        progress=False).images
    assert torch.equal(sample(pipe, 5), from_latents)


def test_save_and_load_round_trip(pipe, tmp_path):
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.01)
    pipe.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_index.json", "scheduler", "unet"]
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["scheduler"][1] == "DDPMScheduler"
    loaded = DDPMPipeline.from_pretrained(tmp_path)
    assert dict(loaded.scheduler.config) == dict(pipe.scheduler.config)
    # within float32 rounding (another model object's kernels may round differently); a wrong weight is far off
    torch.testing.assert_close(sample(loaded, 4), sample(pipe, 4), rtol=1e-5, atol=1e-5)
    assert loaded.device.type == "cpu"


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="shipped models"):
        DDPMPipeline.from_pretrained("no-such-model")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        DDPMPipeline.from_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"scheduler": ["diffusers", "HeunDiscreteScheduler"]}))
    with pytest.raises(ValueError, match="HeunDiscreteScheduler.*from_config"):
        DDPMPipeline.from_pretrained(tmp_path)
