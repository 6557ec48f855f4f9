"""LatentDiffusionPipeline: the DDPM loop run on an autoencoder's latents (Rombach et al. 2022).

    z_T ~ N(0, I) * init_noise_sigma                 # (B, c, H/f, W/f): f^2 * 3 / c times fewer numbers
    for t in scheduler.timesteps:
        z_t = scheduler.step(unet(scheduler.scale_model_input(z_t, t), t), t, z_t).prev_sample
    x = vae.decode(z_0 / scaling_factor).sample      # back to pixels, once, at the end

The UNet was trained on z_0 = scaling_factor * E(x) (see sdlearn.models.autoencoder_kl.measure_scaling_factor), so the
pipeline divides by the factor before decoding; the VAE itself never applies it. Called like
DDPMPipeline, plus ``output_type="latent"`` to get z_0 without decoding.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from ..utils.files import atomic_write_json
from ..models.unet_2d import UNet2DModel
from ..models.autoencoder_kl import AutoencoderKL
from .pipeline_utils import component_entry
from .ddpm import DDPMPipeline, ImagePipelineOutput, class_condition, read_pipeline_folder, to_output_type


def check_images_fit(pipe, images: torch.Tensor) -> None:
    """Refuse images whose latents would not have the size the pipeline's UNet was trained at."""
    f, size = pipe.vae.config.downsampling_factor, pipe.unet.config.sample_size
    if images.ndim == 4 and tuple(images.shape[-2:]) != (size * f, size * f):
        raise ValueError(f"this pipeline's UNet was trained on {size}x{size} latents, the encodings of "
                         f"{size * f}x{size * f} images (f = {f}); these images are {images.shape[-2]}x{images.shape[-1]}. "
                         f"Pad or resize them to {size * f}x{size * f}.")


class LatentDiffusionPipeline(DDPMPipeline):
    """Unconditional generation in a VAE's latent space with a UNet and any scheduler."""

    def __init__(self, vae: AutoencoderKL, unet: UNet2DModel, scheduler):
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"the UNet takes {unet.config.in_channels} channels but the VAE's latents have "
                             f"{vae.config.latent_channels}: train the UNet with in_channels = out_channels = "
                             "vae.config.latent_channels.")
        super().__init__(unet, scheduler)
        self.vae = vae

    def to(self, device) -> "LatentDiffusionPipeline":
        self.unet.to(device)
        self.vae.to(device)
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        return c.in_channels, c.sample_size, c.sample_size

    @torch.no_grad()
    def decode_latents(self, z0: torch.Tensor) -> torch.Tensor:
        """Scaled latents z_0 -> images in [-1, 1]: x = D(z_0 / scaling_factor)."""
        z = z0.to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents z_0 = scaling_factor * E(x) (the posterior's mode, or a sample
        when a generator is given): what the UNet was trained on."""
        check_images_fit(self, images)
        posterior = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist
        z = posterior.sample(generator) if generator is not None else posterior.mode()
        return z * self.vae.config.scaling_factor

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        num_inference_steps: int = 1000,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable | None = None,
        progress: bool = True,
        eta: float | None = None,
        class_labels=None,
        guidance_scale: float = 4.0,
    ) -> ImagePipelineOutput:
        """Sample ``batch_size`` images (or one per label of ``class_labels``, with classifier-free guidance
        ``guidance_scale``, for a class-conditional UNet). ``latents``: the starting noise z_T (B, c, h, w);
        ``output_type``: "pil", "np", "pt" (decoded images) or "latent" (the scaled z_0, not decoded)."""
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        labels, null, batch_size = class_condition(self.unet, class_labels, batch_size, self.device)
        z0 = self.denoise((batch_size, *self.latent_shape), num_inference_steps, generator, latents,
                          callback_on_step_end, progress, eta, condition=labels, null_condition=null,
                          guidance_scale=guidance_scale)
        if output_type == "latent":
            return ImagePipelineOutput(images=z0)
        return ImagePipelineOutput(images=to_output_type(self.decode_latents(z0), output_type))

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = os.fspath(folder)
        super().save_pretrained(folder)
        self.vae.save_pretrained(os.path.join(folder, "vae"))
        atomic_write_json(os.path.join(folder, "model_index.json"), {
            "_class_name": "LatentDiffusionPipeline",
            "vae": component_entry(self.vae),
            "unet": component_entry(self.unet),
            "scheduler": component_entry(self.scheduler),
        })

    @classmethod
    def from_pretrained(cls, folder_or_name: str | os.PathLike) -> "LatentDiffusionPipeline":
        """A folder written by save_pretrained, or a shipped model by name ("shapes-ldm")."""
        folder, index, scheduler = read_pipeline_folder(folder_or_name)
        if "vae" not in index:
            raise ValueError(f"{folder!r} holds a {index.get('_class_name')} without a vae: load it with "
                             "DDPMPipeline.from_pretrained.")
        return cls(vae=AutoencoderKL.from_pretrained(os.path.join(folder, "vae")),
                   unet=UNet2DModel.from_pretrained(os.path.join(folder, "unet")), scheduler=scheduler)
