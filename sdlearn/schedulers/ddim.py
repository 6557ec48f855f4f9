"""DDIM: sampling a DDPM-trained model in a few (even deterministic) steps.

Song, Meng, Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021). A non-Markovian forward process
with the same marginals q(x_t | x_0) as DDPM gives a family of reverse processes, one per choice of
sigma_t; all of them work with a model trained on DDPM's loss, and they may skip timesteps.

Written in DDPM's notation (the trap: the DDIM paper's alpha_t is DDPM's alpha_bar_t):
- eq. 12:  x_prev = sqrt(alpha_bar_prev) x0_pred + sqrt(1 - alpha_bar_prev - sigma_t^2) eps_pred + sigma_t z,
           x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps_pred) / sqrt(alpha_bar_t)       ("predicted x_0")
- eq. 16:  sigma_t(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev);
           eta = 0 is DDIM (deterministic), eta = 1 is DDPM's posterior variance beta-tilde (eq. 7 of DDPM).

sdlearn follows diffusers where it departs from the paper: the previous timestep is t - T // S whatever
the timestep spacing (the paper walks the sub-sequence tau itself), and after the last step alpha_bar_prev
is 1 (``set_alpha_to_one``) or alpha_bar_0.
"""

from __future__ import annotations

import warnings

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
from .ddpm import DDPMScheduler, _check_step_inputs, predicted_original


def predicted_noise(model_output, sample, alpha_bar_t, prediction_type: str) -> torch.Tensor:
    """eps_pred from what the model predicts: eps itself, x_0 (eq. 4 solved for eps), or v.

    For v = sqrt(ab) eps - sqrt(1-ab) x_0 (Salimans & Ho 2022): eps = sqrt(ab) v + sqrt(1-ab) x_t.
    """
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (sample - alpha_bar_t**0.5 * model_output) / (1 - alpha_bar_t) ** 0.5
    if prediction_type == "v_prediction":
        return alpha_bar_t**0.5 * model_output + (1 - alpha_bar_t) ** 0.5 * sample
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}.")


def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta: float):
    """sigma_t(eta), DDIM eq. 16: eta * sqrt((1 - ab_prev)/(1 - ab_t) * (1 - ab_t/ab_prev)).

    eta = 1 gives sqrt(beta-tilde_t), DDPM's posterior standard deviation (DDPM eq. 7).
    """
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    return eta * variance**0.5


def ddim_update(x0_pred, eps_pred, alpha_bar_prev, sigma=0.0, noise=None) -> torch.Tensor:
    """DDIM eq. 12 in DDPM's notation: move x0_pred to the noise level alpha_bar_prev along eps_pred, plus sigma z.

    x_prev = sqrt(ab_prev) x0_pred            "predicted x_0", rescaled
           + sqrt(1 - ab_prev - sigma^2) eps  "direction pointing to x_t"
           + sigma z                          "random noise" (skipped when noise is None)
    Run with alpha_bar_prev replaced by a *noisier* level and sigma = 0, the same line inverts DDIM.
    """
    x_prev = alpha_bar_prev**0.5 * x0_pred + (1 - alpha_bar_prev - sigma**2) ** 0.5 * eps_pred
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


