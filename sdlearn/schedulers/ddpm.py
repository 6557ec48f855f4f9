"""DDPM's reverse process: ancestral sampling, one step x_t -> x_{t-1}.

Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models" (2020):
- forward closed form, eq. 4:  q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
- posterior, eqs. 6-7:  q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I) with
      mu_tilde_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
      beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
- x_0 from the predicted noise, eq. 15:  x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps_pred) / sqrt(alpha_bar_t)
- Algorithm 2 (sampling): x_{t-1} = mu + sigma_t z, with z = 0 on the last step.

With fewer inference steps than training steps ("strided" sampling) the same formulas hold with
t-1 replaced by the previous timestep of the grid and beta_t by 1 - alpha_bar_t / alpha_bar_prev.
"""

from __future__ import annotations

import torch

from .base import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    SchedulerMixinLite,
    SchedulerOutput,
    build_noise_tables,
    check_choice,
    randn,
    spaced_timesteps,
)

VARIANCE_TYPES = ("fixed_small", "fixed_large")


def _expand(coeff: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) or scalar coefficient so it broadcasts over (B, C, H, W)."""
    coeff = coeff.to(device=like.device, dtype=like.dtype).flatten()
    return coeff.view(-1, *([1] * (like.ndim - 1)))


class DDPMScheduler(SchedulerMixinLite):
    """Ancestral sampler of DDPM with diffusers' interface and defaults.

    Defaults follow the DDPM paper: T = 1000, linear betas 1e-4..0.02, epsilon prediction,
    fixed_small variance (sigma_t^2 = beta_tilde_t) and x_0 clipped to [-1, 1].
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self._register_config(locals())
        self.betas, self.alphas, self.alphas_cumprod = build_noise_tables(
            num_train_timesteps, beta_start, beta_end, beta_schedule, rescale_betas_zero_snr
        )
        self.init_noise_sigma = 1.0  # x_T ~ N(0, I)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    # ------------------------------------------------------------------ grid
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the S timesteps the sampling loop visits (S = T is the paper's full chain)."""
        c = self.config
        self.timesteps = spaced_timesteps(num_inference_steps, c.num_train_timesteps, c.timestep_spacing, c.steps_offset)
        self.timesteps = self.timesteps.to(device) if device is not None else self.timesteps
        self.num_inference_steps = num_inference_steps

    def previous_timestep(self, timestep: int) -> int:
        """The grid point after ``timestep`` (-1 after the last one, meaning alpha_bar_prev = 1)."""
        t = int(timestep)
        if self.num_inference_steps is None:
            return t - 1
        grid = self.timesteps.tolist()
        if t not in grid:
            raise ValueError(
                f"timestep {t} is not in this scheduler's grid {grid[:5]}...{grid[-3:]}; "
                "loop over scheduler.timesteps after set_timesteps()."
            )
        i = grid.index(t)
        return grid[i + 1] if i + 1 < len(grid) else -1

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """DDPM feeds x_t to the model unchanged (Euler-type schedulers rescale it)."""
        return sample

    # ------------------------------------------------------------------ math
    def _alpha_bars(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        prev_t = self.previous_timestep(t)
        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        return alpha_bar_t, alpha_bar_prev

    def posterior_variance(self, timestep: int) -> torch.Tensor:
        """sigma_t^2: beta_tilde_t = (1 - alpha_bar_prev)/(1 - alpha_bar_t) beta_t (eq. 7) or beta_t ("fixed_large")."""
        alpha_bar_t, alpha_bar_prev = self._alpha_bars(timestep)
        beta_t = 1 - alpha_bar_t / alpha_bar_prev
        if self.config.variance_type == "fixed_large":
            return beta_t
        return torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t, min=1e-20)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        """One step of Algorithm 2: from x_t (``sample``) and the model output, draw x_{t-1}.

        | code              | paper               |
        |-------------------|---------------------|
        | sample            | x_t                 |
        | alpha_bar_t       | alpha-bar_t         |
        | alpha_bar_prev    | alpha-bar_{t-1}     |
        | beta_t            | beta_t              |
        | x0_pred           | x-hat_0 (eq. 15)    |
        | mean              | mu-tilde_t (eq. 7)  |
        """
        _check_step_inputs(model_output, sample)
        t = int(timestep)
        if not 0 <= t < self.config.num_train_timesteps:
            raise ValueError(f"timestep {t} is outside [0, {self.config.num_train_timesteps - 1}].")

        # 1. alphas and betas of this step (of the grid, when strided)
        alpha_bar_t, alpha_bar_prev = self._alpha_bars(t)
        alpha_t = alpha_bar_t / alpha_bar_prev
        beta_t = 1 - alpha_t

        # 2. x0_pred from the model output (eq. 15 for epsilon; v-prediction: Salimans & Ho 2022)
        x0_pred = predicted_original(model_output, sample, alpha_bar_t, self.config.prediction_type)

        # 3. clip x0_pred to the data range, as the DDPM code does
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            x0_pred = x0_pred.clamp(-r, r)

        # 4. posterior mean mu_tilde_t, eq. 7
        x0_coeff = alpha_bar_prev**0.5 * beta_t / (1 - alpha_bar_t)
        xt_coeff = alpha_t**0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        mean = x0_coeff * x0_pred + xt_coeff * sample

        # 5. add sigma_t z, except on the last step (Algorithm 2, line 3: z = 0 when t = 1)
        x_prev = mean
        if t > 0:
            if variance_noise is None:
                variance_noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            x_prev = mean + self.posterior_variance(t) ** 0.5 * variance_noise
        return SchedulerOutput(prev_sample=x_prev, pred_original_sample=x0_pred)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) in closed form, eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        return add_noise(self.alphas_cumprod, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target (Salimans & Ho 2022, sec. 4): v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
        alpha_bar = self.alphas_cumprod.to(sample.device)[_check_timesteps(timesteps, len(self.alphas_cumprod), sample)]
        return _expand(alpha_bar**0.5, sample) * noise - _expand((1 - alpha_bar) ** 0.5, sample) * sample


def predicted_original(model_output, sample, alpha_bar_t, prediction_type: str) -> torch.Tensor:
    """x-hat_0 from what the model predicts: epsilon (DDPM eq. 15), x_0 itself, or v (v = sqrt(ab) eps - sqrt(1-ab) x_0)."""
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_bar_t) ** 0.5 * model_output) / alpha_bar_t**0.5
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_bar_t**0.5 * sample - (1 - alpha_bar_t) ** 0.5 * model_output
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}.")


