"""Frechet distance between two sets of features (Heusel et al. 2017): the distance behind FID."""

from __future__ import annotations

import numpy as np
import torch


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))  (Heusel et al. 2017, eq. 6 as used for FID)."""
    a, b = feats_a.double().numpy(), feats_b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    S_a, S_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((S_a S_b)^(1/2)) = sum of sqrt of eigenvalues of S_a^(1/2) S_b S_a^(1/2) (symmetric PSD, stable)
    w, V = np.linalg.eigh(S_a)
    sqrt_a = (V * np.sqrt(np.clip(w, 0, None))) @ V.T
    eig = np.linalg.eigvalsh(sqrt_a @ S_b @ sqrt_a)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(S_a) + np.trace(S_b) - 2 * tr_sqrt)
