"""DDIM, Euler and DPM-Solver++: their equations, one interface for all, clear errors, and parity with diffusers.

Parity: for the same configuration, a dummy model that depends on x and t, and the same generator, each
scheduler's ``timesteps`` equal diffusers' exactly, and ``prev_sample`` and ``pred_original_sample`` agree
(rtol = atol = 1e-5) over whole sampling loops, for every beta schedule, spacing, prediction type and step
count 10 and 50 (and for DDIM every eta in {0, 0.5, 1} with set_alpha_to_one and steps_offset both ways).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import warnings

import numpy as np
import pytest
import torch

from sdlearn.pipelines import DDPMPipeline
from sdlearn.schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from sdlearn.schedulers.ddim import ddim_sigma, ddim_update, predicted_noise
from sdlearn.schedulers.dpmsolver import alpha_sigma
from sdlearn.schedulers.euler import sigmas_from_alpha_bar
from sdlearn.models.unet_2d import UNet2DModel

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
SPACINGS = ["leading", "trailing", "linspace"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
STEPS = [10, 50]
FAMILY = [DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler]

# diffusers 0.42 under numpy 2 warns inside its own schedulers; not ours to fix
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning")]


def config_for(schedule: str = "linear", **kw) -> dict:
    config = dict(beta_schedule=schedule, **kw)
    if schedule == "scaled_linear":  # Stable Diffusion's betas
        config.update(beta_start=0.00085, beta_end=0.012)
    return config


def dummy_model(x: torch.Tensor, t) -> torch.Tensor:
    """A stand-in for the network that depends on both x_t and t (fractional t too)."""
    t = float(t)
    ramp = torch.linspace(-1, 1, x[0].numel()).view(x.shape[1:])
    return 0.1 * x + 0.01 * torch.sin(t / 50 + 3 * ramp) + 1e-4 * t * ramp


def sample_loop(scheduler, x_T: torch.Tensor, generator=None, **step_kwargs) -> torch.Tensor:
    """The loop every pipeline runs (init_noise_sigma, scale_model_input, step); returns x_0."""
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_output = dummy_model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(model_output, t, x, generator=generator, **step_kwargs).prev_sample
    return x


# ---------------------------------------------------------------------------- DDIM: eqs. 12 and 16
def test_ddim_sigma_with_eta_1_is_ddpm_posterior_variance():
    """Eq. 16 at eta = 1 is DDPM's beta-tilde (eq. 7) between the two grid points; eta scales it linearly."""
    ddim, ddpm = DDIMScheduler(), DDPMScheduler()
    for sched in (ddim, ddpm):
        sched.set_timesteps(50)
    for t in (980, 500, 20):
        prev = ddim.previous_timestep(t)
        assert prev == ddpm.previous_timestep(t) == t - 20  # "leading": t - T//S is the next grid point
        ab_t, ab_prev = ddim.alphas_cumprod[t], ddim.alphas_cumprod[prev]
        assert ddim_sigma(ab_t, ab_prev, 1.0) ** 2 == pytest.approx(ddpm.posterior_variance(t).item(), rel=1e-5)
        assert ddim_sigma(ab_t, ab_prev, 0.5) == pytest.approx(0.5 * ddim_sigma(ab_t, ab_prev, 1.0).item(), rel=1e-6)
        assert ddim_sigma(ab_t, ab_prev, 0.0) == 0


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_with_eta_1_is_ddpm_ancestral_sampling(prediction):
    """Same grid, same noise z: DDIM(eta = 1) and DDPM's Algorithm 2 (fixed_small) take the same step."""
    ddim = DDIMScheduler(clip_sample=False, prediction_type=prediction)
    ddpm = DDPMScheduler(clip_sample=False, prediction_type=prediction)
    ddim.set_timesteps(25)
    ddpm.set_timesteps(25)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 4, 4, generator=g)
    for t in ddim.timesteps:
        z = torch.randn(x.shape, generator=g)
        a = ddim.step(dummy_model(x, t), t, x, eta=1.0, variance_noise=z)
        b = ddpm.step(dummy_model(x, t), t, x, variance_noise=z)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-4, atol=1e-4)
        x = b.prev_sample


