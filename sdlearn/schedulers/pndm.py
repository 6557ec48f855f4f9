"""PNDM: pseudo numerical methods for diffusion models (Liu, Ren, Lin, Zhao, "Pseudo Numerical Methods for
Diffusion Models on Manifolds", ICLR 2022). Stable Diffusion 1.x folders name it as their default scheduler.

The idea: treat DDIM's update as the *transfer part* phi(x_t, eps, t, t - delta) of a numerical method and feed it
a better estimate of the noise, combined from several model evaluations, as classical ODE solvers do.
- eq. 9 (the transfer part, DDIM's deterministic step written for one jump t -> t - delta):
    x_{t-delta} = sqrt(ab_{t-delta} / ab_t) x_t
                  - (ab_{t-delta} - ab_t) / (ab_t sqrt(1 - ab_{t-delta}) + sqrt(ab_t (1 - ab_t) ab_{t-delta})) eps
- PLMS, the pseudo linear multistep method (fourth-order Adams-Bashforth weights): eps' = (55 e_t - 59 e_{t-d} + 37 e_{t-2d} - 9 e_{t-3d}) / 24,
  with lower-order Adams-Bashforth combinations until four outputs exist;
- PRK, pseudo Runge-Kutta (classical fourth-order Runge-Kutta weights), four model calls per step, for the first steps unless ``skip_prk_steps``.
Stable Diffusion uses ``skip_prk_steps=True``: PLMS from the start, warming up as diffusers does (its first
step is taken twice: once with e_t, then again from x_t with (e_t + e_{t-d}) / 2, a second-order start).

sdlearn follows diffusers' implementation (its step bookkeeping included), so folders and samples agree with it.
"""

from __future__ import annotations

import torch

from .base import (
    TIMESTEP_SPACINGS,
    SchedulerMixinLite,
    SchedulerOutput,
    build_noise_tables,
    check_choice,
    spaced_timesteps,
)
from .ddpm import _check_step_inputs, add_noise


def pndm_transfer(sample, eps, alpha_bar_t, alpha_bar_prev) -> torch.Tensor:
    """PNDM eq. 9: x_{t-delta} from x_t and a noise estimate (DDIM's deterministic step, rearranged)."""
    beta_prod_t, beta_prod_prev = 1 - alpha_bar_t, 1 - alpha_bar_prev
    sample_coeff = (alpha_bar_prev / alpha_bar_t) ** 0.5
    denominator = alpha_bar_t * beta_prod_prev**0.5 + (alpha_bar_t * beta_prod_t * alpha_bar_prev) ** 0.5
    return sample_coeff * sample - (alpha_bar_prev - alpha_bar_t) * eps / denominator


