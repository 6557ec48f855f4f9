"""Noise schedules as pure functions: beta_t for t = 0..T-1, and what follows from it.

Papers:
- linear: Ho et al., "Denoising Diffusion Probabilistic Models" (DDPM, 2020), sec. 4: beta from 1e-4 to 0.02, T = 1000.
- scaled_linear: the Latent Diffusion / Stable Diffusion schedule, linear in sqrt(beta) (0.00085 to 0.012).
- cosine (diffusers: "squaredcos_cap_v2"): Nichol & Dhariwal, "Improved DDPM" (2021), eq. 17:
  alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008, and
  beta_t = 1 - alpha_bar(t+1)/alpha_bar(t) clipped at 0.999.

Betas are built in float32, the way diffusers builds them, so both agree to the last bit.
"""

from __future__ import annotations

import math

import torch

SCHEDULE_NAMES = ("linear", "scaled_linear", "squaredcos_cap_v2")
ALIASES = {"cosine": "squaredcos_cap_v2"}


def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's schedule: beta_t evenly spaced from beta_start to beta_end (DDPM sec. 4)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)


def scaled_linear_betas(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Stable Diffusion's schedule: sqrt(beta_t) evenly spaced, then squared."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2


def cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    """Improved DDPM eq. 17 (unnormalised): f(t) = cos^2(((t + s) / (1 + s)) * pi / 2) for t in [0, 1]."""
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_train_timesteps: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's cosine schedule: beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), max_beta)."""
    T = num_train_timesteps
    betas = [min(1 - cosine_alpha_bar((i + 1) / T) / cosine_alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> torch.Tensor:
    """Build betas by name: "linear", "scaled_linear" or "squaredcos_cap_v2" (alias "cosine")."""
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}.")
    name = ALIASES.get(beta_schedule, beta_schedule)
    if name == "linear":
        return linear_betas(num_train_timesteps, beta_start, beta_end)
    if name == "scaled_linear":
        return scaled_linear_betas(num_train_timesteps, beta_start, beta_end)
    if name == "squaredcos_cap_v2":
        return cosine_betas(num_train_timesteps)
    raise ValueError(
        f"Unknown beta_schedule {beta_schedule!r}. Choose one of {SCHEDULE_NAMES} (or 'cosine' for 'squaredcos_cap_v2')."
    )


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed" (2023), Algorithm 1.

    Shift and scale sqrt(alpha_bar) so that the last step has exactly zero SNR, keeping the first.
    """
    alphas = 1.0 - betas
    sqrt_alpha_bar = torch.cumprod(alphas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[0:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s)   (DDPM, notation above eq. 4)."""
    return torch.cumprod(1.0 - betas, dim=0)


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of q(x_t | x_0): SNR(t) = alpha_bar_t / (1 - alpha_bar_t)."""
    return alpha_bar / (1.0 - alpha_bar)