def test_clipped_ddim_with_eta_1_is_ddpm_only_with_the_clipped_noise():
    """With clip_sample (DDPM's default, and mnist-ddpm's), DDPM's posterior mean (eq. 7) combines clip(x0_pred) and
    x_t, so the clipping correction enters with the small weight beta_t sqrt(alpha_bar_prev) / (1 - alpha_bar_t).
    DDIM (eq. 12) combines clip(x0_pred) with the *model's* eps: x0_pred and eps_pred then describe different x_t, and
    the whole correction sqrt(alpha_bar_prev) (clip(x0) - x0) is added at every step. With use_clipped_model_output
    (eps recomputed from the clipped x0_pred) DDIM with eta = 1 on the full grid is DDPM's step again."""
    ddim, ddpm = DDIMScheduler(clip_sample=True), DDPMScheduler(clip_sample=True)
    ddim.set_timesteps(1000)
    ddpm.set_timesteps(1000)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 1, 4, 4, generator=g)
    noise = [torch.randn(x_T.shape, generator=g) for _ in range(1000)]
    final, clipped_steps = {}, 0
    for use_clipped in (True, False):
        x = y = x_T
        for t, z in zip(ddim.timesteps, noise):
            a = ddim.step(dummy_model(x, t), t, x, eta=1.0, variance_noise=z, use_clipped_model_output=use_clipped)
            b = ddpm.step(dummy_model(x, t), t, x, variance_noise=z)
            if use_clipped:  # step by step, from the same x_t
                torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-4, atol=1e-4)
                clipped_steps += bool((a.pred_original_sample.abs() >= 1).any())
            x, y = a.prev_sample, ddpm.step(dummy_model(y, t), t, y, variance_noise=z).prev_sample
        final[use_clipped] = (x, y)
    assert clipped_steps > 100  # the dummy model's x0_pred leaves [-1, 1] often: the test exercises the clipping
    torch.testing.assert_close(*final[True], rtol=1e-3, atol=1e-3)  # whole loops agree
    assert (final[False][0] - final[False][1]).abs().max() > 0.1  # the model's own eps: another sampler


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_step_is_eq12_in_float64(prediction, eta):
    sched = DDIMScheduler(clip_sample=False, prediction_type=prediction, beta_schedule="squaredcos_cap_v2")
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    for t in (900, 400, 0):
        out = sched.step(dummy_model(x, t), t, x, eta=eta, variance_noise=z)
        ab_t = sched.alphas_cumprod[t].double()
        ab_prev = sched.alphas_cumprod[t - 100].double() if t >= 100 else torch.tensor(1.0, dtype=torch.float64)
        m, xd = dummy_model(x, t).double(), x.double()
        x0 = {"epsilon": (xd - (1 - ab_t).sqrt() * m) / ab_t.sqrt(), "sample": m,
              "v_prediction": ab_t.sqrt() * xd - (1 - ab_t).sqrt() * m}[prediction]
        eps = (xd - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()  # eq. 16
        expected = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).sqrt() * eps + sigma * z.double()  # eq. 12
        torch.testing.assert_close(out.pred_original_sample.double(), x0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.prev_sample.double(), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(predicted_noise(m, xd, ab_t, prediction), eps, rtol=1e-6, atol=1e-6)
    # the eq. 12 helper on its own: eta = 0 moves x0_pred to the new noise level along eps_pred, no noise
    x0, eps = torch.randn(3, generator=g), torch.randn(3, generator=g)
    torch.testing.assert_close(ddim_update(x0, eps, torch.tensor(0.36)), 0.6 * x0 + 0.8 * eps)


def test_ddim_previous_timestep_is_t_minus_T_over_S_whatever_the_spacing():
    sched = DDIMScheduler(timestep_spacing="linspace")
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert sched.previous_timestep(999) == 899  # not 888: diffusers' rule, which this course follows
    assert sched.previous_timestep(0) == -100  # past the end: alpha_bar_prev = final_alpha_cumprod


def test_ddim_final_alpha_cumprod_and_last_step():
    x, x0 = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4) - 0.5
    ones = DDIMScheduler(prediction_type="sample")
    ones.set_timesteps(10)
    assert ones.final_alpha_cumprod.item() == 1.0
    torch.testing.assert_close(ones.step(x0, 0, x).prev_sample, x0)  # alpha_bar_prev = 1: x_prev = x0_pred
    first = DDIMScheduler(prediction_type="sample", set_alpha_to_one=False)
    first.set_timesteps(10)
    assert first.final_alpha_cumprod == first.alphas_cumprod[0]
    ab0 = first.alphas_cumprod[0]
    eps = (x - ab0.sqrt() * x0) / (1 - ab0).sqrt()
    torch.testing.assert_close(first.step(x0, 0, x).prev_sample, ab0.sqrt() * x0 + (1 - ab0).sqrt() * eps)


def test_ddim_clipping_and_use_clipped_model_output():
    sched = DDIMScheduler(clip_sample=True, clip_sample_range=0.5)
    sched.set_timesteps(10)
    x = torch.full((1, 1, 2, 2), 3.0)
    eps = torch.zeros_like(x)  # x0_pred = x / sqrt(alpha_bar) > 0.5, clipped to 0.5
    plain = sched.step(eps, 500, x)
    clipped = sched.step(eps, 500, x, use_clipped_model_output=True)
    assert torch.all(plain.pred_original_sample == 0.5)
    ab, ab_prev = sched.alphas_cumprod[500], sched.alphas_cumprod[400]
    torch.testing.assert_close(plain.prev_sample, ab_prev.sqrt() * 0.5 + 0 * x)  # eps_pred stays 0
    eps_from_clip = (x - ab.sqrt() * 0.5) / (1 - ab).sqrt()
    torch.testing.assert_close(clipped.prev_sample, ab_prev.sqrt() * 0.5 + (1 - ab_prev).sqrt() * eps_from_clip)


