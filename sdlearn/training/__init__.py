"""Training: one loop for every model of the course, its objectives, and the recipes behind the shipped models.

- ``loop``: ``train`` (AdamW, warm-up + cosine LR, EMA, gradient clipping, atomic resumable checkpoints).
- ``losses``: DDPM's L_simple (eq. 14, optionally min-SNR weighted) and the KL autoencoder's loss.
- ``checkpoint``: the training state a killed run resumes from.
- ``recipes``: the exact settings of every shipped model; ``shipping``: train and export them by name.
- ``kl_sweep``: chapter 3's KL-weight sweep.
"""

from .loop import TrainConfig, TrainResult, train
from .losses import diffusion_loss, vae_loss

__all__ = ["TrainConfig", "TrainResult", "diffusion_loss", "train", "vae_loss"]
