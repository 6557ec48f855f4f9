"""Pipelines compose models and a scheduler into the sampling loop (the same room as ``diffusers.pipelines``).

- ``ddpm``: ``DDPMPipeline(unet, scheduler)``, DDPM's Algorithm 2 with any scheduler.
- ``latent_diffusion``: ``LatentDiffusionPipeline(vae, unet, scheduler)``: the same loop on the autoencoder's latents.
- ``ddim_inversion``: deterministic DDIM inversion x_0 -> x_T and reconstruction.
- ``pipeline_utils``: ``DiffusionPipeline.from_pretrained(name or folder)`` returns the class model_index.json names.
"""

from .ddpm import DDPMPipeline, ImagePipelineOutput
from .latent_diffusion import LatentDiffusionPipeline
from .pipeline_utils import DiffusionPipeline
from .stable_diffusion import StableDiffusionPipeline

__all__ = ["DDPMPipeline", "DiffusionPipeline", "ImagePipelineOutput", "LatentDiffusionPipeline",
           "StableDiffusionPipeline"]