def test_ddim_eta_0_is_deterministic_and_eta_gt_0_uses_the_generator():
    sched = DDIMScheduler()
    sched.set_timesteps(10)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sched.step(0.1 * x, 500, x, generator=torch.Generator().manual_seed(1)).prev_sample
    b = sched.step(0.1 * x, 500, x, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(a, b)
    c = sched.step(0.1 * x, 500, x, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    d = sched.step(0.1 * x, 500, x, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    e = sched.step(0.1 * x, 500, x, eta=1.0, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(c, d) and not torch.equal(c, e)


def test_ddim_rescale_betas_zero_snr_warns_unless_trailing_and_v_prediction():
    with pytest.warns(UserWarning, match="trailing.*v_prediction"):
        DDIMScheduler(rescale_betas_zero_snr=True)
    with pytest.warns(UserWarning, match="prediction_type='epsilon'"):
        DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
        DDIMScheduler(timestep_spacing="leading")  # no rescaling: nothing to warn about
    assert sched.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)  # zero terminal SNR


# ---------------------------------------------------------------------------- Euler: sigma space
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_euler_sigmas_and_fractional_timesteps(schedule):
    sched = EulerDiscreteScheduler(**config_for(schedule))
    ab = sched.alphas_cumprod.double()
    torch.testing.assert_close(sched.train_sigmas.double(), ((1 - ab) / ab).sqrt(), rtol=1e-6, atol=0)
    sched.set_timesteps(7)  # "linspace": 999, 832.5, 666, ...: fractional
    t = sched.timesteps.double()
    assert sched.timesteps.dtype == torch.float32 and (t != t.round()).any()
    lo = t.floor().long()
    w = t - lo
    hi = (lo + 1).clamp(max=999)
    train = sched.train_sigmas.double()
    expected = (1 - w) * train[lo] + w * train[hi]  # linear in t between the two training steps around it
    torch.testing.assert_close(sched.sigmas[:-1].double(), expected, rtol=1e-6, atol=0)
    assert sched.sigmas[-1] == 0 and len(sched.sigmas) == 8
    assert sched.init_noise_sigma == pytest.approx(sched.sigmas[0].item())
    other = EulerDiscreteScheduler(**config_for(schedule, final_sigmas_type="sigma_min"))
    other.set_timesteps(7)
    assert other.sigmas[-1].item() == pytest.approx(train[0].item(), rel=1e-6)


def test_euler_init_noise_sigma_and_scale_model_input():
    sched = EulerDiscreteScheduler(timestep_spacing="leading")
    sched.set_timesteps(10)
    sigma_max = sched.sigmas.max().item()
    assert sched.init_noise_sigma == pytest.approx((sigma_max**2 + 1) ** 0.5)  # diffusers' choice for "leading"
    x = torch.randn(2, 1, 4, 4)
    t = sched.timesteps[3]
    sigma = sched.sigmas[3]
    torch.testing.assert_close(sched.scale_model_input(x, t), x / (sigma**2 + 1).sqrt())
    # the scaled input is the VP sample: x = x_0 + sigma eps maps to sqrt(ab) x_0 + sqrt(1 - ab) eps
    ab = 1 / (1 + sigma**2)
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(sched.scale_model_input(x0 + sigma * eps, t), ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    assert torch.equal(sigmas_from_alpha_bar(torch.tensor([0.5])), torch.tensor([1.0]))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_euler_step_is_the_euler_formula(prediction):
    sched = EulerDiscreteScheduler(prediction_type=prediction)
    sched.set_timesteps(10)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3)) * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps[:4]):
        m = dummy_model(sched.scale_model_input(x, t), t)
        out = sched.step(m, t, x)
        s, s_next = sched.sigmas[i].double(), sched.sigmas[i + 1].double()
        xd, md = x.double(), m.double()
        x0 = {"epsilon": xd - s * md, "sample": md, "v_prediction": xd / (s**2 + 1) - s / (s**2 + 1).sqrt() * md}
        expected = xd + (s_next - s) * (xd - x0[prediction]) / s  # x + (sigma_next - sigma) d
        torch.testing.assert_close(out.prev_sample.double(), expected, rtol=1e-5, atol=1e-5)
        x = out.prev_sample


def test_euler_churn_is_random_only_when_asked():
    def run(seed, **kw):
        sched = EulerDiscreteScheduler()
        sched.set_timesteps(10)
        return sample_loop(sched, torch.ones(1, 1, 4, 4), generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run(0), run(1))  # s_churn = 0: an ODE, the generator is not used
    assert torch.equal(run(0, s_churn=1.0), run(0, s_churn=1.0))
    assert not torch.equal(run(0, s_churn=1.0), run(1, s_churn=1.0))
    assert torch.equal(run(0, s_churn=1.0, s_tmin=1e9), run(1, s_churn=1.0, s_tmin=1e9))  # outside [s_tmin, s_tmax]


# ---------------------------------------------------------------------------- the ODE samplers agree with DDIM
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_eta_0_euler_and_first_order_dpm_solver_are_one_method(prediction):
    """DDIM (eta = 0), Euler in sigma space and first-order DPM-Solver++ take identical steps (DDIM eq. 13):
    Euler's x equals DDIM's x_t * sqrt(1 + sigma^2), and DPM-Solver's x_t equals DDIM's."""
    ddim = DDIMScheduler(clip_sample=False, prediction_type=prediction, timestep_spacing="trailing")
    euler = EulerDiscreteScheduler(prediction_type=prediction, timestep_spacing="trailing")
    dpm = DPMSolverMultistepScheduler(prediction_type=prediction, timestep_spacing="trailing", solver_order=1)
    for sched in (ddim, euler, dpm):
        sched.set_timesteps(20)
    assert ddim.timesteps.tolist() == euler.timesteps.tolist() == dpm.timesteps.tolist()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x_ddim, x_dpm, x_euler = x, x, x * (1 + euler.sigmas[0] ** 2).sqrt()
    for i, t in enumerate(ddim.timesteps):
        x_ddim = ddim.step(dummy_model(x_ddim, t), t, x_ddim).prev_sample
        x_dpm = dpm.step(dummy_model(x_dpm, t), t, x_dpm).prev_sample
        x_euler = euler.step(dummy_model(euler.scale_model_input(x_euler, t), t), t, x_euler).prev_sample
        torch.testing.assert_close(x_euler / (1 + euler.sigmas[i + 1] ** 2).sqrt(), x_ddim, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x_dpm, x_ddim, rtol=1e-4, atol=1e-4)


def test_dpm_solver_2m_step_is_algorithm_2():
    """The second step onward: x_t = (sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) ((1 + 1/2r) x0_s - 1/2r x0_prev)."""
    sched = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sched.set_timesteps(20)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    x0_preds = []
    for i, t in enumerate(sched.timesteps[:5]):
        out = sched.step(dummy_model(x, t), t, x)
        x0_preds.append(out.pred_original_sample.double())
        a_s, s_s = alpha_sigma(sched.sigmas[i].double())
        a_t, s_t = alpha_sigma(sched.sigmas[i + 1].double())
        lam = lambda a, s: torch.log(a / s)  # noqa: E731 (half log-SNR)
        h = lam(a_t, s_t) - lam(a_s, s_s)
        torch.testing.assert_close(x0_preds[-1], (x.double() - s_s * dummy_model(x, t).double()) / a_s,
                                   rtol=1e-5, atol=1e-5)
        if i == 0:
            D = x0_preds[-1]  # first step: first order (DDIM)
        else:
            a_p, s_p = alpha_sigma(sched.sigmas[i - 1].double())
            r = (lam(a_s, s_s) - lam(a_p, s_p)) / h
            D = (1 + 1 / (2 * r)) * x0_preds[-1] - 1 / (2 * r) * x0_preds[-2]
        expected = (s_t / s_s) * x.double() - a_t * (torch.exp(-h) - 1) * D
        torch.testing.assert_close(out.prev_sample.double(), expected, rtol=1e-5, atol=1e-5)
        x = out.prev_sample


@pytest.mark.parametrize("make", [
    lambda p: (DDIMScheduler(prediction_type=p), dict(eta=0.0)),
    lambda p: (DDIMScheduler(prediction_type=p), dict(eta=1.0)),
    lambda p: (EulerDiscreteScheduler(prediction_type=p), {}),
    lambda p: (DPMSolverMultistepScheduler(prediction_type=p), {}),
], ids=["ddim-eta0", "ddim-eta1", "euler", "dpm-solver++"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_sampler_lands_on_a_point_mass(make, prediction):
    """If the data is one point c, the exact model predicts x0 = c everywhere and every sampler must end at c."""
    sched, kwargs = make(prediction)
    sched.set_timesteps(12)
    c = torch.full((3, 1, 2, 2), 0.3)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(c.shape, generator=g) * sched.init_noise_sigma
    for t in sched.timesteps:
        x_t = sched.scale_model_input(x, t)  # the VP sample sqrt(ab) x0 + sqrt(1 - ab) eps
        if isinstance(sched, EulerDiscreteScheduler):  # fractional t: alpha_bar from the interpolated sigma
            ab = 1 / (1 + sched.sigmas[sched.step_index] ** 2)
        else:
            ab = sched.alphas_cumprod[int(t)]
        eps = (x_t - ab.sqrt() * c) / (1 - ab).sqrt()
        model_output = {"epsilon": eps, "sample": c, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * c}[prediction]
        x = sched.step(model_output, t, x, generator=g, **kwargs).prev_sample
    torch.testing.assert_close(x, c, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- one interface for all
@pytest.mark.parametrize("cls", [DDPMScheduler, *FAMILY])
def test_each_scheduler_runs_in_ddpm_pipeline(cls, tiny_unet_config):
    torch.manual_seed(0)
    unet = UNet2DModel(dataclasses.replace(tiny_unet_config, sample_size=8)).eval()
    pipe = DDPMPipeline(unet, cls())
    frames = []
    out = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np",
               progress=False, callback_on_step_end=lambda p, i, t, info: frames.append(info))
    images = out.images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert len(frames) == 4 and all(f["x0_pred"] is not None and torch.isfinite(f["x_prev"]).all() for f in frames)
    again = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np",
                 progress=False).images
    np.testing.assert_array_equal(images, again)  # the pipeline resets the scheduler: same seed, same images


def test_pipeline_scales_the_noise_for_the_grid_it_samples(tiny_unet_config):
    torch.manual_seed(0)
    unet = UNet2DModel(dataclasses.replace(tiny_unet_config, sample_size=8)).eval()
    latents = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sched = EulerDiscreteScheduler(timestep_spacing="leading")
    sched.set_timesteps(10)
    x = latents * sched.init_noise_sigma  # sqrt(sigma(900)^2 + 1), not sqrt(sigma(999)^2 + 1)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t), t, x).prev_sample
    pipe = DDPMPipeline(unet, EulerDiscreteScheduler(timestep_spacing="leading"))
    images = pipe(num_inference_steps=10, latents=latents, output_type="pt", progress=False).images
    torch.testing.assert_close(images, ((x + 1) / 2).clamp(0, 1))


def test_noise_is_drawn_on_the_generator_device():
    """A CPU generator gives the same numbers as torch.randn (and would on a GPU: drawn on the CPU, then moved)."""
    from sdlearn.schedulers.base import randn

    a = randn((2, 3), torch.Generator().manual_seed(0), "cpu", torch.float32)
    assert torch.equal(a, torch.randn(2, 3, generator=torch.Generator().manual_seed(0)))
    assert randn((2, 3), None, torch.device("cpu"), torch.float64).dtype == torch.float64


def test_pipeline_saves_and_loads_each_scheduler(tmp_path, tiny_unet_config):
    torch.manual_seed(0)
    unet = UNet2DModel(dataclasses.replace(tiny_unet_config, sample_size=8)).eval()
    for cls in FAMILY:
        DDPMPipeline(unet, cls(prediction_type="v_prediction")).save_pretrained(tmp_path / cls.__name__)
        loaded = DDPMPipeline.from_pretrained(tmp_path / cls.__name__)
        assert type(loaded.scheduler) is cls and loaded.scheduler.config.prediction_type == "v_prediction"


def test_from_config_moves_a_configuration_between_schedulers():
    shared = dict(num_train_timesteps=500, beta_schedule="scaled_linear", beta_start=0.001, beta_end=0.015,
                  prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=1)
    sched = DDPMScheduler(**shared, variance_type="fixed_large")
    for cls in [*FAMILY, DDPMScheduler]:
        sched = cls.from_config(sched.config)
        assert {k: sched.config[k] for k in shared} == shared, cls.__name__
        assert sched.config._class_name == cls.__name__
    assert sched.config.variance_type == "fixed_small"  # not carried through schedulers without it: default again
    for cls in FAMILY:  # straight from a DDPM config (the shipped pipelines' scheduler), variance_type and all
        assert cls.from_config(DDPMScheduler(variance_type="fixed_large").config).config.beta_schedule == "linear"
    euler = EulerDiscreteScheduler.from_config(DDIMScheduler(clip_sample=False).config, timestep_spacing="leading")
    assert euler.config.timestep_spacing == "leading"
    with pytest.raises(TypeError, match="no config fields"):
        DDIMScheduler.from_config(euler.config, eta=0.5)  # eta is an argument of step(), not a config field


def test_save_and_load_each_scheduler(tmp_path):
    for cls in FAMILY:
        sched = cls(**config_for("squaredcos_cap_v2", prediction_type="sample", steps_offset=1))
        sched.save_pretrained(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__)
        assert dict(loaded.config) == dict(sched.config)
        saved = json.loads((tmp_path / cls.__name__ / "scheduler_config.json").read_text())
        assert saved["_class_name"] == cls.__name__


def test_from_config_refuses_options_sdlearn_does_not_implement():
    with pytest.raises(NotImplementedError, match="use_karras_sigmas=True.*diffusers"):
        EulerDiscreteScheduler.from_config({"use_karras_sigmas": True})
    with pytest.raises(NotImplementedError, match="thresholding=True"):
        DDIMScheduler.from_config({"thresholding": True})
    with pytest.raises(NotImplementedError, match="use_lu_lambdas"):
        DPMSolverMultistepScheduler.from_config({"use_lu_lambdas": True})
    with pytest.raises(NotImplementedError, match="variance_type='learned_range'"):
        DPMSolverMultistepScheduler.from_config({"variance_type": "learned_range"})
    # the "off" values diffusers writes into its configs are fine
    EulerDiscreteScheduler.from_config({"use_karras_sigmas": False, "sigma_min": None, "interpolation_type": "linear"})


# ---------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("cls", FAMILY)
def test_step_before_set_timesteps(cls):
    sched = cls()
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"call set_timesteps\(\) before step\(\)"):
        sched.step(x, 999, x)
    if cls is EulerDiscreteScheduler:
        with pytest.raises(ValueError, match=r"call set_timesteps\(\) before scale_model_input\(\)"):
            sched.scale_model_input(x, 999)


@pytest.mark.parametrize("cls", FAMILY)
def test_bad_step_counts_and_choices(cls):
    sched = cls(num_train_timesteps=100)
    with pytest.raises(ValueError, match=r"num_inference_steps \(101\) cannot be larger than num_train_timesteps"):
        sched.set_timesteps(101)
    with pytest.raises(ValueError, match="positive int"):
        sched.set_timesteps(0)
    with pytest.raises(ValueError, match="timestep_spacing 'middle'.*leading"):
        cls(timestep_spacing="middle")
    with pytest.raises(ValueError, match="prediction_type 'noise'.*epsilon"):
        cls(prediction_type="noise")
    with pytest.raises(ValueError, match="beta_schedule 'sigmoid'"):
        cls(beta_schedule="sigmoid")


def test_dpm_solver_bad_choices():
    with pytest.raises(ValueError, match="solver_order 3 is not implemented"):
        DPMSolverMultistepScheduler(solver_order=3)
    with pytest.raises(ValueError, match="algorithm_type 'sde-dpmsolver\\+\\+'"):
        DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    with pytest.raises(ValueError, match="solver_type 'rk4'"):
        DPMSolverMultistepScheduler(solver_type="rk4")
    assert DPMSolverMultistepScheduler(solver_type="bh2").config.solver_type == "midpoint"  # UniPC's, as diffusers'
    assert DPMSolverMultistepScheduler(algorithm_type="deis").config.algorithm_type == "dpmsolver++"  # DEIS's


@pytest.mark.parametrize("cls", FAMILY)
def test_a_timestep_not_in_the_schedule(cls):
    sched = cls(timestep_spacing="trailing")
    sched.set_timesteps(10)  # 999, 899, ..., 99
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="timestep 500.* not in this scheduler's grid"):
        sched.scale_model_input(x, 500)
        sched.step(x, 500, x)


