"""Pipelines compose models and a scheduler into the sampling loop; nothing else imports them."""

from .ddpm import DDPMPipeline, ImagePipelineOutput
from .latent import LatentDiffusionPipeline

__all__ = ["DDPMPipeline", "ImagePipelineOutput", "LatentDiffusionPipeline"]
