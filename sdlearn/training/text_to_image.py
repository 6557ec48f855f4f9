"""Training a text-to-image latent diffusion model (shapes-t2i): the data, the frozen text encoder, the export.

    z_0 = scaling_factor * E(image)                    # the shipped VAE, once for the whole training set (cached)
    c   = text_encoder(tokenize(caption))              # the shipped CLIP's text tower, frozen: (N, 32, 64)
    null = text_encoder(tokenize(""))                  # the empty prompt: what guidance's unconditional branch sees
    then sdlearn's one training loop on (z_0, c), dropping c to null with probability 0.1 (classifier-free guidance)
and the trained UNet, the VAE, the text tower and the tokenizer are saved as a StableDiffusionPipeline folder.
"""

from __future__ import annotations

import os

import torch

from ..data.text import load_tokenizer, tokenize
from ..models.autoencoder_kl import AutoencoderKL, encode_dataset
from ..utils.files import atomic_save_file, resolve_pretrained


def load_text_encoder(name_or_folder: str):
    """(CLIPTextModel, tokenizer) of a shipped CLIP: the text tower alone, in eval mode, gradients off."""
    from transformers import CLIPTextModel
    from transformers.utils import logging

    folder = resolve_pretrained(name_or_folder)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the vision tower's weights are left out on purpose; no need to say so
    try:
        text_encoder = CLIPTextModel.from_pretrained(folder).eval().requires_grad_(False)
    finally:
        logging.set_verbosity(verbosity)
    return text_encoder, load_tokenizer(folder)


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, captions: list[str], batch_size: int = 512) -> torch.Tensor:
    """The text encoder's last hidden states (N, model_max_length, width): the tokens cross-attention reads."""
    out = [text_encoder(tokenize(tokenizer, captions[i:i + batch_size]))[0] for i in range(0, len(captions), batch_size)]
    return torch.cat(out)


def text_to_image_training_set(recipe, run_dir: str | None, progress: bool = True):
    """(latents (N, 4, 16, 16), caption embeddings (N, T, d), the empty prompt's embedding (T, d)), cached in
    ``run_dir`` with a stamp of what made them (VAE, text encoder, data, compositions)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..data import load_shapes

    stamp = {"vae": recipe.vae, "text_encoder": recipe.text_encoder, "data": recipe.data,
             "compositions": recipe.compositions}
    cache = os.path.join(run_dir, "training_set.safetensors") if run_dir else None
    if cache and os.path.isfile(cache):
        with safe_open(cache, "pt") as f:
            if f.metadata() == stamp:
                t = load_file(cache)
                return t["latents"], t["embeddings"], t["null"]
    data = load_shapes("train", compositions=recipe.compositions)
    vae = AutoencoderKL.from_pretrained(recipe.vae)
    latents = encode_dataset(vae, data.images, progress=progress) * vae.config.scaling_factor
    text_encoder, tokenizer = load_text_encoder(recipe.text_encoder)
    embeddings = encode_captions(text_encoder, tokenizer, data.captions)
    null = encode_captions(text_encoder, tokenizer, [""])[0]
    if cache:
        os.makedirs(run_dir, exist_ok=True)
        atomic_save_file({"latents": latents, "embeddings": embeddings, "null": null}, cache, metadata=stamp)
    return latents, embeddings, null


def export_text_to_image(recipe, unet, out: str, dtype: torch.dtype = torch.float16):
    """A StableDiffusionPipeline folder: the VAE, the text tower and tokenizer, the UNet, the sampling scheduler."""
    from ..pipelines import StableDiffusionPipeline
    from ..pipelines.ddpm import SCHEDULER_CLASSES

    text_encoder, tokenizer = load_text_encoder(recipe.text_encoder)
    class_name, kwargs = recipe.sampling_scheduler
    pipe = StableDiffusionPipeline(AutoencoderKL.from_pretrained(recipe.vae).to(dtype), text_encoder, tokenizer,
                                   unet.cpu().to(dtype), SCHEDULER_CLASSES[class_name](**kwargs))
    pipe.save_pretrained(out)
    return pipe