@pytest.mark.filterwarnings("ignore:call scale_model_input")
@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, DPMSolverMultistepScheduler])
def test_multistep_schedulers_insist_on_the_order_of_the_grid(cls):
    sched = cls(timestep_spacing="trailing")
    sched.set_timesteps(3)
    x = torch.zeros(1, 1, 4, 4)
    t0, t1, t2 = sched.timesteps
    sched.step(x, sched.timesteps[0], x)
    with pytest.raises(ValueError, match="step 1 of the grid is t=.*but got t=999"):
        sched.step(x, t0, x)  # the same timestep twice
    for t in (t1, t2):
        sched.step(x, t, x)
    with pytest.raises(ValueError, match=r"all 3 steps of the grid are done; call set_timesteps\(\) again"):
        sched.step(x, t0, x)
    sched.set_timesteps(3)
    sched.step(x, t0, x)  # a fresh loop


def test_dpm_solver_survives_repeated_timesteps():
    """With S = T, the "linspace" grid repeats a timestep (diffusers then divides by h = 0 and returns NaN)."""
    sched = DPMSolverMultistepScheduler(num_train_timesteps=100)
    sched.set_timesteps(100)
    assert len(set(sched.timesteps.tolist())) < 100
    x = sample_loop(sched, torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(x).all()


# ---------------------------------------------------------------------------- parity with diffusers
def run_both(cls, config: dict, num_inference_steps: int, seed: int = 0, step_kwargs: dict | None = None,
             noise_kwarg: str | None = None) -> None:
    """One whole sampling loop with sdlearn's and diffusers' scheduler of the same name; compare every step."""
    diffusers = pytest.importorskip("diffusers")
    step_kwargs = step_kwargs or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. DDIM's zero-SNR advice
        ours = cls(**config)
    theirs = getattr(diffusers, cls.__name__)(**config)
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    where = f"{cls.__name__}({config}), S={num_inference_steps}, {step_kwargs}"
    assert ours.timesteps.dtype == theirs.timesteps.dtype, where
    assert ours.timesteps.tolist() == theirs.timesteps.tolist(), f"timesteps differ: {where}"
    assert float(ours.init_noise_sigma) == pytest.approx(float(theirs.init_noise_sigma), rel=1e-6), where

    g_ours, g_theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    x_ours = torch.randn(2, 1, 4, 4, generator=g_ours) * ours.init_noise_sigma
    x_theirs = torch.randn(2, 1, 4, 4, generator=g_theirs) * theirs.init_noise_sigma
    ours_steps, theirs_steps = [], []
    for t in ours.timesteps:
        kw_ours, kw_theirs = dict(step_kwargs), dict(step_kwargs)
        if noise_kwarg:  # the same explicit noise for both instead of a generator
            z = torch.randn(x_ours.shape, generator=g_ours)
            kw_ours[noise_kwarg] = kw_theirs[noise_kwarg] = z
        else:
            kw_ours["generator"], kw_theirs["generator"] = g_ours, g_theirs
        a = ours.step(dummy_model(ours.scale_model_input(x_ours, t), t), t, x_ours, **kw_ours)
        b = theirs.step(dummy_model(theirs.scale_model_input(x_theirs, t), t), t, x_theirs, **kw_theirs)
        # diffusers' DPM-Solver does not return its x0_pred; it keeps it as model_outputs[-1]
        b_x0 = b.pred_original_sample if hasattr(b, "pred_original_sample") else theirs.model_outputs[-1]
        ours_steps.append(torch.stack([a.prev_sample, a.pred_original_sample]))
        theirs_steps.append(torch.stack([b.prev_sample, b_x0]))
        x_ours, x_theirs = a.prev_sample, b.prev_sample
    ours_all, theirs_all = torch.stack(ours_steps), torch.stack(theirs_steps)  # (S, 2, B, C, H, W)
    if not torch.allclose(ours_all, theirs_all, rtol=1e-5, atol=1e-5):  # find the first step that differs
        for i, t in enumerate(ours.timesteps.tolist()):
            for k, name in enumerate(["prev_sample", "pred_original_sample"]):
                torch.testing.assert_close(ours_all[i, k], theirs_all[i, k], rtol=1e-5, atol=1e-5,
                                           msg=lambda m: f"{name} at step {i} (t={t}) of {where}: {m}")
    assert torch.isfinite(x_ours).all(), where


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddim_matches_diffusers(schedule, spacing, prediction, steps):
    """Each eta in {0, 0.5, 1} with set_alpha_to_one and steps_offset both ways."""
    for eta, set_alpha_to_one, steps_offset in itertools.product([0.0, 0.5, 1.0], [True, False], [0, 1]):
        config = config_for(schedule, timestep_spacing=spacing, prediction_type=prediction,
                            set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset)
        run_both(DDIMScheduler, config, steps, step_kwargs=dict(eta=eta))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_euler_matches_diffusers(schedule, spacing, prediction, steps):
    for steps_offset in (0, 1):
        config = config_for(schedule, timestep_spacing=spacing, prediction_type=prediction, steps_offset=steps_offset)
        run_both(EulerDiscreteScheduler, config, steps)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_dpm_solver_matches_diffusers(schedule, spacing, prediction, steps):
    for steps_offset in (0, 1):
        config = config_for(schedule, timestep_spacing=spacing, prediction_type=prediction, steps_offset=steps_offset)
        run_both(DPMSolverMultistepScheduler, config, steps)


OPTION_CASES = [
    # DDIM: clipping variants, explicit noise, zero terminal SNR, grids that T does not divide, the full chain
    (DDIMScheduler, dict(clip_sample=False), 10, dict(eta=0.5), None),
    (DDIMScheduler, dict(clip_sample_range=0.5), 10, dict(eta=1.0, use_clipped_model_output=True), None),
    (DDIMScheduler, dict(prediction_type="sample"), 10, dict(eta=0.7), "variance_noise"),
    (DDIMScheduler, dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"),
     10, dict(eta=0.0), None),
    (DDIMScheduler, dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"),
     50, dict(eta=1.0), None),
    (DDIMScheduler, dict(timestep_spacing="linspace"), 37, dict(eta=0.5), None),
    (DDIMScheduler, dict(timestep_spacing="trailing"), 37, dict(eta=0.0), None),
    (DDIMScheduler, dict(clip_sample=False), 1000, dict(eta=0.0), None),
    # Euler: churn (random), zero terminal SNR, sigma_min at the end, 37 and 1000 steps
    (EulerDiscreteScheduler, {}, 10, dict(s_churn=1.0), None),
    (EulerDiscreteScheduler, {}, 20, dict(s_churn=3.0, s_tmin=0.5, s_tmax=20.0, s_noise=1.003), None),
    (EulerDiscreteScheduler, dict(rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                  prediction_type="v_prediction"), 10, {}, None),
    (EulerDiscreteScheduler, dict(final_sigmas_type="sigma_min"), 10, {}, None),
    (EulerDiscreteScheduler, dict(timestep_spacing="linspace"), 37, {}, None),
    (EulerDiscreteScheduler, dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 1000, {}, None),
    # DPM-Solver++: the other solver options
    (DPMSolverMultistepScheduler, dict(solver_type="heun"), 10, {}, None),
    (DPMSolverMultistepScheduler, dict(solver_type="heun", prediction_type="v_prediction"), 20, {}, None),
    (DPMSolverMultistepScheduler, dict(solver_order=1), 10, {}, None),
    (DPMSolverMultistepScheduler, dict(lower_order_final=False), 10, {}, None),
    (DPMSolverMultistepScheduler, dict(euler_at_final=True), 20, {}, None),
    (DPMSolverMultistepScheduler, dict(final_sigmas_type="sigma_min"), 10, {}, None),
    (DPMSolverMultistepScheduler, dict(final_sigmas_type="sigma_min", lower_order_final=False), 20, {}, None),
    (DPMSolverMultistepScheduler, dict(rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                       prediction_type="v_prediction"), 10, {}, None),
    (DPMSolverMultistepScheduler, dict(timestep_spacing="leading", steps_offset=1), 37, {}, None),
    (DPMSolverMultistepScheduler, dict(beta_schedule="squaredcos_cap_v2"), 500, {}, None),
]


@pytest.mark.parametrize("cls, config, steps, step_kwargs, noise_kwarg", OPTION_CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(OPTION_CASES)])
def test_options_match_diffusers(cls, config, steps, step_kwargs, noise_kwarg):
    run_both(cls, config, steps, seed=3, step_kwargs=step_kwargs, noise_kwarg=noise_kwarg)


