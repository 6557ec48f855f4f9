"""PNDMScheduler (PLMS / PRK, Liu et al. 2022): the same grid and steps as diffusers', and the formulas."""

from __future__ import annotations

import pytest
import torch

from sdlearn.schedulers import PNDMScheduler
from sdlearn.schedulers.pndm import pndm_transfer

diffusers = pytest.importorskip("diffusers")

SD1 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
           set_alpha_to_one=False, steps_offset=1)  # Stable Diffusion 1.x's scheduler_config.json


@pytest.mark.parametrize("config", [
    SD1,
    dict(SD1, prediction_type="v_prediction"),
    dict(SD1, timestep_spacing="linspace", steps_offset=0),
    dict(SD1, timestep_spacing="trailing", steps_offset=0),
    dict(skip_prk_steps=False),  # PRK warm-up (diffusers' default)
    dict(skip_prk_steps=False, timestep_spacing="leading", steps_offset=1, beta_schedule="scaled_linear"),
], ids=["sd1", "sd1-v", "linspace", "trailing", "prk", "prk-sd"])
@pytest.mark.parametrize("steps", [10, 25])
def test_same_grid_and_trajectory_as_diffusers(config, steps):
    ours, theirs = PNDMScheduler(**config), diffusers.PNDMScheduler(**config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x_ours = x_theirs = torch.randn(2, 3, 4, 4, generator=g)
    for t in ours.timesteps:
        # a fake model whose output depends on the sample and t, so the multistep history matters
        out_ours = torch.tanh(x_ours * (1 + int(t) / 1000))
        out_theirs = torch.tanh(x_theirs * (1 + int(t) / 1000))
        x_ours = ours.step(out_ours, t, x_ours).prev_sample
        x_theirs = theirs.step(out_theirs, t, x_theirs).prev_sample
    assert torch.allclose(x_ours, x_theirs, rtol=1e-5, atol=1e-5)  # float32 rounding, relative to |x|


def test_transfer_part_is_ddims_deterministic_step():
    """Eq. 9 equals DDIM's eta = 0 update sqrt(ab_prev) x0_pred + sqrt(1 - ab_prev) eps (x0_pred from eq. 4)."""
    x, eps = torch.randn(5), torch.randn(5)
    ab_t, ab_prev = torch.tensor(0.3), torch.tensor(0.7)
    x0_pred = (x - (1 - ab_t) ** 0.5 * eps) / ab_t**0.5
    ddim = ab_prev**0.5 * x0_pred + (1 - ab_prev) ** 0.5 * eps
    assert torch.allclose(pndm_transfer(x, eps, ab_t, ab_prev), ddim, atol=1e-6)


def test_plms_uses_the_fourth_order_combination_after_warm_up():
    s = PNDMScheduler(**SD1)
    s.set_timesteps(10)
    x = torch.zeros(1)
    outputs = [torch.full((1,), float(v)) for v in (1, 2, 3, 4, 5, 6)]
    for t, e in zip(s.timesteps, outputs):
        s.step(e, t, x)
    assert [float(e) for e in s.ets] == [3, 4, 5, 6]  # the last four model outputs, oldest first
    assert len(s.timesteps) == 11  # S + 1 model calls: the first timestep is visited twice


def test_errors():
    s = PNDMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(torch.zeros(1), 999, torch.zeros(1))
    with pytest.raises(ValueError, match="prediction_type"):
        PNDMScheduler(prediction_type="sample")
