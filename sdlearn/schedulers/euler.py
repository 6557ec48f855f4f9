"""Euler steps of the probability-flow ODE, in Karras et al.'s sigma parameterisation.

Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based Generative Models" (2022).
Divide x_t by sqrt(alpha_bar_t) and DDPM's forward process becomes "add noise of size sigma":
    x = x_0 + sigma eps,   sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)      (Karras Table 1, VP column)
The sample moves along the probability-flow ODE (eq. 1 with sigma(t) = t, and eq. 3 for the score):
    dx / dsigma = (x - D(x; sigma)) / sigma = eps_pred,   D = the denoiser's estimate of x_0 (x0_pred)
and one Euler step from sigma to sigma_next is (Algorithm 1, lines 4-5, without Heun's correction):
    x_next = x + (sigma_next - sigma) * (x - x0_pred) / sigma
The model was trained on x_t = x / sqrt(sigma^2 + 1), so ``scale_model_input`` divides by that, and the
loop starts from noise of size sigma_max (``init_noise_sigma``). With S_churn > 0 each step first adds
noise to raise sigma to sigma_hat (Algorithm 2, lines 4-6).

DDIM with eta = 0 is exactly this Euler step (DDIM eqs. 13-14): the two differ only in the scaling of x.
Timesteps follow diffusers' EulerDiscreteScheduler: the "linspace" grid keeps its fractional points and
sigma is linearly interpolated between the training steps around them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .base import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    SchedulerMixinLite,
    SchedulerOutput,
    build_noise_tables,
    check_choice,
    locate_step,
    randn,
    spaced_timesteps,
)
from .ddpm import _check_step_inputs, _expand

FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


def sigmas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) = 1 / sqrt(SNR_t).

    The size of the noise once x_t is divided by sqrt(alpha_bar_t): x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps.
    """
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def interpolate_sigmas(timesteps: np.ndarray, train_sigmas: torch.Tensor) -> np.ndarray:
    """sigma at (possibly fractional) timesteps, linear between the training steps 0, 1, ..., T-1 (float64)."""
    train_sigmas = np.asarray(train_sigmas.cpu().numpy())
    return np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)


def final_sigma(final_sigmas_type: str, alphas_cumprod: torch.Tensor) -> float:
    """Where the last step lands: sigma = 0 (the clean sample) or sigma of training step 0 ("sigma_min")."""
    if final_sigmas_type == "zero":
        return 0.0
    return float(sigmas_from_alpha_bar(alphas_cumprod[0]))


def zero_snr_safe(alphas_cumprod: torch.Tensor, rescale_betas_zero_snr: bool) -> torch.Tensor:
    """With zero terminal SNR alpha_bar_{T-1} = 0 and sigma would be infinite: use 2^-24 instead, as diffusers does."""
    if rescale_betas_zero_snr:
        alphas_cumprod = alphas_cumprod.clone()
        alphas_cumprod[-1] = 2**-24
    return alphas_cumprod