@pytest.mark.parametrize("cls", FAMILY)
def test_add_noise_matches_diffusers(cls):
    diffusers = pytest.importorskip("diffusers")
    for schedule in SCHEDULES:
        ours, theirs = cls(**config_for(schedule)), getattr(diffusers, cls.__name__)(**config_for(schedule))
        ours.set_timesteps(20)
        theirs.set_timesteps(20)
        g = torch.Generator().manual_seed(0)
        x0, eps = torch.randn(4, 1, 4, 4, generator=g), torch.randn(4, 1, 4, 4, generator=g)
        t = ours.timesteps[[0, 5, 13, 19]]
        torch.testing.assert_close(ours.add_noise(x0, eps, t), theirs.add_noise(x0, eps, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", FAMILY)
def test_configs_cross_with_diffusers(cls, tmp_path):
    """diffusers' XScheduler.from_config(ours.config) and ours.from_config(theirs.config), and the same on disk."""
    diffusers = pytest.importorskip("diffusers")
    ours = cls(**config_for("scaled_linear", prediction_type="v_prediction", timestep_spacing="leading",
                            steps_offset=1))
    theirs = getattr(diffusers, cls.__name__).from_config(ours.config)
    for key, value in ours.config.items():
        if not key.startswith("_"):
            assert theirs.config[key] == value, key
    back = cls.from_config(theirs.config)
    assert dict(back.config) == dict(ours.config)
    for n in (10, 50, 37):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    ours.save_pretrained(tmp_path / "ours")
    assert getattr(diffusers, cls.__name__).from_pretrained(tmp_path / "ours").config.steps_offset == 1
    theirs.save_pretrained(tmp_path / "theirs")
    assert dict(cls.from_pretrained(tmp_path / "theirs").config) == dict(ours.config)
    # configs of other diffusers schedulers work too (Stable Diffusion ships PNDM's)
    others = ["PNDMScheduler", "DDPMScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler",
              "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler"]
    for other in (getattr(diffusers, name) for name in others):
        config = other(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1).config
        moved = cls.from_config(config)
        assert moved.config.beta_schedule == "scaled_linear" and moved.config.steps_offset == 1, other.__name__
        if cls is DPMSolverMultistepScheduler:  # DEIS's and UniPC's options map onto DPM-Solver++ 2M, as in diffusers
            assert (moved.config.algorithm_type, moved.config.solver_type) == ("dpmsolver++", "midpoint")
    assert EulerDiscreteScheduler.from_config(diffusers.EDMEulerScheduler().config).config.prediction_type == "epsilon"