class PNDMScheduler(SchedulerMixinLite):
    """PNDM (PLMS, optionally with PRK warm-up) with diffusers' interface and config names."""

    unsupported_options = {"trained_betas": (None,)}
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"))
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self._register_config(locals())
        self.betas, self.alphas, self.alphas_cumprod = build_noise_tables(
            num_train_timesteps, beta_start, beta_end, beta_schedule, False)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.pndm_order = 4  # PRK warms up over the last pndm_order grid points
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)
        self._reset()

    def _reset(self) -> None:
        self.ets: list[torch.Tensor] = []  # the model outputs e_t of past steps (PLMS combines the last four)
        self.counter = 0  # model calls so far in this sampling run
        self.cur_model_output = 0
        self.cur_sample = None
        self.prk_timesteps = torch.tensor([], dtype=torch.long)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The grid (by ``timestep_spacing``), with PRK's half steps first unless ``skip_prk_steps``."""
        c = self.config
        self.num_inference_steps = num_inference_steps
        grid = spaced_timesteps(num_inference_steps, c.num_train_timesteps, c.timestep_spacing, c.steps_offset)
        ascending = grid.flip(0)
        self._reset()
        if c.skip_prk_steps:
            # the first timestep twice: PLMS's second-order warm start re-evaluates it (see the module docstring)
            plms = torch.cat([ascending[:-1], ascending[-2:-1], ascending[-1:]]).flip(0)
        else:
            if num_inference_steps < self.pndm_order:
                raise ValueError(f"PRK's warm-up needs at least {self.pndm_order} inference steps, got "
                                 f"{num_inference_steps}: take more steps, or use skip_prk_steps=True (PLMS only, as "
                                 "Stable Diffusion does).")
            half = c.num_train_timesteps // num_inference_steps // 2
            last = ascending[-self.pndm_order:].repeat_interleave(2) + torch.tensor([0, half]).repeat(self.pndm_order)
            self.prk_timesteps = last[:-1].repeat_interleave(2)[1:-1].flip(0)
            plms = ascending[:-3].flip(0)
        self.timesteps = torch.cat([self.prk_timesteps, plms]).long()
        self.timesteps = self.timesteps.to(device) if device is not None else self.timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def _alpha_bar(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def _prev_sample(self, sample, timestep: int, prev_timestep: int, model_output) -> torch.Tensor:
        ab_t, ab_prev = self._alpha_bar(int(timestep)), self._alpha_bar(int(prev_timestep))
        ab_t, ab_prev = (a.to(device=sample.device, dtype=sample.dtype) for a in (ab_t, ab_prev))
        eps = model_output
        if self.config.prediction_type == "v_prediction":  # eps = sqrt(ab) v + sqrt(1 - ab) x_t
            eps = ab_t**0.5 * model_output + (1 - ab_t) ** 0.5 * sample
        return pndm_transfer(sample, eps, ab_t, ab_prev)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True) -> SchedulerOutput:
        """One PRK or PLMS step; call in order over ``timesteps`` (the scheduler counts its calls)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step(): the scheduler needs the number of inference steps.")
        _check_step_inputs(model_output, sample)
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            prev = self._step_prk(model_output, int(timestep), sample)
        else:
            prev = self._step_plms(model_output, int(timestep), sample)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=None)

    def _step_prk(self, model_output, timestep: int, sample):
        """Pseudo Runge-Kutta: e' = (e1 + 2 e2 + 2 e3 + e4) / 6 over four calls per step."""
        S, T = self.num_inference_steps, self.config.num_train_timesteps
        diff_to_prev = 0 if self.counter % 2 else T // S // 2
        prev_timestep = timestep - diff_to_prev
        timestep = int(self.prk_timesteps[self.counter // 4 * 4])
        if self.counter % 4 == 0:
            self.cur_model_output = self.cur_model_output + model_output / 6
            self.ets.append(model_output)
            self.cur_sample = sample
        elif self.counter % 4 in (1, 2):
            self.cur_model_output = self.cur_model_output + model_output / 3
        else:
            model_output = self.cur_model_output + model_output / 6
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        self.counter += 1
        return self._prev_sample(cur_sample, timestep, prev_timestep, model_output)

    def _step_plms(self, model_output, timestep: int, sample):
        """Pseudo linear multistep: Adams-Bashforth combinations of the last e's, up to fourth order."""
        S, T = self.num_inference_steps, self.config.num_train_timesteps
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError("PLMS needs three PRK steps first: loop over scheduler.timesteps from the start.")
        prev_timestep = timestep - T // S
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:  # the repeated first timestep: step again from x_t, to the same t - delta
            prev_timestep = timestep
            timestep = timestep + T // S
        e = self.ets
        if len(e) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(e) == 1 and self.counter == 1:
            model_output = (model_output + e[-1]) / 2  # second order: the mean of the two slopes
            sample = self.cur_sample
            self.cur_sample = None
        elif len(e) == 2:
            model_output = (3 * e[-1] - e[-2]) / 2
        elif len(e) == 3:
            model_output = (23 * e[-1] - 16 * e[-2] + 5 * e[-3]) / 12
        else:
            model_output = (55 * e[-1] - 59 * e[-2] + 37 * e[-3] - 9 * e[-4]) / 24  # fourth order
        self.counter += 1
        return self._prev_sample(sample, timestep, prev_timestep, model_output)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """q(x_t | x_0), DDPM eq. 4 (img2img and inpainting start from it)."""
        return add_noise(self.alphas_cumprod, original_samples, noise, timesteps)
