"""Models: the networks, with diffusers' class, module and config names (the same room as ``diffusers.models``).

- ``unet_2d``: ``UNet2DModel``, the noise-prediction UNet eps_theta(x_t, t) (Ho et al. 2020; diffusers' names).
- ``unet_2d_condition``: ``UNet2DConditionModel``, the UNet with cross-attention eps_theta(z_t, t, tau(y)) of latent
  diffusion and Stable Diffusion; ``transformer_2d``: its transformer block (self-, cross-attention, GEGLU).
- ``attention``: one ``Attention`` class for self- and cross-attention, its processors (``AttentionStore`` records the
  maps), and the self-attention block inside the UNet and the autoencoder.
- ``autoencoder_kl``: ``AutoencoderKL``, the KL autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1).

Models know nothing of schedulers, pipelines or training: they map tensors to tensors.
"""

from .autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from .unet_2d import UNet2DModel, UNetConfig
from .unet_2d_condition import UNet2DConditionConfig, UNet2DConditionModel

__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "UNet2DConditionConfig", "UNet2DConditionModel", "UNet2DModel",
           "UNetConfig"]