def _check_step_inputs(model_output: torch.Tensor, sample: torch.Tensor) -> None:
    if model_output.shape != sample.shape:
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; "
            "the model must predict a tensor shaped like x_t."
        )
    if not torch.isfinite(model_output).all():
        raise ValueError("model_output contains NaN or inf; check the model (and its weights) before sampling.")


def _check_timesteps(timesteps, num_train_timesteps: int, like: torch.Tensor) -> torch.Tensor:
    timesteps = torch.as_tensor(timesteps, device=like.device)
    if timesteps.is_floating_point():
        raise TypeError("timesteps for add_noise must be integers (a LongTensor), one per sample.")
    if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= num_train_timesteps):
        raise ValueError(
            f"timesteps must lie in [0, {num_train_timesteps - 1}], got min {int(timesteps.min())}, max {int(timesteps.max())}."
        )
    if timesteps.numel() not in (1, like.shape[0]):
        raise ValueError(f"need one timestep per sample: got {timesteps.numel()} timesteps for a batch of {like.shape[0]}.")
    return timesteps.long()


def add_noise(alphas_cumprod: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, timesteps) -> torch.Tensor:
    """q(x_t | x_0), DDPM eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (one t per sample)."""
    if x0.shape != eps.shape:
        raise ValueError(f"original_samples {tuple(x0.shape)} and noise {tuple(eps.shape)} must have the same shape.")
    t = _check_timesteps(timesteps, len(alphas_cumprod), x0)
    alpha_bar = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t]
    return _expand(alpha_bar**0.5, x0) * x0 + _expand((1 - alpha_bar) ** 0.5, x0) * eps
