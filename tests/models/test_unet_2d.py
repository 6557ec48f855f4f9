"""The UNet: shapes, timesteps, bad inputs, save/load, and the minGPT habit (same weights as diffusers, same output)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sdlearn.models.unet_2d import UNet2DModel, UNetConfig, timestep_embedding

DEFAULT_BLOCKS = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=32,
)
# two resnets per level, attention at two levels, RGB
SECOND_BLOCKS = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    norm_num_groups=8,
    attention_head_dim=8,
)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter (GroupNorm scales and zero biases included) non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------- parity with diffusers
@pytest.mark.parametrize("blocks", [DEFAULT_BLOCKS, SECOND_BLOCKS], ids=["default", "two-layers-two-attn-rgb"])
def test_same_weights_same_output_as_diffusers(blocks):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    reference = diffusers.UNet2DModel(**blocks).eval()
    randomise(reference, 1)
    ours = UNet2DModel(UNetConfig(**blocks)).eval()
    assert sorted(ours.state_dict()) == sorted(reference.state_dict()), "parameter names must match diffusers' exactly"
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())

    g = torch.Generator().manual_seed(2)
    size, c = blocks["sample_size"], blocks["in_channels"]
    x = torch.randn(3, c, size, size, generator=g)
    timesteps = [torch.tensor([0, 17, 999]), torch.tensor([0.5, 17.25, 998.9]), torch.tensor(421)]
    with torch.no_grad():
        for t in timesteps:
            expected = reference(x, t).sample
            got = ours(x, t)
            assert got.shape == (3, blocks["out_channels"], size, size)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_timestep_embedding_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.0, 2.5, 999.0])
    for flip, shift, dim in [(True, 0, 32), (False, 1, 16), (True, 1, 7)]:
        expected = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        torch.testing.assert_close(timestep_embedding(t, dim, flip, shift), expected)


def test_timestep_embedding_closed_form():
    t = torch.tensor([3.0])
    emb = timestep_embedding(t, 8, flip_sin_to_cos=False)
    w = 10000.0 ** (-torch.arange(4) / 4)  # w_i = 10000^(-i / half)
    torch.testing.assert_close(emb[0], torch.cat([torch.sin(3 * w), torch.cos(3 * w)]))
    flipped = timestep_embedding(t, 8, flip_sin_to_cos=True)
    torch.testing.assert_close(flipped[0], torch.cat([torch.cos(3 * w), torch.sin(3 * w)]))
    with pytest.raises(ValueError, match="1-D"):
        timestep_embedding(torch.zeros(2, 2), 8)


def test_diffusers_reads_our_folder_and_we_read_theirs(tmp_path, tiny_unet_config):
    diffusers = pytest.importorskip("diffusers")
    ours = UNet2DModel(tiny_unet_config)
    randomise(ours, 3)
    ours.save_pretrained(tmp_path / "ours")
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / "ours").eval()
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3, 500])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t).sample, ours.eval()(x, t), rtol=1e-4, atol=1e-5)

    theirs.save_pretrained(tmp_path / "theirs")
    back = UNet2DModel.from_pretrained(tmp_path / "theirs")
    assert back.config == tiny_unet_config
    with torch.no_grad():
        torch.testing.assert_close(back(x, t), ours(x, t), rtol=1e-4, atol=1e-5)


def test_without_mid_attention_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    blocks = dict(SECOND_BLOCKS, layers_per_block=1)
    torch.manual_seed(0)
    reference = diffusers.UNet2DModel(**blocks, add_attention=False).eval()
    randomise(reference, 6)
    ours = UNet2DModel(UNetConfig(**blocks, add_mid_attention=False)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x, torch.tensor([2, 600])), reference(x, torch.tensor([2, 600])).sample,
                                   rtol=1e-4, atol=1e-5)


def test_diffusers_reads_our_folder_without_mid_attention(tmp_path, tiny_unet_config):
    diffusers = pytest.importorskip("diffusers")
    ours = UNet2DModel(dataclasses.replace(tiny_unet_config, add_mid_attention=False)).eval()
    ours.save_pretrained(tmp_path)
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path).eval()
    assert sorted(theirs.state_dict()) == sorted(ours.state_dict())


def test_diffusers_config_with_single_head_attention(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    blocks = dict(SECOND_BLOCKS, attention_head_dim=None, block_out_channels=(64, 64, 64))
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**blocks).eval()
    randomise(theirs, 4)
    theirs.save_pretrained(tmp_path)
    ours = UNet2DModel.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x, 10), theirs(x, 10).sample, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- shapes, dtypes, timesteps
def test_output_shape_and_dtype(tiny_unet):
    x = torch.randn(4, 1, 16, 16)
    out = tiny_unet(x, torch.tensor([0, 1, 2, 3]))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    with torch.no_grad():
        as_double = tiny_unet.to(torch.float64)(x.double(), 5)
    assert as_double.dtype == torch.float64
    assert tiny_unet.dtype == torch.float64 and tiny_unet.device.type == "cpu"


def test_smaller_and_non_square_inputs(tiny_unet):
    with torch.no_grad():
        assert tiny_unet(torch.randn(1, 1, 8, 24), 3).shape == (1, 1, 8, 24)


def test_scalar_timestep_broadcasts(tiny_unet):
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        by_int = tiny_unet(x, 7)
        by_tensor = tiny_unet(x, torch.tensor([7, 7, 7]))
        by_0d = tiny_unet(x, torch.tensor(7))
    torch.testing.assert_close(by_int, by_tensor)
    torch.testing.assert_close(by_0d, by_tensor)


def test_fractional_timesteps_are_accepted_and_matter(tiny_unet):
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = [tiny_unet(x, t) for t in (10, 10.5, 11)]
        by_float_tensor = tiny_unet(x, torch.tensor([10.5]))
    torch.testing.assert_close(outs[1], by_float_tensor)
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    # the embedding is smooth in t: 10.5 lies between its neighbours far more closely than 10 and 500 do
    with torch.no_grad():
        far = tiny_unet(x, 500)
    assert (outs[1] - outs[0]).abs().max() < (far - outs[0]).abs().max()


def test_batch_items_are_independent(tiny_unet):
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 50, 500])
    with torch.no_grad():
        together = tiny_unet(x, t)
        alone = torch.cat([tiny_unet(x[i : i + 1], t[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter(tiny_unet):
    randomise(tiny_unet, 0)
    tiny_unet(torch.randn(2, 1, 16, 16), torch.tensor([1, 2])).square().mean().backward()
    missing = [n for n, p in tiny_unet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


# ---------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_helpful_errors(tiny_unet):
    with pytest.raises(ValueError, match=r"expects x_t shaped \(B, 1, H, W\).*given RGB"):
        tiny_unet(torch.randn(2, 3, 16, 16), 1)
    with pytest.raises(ValueError, match=r"expects x_t shaped"):
        tiny_unet(torch.randn(16, 16), 1)
    with pytest.raises(ValueError, match="divisible by 2"):
        tiny_unet(torch.randn(2, 1, 15, 16), 1)
    with pytest.raises(ValueError, match="got 3 timesteps for a batch of 2"):
        tiny_unet(torch.randn(2, 1, 16, 16), torch.tensor([1, 2, 3]))


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="one block type per level"):
        UNetConfig(block_out_channels=(32, 64))
    with pytest.raises(ValueError, match="not divisible by norm_num_groups"):
        UNetConfig(block_out_channels=(30, 64, 128))
    with pytest.raises(ValueError, match="must be divisible by 2\\*\\*2"):
        UNetConfig(sample_size=30)
    with pytest.raises(ValueError, match="divisible by attention head_dim"):
        UNet2DModel(UNetConfig(attention_head_dim=48))
    with pytest.raises(dataclasses.FrozenInstanceError):
        UNetConfig().sample_size = 64


# ---------------------------------------------------------------------------- save / load
def test_save_pretrained_round_trip(tmp_path, tiny_unet):
    randomise(tiny_unet, 5)
    tiny_unet.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "UNet2DModel" and config["block_out_channels"] == [8, 16]
    loaded = UNet2DModel.from_pretrained(tmp_path)
    assert loaded.config == tiny_unet.config and not loaded.training
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # within float32 rounding: bitwise equality of two models' forward passes depends on the CPU's kernels
        torch.testing.assert_close(loaded(x, torch.tensor([3, 900])), tiny_unet(x, torch.tensor([3, 900])),
                                   rtol=1e-5, atol=1e-6)
    assert UNetConfig.from_dict(config) == tiny_unet.config


def test_from_pretrained_explains_missing_or_mismatched_files(tmp_path, tiny_unet, tiny_unet_config):
    with pytest.raises(FileNotFoundError, match="neither a folder nor a shipped model"):
        UNet2DModel.from_pretrained(tmp_path / "nowhere")
    tiny_unet.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        UNet2DModel.from_pretrained(tmp_path)
    # weights of a UNet without attention under a config.json that asks for attention
    no_attention = UNetConfig(**dict(tiny_unet_config.to_dict(), down_block_types=("DownBlock2D",) * 2,
                                     up_block_types=("UpBlock2D",) * 2))
    UNet2DModel(no_attention).save_pretrained(tmp_path)
    tiny_unet.save_pretrained(tmp_path / "tiny")
    (tmp_path / "config.json").write_text((tmp_path / "tiny" / "config.json").read_text())
    with pytest.raises(ValueError, match=r"do not fit the model.*missing \['down_blocks.1.attentions"):
        UNet2DModel.from_pretrained(tmp_path)
