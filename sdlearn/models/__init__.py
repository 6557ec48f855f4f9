"""Models: the networks, with diffusers' class, module and config names (the same room as ``diffusers.models``).

- ``unet_2d``: ``UNet2DModel``, the noise-prediction UNet eps_theta(x_t, t) (Ho et al. 2020; diffusers' names).
- ``attention``: the self-attention block inside the UNet and the autoencoder.
- ``autoencoder_kl``: ``AutoencoderKL``, the KL autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1).

Models know nothing of schedulers, pipelines or training: they map tensors to tensors.
"""

from .autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from .unet_2d import UNet2DModel, UNetConfig

__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "UNet2DModel", "UNetConfig"]
