"""Advice for inputs a model cannot use as they are: what the channels mean, and the size the model learned.

Shared by UNet2DModel and AutoencoderKL. A wrong channel count is an error (the first convolution cannot run);
a spatial size other than ``config.sample_size`` only a warning (convolutions take any size, but the model never
saw it: MNIST's 28x28 digits, for one, are padded to the 32x32 the course's models were trained on).
"""

from __future__ import annotations


def channel_advice(shape: tuple, channels: int) -> str:
    """What to do when an input's channels are not the model's: what the channels mean, and a fix for each case."""
    meaning = {1: "1 channel: grayscale (the digits)", 3: "3 channels: RGB", 4: "4 channels: a VAE's latents"}
    expected = meaning.get(channels, f"{channels} channels")
    if len(shape) == 3 and shape[0] == channels:
        return f"This is one image ({expected}): add a batch dimension with x.unsqueeze(0)."
    if len(shape) == 3 and channels == 1:
        return "The channel dimension is missing (a batch of grayscale images, (B, H, W)): add it with x.unsqueeze(1)."
    if len(shape) == 4 and shape[-1] == channels and shape[1] != channels:
        return ("The channels come last (B, H, W, C), as in PIL or numpy images: move them with x.permute(0, 3, 1, 2).")
    if len(shape) == 4 and channels == 1 and shape[1] == 3:
        return ("The model expects grayscale (1 channel) and was given RGB (3): convert with x.mean(dim=1, keepdim=True), "
                "or use a model trained on RGB images.")
    if len(shape) == 4 and channels == 3 and shape[1] == 1:
        return "The model expects RGB (3 channels) and was given grayscale (1): repeat it with x.repeat(1, 3, 1, 1)."
    if len(shape) == 4 and channels == 4 and shape[1] in (1, 3):
        return ("This UNet works on a VAE's 4-channel latents, not on images: encode them first, "
                "z_0 = vae.config.scaling_factor * vae.encode(x).latent_dist.mode().")
    return f"The model's input has {expected}; give it tensors shaped (B, {channels}, H, W)."


def size_advice(size: tuple, sample_size: int, model: str) -> str:
    """The warning for an input whose H x W is not the size the model was trained at."""
    h, w = size
    text = (f"{model} was trained on {sample_size}x{sample_size} inputs (config.sample_size) and was given {h}x{w}: "
            "it runs (convolutions take any size), but the results are not what it learned.")
    if sample_size - h == 4 and sample_size - w == 4:
        text += (f" 28x28 MNIST digits are padded to 32x32 for these models: torch.nn.functional.pad(x, (2, 2, 2, 2), "
                 "value=-1.0) on images in [-1, 1] (black borders), as sdlearn.data.load_digits does.")
    else:
        text += f" Pad or resize the inputs to {sample_size}x{sample_size}."
    return text
