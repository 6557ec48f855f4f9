"""DDIM inversion: run the deterministic DDIM sampler backwards, from an image to the noise that makes it.

Song, Meng, Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), sec. 4.3 and 5.4. With eta = 0 the
DDIM update (eq. 12, sigma_t = 0) is an Euler step of an ODE (eqs. 13-14), so it can be run in either direction:

    sampling  (t -> t_prev): x_prev = sqrt(ab_prev) x0_pred + sqrt(1 - ab_prev) eps_pred, eps_pred = eps(x_t, t)
    inversion (t_prev -> t): x_t = sqrt(ab_t) x0_pred + sqrt(1 - ab_t) eps_pred,          eps_pred = eps(x_prev, t_prev)

where x0_pred = (x - sqrt(1 - ab) eps_pred) / sqrt(ab) at the level the step starts from (DDPM eq. 15).
Inversion is exact only as far as eps(x_prev, t_prev) equals the eps(x_t, t) that sampling will use on
the way back, so the round trip image -> noise -> image improves as the steps get smaller.

The noise levels are those of the DDIM sampling loop for ``num_inference_steps``: the scheduler's grid
(``timestep_spacing``, ``steps_offset``) and diffusers' rule "previous timestep = t - T // S" (``rule="paper"``
walks the grid itself instead, as the paper's sub-sequence tau does). The clean end of the path has
alpha_bar = ``final_alpha_cumprod`` (1 with ``set_alpha_to_one``). Clipping x0_pred is always off here: it is
not invertible.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from ..schedulers import DDIMScheduler
from ..schedulers.ddim import ddim_update, predicted_noise
from ..schedulers.ddpm import predicted_original

RULES = ("diffusers", "paper")
MODEL_TIMESTEPS = ("current", "next")


def inversion_scheduler(scheduler) -> DDIMScheduler:
    """A DDIMScheduler with ``scheduler``'s configuration (any sdlearn or diffusers scheduler) and no clipping."""
    return DDIMScheduler.from_config(dict(scheduler.config), clip_sample=False)


def ddim_path(scheduler: DDIMScheduler, num_inference_steps: int, rule: str = "diffusers") -> list[tuple[int, int]]:
    """The (t, t_prev) pairs of the DDIM sampling loop, t descending; t_prev = -1 is the clean end.

    rule "diffusers": t_prev = t - T // S for every spacing (DDIMScheduler.step); "paper": t_prev is the next
    point of the grid (the sub-sequence tau of DDIM sec. 4.2). Both end at -1 (alpha_bar = final_alpha_cumprod).
    Calls ``scheduler.set_timesteps(num_inference_steps)``.
    """
    if rule not in RULES:
        raise ValueError(f"Unknown rule {rule!r}; choose one of {RULES}.")
    scheduler.set_timesteps(num_inference_steps)  # checks S against T
    grid = [int(t) for t in scheduler.timesteps]
    if rule == "diffusers":
        prev = [max(scheduler.previous_timestep(t), -1) for t in grid]
    else:
        prev = grid[1:] + [-1]
    return list(zip(grid, prev))


def _alpha_bar(scheduler: DDIMScheduler, t: int) -> torch.Tensor:
    """alpha_bar of training step t, or of the clean end (t = -1)."""
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def _check_inputs(unet, x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a tensor (B, C, H, W), got {got}.")
    config = getattr(unet, "config", None)
    if config is not None and hasattr(config, "in_channels"):
        want = (config.in_channels, config.sample_size, config.sample_size)
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"{what} has shape {tuple(x.shape)}, but the UNet works on (B, {want[0]}, {want[1]}, "
                             f"{want[2]}) images.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf.")


