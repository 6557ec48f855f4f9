"""DPM-Solver++ (2M): a second-order multistep solver of the diffusion ODE, good samples in 10-20 steps.

Lu, Zhou, Bao, Chen, Li, Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models" (2022). Write x_t = alpha_t x_0 + sigma_t eps with alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t)
(careful: this sigma_t is not Euler's sigma; Euler's is sigma_t / alpha_t) and lambda_t = log(alpha_t / sigma_t),
half the log-SNR. With the model's data prediction x0_pred, the probability-flow ODE has the exact solution

    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral from lambda_s to lambda_t of e^lambda x0_pred(lambda) d lambda.

- Hold x0_pred fixed over the step (first order; this is DDIM with eta = 0):
      x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_pred_s,          h = lambda_t - lambda_s
- Let x0_pred vary linearly, its slope taken from the previous step's prediction (Algorithm 2, "2M"):
      r = h_prev / h,  D = (1 + 1/(2r)) x0_pred_s - 1/(2r) x0_pred_prev,
      x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D
  The first step has no previous prediction and is first order; so is the last one when it lands on sigma = 0.

Options and defaults follow diffusers' DPMSolverMultistepScheduler (algorithm_type "dpmsolver++",
solver_order 2, solver_type "midpoint", lower_order_final, final_sigmas_type "zero", "linspace" spacing).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    SchedulerMixinLite,
    SchedulerOutput,
    build_noise_tables,
    check_choice,
    check_num_inference_steps,
    locate_step,
    spaced_timesteps,
)
from .ddpm import _check_step_inputs, _expand
from .euler import (
    FINAL_SIGMAS_TYPES,
    EulerDiscreteScheduler,
    final_sigma,
    grid_sigmas,
    sigmas_from_alpha_bar,
    zero_snr_safe,
)

ALGORITHM_TYPES = ("dpmsolver++",)
SOLVER_TYPES = ("midpoint", "heun")
SOLVER_ORDERS = (1, 2)


def alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From Euler's sigma = sqrt((1 - alpha_bar)/alpha_bar) to DPM-Solver's pair.

    alpha_t = 1 / sqrt(sigma^2 + 1) = sqrt(alpha_bar) and sigma_t = sigma alpha_t = sqrt(1 - alpha_bar).
    """
    alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha_t, sigma * alpha_t


def data_prediction(model_output, sample, alpha_t, sigma_t, prediction_type: str) -> torch.Tensor:
    """x0_pred = (x_t - sigma_t eps) / alpha_t (eq. 4 solved for x_0), model_output itself, or alpha_t x_t - sigma_t v."""
    if prediction_type == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}.")


