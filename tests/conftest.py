"""Shared fixtures for the sdlearn test suite.

Tests are kept small (tiny UNets, 4x4 to 16x16 images) so the whole suite runs in about a minute
on a 2-core CPU. Tests that compare against diffusers skip themselves when it is not installed
(``pip install sdlearn[test]`` brings it).
"""

from __future__ import annotations

import pytest
import torch

from sdlearn.models.unet_2d import UNet2DModel, UNetConfig

# A UNet small enough to run a forward pass in milliseconds: two levels (16 -> 8 pixels),
# attention at the lower one, GroupNorm with 4 groups.
TINY_UNET = UNetConfig(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    attention_head_dim=8,
    norm_num_groups=4,
)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds (deselect with -m 'not slow')")


@pytest.fixture
def tiny_unet_config() -> UNetConfig:
    return TINY_UNET


@pytest.fixture
def tiny_unet() -> UNet2DModel:
    """A freshly initialised tiny UNet with seeded weights, in eval mode."""
    torch.manual_seed(0)
    return UNet2DModel(TINY_UNET).eval()


# ---------------------------------------------------------------------------- tiny random Stable Diffusion
# diffusers / transformers components built in the tests (nothing is downloaded), for the parity tests.
def bytes_to_unicode() -> list[str]:
    """The 256 characters CLIP's byte-level BPE maps bytes to (the same table as GPT-2's)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def tiny_tokenizer(max_length: int = 16):
    """A CLIPTokenizer over single characters plus a few merges: every lower-case word tokenizes."""
    from transformers import CLIPTokenizer

    chars = bytes_to_unicode()
    merges = [("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r"), ("b", "l"), ("bl", "u"), ("blu", "e</w>")]
    vocab = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars), *(a + b for a, b in merges)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=max_length)


def tiny_sd_components(version: str = "sd1", in_channels: int = 4, seed: int = 0) -> dict:
    """diffusers / transformers components shaped like SD 1.x (conv projections, one head count) or SD 2.x
    (linear projections, head counts per level, v-prediction), small enough to run in milliseconds."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                num_hidden_layers=2, vocab_size=len(tokenizer),
                                                max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1)).eval()
    sd2 = version == "sd2"
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=(2, 4) if sd2 else 2,
        use_linear_projection=sd2).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=8, sample_size=16).eval()
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                        prediction_type="v_prediction" if sd2 else "epsilon")
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                safety_checker=None, feature_extractor=None)


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def tiny_sd_folder(request, tmp_path_factory):
    """(version, folder) of a tiny random SD pipeline saved by diffusers."""
    diffusers = pytest.importorskip("diffusers")
    pipe = diffusers.StableDiffusionPipeline(**tiny_sd_components(request.param), requires_safety_checker=False)
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    pipe.save_pretrained(folder, safe_serialization=True)
    return request.param, folder


@pytest.fixture(scope="session")
def make_tiny_sd():
    """tiny_sd_components itself, for tests that build other variants (a 9-channel inpainting UNet)."""
    pytest.importorskip("diffusers")
    return tiny_sd_components
