"""DDPMPipeline: the sampling loop of DDPM's Algorithm 2, written once for every scheduler.

    x_T ~ N(0, I) * init_noise_sigma
    for t in scheduler.timesteps:                     # T-1, ..., 0 (or a strided grid)
        model_in = scheduler.scale_model_input(x_t, t)
        eps_pred = unet(model_in, t)
        x_t = scheduler.step(eps_pred, t, x_t, generator).prev_sample
    return x_0

Called like diffusers' ``DDPMPipeline``; ``callback_on_step_end`` sees every intermediate tensor,
which is how the chapter viewers draw x_t, the predicted noise and the predicted x_0 at each step.

A class-conditional UNet is called like diffusers' ``DiTPipeline``: ``pipe(class_labels=[3, 7],
guidance_scale=3.0)``, with classifier-free guidance (Ho & Salimans 2022) in diffusers' convention:

    eps = eps_uncond + s * (eps_cond - eps_uncond)       # s > 1 guides; s <= 1 samples eps_cond alone

(the paper writes (1 + w) eps_cond - w eps_uncond: the same with s = 1 + w). Both branches run as one batch.
The unconditional branch uses the null class, the last label row (``num_class_embeds - 1``).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..utils.files import atomic_write_json
from .pipeline_utils import DiffusionPipeline, component_class, component_entry, read_model_index
from ..schedulers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                          PNDMScheduler)
from ..models.unet_2d import UNet2DModel, condition_kwargs


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6 with s = 1 + w): eps_uncond + s (eps_cond - eps_uncond)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def class_condition(unet, class_labels, batch_size: int | None, device) -> tuple[torch.Tensor | None, object, int]:
    """(labels, null label, batch size) for a pipeline call; (None, None, batch_size) for an unconditional UNet."""
    num = getattr(unet.config, "num_class_embeds", None)
    if class_labels is None:
        if num is not None:
            raise ValueError(f"this model is class-conditional: pass class_labels (integers in [0, {num - 2}]; "
                             f"{num - 1} is the null class), e.g. pipe(class_labels=[3, 7]).")
        return None, None, 1 if batch_size is None else batch_size
    if num is None:
        raise ValueError("this model is unconditional (its UNet has no num_class_embeds): call it without "
                         "class_labels, with batch_size.")
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
    if batch_size is not None and batch_size != len(labels):
        raise ValueError(f"batch_size {batch_size} and {len(labels)} class_labels disagree: give class_labels only "
                         "(one image per label).")
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num - 1:
        raise ValueError(f"class_labels must be integers in [0, {num - 2}] (label {num - 1} is the null class of "
                         f"classifier-free guidance); got {labels.tolist()}.")
    return labels.to(device), num - 1, len(labels)

SCHEDULER_CLASSES = {
    "DDPMScheduler": DDPMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "PNDMScheduler": PNDMScheduler,
}


@dataclass
class ImagePipelineOutput:
    images: object  # list of PIL images, a (B, H, W, C) numpy array in [0, 1], or a (B, C, H, W) tensor


def check_sample_shape(unet, shape: tuple) -> None:
    """A pipeline refuses to sample at a size its UNet was not trained at (the model itself only warns)."""
    size = getattr(unet.config, "sample_size", None)
    if size is not None and len(shape) == 4 and tuple(shape[-2:]) != (size, size):
        raise ValueError(f"this pipeline's UNet was trained on {size}x{size} inputs (unet.config.sample_size); asked "
                         f"for {shape[-2]}x{shape[-1]}. Sample at {size}x{size} (pass latents shaped (B, "
                         f"{unet.config.in_channels}, {size}, {size})), or train a model at the size you want.")


def to_output_type(x: torch.Tensor, output_type: str):
    """Convert samples in [-1, 1] (B, C, H, W) to "pt" (tensor in [0, 1]), "np" (B, H, W, C) or "pil"."""
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
    images = ((x.float() + 1) / 2).clamp(0, 1)  # [-1, 1] -> [0, 1]
    if output_type == "pt":
        return images.cpu()
    arr = images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, C)
    if output_type == "np":
        return arr
    from PIL import Image

    arr8 = (arr * 255).round().astype(np.uint8)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr8]


class DDPMPipeline(DiffusionPipeline):
    """Unconditional image generation with a UNet and any scheduler."""

    def __init__(self, unet: UNet2DModel, scheduler):
        self.unet = unet
        self.scheduler = scheduler

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device) -> "DDPMPipeline":
        self.unet.to(device)
        return self

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
        use_clipped_model_output: bool | None = None,
        class_labels=None,
        guidance_scale: float = 4.0,
    ) -> ImagePipelineOutput:
        """Sample ``batch_size`` images with ``num_inference_steps`` reverse steps.

        ``callback_on_step_end(pipeline, i, t, info)`` is called after every step with
        ``info = {"x_t": ..., "model_output": ..., "x0_pred": ..., "x_prev": ...}``.
        ``eta`` (DDIMScheduler only) sets DDIM's noise level: 0 deterministic, 1 DDPM-like.
        ``use_clipped_model_output`` (DDIMScheduler only, as in diffusers' DDIMPipeline; None passes nothing): with
        ``clip_sample``, step with the noise the clipped x0 prediction implies (chapter 6, section 7).
        ``class_labels`` (a class-conditional UNet): one image per label, guided with ``guidance_scale`` (DiT's
        default, 4; <= 1 turns guidance off). The same ``generator`` seed gives the same images.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        c = self.unet.config
        labels, null, batch_size = class_condition(self.unet, class_labels, batch_size, self.device)
        x0 = self.denoise((batch_size, c.in_channels, c.sample_size, c.sample_size), num_inference_steps, generator,
                          latents, callback_on_step_end, progress, eta, use_clipped_model_output,
                          condition=labels, null_condition=null, guidance_scale=guidance_scale)
        return ImagePipelineOutput(images=to_output_type(x0, output_type))

    def denoise(self, shape: tuple[int, ...], num_inference_steps: int, generator: torch.Generator | None = None,
                latents: torch.Tensor | None = None, callback_on_step_end: Callable | None = None,
                progress: bool = True, eta: float | None = None,
                use_clipped_model_output: bool | None = None, condition: torch.Tensor | None = None,
                null_condition=None, guidance_scale: float = 1.0) -> torch.Tensor:
        """The reverse process from x_T ~ N(0, I) (or ``latents``) to x_0, shaped ``shape``: the loop above.

        ``condition``: class labels (B,) or text embeddings (B, T, C), one per sample; with ``guidance_scale`` > 1
        each step also runs the ``null_condition`` branch (one batch of 2B) and combines them with :func:`guided`.
        """
        from tqdm.auto import tqdm

        if shape[0] < 1:
            raise ValueError(f"batch_size must be at least 1, got {shape[0]}.")
        step_kwargs = {}
        for name, value in (("eta", eta), ("use_clipped_model_output", use_clipped_model_output)):
            if value is None:
                continue
            if name not in inspect.signature(self.scheduler.step).parameters:
                raise ValueError(f"{name} applies to DDIMScheduler only; {type(self.scheduler).__name__} has no "
                                 f"{name}. Use DDIMScheduler.from_config(pipe.scheduler.config).")
            step_kwargs[name] = value
        shape = tuple(shape)
        check_sample_shape(self.unet, shape)
        device = self.device
        if latents is None:
            # draw on the generator's device (CPU by default) so a seed gives the same noise everywhere
            gen_device = generator.device if generator is not None else torch.device("cpu")
            latents = torch.randn(shape, generator=generator, device=gen_device).to(device)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        # the grid first: init_noise_sigma of Euler-type schedulers depends on it
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x_t = latents.to(device) * self.scheduler.init_noise_sigma  # x_T

        do_guidance = condition is not None and guidance_scale > 1
        if do_guidance:  # [null; cond]: the unconditional half first, as diffusers' StableDiffusionPipeline
            null = torch.as_tensor(null_condition, dtype=condition.dtype, device=condition.device).expand_as(condition)
            condition = torch.cat([null, condition])
        for i, t in enumerate(tqdm(self.scheduler.timesteps, disable=not progress, desc="sampling")):
            model_in = self.scheduler.scale_model_input(x_t, t)
            if do_guidance:
                both = self.unet(torch.cat([model_in, model_in]), t, **condition_kwargs(condition)).to(x_t.dtype)
                eps_uncond, eps_cond = both.chunk(2)  # (B, C, H, W) each
                model_output = guided(eps_uncond, eps_cond, guidance_scale)
            else:  # eps_theta(x_t, t[, c]); fp32 even under autocast
                model_output = self.unet(model_in, t, **condition_kwargs(condition)).to(x_t.dtype)
            out = self.scheduler.step(model_output, t, x_t, generator=generator, **step_kwargs)
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, int(t) if not torch.is_floating_point(t) else float(t), {
                    "x_t": x_t, "model_output": model_output, "x0_pred": out.pred_original_sample,
                    "x_prev": out.prev_sample})
            x_t = out.prev_sample
        return x_t

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """A folder per component plus model_index.json: the layout diffusers uses."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        self.unet.save_pretrained(os.path.join(folder, "unet"))
        self.scheduler.save_pretrained(os.path.join(folder, "scheduler"))
        atomic_write_json(os.path.join(folder, "model_index.json"), {
            "_class_name": "DDPMPipeline",
            "unet": component_entry(self.unet),
            "scheduler": component_entry(self.scheduler),
        })

    @classmethod
    def from_pretrained(cls, folder_or_name: str | os.PathLike) -> "DDPMPipeline":
        """Load a folder written by save_pretrained (or diffusers), or a shipped model by name ("mnist-ddpm")."""
        folder, _, scheduler = read_pipeline_folder(folder_or_name)
        return cls(unet=UNet2DModel.from_pretrained(os.path.join(folder, "unet")), scheduler=scheduler)


def read_pipeline_folder(folder_or_name: str | os.PathLike) -> tuple[str, dict, object]:
    """(folder, model_index.json's contents, the scheduler it names) of a pipeline folder or shipped name."""
    folder, index = read_model_index(folder_or_name)
    scheduler_name = component_class(index, "scheduler") if "scheduler" in index else "DDPMScheduler"
    if scheduler_name not in SCHEDULER_CLASSES:
        raise ValueError(f"Scheduler {scheduler_name!r} is not one sdlearn has ({sorted(SCHEDULER_CLASSES)}); load "
                         "the pipeline with another: pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config).")
    return folder, index, SCHEDULER_CLASSES[scheduler_name].from_pretrained(os.path.join(folder, "scheduler"))
