"""Noise schedules against their closed forms, computed independently in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdlearn.schedulers import schedules
from sdlearn.schedulers.schedules import (
    alphas_cumprod,
    cosine_betas,
    linear_betas,
    make_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    snr,
)


def improved_ddpm_alpha_bar(T: int, s: float = 0.008) -> np.ndarray:
    """Improved DDPM eq. 17 in float64: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), t = 0..T."""
    t = np.arange(T + 1, dtype=np.float64)
    f = np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
    return f / f[0]


@pytest.mark.parametrize("T", [1000, 50, 7])
def test_linear_betas_closed_form(T):
    betas = linear_betas(T, 1e-4, 0.02)
    assert betas.dtype == torch.float32 and betas.shape == (T,)
    expected = 1e-4 + (0.02 - 1e-4) * np.arange(T) / (T - 1)  # evenly spaced, DDPM sec. 4
    np.testing.assert_allclose(betas.double().numpy(), expected, rtol=1e-6, atol=1e-9)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-6)


@pytest.mark.parametrize("T", [1000, 13])
def test_scaled_linear_betas_closed_form(T):
    betas = scaled_linear_betas(T, 0.00085, 0.012)
    assert betas.dtype == torch.float32 and betas.shape == (T,)
    root = math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * np.arange(T) / (T - 1)
    np.testing.assert_allclose(betas.double().numpy(), root**2, rtol=1e-5, atol=1e-10)
    # sqrt(beta) is evenly spaced, beta itself is not
    steps = np.diff(np.sqrt(betas.double().numpy()))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-3)
    assert not np.allclose(np.diff(betas.double().numpy()), np.diff(betas.double().numpy())[0], rtol=1e-2)


@pytest.mark.parametrize("T", [1000, 100, 10])
def test_cosine_betas_match_improved_ddpm_eq17(T):
    betas = cosine_betas(T)
    assert betas.dtype == torch.float32 and betas.shape == (T,)
    alpha_bar = improved_ddpm_alpha_bar(T)
    expected = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)  # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    np.testing.assert_allclose(betas.double().numpy(), expected, rtol=1e-6, atol=1e-10)
    assert betas[-1].item() == pytest.approx(0.999, rel=1e-6)  # f(1) = cos^2(pi/2) = 0, so the cap is hit
    # before the cap, alpha_bar from the betas is eq. 17's f(t)/f(0) itself
    ab = np.cumprod(1 - betas.double().numpy())
    np.testing.assert_allclose(ab[: T - 1], alpha_bar[1:T], rtol=1e-5, atol=1e-9)


def test_cosine_alpha_bar_function_is_eq17_numerator():
    s = 0.008
    for t in (0.0, 0.25, 0.5, 1.0):
        expected = math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        assert schedules.cosine_alpha_bar(t, s) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(
    "name, builder",
    [("linear", linear_betas), ("scaled_linear", scaled_linear_betas), ("squaredcos_cap_v2", cosine_betas),
     ("cosine", cosine_betas)],
)
def test_make_betas_by_name(name, builder):
    if builder is cosine_betas:
        expected = builder(100)
    else:
        expected = builder(100, 1e-3, 0.03)
    got = make_betas(name, 100, 1e-3, 0.03)
    assert torch.equal(got, expected)


def test_make_betas_rejects_unknown_names_and_bad_lengths():
    with pytest.raises(ValueError, match="Unknown beta_schedule 'quadratic'.*linear.*scaled_linear.*squaredcos_cap_v2"):
        make_betas("quadratic")
    for bad in (0, -5, 10.0):
        with pytest.raises(ValueError, match="num_train_timesteps must be a positive int"):
            make_betas("linear", bad)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_and_snr(name):
    betas = make_betas(name, 1000, 1e-4, 0.02) if name == "linear" else make_betas(name, 1000, 0.00085, 0.012)
    ab = alphas_cumprod(betas)
    expected = np.cumprod(1 - betas.double().numpy())
    np.testing.assert_allclose(ab.double().numpy(), expected, rtol=1e-5, atol=1e-12)
    assert ab.dtype == torch.float32
    assert torch.all(ab[1:] < ab[:-1]), "alpha_bar must fall strictly: every step adds noise"
    assert 0 < ab[-1] < 0.05 and ab[0] > 0.99
    ratio = snr(ab)
    np.testing.assert_allclose(ratio.double().numpy(), expected / (1 - expected), rtol=1e-3)
    assert torch.all(ratio[1:] < ratio[:-1])


def test_snr_known_values():
    ab = torch.tensor([0.5, 0.8, 0.2])
    torch.testing.assert_close(snr(ab), torch.tensor([1.0, 4.0, 0.25]))


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_rescale_zero_terminal_snr(name):
    betas = make_betas(name, 1000, 0.00085, 0.012)
    ab_before = alphas_cumprod(betas)
    rescaled = rescale_zero_terminal_snr(betas)
    ab = alphas_cumprod(rescaled)
    assert ab[-1].item() == 0.0, "the last step must have exactly zero SNR"
    assert rescaled[-1].item() == pytest.approx(1.0)
    assert ab[0].item() == pytest.approx(ab_before[0].item(), rel=1e-5)
    # Lin et al. 2023, Algorithm 1: sqrt(alpha_bar) is shifted and scaled, i.e. an affine map of the old one
    old, new = ab_before.double().sqrt().numpy(), ab.double().sqrt().numpy()
    first, last = old[0], old[-1]
    np.testing.assert_allclose(new, (old - last) * first / (first - last), rtol=1e-4, atol=1e-6)
    assert torch.all(ab[1:] <= ab[:-1])
