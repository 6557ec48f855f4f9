"""StableDiffusionImg2ImgPipeline: edit an image with a prompt (SDEdit, Meng et al. 2022).

    z_0^img = scaling_factor * E(image)                  # a sample of the VAE posterior
    S' = int(S * strength);  start at the grid's step S - S'
    z_t = sqrt(alpha_bar_t) z_0^img + sqrt(1 - alpha_bar_t) eps   # the forward process (DDPM eq. 4) to that t
    then the text-to-image loop over the remaining S' steps.

``strength`` in (0, 1] is how much noise is added: near 0 the image barely changes, 1 starts from pure noise
(and keeps only the prompt). Randomness is drawn in diffusers' order (the posterior sample, then the noise), so
the same generator gives diffusers' image.
"""

from __future__ import annotations

from typing import Callable

import torch

from .image_processing import preprocess_image
from .stable_diffusion import StableDiffusionPipeline, StableDiffusionPipelineOutput


def img2img_timesteps(scheduler, num_inference_steps: int, strength: float):
    """The grid's last ``int(num_inference_steps * strength)`` timesteps, and the index of the first in the grid."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must lie in (0, 1] (the share of the steps that denoise), got {strength}.")
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    order = getattr(scheduler, "order", 1)
    timesteps = scheduler.timesteps[t_start * order:]
    if len(timesteps) == 0:
        raise ValueError(f"strength {strength} with {num_inference_steps} steps leaves no step to take: raise either.")
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * order)  # schedulers that count their steps start counting there
    return timesteps, t_start


class StableDiffusionImg2ImgPipeline(StableDiffusionPipeline):
    """Image + prompt -> image, with the same components as text to image."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image=None, strength: float = 0.8,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, output_type: str = "pil",
                 callback_on_step_end: Callable | None = None, progress: bool = True) -> StableDiffusionPipelineOutput:
        """Edit ``image`` (PIL, numpy or tensor, see image_processing) towards ``prompt`` with SDEdit."""
        if image is None:
            raise ValueError("give the image to edit: pipe(prompt, image=..., strength=0.8).")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must lie in (0, 1] (the share of the steps that denoise), got {strength}.")
        c, c_null = self.encode_prompt(prompt, num_images_per_prompt, guidance_scale > 1, negative_prompt,
                                       prompt_embeds, negative_prompt_embeds)
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        x = preprocess_image(image, multiple)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps, _ = img2img_timesteps(self.scheduler, num_inference_steps, strength)
        batch = c.shape[0]
        z_img = self.encode_image(x, generator)  # first draw: the posterior sample
        if batch % z_img.shape[0]:
            raise ValueError(f"{z_img.shape[0]} images for {batch} prompts x images per prompt: give one image, or one "
                             "per prompt.")
        z_img = z_img.repeat(batch // z_img.shape[0], 1, 1, 1).to(self.unet.dtype)
        noise = self.draw_latents(z_img.shape, generator, None)  # second draw: the noise
        z_t = self.scheduler.add_noise(z_img, noise, timesteps[:1].repeat(batch))  # forward process to the start t
        z_0 = self.denoise_latents(z_t, timesteps, c, c_null, guidance_scale, generator, eta, callback_on_step_end,
                                   progress)
        return self.decode(z_0, output_type)