class DPMSolverMultistepScheduler(SchedulerMixinLite):
    """DPM-Solver++ (2M) with diffusers' interface, config names and defaults."""

    unsupported_options = {
        "trained_betas": (None,),
        "thresholding": (False,),
        "use_karras_sigmas": (False, None),
        "use_exponential_sigmas": (False, None),
        "use_beta_sigmas": (False, None),
        "use_lu_lambdas": (False, None),
        "use_flow_sigmas": (False, None),
        "use_dynamic_shifting": (False, None),
        # only "learned"/"learned_range" mean something here; DDPM's fixed_* values come along in its configs
        "variance_type": (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"),
        "lambda_min_clipped": (-float("inf"),),
    }

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        # configs of the sibling multistep solvers (DEIS, UniPC) map onto DPM-Solver++ 2M, as in diffusers
        algorithm_type = "dpmsolver++" if algorithm_type == "deis" else algorithm_type
        solver_type = "midpoint" if solver_type in ("logrho", "bh1", "bh2") else solver_type
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES)
        check_choice("solver_type", solver_type, SOLVER_TYPES)
        if solver_order not in SOLVER_ORDERS:
            raise ValueError(
                f"solver_order {solver_order!r} is not implemented in sdlearn; choose one of {SOLVER_ORDERS} "
                "(2 is DPM-Solver++ 2M; diffusers also has 3)."
            )
        self._register_config(locals())
        self.betas, self.alphas, alphas_cumprod = build_noise_tables(
            num_train_timesteps, beta_start, beta_end, beta_schedule, rescale_betas_zero_snr
        )
        self.alphas_cumprod = zero_snr_safe(alphas_cumprod, rescale_betas_zero_snr)
        self.train_sigmas = sigmas_from_alpha_bar(self.alphas_cumprod)  # (T,), Euler's sigma of each training step
        self.init_noise_sigma = 1.0  # x_T ~ N(0, I): DPM-Solver works on x_t itself, not x_t / alpha_t
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)
        self.sigmas = torch.cat([self.train_sigmas.flip(0), torch.zeros(1)])
        self.num_inference_steps: int | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.x0_preds: list[torch.Tensor | None] = [None] * self.config.solver_order  # last predictions, oldest first
        self.lower_order_nums = 0  # steps taken so far, up to solver_order: the order we can afford
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # The step counter works as Euler's does: the same property and method.
    step_index = EulerDiscreteScheduler.step_index
    set_begin_index = EulerDiscreteScheduler.set_begin_index

    # ------------------------------------------------------------------ grid
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose S integer timesteps and their S + 1 sigmas, and forget the previous loop's predictions.

        DPM-Solver's own grids: "linspace" and "leading" are the DDIM grids of S + 1 points without their last
        point (the solver ends at sigma = 0 instead); "trailing" is the same as DDIM's.
        """
        c = self.config
        S, T = num_inference_steps, c.num_train_timesteps
        check_num_inference_steps(S, T)
        check_choice("timestep_spacing", c.timestep_spacing, TIMESTEP_SPACINGS)
        if c.timestep_spacing == "linspace":
            timesteps = np.linspace(0, T - 1, S + 1).round()[::-1][:-1].astype(np.int64)
        elif c.timestep_spacing == "leading":
            step_ratio = T // (S + 1)
            timesteps = (np.arange(0, S + 1) * step_ratio).round()[::-1][:-1].astype(np.int64) + c.steps_offset
        else:
            timesteps = spaced_timesteps(S, T, "trailing").numpy()
        # integer timesteps: sigma is read straight off the training table
        sigmas = self.train_sigmas.numpy()[timesteps]
        sigmas = np.concatenate([sigmas, [final_sigma(c.final_sigmas_type, self.alphas_cumprod)]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)  # (S + 1,), kept on the CPU
        self.timesteps = torch.from_numpy(timesteps.copy()).to(device)
        self.num_inference_steps = len(timesteps)
        self._reset_state()

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """DPM-Solver feeds x_t to the model unchanged."""
        return sample

    # ------------------------------------------------------------------ math
    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        """One DPM-Solver++ step from grid point s (``timestep``) to the next one, t.

        | code               | DPM-Solver++ paper                     |
        |--------------------|----------------------------------------|
        | sample             | x-tilde_{t_{i-1}} (x_s)                |
        | alpha_s, sigma_s   | alpha_{t_{i-1}}, sigma_{t_{i-1}}       |
        | alpha_t, sigma_t   | alpha_{t_i}, sigma_{t_i}               |
        | lambda_*           | lambda = log(alpha / sigma)            |
        | h, h_prev          | h_i, h_{i-1}                           |
        | x0_preds[-1], [-2] | x_theta at t_{i-1}, t_{i-2}            |
        | r                  | r_i = h_{i-1} / h_i                    |

        The solver is an ODE solver: it is deterministic, and ``generator`` / ``variance_noise`` are accepted
        only so that every scheduler can be called the same way.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step(): the scheduler needs the number of inference steps.")
        _check_step_inputs(model_output, sample)
        i = self._step_index = locate_step(self.timesteps, self._step_index, self._begin_index, timestep)
        c = self.config
        S = len(self.timesteps)

        # 1. the data prediction x0_pred at this step, remembered for the next one
        alpha_s, sigma_s = alpha_sigma(self.sigmas[i])
        x0_pred = data_prediction(model_output, sample, alpha_s, sigma_s, c.prediction_type)
        self.x0_preds = self.x0_preds[1:] + [x0_pred]

        # 2. which order: 1 on the first step, and on the last when asked (or when it lands on sigma = 0,
        #    where h is infinite and the second-order correction would be 0 * inf)
        last = i == S - 1
        first_order_final = last and (
            c.euler_at_final or (c.lower_order_final and S < 15) or c.final_sigmas_type == "zero"
        )
        order = 1 if (c.solver_order == 1 or self.lower_order_nums < 1 or first_order_final) else 2

        # 3. step from s to t
        sample = sample.to(torch.float32)
        alpha_t, sigma_t = alpha_sigma(self.sigmas[i + 1])
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s = torch.log(alpha_s) - torch.log(sigma_s)
        h = lambda_t - lambda_s
        phi = alpha_t * (torch.exp(-h) - 1.0)  # -alpha_t (1 - e^{-h})
        if order == 2:
            alpha_p, sigma_p = alpha_sigma(self.sigmas[i - 1])
            h_prev = lambda_s - (torch.log(alpha_p) - torch.log(sigma_p))
            if h_prev == 0:  # a repeated timestep ("linspace" with S close to T): no slope to estimate
                order = 1  # (diffusers divides by h_prev = 0 here and returns NaN)
        if order == 1:
            x_prev = (sigma_t / sigma_s) * sample - phi * x0_pred
        else:
            r = h_prev / h
            D0, D1 = self.x0_preds[-1], (1.0 / r) * (self.x0_preds[-1] - self.x0_preds[-2])  # value, slope * h
            if c.solver_type == "midpoint":  # D = D0 + D1 / 2 = (1 + 1/(2r)) x0_s - 1/(2r) x0_prev
                x_prev = (sigma_t / sigma_s) * sample - phi * D0 - 0.5 * phi * D1
            else:  # "heun": the slope weighted by the exact integral of a linear x0_pred
                x_prev = (sigma_t / sigma_s) * sample - phi * D0 + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1

        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self._step_index = i + 1
        return SchedulerOutput(prev_sample=x_prev.to(model_output.dtype), pred_original_sample=x0_pred)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) at grid timesteps: alpha_t x_0 + sigma_t eps (DDPM eq. 4)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before add_noise(): it looks timesteps up in the grid.")
        sigma = grid_sigmas(self, timesteps).to(device=original_samples.device, dtype=original_samples.dtype)
        alpha_t, sigma_t = alpha_sigma(sigma)
        return _expand(alpha_t, original_samples) * original_samples + _expand(sigma_t, original_samples) * noise
