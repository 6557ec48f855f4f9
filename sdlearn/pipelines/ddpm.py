"""DDPMPipeline: the sampling loop of DDPM's Algorithm 2, written once for every scheduler.

    x_T ~ N(0, I) * init_noise_sigma
    for t in scheduler.timesteps:                     # T-1, ..., 0 (or a strided grid)
        model_in = scheduler.scale_model_input(x_t, t)
        eps_pred = unet(model_in, t)
        x_t = scheduler.step(eps_pred, t, x_t, generator).prev_sample
    return x_0

Called like diffusers' ``DDPMPipeline``; ``callback_on_step_end`` sees every intermediate tensor,
which is how the chapter viewers draw x_t, the predicted noise and the predicted x_0 at each step.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..utils.files import atomic_write_json, resolve_pretrained
from ..schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from ..models.unet_2d import UNet2DModel

SCHEDULER_CLASSES = {
    "DDPMScheduler": DDPMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
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


class DDPMPipeline:
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
        batch_size: int = 1,
        num_inference_steps: int = 1000,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable | None = None,
        progress: bool = True,
        eta: float | None = None,
        use_clipped_model_output: bool | None = None,
    ) -> ImagePipelineOutput:
        """Sample ``batch_size`` images with ``num_inference_steps`` reverse steps.

        ``callback_on_step_end(pipeline, i, t, info)`` is called after every step with
        ``info = {"x_t": ..., "model_output": ..., "x0_pred": ..., "x_prev": ...}``.
        ``eta`` (DDIMScheduler only) sets DDIM's noise level: 0 deterministic, 1 DDPM-like.
        ``use_clipped_model_output`` (DDIMScheduler only, as in diffusers' DDIMPipeline; None passes nothing): with
        ``clip_sample``, step with the noise the clipped x0 prediction implies (chapter 6, section 7).
        The same ``generator`` seed gives the same images.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        c = self.unet.config
        x0 = self.denoise((batch_size, c.in_channels, c.sample_size, c.sample_size), num_inference_steps, generator,
                          latents, callback_on_step_end, progress, eta, use_clipped_model_output)
        return ImagePipelineOutput(images=to_output_type(x0, output_type))

    def denoise(self, shape: tuple[int, ...], num_inference_steps: int, generator: torch.Generator | None = None,
                latents: torch.Tensor | None = None, callback_on_step_end: Callable | None = None,
                progress: bool = True, eta: float | None = None,
                use_clipped_model_output: bool | None = None) -> torch.Tensor:
        """The reverse process from x_T ~ N(0, I) (or ``latents``) to x_0, shaped ``shape``: the loop above."""
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

        for i, t in enumerate(tqdm(self.scheduler.timesteps, disable=not progress, desc="sampling")):
            model_in = self.scheduler.scale_model_input(x_t, t)
            model_output = self.unet(model_in, t).to(x_t.dtype)  # eps_theta(x_t, t); fp32 even under autocast
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
            "unet": ["sdlearn", "UNet2DModel"],
            "scheduler": ["sdlearn", type(self.scheduler).__name__],
        })

    @classmethod
    def from_pretrained(cls, folder_or_name: str | os.PathLike) -> "DDPMPipeline":
        """Load a folder written by save_pretrained (or diffusers), or a shipped model by name ("mnist-ddpm")."""
        folder, _, scheduler = read_pipeline_folder(folder_or_name)
        return cls(unet=UNet2DModel.from_pretrained(os.path.join(folder, "unet")), scheduler=scheduler)


def read_pipeline_folder(folder_or_name: str | os.PathLike) -> tuple[str, dict, object]:
    """(folder, model_index.json's contents, the scheduler it names) of a pipeline folder or shipped name."""
    folder = resolve_pretrained(folder_or_name)
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise FileNotFoundError(f"{folder!r} has no model_index.json; is it a pipeline folder?")
    with open(index_path) as f:
        index = json.load(f)
    scheduler_name = index.get("scheduler", [None, "DDPMScheduler"])[1]
    if scheduler_name not in SCHEDULER_CLASSES:
        raise ValueError(f"Scheduler {scheduler_name!r} is not one sdlearn has ({sorted(SCHEDULER_CLASSES)}).")
    return folder, index, SCHEDULER_CLASSES[scheduler_name].from_pretrained(os.path.join(folder, "scheduler"))
