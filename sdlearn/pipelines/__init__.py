"""Pipelines compose a model and a scheduler into the sampling loop; nothing else imports them."""

from .ddpm import DDPMPipeline, ImagePipelineOutput

__all__ = ["DDPMPipeline", "ImagePipelineOutput"]