class EulerDiscreteScheduler(SchedulerMixinLite):
    """Euler sampler of the probability-flow ODE with diffusers' interface, config names and defaults."""

    unsupported_options = {
        "trained_betas": (None,),
        "interpolation_type": ("linear",),
        "use_karras_sigmas": (False, None),
        "use_exponential_sigmas": (False, None),
        "use_beta_sigmas": (False, None),  # (sigma_min / sigma_max only matter for these three, so they pass)
        "timestep_type": ("discrete",),
    }

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        self._register_config(locals())
        self.betas, self.alphas, alphas_cumprod = build_noise_tables(
            num_train_timesteps, beta_start, beta_end, beta_schedule, rescale_betas_zero_snr
        )
        self.alphas_cumprod = zero_snr_safe(alphas_cumprod, rescale_betas_zero_snr)
        self.train_sigmas = sigmas_from_alpha_bar(self.alphas_cumprod)  # (T,), sigma of each training step, float32
        # before set_timesteps: every training step, T-1 down to 0, then sigma = 0
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.float32)
        self.sigmas = torch.cat([self.train_sigmas.flip(0), torch.zeros(1)])
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._scaled_input = False

    @property
    def init_noise_sigma(self) -> float:
        """Size of the starting noise: sigma_max for "linspace"/"trailing" (their grid starts at T-1);
        sqrt(sigma_max^2 + 1) for "leading", as diffusers does for that spacing."""
        sigma_max = float(self.sigmas.max())
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return sigma_max
        return (sigma_max**2 + 1) ** 0.5

    @property
    def step_index(self) -> int | None:
        """How many steps of the current grid are done (None before the first one)."""
        return self._step_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at grid position ``begin_index`` (image-to-image starts part-way down the grid)."""
        self._begin_index = begin_index

    # ------------------------------------------------------------------ grid
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the S timesteps (float32; fractional with "linspace") and their S + 1 sigmas (the last is 0)."""
        c = self.config
        T = c.num_train_timesteps
        grid = spaced_timesteps(num_inference_steps, T, c.timestep_spacing, c.steps_offset).numpy()  # checks S, spacing
        if c.timestep_spacing == "linspace":
            timesteps = np.linspace(0, T - 1, num_inference_steps, dtype=np.float32)[::-1].copy()  # not rounded
        else:
            timesteps = grid.astype(np.float32)
        sigmas = interpolate_sigmas(timesteps, self.train_sigmas)  # (S,), float64
        sigmas = np.concatenate([sigmas, [final_sigma(c.final_sigmas_type, self.alphas_cumprod)]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)  # (S + 1,), kept on the CPU
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self.num_inference_steps = num_inference_steps
        self._step_index = None
        self._begin_index = None

    def _require_timesteps(self, what: str) -> None:
        if self.num_inference_steps is None:
            raise ValueError(f"call set_timesteps() before {what}: the scheduler needs the number of inference steps.")

    def _locate(self, timestep) -> int:
        self._step_index = locate_step(self.timesteps, self._step_index, self._begin_index, timestep)
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """What the model was trained on: x_t = x / sqrt(sigma^2 + 1) (since alpha_bar = 1 / (1 + sigma^2))."""
        self._require_timesteps("scale_model_input()")
        sigma = self.sigmas[self._locate(timestep)]
        self._scaled_input = True
        return sample / ((sigma**2 + 1) ** 0.5)

    # ------------------------------------------------------------------ math
    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
    ) -> SchedulerOutput:
        """One Euler step of the probability-flow ODE, from sigma to the next sigma of the grid.

        | code          | Karras et al. 2022               |
        |---------------|----------------------------------|
        | sample        | x_i (at noise level t_i = sigma) |
        | sigma         | t_i = sigma(t_i)                 |
        | sigma_hat     | t-hat_i (raised by S_churn)      |
        | x0_pred       | D_theta(x; sigma), the denoiser  |
        | derivative    | d_i = (x - D) / sigma, eq. 1 + 3 |
        | sigma_next    | t_{i+1}                          |

        Deterministic unless ``s_churn`` > 0 (Algorithm 2: gamma = min(S_churn / S, sqrt(2) - 1) for
        sigma in [s_tmin, s_tmax], fresh noise scaled by ``s_noise`` drawn from ``generator``). As in diffusers,
        the churn noise is added after the model was evaluated at sigma; Algorithm 2 evaluates it at sigma_hat.
        """
        self._require_timesteps("step()")
        _check_step_inputs(model_output, sample)
        i = self._locate(timestep)
        if not self._scaled_input:
            warnings.warn(
                "call scale_model_input(x, t) before the model and step(): the model expects x / sqrt(sigma^2 + 1).",
                UserWarning,
                stacklevel=2,
            )
        sample = sample.to(torch.float32)
        sigma = self.sigmas[i]

        # 1. churn (Algorithm 2, lines 4-6): raise the noise level from sigma to sigma_hat with fresh noise
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            z = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + z * s_noise * (sigma_hat**2 - sigma**2) ** 0.5

        # 2. the denoiser's x_0 (the x in sigma space is x_0 + sigma eps)
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            x0_pred = sample - sigma_hat * model_output
        elif prediction_type == "v_prediction":  # x0 = sqrt(ab) x_t - sqrt(1-ab) v, with x_t = x / sqrt(sigma^2+1)
            x0_pred = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:  # "sample"
            x0_pred = model_output

        # 3. Euler step along dx/dsigma = (x - x0_pred) / sigma (Algorithm 1, lines 4-5)
        derivative = (sample - x0_pred) / sigma_hat
        dt = self.sigmas[i + 1] - sigma_hat
        x_prev = sample + derivative * dt

        self._step_index = i + 1
        return SchedulerOutput(prev_sample=x_prev.to(model_output.dtype), pred_original_sample=x0_pred)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = x_0 + sigma eps at grid timesteps (sigma space: the result is x_t * sqrt(1 + sigma^2))."""
        self._require_timesteps("add_noise()")
        sigma = grid_sigmas(self, timesteps).to(device=original_samples.device, dtype=original_samples.dtype)
        return original_samples + _expand(sigma, original_samples) * noise


def grid_sigmas(scheduler, timesteps) -> torch.Tensor:
    """sigma of each of ``timesteps`` (grid points of ``scheduler.timesteps``), one per sample, for add_noise.

    After ``set_begin_index`` every sample gets the sigma of the current (or the begin) position, as in diffusers.
    """
    timesteps = torch.as_tensor(timesteps).flatten()
    if scheduler._begin_index is None:
        indices = [locate_step(scheduler.timesteps, None, None, t) for t in timesteps]
    else:
        index = scheduler._step_index if scheduler._step_index is not None else scheduler._begin_index
        indices = [index] * len(timesteps)
    return scheduler.sigmas[indices]