def _unet_device_dtype(unet, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    param = next(unet.parameters(), None) if hasattr(unet, "parameters") else None
    return (param.device, param.dtype) if param is not None else (x.device, x.dtype)


def _model(unet, x: torch.Tensor, t: int) -> torch.Tensor:
    """The model's output at (x, t), computed on the model's device and dtype, returned like x."""
    device, dtype = _unet_device_dtype(unet, x)
    return unet(x.to(device, dtype), torch.tensor(t, device=device)).to(x.device, x.dtype)


@torch.no_grad()
def ddim_invert(unet, scheduler, x0: torch.Tensor, num_inference_steps: int, callback: Callable | None = None,
                rule: str = "diffusers", model_timestep: str = "current", progress: bool = True) -> torch.Tensor:
    """Deterministic DDIM inversion: the noise x_T from which DDIM (eta = 0) sampling returns ``x0``.

    ``x0``: (B, C, H, W) images in [-1, 1]. Walks the sampling loop's levels in reverse, from the clean end
    to the first grid point, with the eta = 0 update of eq. 12 aimed at the noisier level. ``model_timestep``
    says where the model is asked: "current" = eps(x, t) at the level the step starts from (an Euler step of
    the ODE; at the clean end t = 0), "next" = at the level it goes to (diffusers' DDIMInverseScheduler and
    null-text inversion do this). ``callback(holder, i, t, info)`` is called after each step like a pipeline's
    ``callback_on_step_end`` (``holder.scheduler.timesteps`` is the grid, so viz.TrajectoryRecorder works);
    info has "x_t" (where the step starts), "model_output", "x0_pred" and "x_prev" (where it lands).
    """
    from tqdm.auto import tqdm

    if model_timestep not in MODEL_TIMESTEPS:
        raise ValueError(f"Unknown model_timestep {model_timestep!r}; choose one of {MODEL_TIMESTEPS}.")
    _check_inputs(unet, x0, "x0")
    ddim = inversion_scheduler(scheduler)
    pairs = ddim_path(ddim, num_inference_steps, rule)[::-1]  # (t, t_prev) from the clean end upwards
    prediction_type = ddim.config.prediction_type
    holder = SimpleNamespace(unet=unet, scheduler=ddim)
    x = x0
    bar = tqdm(pairs, disable=not progress, desc=f"DDIM inversion ({num_inference_steps} steps)")
    for i, (t, t_prev) in enumerate(bar):
        ab_from, ab_to = _alpha_bar(ddim, t_prev).to(x.dtype), _alpha_bar(ddim, t).to(x.dtype)
        t_model = max(t_prev, 0) if model_timestep == "current" else t
        model_output = _model(unet, x, t_model)
        eps_pred = predicted_noise(model_output, x, _alpha_bar(ddim, t_model).to(x.dtype), prediction_type)
        x0_pred = (x - (1 - ab_from) ** 0.5 * eps_pred) / ab_from**0.5  # DDPM eq. 15 where the step starts
        x_next = ddim_update(x0_pred, eps_pred, ab_to)  # eq. 12 with sigma = 0, towards more noise
        if callback is not None:
            callback(holder, i, t, {"x_t": x, "model_output": model_output, "x0_pred": x0_pred, "x_prev": x_next})
        x = x_next
    return x


@torch.no_grad()
def ddim_reconstruct(unet, scheduler, x_T: torch.Tensor, num_inference_steps: int, callback: Callable | None = None,
                     rule: str = "diffusers", progress: bool = True) -> torch.Tensor:
    """DDIM sampling with eta = 0 from ``x_T`` (e.g. the output of :func:`ddim_invert`): x_T -> x_0.

    With ``rule="diffusers"`` this is exactly DDIMScheduler.step(eta=0) looped over the grid (with
    clip_sample off); ``rule="paper"`` steps between consecutive grid points instead. ``callback`` as in
    :func:`ddim_invert` (and as a pipeline's ``callback_on_step_end``). Returns (B, C, H, W), not clamped.
    """
    from tqdm.auto import tqdm

    _check_inputs(unet, x_T, "x_T")
    ddim = inversion_scheduler(scheduler)
    pairs = ddim_path(ddim, num_inference_steps, rule)
    prediction_type = ddim.config.prediction_type
    holder = SimpleNamespace(unet=unet, scheduler=ddim)
    x = x_T
    bar = tqdm(pairs, disable=not progress, desc=f"DDIM sampling ({num_inference_steps} steps)")
    for i, (t, t_prev) in enumerate(bar):
        ab_t = _alpha_bar(ddim, t).to(x.dtype)
        model_output = _model(unet, x, t)  # eps_theta(x_t, t)
        x0_pred = predicted_original(model_output, x, ab_t, prediction_type)  # DDPM eq. 15
        eps_pred = predicted_noise(model_output, x, ab_t, prediction_type)
        x_prev = ddim_update(x0_pred, eps_pred, _alpha_bar(ddim, t_prev).to(x.dtype))  # eq. 12, sigma = 0
        if callback is not None:
            callback(holder, i, t, {"x_t": x, "model_output": model_output, "x0_pred": x0_pred, "x_prev": x_prev})
        x = x_prev
    return x


def psnr(mse: float, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(range^2 / MSE) (infinite for a perfect reconstruction)."""
    return float("inf") if mse == 0 else 10 * float(np.log10(data_range**2 / mse))


def round_trip_error(x0: torch.Tensor, x_rec: torch.Tensor) -> float:
    """Mean squared error per pixel on the [0, 1] scale, after clamping the reconstruction to the data range."""
    return float((((x_rec.clamp(-1, 1) - x0) / 2) ** 2).mean())


def inversion_table(pipeline_or_unet, images: torch.Tensor, steps=(10, 20, 50, 100), scheduler=None,
                    batch_size: int = 64, model_timestep: str = "current", progress: bool = True) -> list[dict]:
    """Invert ``images`` and reconstruct them with S DDIM steps for each S in ``steps``.

    ``pipeline_or_unet``: a pipeline (its unet and scheduler are used) or a UNet (then pass ``scheduler``).
    Returns one dict per S: {"steps", "mse" (per pixel, [0, 1] scale), "psnr" (dB), "noise_std" (std of the
    inverted x_T; N(0, I) noise has 1), "seconds" (inversion + reconstruction)}.
    """
    unet = getattr(pipeline_or_unet, "unet", pipeline_or_unet)
    scheduler = scheduler if scheduler is not None else getattr(pipeline_or_unet, "scheduler", None)
    if scheduler is None:
        raise ValueError("inversion_table needs a scheduler: pass a pipeline, or a UNet and scheduler=...")
    _check_inputs(unet, images, "images")
    rows = []
    for S in steps:
        started = time.perf_counter()
        errors, noise = [], []
        for start in range(0, len(images), batch_size):
            x0 = images[start:start + batch_size]
            x_T = ddim_invert(unet, scheduler, x0, S, model_timestep=model_timestep, progress=progress)
            x_rec = ddim_reconstruct(unet, scheduler, x_T, S, progress=progress)
            errors.append(round_trip_error(x0, x_rec.to(x0.device)) * len(x0))
            noise.append(x_T.float().cpu())
        mse = sum(errors) / len(images)
        rows.append({"steps": int(S), "mse": mse, "psnr": psnr(mse), "noise_std": float(torch.cat(noise).std()),
                     "seconds": round(time.perf_counter() - started, 2)})
    return rows


