"""DDPMScheduler: DDPM's closed forms (eqs. 4, 6-7, 15), bad inputs, and parity with diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdlearn.schedulers import DDPMScheduler
from sdlearn.schedulers.ddpm import add_noise, predicted_original

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
VARIANCES = ["fixed_small", "fixed_large"]
SPACINGS = ["leading", "trailing", "linspace"]


def make(**kw) -> DDPMScheduler:
    if kw.get("beta_schedule") == "scaled_linear":
        kw.setdefault("beta_start", 0.00085)
        kw.setdefault("beta_end", 0.012)
    return DDPMScheduler(**kw)


# ---------------------------------------------------------------------------- forward process q(x_t | x_0)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_add_noise_is_eq4_analytically(schedule):
    """eps = 0 gives the mean sqrt(alpha_bar_t) x_0; linearity in eps gives the std sqrt(1 - alpha_bar_t)."""
    sched = make(beta_schedule=schedule)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 1, 4, 4, generator=g)
    eps = torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    ab = sched.alphas_cumprod.double()[t].view(-1, 1, 1, 1)

    mean = sched.add_noise(x0, torch.zeros_like(eps), t)
    torch.testing.assert_close(mean.double(), ab.sqrt() * x0.double(), rtol=1e-6, atol=1e-7)
    noise_part = sched.add_noise(x0, eps, t) - mean
    torch.testing.assert_close(noise_part.double(), (1 - ab).sqrt() * eps.double(), rtol=1e-5, atol=1e-6)
    # one scalar timestep broadcasts over the batch
    one_t = sched.add_noise(x0, eps, torch.tensor(10))
    torch.testing.assert_close(one_t, sched.add_noise(x0, eps, torch.full((6,), 10)))
    # the module-level function is the same thing
    torch.testing.assert_close(add_noise(sched.alphas_cumprod, x0, eps, t), sched.add_noise(x0, eps, t))


def test_add_noise_empirical_mean_and_variance():
    """Over many eps draws, x_t has mean sqrt(alpha_bar_t) x_0 and variance 1 - alpha_bar_t (eq. 4)."""
    sched = DDPMScheduler()
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = torch.tensor([0.7, -0.3, 0.0, 1.0]).view(4, 1, 1, 1)
    t = torch.tensor([5, 100, 400, 900])
    x_t = sched.add_noise(x0.expand(4, 1, 1, n), torch.randn(4, 1, 1, n, generator=g), t)  # n draws per image
    ab = sched.alphas_cumprod[t]
    mean, var = x_t.mean(dim=(1, 2, 3)), x_t.var(dim=(1, 2, 3))
    torch.testing.assert_close(mean, ab.sqrt() * x0.flatten(), atol=5 * (1 / n) ** 0.5, rtol=0)
    torch.testing.assert_close(var, 1 - ab, rtol=0.02, atol=2e-4)


def test_predicted_original_inverts_add_noise_for_every_prediction_type():
    sched = DDPMScheduler()
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1, torch.randn(3, 1, 4, 4, generator=g)
    for t in (0, 37, 600, 999):
        tt = torch.full((3,), t)
        x_t = sched.add_noise(x0, eps, tt)
        ab = sched.alphas_cumprod[t]
        targets = {"epsilon": eps, "sample": x0, "v_prediction": sched.get_velocity(x0, eps, tt)}
        for kind, target in targets.items():
            atol = 2e-3 if (kind == "epsilon" and t == 999) else 1e-5  # eq. 15 divides by sqrt(alpha_bar) ~ 6e-3
            torch.testing.assert_close(predicted_original(target, x_t, ab, kind), x0, atol=atol, rtol=1e-4)


def test_get_velocity_closed_form():
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    t = torch.tensor([3, 700])
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(sched.get_velocity(x0, eps, t), ab.sqrt() * eps - (1 - ab).sqrt() * x0)


# ---------------------------------------------------------------------------- posterior q(x_{t-1} | x_t, x_0)
def bayes_posterior(x0, x_t, ab_t, ab_prev):
    """q(x_prev | x_t, x_0) by Bayes' rule on two Gaussians, in float64:
    likelihood q(x_t | x_prev) = N(sqrt(a) x_prev, 1 - a) with a = ab_t / ab_prev,
    prior q(x_prev | x_0) = N(sqrt(ab_prev) x_0, 1 - ab_prev).
    """
    a = ab_t / ab_prev
    precision = a / (1 - a) + 1 / (1 - ab_prev)
    var = 1 / precision
    mean = var * (np.sqrt(a) * x_t / (1 - a) + np.sqrt(ab_prev) * x0 / (1 - ab_prev))
    return mean, var


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("num_steps", [None, 50, 37])
def test_posterior_mean_and_variance_match_bayes(schedule, num_steps):
    """DDPM eqs. 6-7 (mu_tilde, beta_tilde), checked against Bayes' rule on Gaussians, on full and strided grids."""
    sched = make(beta_schedule=schedule, prediction_type="sample", clip_sample=False, timestep_spacing="trailing")
    if num_steps is not None:
        sched.set_timesteps(num_steps)
    g = torch.Generator().manual_seed(4)
    x0, x_t = torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 1, 4, 4, generator=g)
    ab_all = sched.alphas_cumprod.double().numpy()
    grid = sched.timesteps.tolist()
    # Near t = 0 the float32 difference 1 - alpha_bar_t / alpha_bar_prev (~1e-4) loses about 4 digits to
    # cancellation (diffusers computes it the same way), so the last checked step gets a looser tolerance.
    for t, rtol in [(grid[0], 1e-4), (grid[1], 1e-4), (grid[len(grid) // 2], 1e-4), (grid[-2], 2e-3)]:
        prev = sched.previous_timestep(t)
        assert prev >= 0
        mean, var = bayes_posterior(x0.double().numpy(), x_t.double().numpy(), ab_all[t], ab_all[prev])
        # prediction_type="sample" feeds x_0 itself; zero noise leaves the posterior mean
        out = sched.step(x0, t, x_t, variance_noise=torch.zeros_like(x_t))
        np.testing.assert_allclose(out.prev_sample.double().numpy(), mean, rtol=rtol, atol=rtol / 10)
        assert sched.posterior_variance(t).item() == pytest.approx(var, rel=rtol)
        # the noise enters scaled by sigma_t = sqrt(beta_tilde_t)
        z = torch.randn(x_t.shape, generator=g)
        noisy = sched.step(x0, t, x_t, variance_noise=z).prev_sample
        np.testing.assert_allclose((noisy - out.prev_sample).double().numpy(), np.sqrt(var) * z.double().numpy(),
                                   rtol=rtol, atol=1e-6)


def test_fixed_large_variance_is_beta_t():
    sched = DDPMScheduler(variance_type="fixed_large")
    # computed as 1 - alpha_bar_t / alpha_bar_{t-1} (as diffusers does), which loses digits to cancellation near t = 0
    for t, rel in ((1, 1e-3), (500, 1e-5), (999, 1e-5)):
        assert sched.posterior_variance(t).item() == pytest.approx(sched.betas[t].item(), rel=rel)
    sched.set_timesteps(10)
    t = int(sched.timesteps[0])
    prev = sched.previous_timestep(t)
    expected = 1 - sched.alphas_cumprod[t] / sched.alphas_cumprod[prev]  # beta of the strided step
    assert sched.posterior_variance(t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_last_step_returns_x0_pred_without_noise():
    sched = DDPMScheduler(prediction_type="sample", clip_sample=False)
    g = torch.Generator().manual_seed(5)
    x0, x_t = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    out = sched.step(x0, 0, x_t, generator=g)
    torch.testing.assert_close(out.prev_sample, x0)  # alpha_bar_prev = 1: mu = x0_pred, and z = 0 at t = 0


def test_clip_sample_range():
    sched = DDPMScheduler(prediction_type="sample", clip_sample=True, clip_sample_range=0.5)
    x_t = torch.zeros(1, 1, 2, 2)
    out = sched.step(torch.tensor([[[[2.0, -3.0], [0.25, 0.0]]]]), 500, x_t, variance_noise=torch.zeros_like(x_t))
    torch.testing.assert_close(out.pred_original_sample, torch.tensor([[[[0.5, -0.5], [0.25, 0.0]]]]))


def test_step_is_reproducible_with_generator():
    sched = DDPMScheduler()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sched.step(0.1 * x, 500, x, generator=torch.Generator().manual_seed(9)).prev_sample
    b = sched.step(0.1 * x, 500, x, generator=torch.Generator().manual_seed(9)).prev_sample
    c = sched.step(0.1 * x, 500, x, generator=torch.Generator().manual_seed(10)).prev_sample
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------- timestep grids
def test_timestep_grids_by_spacing():
    def grid(spacing, S, T=1000, offset=0):
        s = DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        s.set_timesteps(S)
        assert s.timesteps.dtype == torch.int64 and len(s.timesteps) == S
        return s.timesteps.tolist()

    assert grid("leading", 10) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert grid("leading", 10, offset=1) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert grid("trailing", 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert grid("linspace", 4, T=10) == [9, 6, 3, 0]
    assert grid("leading", 1000) == list(range(999, -1, -1))
    for spacing in SPACINGS:
        g = grid(spacing, 37)
        assert all(a > b for a, b in zip(g, g[1:])), f"{spacing} grid must strictly decrease"
        assert 0 <= min(g) and max(g) <= 999


def test_previous_timestep_follows_the_grid():
    sched = DDPMScheduler(timestep_spacing="trailing")
    assert sched.previous_timestep(10) == 9  # before set_timesteps: the full chain
    sched.set_timesteps(10)
    assert sched.previous_timestep(999) == 899
    assert sched.previous_timestep(99) == -1
    with pytest.raises(ValueError, match="not in this scheduler's grid"):
        sched.previous_timestep(500)


# ---------------------------------------------------------------------------- bad inputs
def test_bad_constructor_arguments_name_the_choices():
    with pytest.raises(ValueError, match="prediction_type 'noise'.*epsilon"):
        DDPMScheduler(prediction_type="noise")
    with pytest.raises(ValueError, match="variance_type 'learned'.*fixed_small"):
        DDPMScheduler(variance_type="learned")
    with pytest.raises(ValueError, match="timestep_spacing 'middle'.*leading"):
        DDPMScheduler(timestep_spacing="middle")
    with pytest.raises(ValueError, match="beta_schedule 'sigmoid'"):
        DDPMScheduler(beta_schedule="sigmoid")


def test_set_timesteps_rejects_bad_counts():
    sched = DDPMScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match="cannot be larger than num_train_timesteps"):
        sched.set_timesteps(101)
    with pytest.raises(ValueError, match="positive int"):
        sched.set_timesteps(0)


def test_add_noise_rejects_bad_timesteps_and_shapes():
    sched = DDPMScheduler()
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        sched.add_noise(x, x, torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        sched.add_noise(x, x, torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match="integers"):
        sched.add_noise(x, x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="one timestep per sample"):
        sched.add_noise(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="same shape"):
        sched.add_noise(x, torch.zeros(2, 1, 4, 5), torch.tensor([1, 2]))


def test_step_rejects_bad_inputs():
    sched = DDPMScheduler()
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="must predict a tensor shaped like x_t"):
        sched.step(torch.zeros(2, 1, 4, 5), 10, x)
    with pytest.raises(ValueError, match="NaN or inf"):
        sched.step(torch.full_like(x, float("nan")), 10, x)
    with pytest.raises(ValueError, match="outside"):
        sched.step(x, 1000, x)


def test_config_is_read_only_and_round_trips(tmp_path):
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                          timestep_spacing="trailing")
    assert sched.config.prediction_type == "v_prediction"
    with pytest.raises(TypeError, match="read-only"):
        sched.config["prediction_type"] = "epsilon"
    with pytest.raises(AttributeError, match="no field"):
        sched.config.not_a_field
    copy = DDPMScheduler.from_config(sched.config, clip_sample=False)
    assert copy.config.prediction_type == "v_prediction" and copy.config.clip_sample is False
    with pytest.raises(TypeError, match="no config fields"):
        DDPMScheduler.from_config(sched.config, colour="blue")
    sched.save_pretrained(tmp_path)
    loaded = DDPMScheduler.from_pretrained(tmp_path)
    assert dict(loaded.config) == dict(sched.config)
    assert torch.equal(loaded.alphas_cumprod, sched.alphas_cumprod)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["_class_name"] == "DDPMScheduler"
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        DDPMScheduler.from_pretrained(tmp_path / "missing")


# ---------------------------------------------------------------------------- parity with diffusers
def dummy_model(x: torch.Tensor, t) -> torch.Tensor:
    """A stand-in for eps_theta that depends on both x_t and t."""
    t = float(t)
    ramp = torch.linspace(-1, 1, x[0].numel()).view(x.shape[1:])
    return 0.1 * x + 0.01 * torch.sin(t / 50 + 3 * ramp) + 1e-4 * t * ramp


def run_both(config: dict, num_inference_steps: int, seed: int = 0):
    """Run the same sampling loop with both schedulers and compare every step."""
    diffusers = pytest.importorskip("diffusers")
    ours = DDPMScheduler(**config)
    theirs = diffusers.DDPMScheduler(**config)
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist(), "timesteps must be equal exactly"
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=0)
    g_ours, g_theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    x_ours = torch.randn(2, 1, 4, 4, generator=g_ours)
    x_theirs = torch.randn(2, 1, 4, 4, generator=g_theirs)
    for t in ours.timesteps:
        a = ours.step(dummy_model(x_ours, t), t, x_ours, generator=g_ours)
        b = theirs.step(dummy_model(x_theirs, t), t, x_theirs, generator=g_theirs)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"pred_original_sample at t={int(t)}: {m}")
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"prev_sample at t={int(t)}: {m}")
        x_ours, x_theirs = a.prev_sample, b.prev_sample
    assert torch.isfinite(x_ours).all()
    return x_ours


