"""StableDiffusionInpaintPipeline: repaint the masked region of an image from a prompt, both ways the field uses.

(a) Any text-to-image UNet (4 input channels): re-impose the known region at every step (Avrahami et al. 2023,
    Blended Latent Diffusion). With m the mask at latent size (1 = repaint) and z^img the image's latent:
        z_{t-1} <- m * z_{t-1} + (1 - m) * noised(z^img, t_{next})   # the known part, noised to the next step's t
(b) A 9-channel inpainting UNet (Stable Diffusion's inpainting models): the UNet sees
        [z_t, m, E(image * (1 - m))]                 # latents, mask, masked-image latents: 4 + 1 + 4 channels
    the LDM paper's concatenation conditioning (Rombach et al. 2022, sec. 3.3), and learns to fill the hole.
Randomness is drawn in diffusers' order, so the same generator gives diffusers' image.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .image_processing import preprocess_image, preprocess_mask
from .stable_diffusion import StableDiffusionPipeline, StableDiffusionPipelineOutput
from .stable_diffusion_img2img import img2img_timesteps


def blend_known(latents: torch.Tensor, known_noised: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Blended latent diffusion's step: keep the model's latents where the mask is 1, the known ones elsewhere."""
    return mask * latents + (1 - mask) * known_noised


class StableDiffusionInpaintPipeline(StableDiffusionPipeline):
    """Image + mask + prompt -> image. 4-channel UNets inpaint by blending (a); 9-channel ones by concatenation (b)."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image=None, mask_image=None, strength: float = 1.0,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", callback_on_step_end: Callable | None = None,
                 progress: bool = True) -> StableDiffusionPipelineOutput:
        """Repaint where ``mask_image`` is 1 (white). ``strength`` < 1 starts from the noised image, as img2img."""
        if image is None or mask_image is None:
            raise ValueError("give image= and mask_image= (1 = repaint, 0 = keep).")
        c, c_null = self.encode_prompt(prompt, num_images_per_prompt, guidance_scale > 1, negative_prompt,
                                       prompt_embeds, negative_prompt_embeds)
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        x = preprocess_image(image, multiple)
        m = preprocess_mask(mask_image, multiple)
        if m.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"image is {x.shape[-2]}x{x.shape[-1]} but mask_image is {m.shape[-2]}x{m.shape[-1]}: "
                             "give them the same size.")
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps, _ = img2img_timesteps(self.scheduler, num_inference_steps, strength)
        batch = c.shape[0]
        blending = self.unet.config.in_channels == self.vae.config.latent_channels
        f = self.vae_scale_factor
        shape = (batch, self.vae.config.latent_channels, x.shape[-2] // f, x.shape[-1] // f)

        # latents: diffusers' order of draws (the image's posterior sample when it is needed, then the noise)
        z_img = None
        if blending or (latents is None and strength < 1):
            z_img = self.encode_image(x, generator)
            z_img = z_img.repeat(batch // z_img.shape[0], 1, 1, 1).to(self.unet.dtype)
        if latents is None:
            noise = self.draw_latents(shape, generator, None)
            z_t = noise * self.scheduler.init_noise_sigma if strength == 1 else \
                self.scheduler.add_noise(z_img, noise, timesteps[:1].repeat(batch))
        else:
            noise = self.draw_latents(shape, generator, latents)
            z_t = noise * self.scheduler.init_noise_sigma

        # the mask at latent size, and the masked image's latents (the 9-channel UNet's extra input)
        mask = F.interpolate(m, size=shape[-2:]).to(self.device, self.unet.dtype)  # nearest: (B, 1, h, w)
        masked = x * (m < 0.5)  # the known region; the hole is 0 (grey)
        z_masked = self.encode_image(masked, generator).to(self.unet.dtype)
        mask = mask.repeat(batch // mask.shape[0], 1, 1, 1)
        z_masked = z_masked.repeat(batch // z_masked.shape[0], 1, 1, 1)

        extra, blend = None, None
        if not blending:
            extra = torch.cat([mask, z_masked], dim=1)  # (B, 1 + 4, h, w)
        else:
            def blend(i: int, z: torch.Tensor) -> torch.Tensor:
                known = z_img
                if i < len(timesteps) - 1:  # the known latents noised to the next step's t
                    known = self.scheduler.add_noise(z_img, noise, torch.tensor([timesteps[i + 1]]))
                return blend_known(z, known, mask)

        z_0 = self.denoise_latents(z_t, timesteps, c, c_null, guidance_scale, generator, eta, callback_on_step_end,
                                   progress, extra_channels=extra, blend=blend)
        return self.decode(z_0, output_type)
