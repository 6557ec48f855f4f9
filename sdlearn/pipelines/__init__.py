"""Pipelines compose models and a scheduler into the sampling loop (the same room as ``diffusers.pipelines``).

- ``ddpm``: ``DDPMPipeline(unet, scheduler)``, DDPM's Algorithm 2 with any scheduler.
- ``latent_diffusion``: ``LatentDiffusionPipeline(vae, unet, scheduler)``: the same loop on the autoencoder's latents.
- ``ddim_inversion``: deterministic DDIM inversion x_0 -> x_T and reconstruction.
- ``stable_diffusion``: ``StableDiffusionPipeline`` (text to image), with ``stable_diffusion_img2img`` (SDEdit) and
  ``stable_diffusion_inpaint`` (blended, or a 9-channel UNet) over the same loop; ``image_processing``: inputs.
- ``pipeline_utils``: ``DiffusionPipeline.from_pretrained(name or folder)`` returns the class model_index.json names.
"""

from .ddpm import DDPMPipeline, ImagePipelineOutput
from .latent_diffusion import LatentDiffusionPipeline
from .pipeline_utils import DiffusionPipeline
from .stable_diffusion import StableDiffusionPipeline
from .stable_diffusion_img2img import StableDiffusionImg2ImgPipeline
from .stable_diffusion_inpaint import StableDiffusionInpaintPipeline

__all__ = ["DDPMPipeline", "DiffusionPipeline", "ImagePipelineOutput", "LatentDiffusionPipeline",
           "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionPipeline"]