def scheduler_config(schedule, prediction, variance, clip, spacing="leading"):
    config = dict(beta_schedule=schedule, prediction_type=prediction, variance_type=variance, clip_sample=clip,
                  timestep_spacing=spacing)
    if schedule == "scaled_linear":
        config.update(beta_start=0.00085, beta_end=0.012)
    return config


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_strided_sampling_loops_match_diffusers(schedule, prediction, variance, clip):
    """Every schedule x prediction type x variance type x clipping, on strided grids of every spacing."""
    for steps, spacing in [(50, "leading"), (37, "trailing"), (37, "linspace")]:
        run_both(scheduler_config(schedule, prediction, variance, clip, spacing), steps)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [50, 37, 10])
def test_every_spacing_and_step_count_matches_diffusers(spacing, steps):
    run_both(scheduler_config("linear", "epsilon", "fixed_small", True, spacing), steps, seed=steps)


# the 1000-step chain costs ~0.2 s per loop: cover each schedule, prediction type, variance type and clip setting once
FULL_CHAIN_CASES = [
    ("linear", "epsilon", "fixed_small", True),
    ("linear", "v_prediction", "fixed_large", False),
    ("scaled_linear", "sample", "fixed_small", False),
    ("scaled_linear", "epsilon", "fixed_large", True),
    ("squaredcos_cap_v2", "v_prediction", "fixed_small", True),
    ("squaredcos_cap_v2", "sample", "fixed_large", True),
    ("squaredcos_cap_v2", "epsilon", "fixed_small", False),
]


