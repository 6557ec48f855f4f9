"""Tiny random Stable Diffusion pipelines built with diffusers and transformers (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch


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
