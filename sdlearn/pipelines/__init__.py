"""Pipelines compose models and a scheduler into the sampling loop (the same room as ``diffusers.pipelines``).

- ``ddpm``: ``DDPMPipeline(unet, scheduler)``, DDPM's Algorithm 2 with any scheduler.
- ``latent_diffusion``: ``LatentDiffusionPipeline(vae, unet, scheduler)``: the same loop on the autoencoder's latents.
- ``ddim_inversion``: deterministic DDIM inversion x_0 -> x_T and reconstruction.
"""

from .ddpm import DDPMPipeline, ImagePipelineOutput
from .latent_diffusion import LatentDiffusionPipeline

__all__ = ["DDPMPipeline", "ImagePipelineOutput", "LatentDiffusionPipeline"]