@pytest.mark.parametrize("schedule, prediction, variance, clip", FULL_CHAIN_CASES)
def test_full_1000_step_loops_match_diffusers(schedule, prediction, variance, clip):
    run_both(scheduler_config(schedule, prediction, variance, clip), 1000, seed=7)


def test_steps_offset_matches_diffusers():
    run_both(dict(timestep_spacing="leading", steps_offset=1), 50)


def test_add_noise_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 1, 4, 4, generator=g), torch.randn(8, 1, 4, 4, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    for schedule in SCHEDULES:
        for zero_snr in (False, True):
            config = dict(scheduler_config(schedule, "epsilon", "fixed_small", True), rescale_betas_zero_snr=zero_snr)
            ours, theirs = DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
            if zero_snr:  # see test_rescaled_betas_bitwise_equal_to_diffusers for the last bits
                torch.testing.assert_close(ours.betas, theirs.betas, rtol=0, atol=1e-6)
                torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=1e-6)
            else:  # built the same way in float32: equal to the last bit
                assert torch.equal(ours.betas, theirs.betas) and torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
            torch.testing.assert_close(ours.add_noise(x0, eps, t), theirs.add_noise(x0, eps, t), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.get_velocity(x0, eps, t), theirs.get_velocity(x0, eps, t),
                                       rtol=1e-5, atol=1e-5)