class DDIMScheduler(SchedulerMixinLite):
    """DDIM sampler with diffusers' interface, config names and defaults (eta is chosen per ``step``)."""

    unsupported_options = {"trained_betas": (None,), "thresholding": (False,)}

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if rescale_betas_zero_snr and not (timestep_spacing == "trailing" and prediction_type == "v_prediction"):
            warnings.warn(
                "rescale_betas_zero_snr=True makes alpha_bar of the last training step exactly 0 (zero terminal SNR). "
                "Lin et al. (2023) pair it with timestep_spacing='trailing' (so sampling starts at t = T-1, where the "
                "SNR is zero) and prediction_type='v_prediction' (an epsilon model cannot give x_0 there: eq. 15 divides "
                f"by sqrt(alpha_bar) = 0). You have timestep_spacing={timestep_spacing!r}, "
                f"prediction_type={prediction_type!r}.",
                UserWarning,
                stacklevel=2,
            )
        self._register_config(locals())
        self.betas, self.alphas, self.alphas_cumprod = build_noise_tables(
            num_train_timesteps, beta_start, beta_end, beta_schedule, rescale_betas_zero_snr
        )
        # alpha_bar "before" the first training step, used after the last inference step
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0  # x_T ~ N(0, I)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)
        self._grid: set[int] = set()

    # ------------------------------------------------------------------ grid
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the S timesteps the loop visits (the paper's sub-sequence tau, sec. 4.2), by ``timestep_spacing``."""
        c = self.config
        self.timesteps = spaced_timesteps(num_inference_steps, c.num_train_timesteps, c.timestep_spacing, c.steps_offset)
        self._grid = set(self.timesteps.tolist())
        self.timesteps = self.timesteps.to(device) if device is not None else self.timesteps
        self.num_inference_steps = num_inference_steps

    def previous_timestep(self, timestep: int) -> int:
        """t - T // S, as diffusers does for every spacing (negative: past the end, alpha_bar_prev = final_alpha_cumprod).

        With "leading" spacing this is the next grid point; with "linspace" it can fall between grid points
        (S = 10: 999 -> 899 while the grid goes 999, 888, ...), where the paper would step to the next point of tau.
        """
        self._require_timesteps()
        return int(timestep) - self.config.num_train_timesteps // self.num_inference_steps

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """DDIM feeds x_t to the model unchanged (Euler-type schedulers rescale it)."""
        return sample

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step(): the scheduler needs the number of inference steps.")

    # ------------------------------------------------------------------ math
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        """One DDIM step, eq. 12: from x_t (``sample``) and the model output, compute x_prev.

        | code              | DDIM paper                     | DDPM paper / this course |
        |-------------------|--------------------------------|--------------------------|
        | sample            | x_t                            | x_t                      |
        | alpha_bar_t       | alpha_t  (the trap!)           | alpha-bar_t              |
        | alpha_bar_prev    | alpha_{t-1}, or alpha_{tau_i-1} | alpha-bar_{t-1}         |
        | eps_pred          | epsilon_theta^(t)(x_t)         | epsilon_theta(x_t, t)    |
        | x0_pred           | "predicted x_0"                | x-hat_0                  |
        | std_dev_t         | sigma_t(eta), eq. 16           | (eta = 1: sqrt(beta-tilde_t)) |
        | variance_noise    | epsilon_t ~ N(0, I)            | z                        |

        The DDIM paper writes alpha_t for the *cumulative* product that DDPM calls alpha-bar_t; its
        alpha_t / alpha_{t-1} is DDPM's per-step alpha_t. This code always means alpha-bar.

        ``eta`` = 0 gives the deterministic DDIM sampler, 1 the DDPM-like one. ``use_clipped_model_output``
        recomputes eps_pred from the clipped x0_pred. Noise comes from ``generator`` or ``variance_noise``.
        """
        self._require_timesteps()
        _check_step_inputs(model_output, sample)
        t = int(timestep)
        if t not in self._grid:
            grid = self.timesteps.tolist()
            raise ValueError(
                f"timestep {t} is not in this scheduler's grid {grid[:3]}...{grid[-2:]}; "
                "loop over scheduler.timesteps after set_timesteps()."
            )
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise to step(), not both.")

        # 1. alpha_bar of this step and of the previous one (t - T // S)
        prev_t = self.previous_timestep(t)
        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod

        # 2. "predicted x_0" (eq. 12, first bracket; eq. 15 of DDPM) and the noise it implies
        prediction_type = self.config.prediction_type
        x0_pred = predicted_original(model_output, sample, alpha_bar_t, prediction_type)
        eps_pred = predicted_noise(model_output, sample, alpha_bar_t, prediction_type)

        # 3. clip x0_pred to the data range (as the DDPM/DDIM code does)
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            x0_pred = x0_pred.clamp(-r, r)
            if use_clipped_model_output:  # the eps that the clipped x0_pred implies (invert eq. 4)
                eps_pred = (sample - alpha_bar_t**0.5 * x0_pred) / (1 - alpha_bar_t) ** 0.5

        # 4. sigma_t(eta), eq. 16
        std_dev_t = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)

        # 5. x_prev, eq. 12; noise is drawn whenever eta > 0 (also on the last step, where sigma = 0)
        noise = None
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            noise = variance_noise
        x_prev = ddim_update(x0_pred, eps_pred, alpha_bar_prev, std_dev_t, noise)
        return SchedulerOutput(prev_sample=x_prev, pred_original_sample=x0_pred)

    # The forward process q(x_t | x_0) is DDPM's (DDIM eq. 4 in its own notation): the same methods.
    add_noise = DDPMScheduler.add_noise
    get_velocity = DDPMScheduler.get_velocity
