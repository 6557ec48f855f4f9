"""The training objectives, one function each.

- ``diffusion_loss``: DDPM's L_simple (Ho et al. 2020, eq. 14), || eps - eps_theta(x_t, t) ||^2 with
  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (eq. 4), optionally min-SNR weighted (Hang et al. 2023).
- ``vae_loss`` / ``VAELoss``: the KL autoencoder's objective (Kingma & Welling 2014; LDM appendix G):
  reconstruction error plus a small weight times KL(q(z | x) || N(0, I)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.autoencoder_kl import AutoencoderKL
from ..models.unet_2d import condition_kwargs


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator, kl_weight: float = 1e-6,
             reconstruction: str = "l1") -> tuple[torch.Tensor, dict]:
    """The (beta-weighted) negative ELBO per image, averaged over the batch:

        L = sum_pixels |x - D(z)|  (or squared)  +  kl_weight * KL(q(z | x) || N(0, I)),   z = mean + std * eps.

    kl_weight is beta of Higgins et al. 2017: 1 is the true ELBO for a Laplace (L1) / Gaussian (L2) decoder,
    which blurs images and spreads latents to N(0, I); latent diffusion uses a tiny weight (Rombach et al. 2022
    use 1e-6 with an L1 + perceptual loss) so reconstructions stay sharp and the KL only stops the latent
    scale from drifting. Returns (loss, {"reconstruction": ..., "kl": ...}) with both terms per image.
    """
    if reconstruction not in ("l1", "l2"):
        raise ValueError(f"reconstruction must be 'l1' or 'l2', got {reconstruction!r}.")
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator)  # the reparameterisation trick
    x_rec = vae.decode(z).sample
    err = (x_rec.float() - x.float()).abs() if reconstruction == "l1" else (x_rec.float() - x.float()).pow(2)
    rec = err.sum(dim=(1, 2, 3)).mean()  # per image
    kl = posterior.kl().float().mean()  # per image
    return rec + kl_weight * kl, {"reconstruction": rec.detach(), "kl": kl.detach()}


@dataclass(frozen=True)
class VAELoss:
    """vae_loss with its settings, as ``sdlearn.training.loop.train(..., loss_fn=VAELoss(...))`` expects."""

    kl_weight: float = 1e-6
    reconstruction: str = "l1"

    def __call__(self, vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return vae_loss(vae, x, generator, self.kl_weight, self.reconstruction)[0]


def drop_condition(condition: torch.Tensor, p: float, null_condition, generator: torch.Generator,
                   world_size: int = 1, rank: int = 0) -> torch.Tensor:
    """Classifier-free guidance training (Ho & Salimans 2022, Algorithm 1, line 3): with probability p each
    sample's condition c is replaced by the null condition, so one network learns eps(z_t, c) and eps(z_t).
    (Drawn for a global batch ``world_size`` times larger; this process keeps slice ``rank``.)"""
    B = condition.shape[0]
    u = torch.rand(B * world_size, generator=generator, device=generator.device)[rank * B:(rank + 1) * B]
    drop = u.to(condition.device) < p  # (B,)
    null = torch.as_tensor(null_condition, dtype=condition.dtype, device=condition.device).expand_as(condition)
    return torch.where(drop.view(-1, *([1] * (condition.ndim - 1))), null, condition)  # drop only the condition


def diffusion_loss(model, scheduler, x0: torch.Tensor, generator: torch.Generator, loss_weighting: str = "none",
                   min_snr_gamma: float = 5.0, condition: torch.Tensor | None = None, condition_dropout: float = 0.0,
                   null_condition=None, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """L_simple (DDPM eq. 14), optionally min-SNR weighted: mean over the batch of w_t || target - model(x_t, t) ||^2.

    ``shard=(rank, world_size)``: ``x0`` is slice ``rank`` of a global batch ``world_size`` times larger (data-parallel
    training, sdlearn.training.distributed). t, eps and the condition dropout are drawn for the whole global batch
    and sliced, so the processes together draw exactly what one process would.

    With a ``condition`` per sample (class labels (B,), or text embeddings (B, T, C)) the model is eps(x_t, t, c):
    the LDM paper's conditional objective (Rombach et al. 2022, eq. 3), with the condition dropped to
    ``null_condition`` with probability ``condition_dropout`` for classifier-free guidance.
    """
    T = scheduler.config.num_train_timesteps
    rank, world_size = shard
    B = x0.shape[0]
    mine = slice(rank * B, (rank + 1) * B)  # this process's rows of the global batch
    t = torch.randint(0, T, (B * world_size,), generator=generator, device=generator.device)[mine].to(x0.device)  # t ~ U{0..T-1}
    eps = torch.randn((B * world_size, *x0.shape[1:]), generator=generator,
                      device=generator.device)[mine].to(x0.device)  # eps ~ N(0, I)
    x_t = scheduler.add_noise(x0, eps, t)  # eq. 4
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = eps
    elif prediction_type == "sample":
        target = x0
    else:  # v_prediction (Salimans & Ho 2022)
        target = scheduler.get_velocity(x0, eps, t)
    if condition is not None and condition_dropout > 0:
        condition = drop_condition(condition, condition_dropout, null_condition, generator, world_size, rank)
    model_output = model(x_t, t, **condition_kwargs(condition))
    per_sample = F.mse_loss(model_output.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
    if loss_weighting == "min_snr":
        alpha_bar = scheduler.alphas_cumprod.to(x0.device)[t]
        snr = alpha_bar / (1 - alpha_bar)
        clipped = snr.clamp(max=min_snr_gamma)
        # Hang et al. 2023, eq. 9: weight min(SNR, gamma) on the x_0-error, rewritten for each target.
        weight = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[prediction_type]
        per_sample = per_sample * weight
    return per_sample.mean()