def test_rescaled_betas_bitwise_equal_to_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for schedule in SCHEDULES:
        config = dict(scheduler_config(schedule, "epsilon", "fixed_small", True), rescale_betas_zero_snr=True)
        assert torch.equal(DDPMScheduler(**config).betas, diffusers.DDPMScheduler(**config).betas), schedule


def test_config_round_trips_with_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    ours = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type="v_prediction", variance_type="fixed_large", clip_sample=False,
                         clip_sample_range=2.0, timestep_spacing="trailing", steps_offset=1)
    theirs = diffusers.DDPMScheduler.from_config(ours.config)
    for key, value in ours.config.items():
        if not key.startswith("_"):
            assert theirs.config[key] == value, key
    back = DDPMScheduler.from_config(theirs.config)
    assert {k: v for k, v in back.config.items()} == dict(ours.config)
    for n in (1000, 50, 37):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    # folders: diffusers reads ours, we read diffusers'
    ours.save_pretrained(tmp_path / "ours")
    assert diffusers.DDPMScheduler.from_pretrained(tmp_path / "ours").config.prediction_type == "v_prediction"
    theirs.save_pretrained(tmp_path / "theirs")
    assert dict(DDPMScheduler.from_pretrained(tmp_path / "theirs").config) == dict(ours.config)
