"""StableDiffusionPipeline: text to image with a latent diffusion model (Rombach et al. 2022), Stable Diffusion's way.

    c      = text_encoder(tokenizer(prompt))                 # tau_theta(y): (B, 77, d) token embeddings
    c_null = text_encoder(tokenizer(negative_prompt or ""))  # the "unconditional" branch of guidance
    z_T ~ N(0, I) * init_noise_sigma                         # (B, 4, H/8, W/8)
    for t in scheduler.timesteps:
        eps_null, eps_c = unet([z_t, z_t], t, [c_null, c])   # one batch of 2B
        eps = eps_null + s * (eps_c - eps_null)              # classifier-free guidance, s = guidance_scale
        z_t = scheduler.step(eps, t, z_t).prev_sample
    image = vae.decode(z_0 / scaling_factor)                 # then the safety checker, if there is one

The components are the seed's list: ``vae``, ``text_encoder`` and ``tokenizer`` (transformers' CLIPTextModel and
CLIPTokenizer), ``unet`` (UNet2DConditionModel), ``scheduler`` (any of chapter 6's), and the optional
``safety_checker`` and ``feature_extractor``. Called like diffusers' pipeline, and with the same components,
latents and prompt it gives diffusers' image (a test shows it). As diffusers does, padding tokens are attended
(no attention mask reaches the UNet), the prompt is encoded once per call, and a negative prompt simply takes
the place of the empty prompt in the unconditional branch.
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from ..models.autoencoder_kl import AutoencoderKL
from ..models.safety_checker import StableDiffusionSafetyChecker
from ..models.unet_2d_condition import UNet2DConditionModel
from ..utils.files import atomic_write_json
from .ddpm import SCHEDULER_CLASSES, guided, to_output_type
from .pipeline_utils import (DIFFUSERS_LAYOUT_VERSION, DiffusionPipeline, component_class, component_entry,
                             read_model_index)


@dataclass
class StableDiffusionPipelineOutput:
    images: object  # list of PIL images, (B, H, W, C) numpy in [0, 1], a (B, C, H, W) tensor, or latents
    nsfw_content_detected: list[bool] | None = None  # the safety checker's verdict per image (None: no checker)


class StableDiffusionPipeline(DiffusionPipeline):
    """Text-to-image generation: the components of Stable Diffusion, sdlearn's code."""

    def __init__(self, vae: AutoencoderKL, text_encoder, tokenizer, unet: UNet2DConditionModel, scheduler,
                 safety_checker=None, feature_extractor=None, requires_safety_checker: bool = False):
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.unet, self.scheduler = unet, scheduler
        self.safety_checker, self.feature_extractor = safety_checker, feature_extractor
        self.requires_safety_checker = requires_safety_checker
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("the safety checker needs its feature_extractor (a CLIPImageProcessor) to prepare the "
                             "images for its CLIP: pass both, or neither.")
        if text_encoder is not None and text_encoder.config.hidden_size != unet.config.cross_attention_dim:
            raise ValueError(f"the text encoder's tokens are {text_encoder.config.hidden_size} wide but the UNet's "
                             f"cross-attention expects {unet.config.cross_attention_dim} (cross_attention_dim): use "
                             "the text encoder the UNet was trained with.")
        if unet.config.in_channels not in (vae.config.latent_channels, 2 * vae.config.latent_channels + 1):
            c = vae.config.latent_channels
            raise ValueError(f"the UNet takes {unet.config.in_channels} input channels but the VAE's latents have {c}: "
                             f"a text-to-image UNet takes {c}, an inpainting UNet {2 * c + 1} (latents, mask, "
                             "masked-image latents).")

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def vae_scale_factor(self) -> int:
        """f: pixels per latent along each side (8 in Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def components(self) -> dict:
        return {"vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "unet": self.unet,
                "scheduler": self.scheduler, "safety_checker": self.safety_checker,
                "feature_extractor": self.feature_extractor}

    def to(self, device) -> "StableDiffusionPipeline":
        for module in (self.vae, self.text_encoder, self.unet, self.safety_checker):
            if isinstance(module, torch.nn.Module):
                module.to(device)
        return self

    # ------------------------------------------------------------------ memory (diffusers' names)
    def enable_attention_slicing(self, slice_size: int | str = "auto") -> None:
        """Compute attention a few (batch x head) rows at a time in the UNet and the VAE: "auto" half of each
        layer's heads, "max" one row at a time, or a number of rows. Same images; less peak memory."""
        from ..models.attention import Attention
        from ..models.tiling import SlicedAttnProcessor

        for model in (self.unet, self.vae):
            for module in model.modules():
                if isinstance(module, Attention):
                    if slice_size == "auto":
                        size = max(1, module.heads // 2)
                    elif slice_size == "max":
                        size = 1
                    elif isinstance(slice_size, int) and slice_size >= 1:
                        size = slice_size
                    else:
                        raise ValueError(f"slice_size is 'auto', 'max' or a whole number >= 1, got {slice_size!r}.")
                    module.processor = SlicedAttnProcessor(size)

    def disable_attention_slicing(self) -> None:
        from ..models.attention import Attention, AttnProcessor

        for model in (self.unet, self.vae):
            for module in model.modules():
                if isinstance(module, Attention):
                    module.processor = AttnProcessor()

    def enable_vae_tiling(self) -> None:
        """Decode large images in overlapping tiles of the VAE's training size (``AutoencoderKL.enable_tiling``)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    # ------------------------------------------------------------------ the prompt
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (B, model_max_length): padded with the end token, as Stable Diffusion's CLIP was trained.
        A prompt longer than the tokenizer's window is truncated, with a warning that names the dropped words."""
        max_length = self.tokenizer.model_max_length
        ids = self.tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                             return_tensors="pt").input_ids
        full = self.tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > ids.shape[-1]:
            for i, prompt in enumerate(prompts):
                dropped = full[i, max_length - 1:-1]
                dropped = dropped[dropped != self.tokenizer.pad_token_id]
                if len(dropped):
                    words = self.tokenizer.decode(dropped)
                    warnings.warn(f"the prompt is longer than the text encoder's {max_length} tokens; these words "
                                  f"were dropped: {words!r}", stacklevel=3)
        return ids

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str] | None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt: str | list[str] | None = None,
                      prompt_embeds: torch.Tensor | None = None,
                      negative_prompt_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(c, c_null): the prompt's token embeddings (B * n, T, d) and, with guidance, the negative prompt's
        (the empty prompt's when none is given)."""
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("give prompt or prompt_embeds, not both.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("give a prompt (a string or a list of strings) or prompt_embeds.")
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts:
                raise ValueError("the prompt list is empty: give at least one prompt.")
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError("this pipeline has no text encoder and tokenizer: give prompt_embeds instead.")
            prompt_embeds = self.text_encoder(self.tokenize(prompts).to(self.device))[0]  # last hidden state
        batch = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.to(self.unet.dtype).repeat_interleave(num_images_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            if negative_prompt is None:
                negatives = [""] * batch
            else:
                negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
                if len(negatives) != batch:
                    raise ValueError(f"{len(negatives)} negative prompts for {batch} prompts: give one negative "
                                     "prompt, or one per prompt.")
            if self.text_encoder is None:
                raise ValueError("this pipeline has no text encoder: give negative_prompt_embeds with prompt_embeds.")
            negative_prompt_embeds = self.text_encoder(self.tokenize(negatives).to(self.device))[0]
        negative_prompt_embeds = negative_prompt_embeds.to(self.unet.dtype).repeat_interleave(num_images_per_prompt, 0)
        if negative_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} and prompt_embeds "
                             f"{tuple(prompt_embeds.shape)} must have the same shape.")
        return prompt_embeds, negative_prompt_embeds

    # ------------------------------------------------------------------ the loop, shared by all three pipelines
    def check_size(self, height: int, width: int) -> None:
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} (the VAE's factor "
                             f"{self.vae_scale_factor} times the UNet's {multiple // self.vae_scale_factor}); got "
                             f"{height}x{width}.")

    def step_kwargs(self, generator, eta: float) -> dict:
        """eta and generator for schedulers whose step takes them (DDIM's eta; the stochastic samplers' noise)."""
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs = {"generator": generator} if "generator" in accepted else {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        return kwargs

    def denoise_latents(self, latents: torch.Tensor, timesteps, prompt_embeds: torch.Tensor,
                        negative_prompt_embeds: torch.Tensor | None, guidance_scale: float, generator, eta: float,
                        callback_on_step_end: Callable | None = None, progress: bool = True,
                        extra_channels: torch.Tensor | None = None, blend=None) -> torch.Tensor:
        """The reverse process over ``timesteps`` with guidance. ``extra_channels`` (mask, masked-image latents) are
        concatenated to the UNet's input (9-channel inpainting); ``blend(i, latents)`` re-imposes known latents
        after each step (inpainting with any text-to-image UNet)."""
        from tqdm.auto import tqdm

        do_guidance = negative_prompt_embeds is not None
        context = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_guidance else prompt_embeds  # [null; c]
        extra = None
        if extra_channels is not None:
            extra = torch.cat([extra_channels, extra_channels]) if do_guidance else extra_channels
        kwargs = self.step_kwargs(generator, eta)
        for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="sampling")):
            model_in = torch.cat([latents, latents]) if do_guidance else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            if extra is not None:
                model_in = torch.cat([model_in, extra], dim=1)  # (2B, 4 + 1 + 4, h, w)
            eps = self.unet(model_in, t, encoder_hidden_states=context)
            if do_guidance:
                eps_null, eps_cond = eps.chunk(2)
                eps = guided(eps_null, eps_cond, guidance_scale)
            x_t = latents
            out = self.scheduler.step(eps, t, latents, **kwargs)
            latents = out.prev_sample
            if blend is not None:
                latents = blend(i, latents)
            if callback_on_step_end is not None:
                info = {"latents": latents, "x_t": x_t, "model_output": eps, "x_prev": latents}
                if getattr(out, "pred_original_sample", None) is not None:
                    info["x0_pred"] = out.pred_original_sample  # the step's estimate of z_0 (DDPM eq. 15)
                callback_on_step_end(self, i, t, info)
        return latents

    def draw_latents(self, shape, generator, latents: torch.Tensor | None) -> torch.Tensor:
        if latents is None:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            latents = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
        elif tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}.")
        return latents.to(self.device, self.unet.dtype)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, generator) -> torch.Tensor:
        """scaling_factor * a sample of q(z | x): the latent the forward process starts from."""
        posterior = self.vae.encode(image.to(self.device, self.vae.dtype)).latent_dist
        return self.vae.config.scaling_factor * posterior.sample(generator)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """D(z / scaling_factor): scaled latents (B, 4, h, w) -> images (B, 3, H, W) in about [-1, 1], float32."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str) -> StableDiffusionPipelineOutput:
        """z_0 -> images (D(z_0 / scaling_factor)), the safety checker's verdict, and the asked-for output type."""
        if output_type == "latent":
            return StableDiffusionPipelineOutput(images=latents, nsfw_content_detected=None)
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        image = self.decode_latents(latents)
        flags = None
        if self.safety_checker is not None:
            image, flags = self.safety_checker.check(image, self.feature_extractor)
        return StableDiffusionPipelineOutput(images=to_output_type(image, output_type), nsfw_content_detected=flags)

    # ------------------------------------------------------------------ text to image
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", callback_on_step_end: Callable | None = None,
                 progress: bool = True) -> StableDiffusionPipelineOutput:
        """Images for ``prompt``. Guidance runs when ``guidance_scale`` > 1 (diffusers' convention).
        ``callback_on_step_end(pipe, i, t, info)`` sees ``info["latents"]`` after every step (and ``"x_t"``,
        ``"model_output"``, and ``"x0_pred"`` where the scheduler's step gives one)."""
        f = self.vae_scale_factor
        height = height or self.unet.config.sample_size * f
        width = width or self.unet.config.sample_size * f
        self.check_size(height, width)
        if self.unet.config.in_channels != self.vae.config.latent_channels:
            raise ValueError(f"this UNet takes {self.unet.config.in_channels} channels (an inpainting UNet): use "
                             "StableDiffusionInpaintPipeline.")
        c, c_null = self.encode_prompt(prompt, num_images_per_prompt, guidance_scale > 1, negative_prompt,
                                       prompt_embeds, negative_prompt_embeds)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        shape = (c.shape[0], self.vae.config.latent_channels, height // f, width // f)
        z_T = self.draw_latents(shape, generator, latents) * self.scheduler.init_noise_sigma
        z_0 = self.denoise_latents(z_T, self.scheduler.timesteps, c, c_null, guidance_scale, generator, eta,
                                   callback_on_step_end, progress)
        return self.decode(z_0, output_type)

    # ------------------------------------------------------------------ save / load
    @classmethod
    def from_single_file(cls, path: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                         config: str | os.PathLike | None = None, prediction_type: str | None = None):
        """An original Stable Diffusion ``.safetensors`` checkpoint (Stability's key names); the tokenizer comes from
        a folder, and so may the configs (see sdlearn.pipelines.single_file)."""
        from .single_file import from_single_file

        return from_single_file(cls, path, tokenizer=tokenizer, config=config, prediction_type=prediction_type)

    def to_single_file(self, path: str | os.PathLike) -> None:
        """This pipeline's vae, text_encoder and unet as one original-layout ``.safetensors`` file."""
        from .single_file import to_single_file

        to_single_file(self, path)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """A folder per component plus model_index.json, diffusers' layout (diffusers' pipeline can load it)."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        index = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_LAYOUT_VERSION,
                 "requires_safety_checker": self.requires_safety_checker}
        for name, component in self.components.items():
            index[name] = component_entry(component)
            if component is not None:
                component.save_pretrained(os.path.join(folder, name))
        atomic_write_json(os.path.join(folder, "model_index.json"), index)

    @classmethod
    def from_pretrained(cls, folder_or_name: str | os.PathLike) -> "StableDiffusionPipeline":
        """A diffusers-format Stable Diffusion folder (SD 1.x or 2.x), or one sdlearn saved; by path or shipped name."""
        from transformers import CLIPTextModel, CLIPTokenizer

        folder, index = read_model_index(folder_or_name)
        for required in ("vae", "unet", "scheduler"):
            if component_class(index, required) is None or not os.path.isdir(os.path.join(folder, required)):
                raise FileNotFoundError(f"{folder!r} has no {required}/ component; a Stable Diffusion folder holds "
                                        "vae/, text_encoder/, tokenizer/, unet/ and scheduler/.")
        scheduler_name = component_class(index, "scheduler")
        if scheduler_name not in SCHEDULER_CLASSES:
            raise ValueError(f"the folder's scheduler is {scheduler_name}, which sdlearn does not have "
                             f"({sorted(SCHEDULER_CLASSES)}); swap one in after loading another way, e.g. "
                             "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config).")

        def part(name, loader):
            present = component_class(index, name) is not None and os.path.isdir(os.path.join(folder, name))
            return loader(os.path.join(folder, name)) if present else None

        pipe = cls(vae=AutoencoderKL.from_pretrained(os.path.join(folder, "vae")),
                   safety_checker=part("safety_checker", StableDiffusionSafetyChecker.from_pretrained),
                   feature_extractor=part("feature_extractor", load_feature_extractor),
                   text_encoder=part("text_encoder", lambda p: CLIPTextModel.from_pretrained(p).eval()),
                   tokenizer=part("tokenizer", CLIPTokenizer.from_pretrained),
                   unet=UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")),
                   scheduler=SCHEDULER_CLASSES[scheduler_name].from_pretrained(os.path.join(folder, "scheduler")),
                   requires_safety_checker=bool(index.get("requires_safety_checker", False)))
        return pipe


def load_feature_extractor(folder: str):
    """transformers' CLIPImageProcessor from a ``feature_extractor/`` folder, with its PIL backend (torchvision,
    which its default backend needs, does not install beside the CPU build of torch)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # older transformers: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as Processor
    return Processor.from_pretrained(folder)
