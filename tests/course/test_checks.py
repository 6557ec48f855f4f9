"""sdlearn.course.checks: correct answers pass, each planted mistake is caught and named, the grader never raises."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil

import pytest
import torch

from sdlearn.course import checks as grading
from sdlearn.course.checks import EXERCISES, CheckFailed, check, run_check

from course.check_harness import harness_tests  # tests/course/check_harness.py


def grading_modules() -> list:
    """sdlearn.course.checks and each of its modules (core, diffusion, latent, samplers)."""
    return [grading] + [importlib.import_module(f"sdlearn.course.checks.{m.name}") for m in pkgutil.iter_modules(grading.__path__)]


def grading_source() -> str:
    return "\n".join(inspect.getsource(m) for m in grading_modules())


def col(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to scale each image of a batch."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


# ---------------------------------------------------------------------------- implementations with knobs
# Each factory's defaults give the correct answer; a keyword plants one mistake.
def make_forward_step(signal_pow=0.5, noise_pow=0.5, sign=1, swap=False):
    def forward_step(x_prev, beta_t, eps):
        a, b = (1 - beta_t) ** signal_pow, beta_t**noise_pow
        if swap:
            a, b = beta_t**0.5, (1 - beta_t) ** 0.5
        return a * x_prev + sign * b * eps
    return forward_step


def make_q_sample(shift=0, signal_pow=0.5, noise_pow=0.5, sign=1, one_step_alpha=False, reshape=True):
    def q_sample(x0, t, eps, alphas_cumprod):
        ab = alphas_cumprod[t + shift]
        if one_step_alpha:
            prev = torch.where(t > 0, alphas_cumprod[(t - 1).clamp(min=0)], torch.ones_like(ab))
            ab = ab / prev
        if reshape:
            ab = col(ab, x0)
        return ab**signal_pow * x0 + sign * (1 - ab) ** noise_pow * eps
    return q_sample


def make_cosine_betas(clip=True, use_s=True, power=2, dtype=torch.float32, points="T+1"):
    import math

    def cosine_betas(num_train_timesteps, s=0.008, max_beta=0.999):
        T = num_train_timesteps
        s = s if use_s else 0.0
        u = torch.linspace(0, 1, T + 1 if points == "T+1" else T, dtype=torch.float64)
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** power
        alpha_bar = f / f[0]
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
        if clip:
            betas = betas.clamp(max=max_beta)
        return betas.to(dtype)
    return cosine_betas


def make_predict_x0(shift=0, signal_pow=0.5, noise_pow=0.5, sign=-1, one_step_alpha=False):
    def predict_x0(x_t, t, eps_pred, alphas_cumprod):
        ab = alphas_cumprod[t + shift]
        if one_step_alpha:
            prev = torch.where(t > 0, alphas_cumprod[(t - 1).clamp(min=0)], torch.ones_like(ab))
            ab = ab / prev
        ab = col(ab, x_t)
        return (x_t + sign * (1 - ab) ** noise_pow * eps_pred) / ab**signal_pow
    return predict_x0


def make_posterior(shift=0, prev_same=False, return_std=False, return_beta=False, x0_pow=0.5, alpha_bar_for_alpha=False,
                   sign=1):
    def posterior_mean_variance(x0, x_t, t, betas, alphas_cumprod):
        i = t + shift
        beta, ab = betas[i], alphas_cumprod[i]
        ab_prev = alphas_cumprod[i] if prev_same else alphas_cumprod[i - 1]
        alpha = ab if alpha_bar_for_alpha else 1 - beta
        mean = ab_prev**x0_pow * beta / (1 - ab) * x0 + sign * alpha**0.5 * (1 - ab_prev) / (1 - ab) * x_t
        variance = (1 - ab_prev) / (1 - ab) * beta
        if return_std:
            variance = variance.sqrt()
        if return_beta:
            variance = beta
        return mean, variance
    return posterior_mean_variance


def make_simple_loss(shift=0, noise_pow=0.5, feed_x0=False, target_x0=False, reduce="mean", item=False,
                     per_sample=False, detach=False, l1=False):
    def simple_loss(model, x0, t, eps, alphas_cumprod):
        ab = col(alphas_cumprod[t + shift], x0)
        x_t = ab**0.5 * x0 + (1 - ab) ** noise_pow * eps
        pred = model(x0 if feed_x0 else x_t, t)
        err = ((x0 if target_x0 else eps) - pred).abs() ** (1 if l1 else 2)
        if per_sample:
            return err.mean(dim=(1, 2, 3))
        loss = err.mean() if reduce == "mean" else err.sum()
        if detach:
            loss = loss.detach()
        return loss.item() if item else loss
    return simple_loss


def make_ddpm_step(shift=0, noise_at_t0=False, alpha_bar_for_alpha=False, sigma_pow=0.5, sqrt_ab=0.5, sign=-1,
                   beta_tilde=False, no_noise=False):
    def ddpm_step(eps_pred, t, x_t, betas, alphas_cumprod, z):
        i = t + shift
        beta, ab = betas[i], alphas_cumprod[i]
        alpha = ab if alpha_bar_for_alpha else 1 - beta
        mean = (x_t + sign * beta / (1 - ab) ** sqrt_ab * eps_pred) / alpha**0.5
        if (t == 0 and not noise_at_t0) or no_noise:
            return mean
        var = beta
        if beta_tilde:
            ab_prev = alphas_cumprod[i - 1] if i > 0 else torch.ones_like(ab)
            var = (1 - ab_prev) / (1 - ab) * beta
        return mean + var**sigma_pow * z
    return ddpm_step


CORRECT = {
    "ch01.forward_step": make_forward_step(),
    "ch01.q_sample": make_q_sample(),
    "ch01.cosine_betas": make_cosine_betas(),
    "ch02.predict_x0": make_predict_x0(),
    "ch02.posterior_mean_variance": make_posterior(),
    "ch02.simple_loss": make_simple_loss(),
    "ch02.ddpm_step": make_ddpm_step(),
}

# (exercise, implementation with one planted mistake, what the feedback must say)
MISTAKES = [
    ("ch01.forward_step", make_forward_step(noise_pow=1.0), "variance_for_std"),
    ("ch01.forward_step", make_forward_step(signal_pow=1.0), "missing_sqrt"),
    ("ch01.forward_step", make_forward_step(sign=-1), "wrong_sign"),
    ("ch01.forward_step", make_forward_step(swap=True), "swapped"),
    ("ch01.q_sample", make_q_sample(shift=-1), "off_by_one"),
    ("ch01.q_sample", make_q_sample(shift=1), "off_by_one"),  # raises IndexError at t = T - 1
    ("ch01.q_sample", make_q_sample(signal_pow=1.0), "missing_sqrt"),
    ("ch01.q_sample", make_q_sample(noise_pow=1.0), "variance_for_std"),
    ("ch01.q_sample", make_q_sample(one_step_alpha=True), "alpha_vs_alpha_bar"),
    ("ch01.q_sample", make_q_sample(sign=-1), "wrong_sign"),
    ("ch01.q_sample", make_q_sample(reshape=False), "broadcast"),
    ("ch01.cosine_betas", make_cosine_betas(clip=False), "no_clip"),
    ("ch01.cosine_betas", make_cosine_betas(use_s=False), "missing_offset"),
    ("ch01.cosine_betas", make_cosine_betas(power=1), "not_squared"),
    ("ch01.cosine_betas", make_cosine_betas(dtype=torch.float64), "dtype"),
    ("ch01.cosine_betas", make_cosine_betas(points="T"), "T + 1 values"),
    ("ch02.predict_x0", make_predict_x0(shift=-1), "off_by_one"),
    ("ch02.predict_x0", make_predict_x0(shift=1), "off_by_one"),
    ("ch02.predict_x0", make_predict_x0(signal_pow=1.0), "missing_sqrt"),
    ("ch02.predict_x0", make_predict_x0(noise_pow=1.0), "variance_for_std"),
    ("ch02.predict_x0", make_predict_x0(one_step_alpha=True), "alpha_vs_alpha_bar"),
    ("ch02.predict_x0", make_predict_x0(sign=1), "wrong_sign"),
    ("ch02.posterior_mean_variance", make_posterior(shift=-1), "off_by_one"),
    ("ch02.posterior_mean_variance", make_posterior(prev_same=True), "off_by_one"),
    ("ch02.posterior_mean_variance", make_posterior(return_std=True), "std_for_variance"),
    ("ch02.posterior_mean_variance", make_posterior(return_beta=True), "beta_for_beta_tilde"),
    ("ch02.posterior_mean_variance", make_posterior(x0_pow=1.0), "missing_sqrt"),
    ("ch02.posterior_mean_variance", make_posterior(alpha_bar_for_alpha=True), "alpha_vs_alpha_bar"),
    ("ch02.posterior_mean_variance", make_posterior(sign=-1), "wrong_sign"),
    ("ch02.posterior_mean_variance", make_posterior(shift=1), "off_by_one"),
    ("ch02.simple_loss", make_simple_loss(shift=-1), "off_by_one"),
    ("ch02.simple_loss", make_simple_loss(noise_pow=1.0), "variance_for_std"),
    ("ch02.simple_loss", make_simple_loss(feed_x0=True), "model_input"),
    ("ch02.simple_loss", make_simple_loss(target_x0=True), "wrong_target"),
    ("ch02.simple_loss", make_simple_loss(reduce="sum"), "sum_for_mean"),
    ("ch02.simple_loss", make_simple_loss(item=True), "no .item()"),
    ("ch02.simple_loss", make_simple_loss(l1=True), "not_squared_error"),
    ("ch02.simple_loss", make_simple_loss(per_sample=True), "one number"),
    ("ch02.simple_loss", make_simple_loss(detach=True), "no gradient"),
    ("ch02.ddpm_step", make_ddpm_step(noise_at_t0=True), "noise_at_t0"),
    ("ch02.ddpm_step", make_ddpm_step(alpha_bar_for_alpha=True), "alpha_vs_alpha_bar"),
    ("ch02.ddpm_step", make_ddpm_step(sigma_pow=1.0), "variance_for_std"),
    ("ch02.ddpm_step", make_ddpm_step(sqrt_ab=1.0), "missing_sqrt"),
    ("ch02.ddpm_step", make_ddpm_step(shift=-1), "off_by_one"),
    ("ch02.ddpm_step", make_ddpm_step(shift=1), "off_by_one"),
    ("ch02.ddpm_step", make_ddpm_step(sign=1), "wrong_sign"),
    ("ch02.ddpm_step", make_ddpm_step(beta_tilde=True), "beta_tilde_for_beta"),
    ("ch02.ddpm_step", make_ddpm_step(no_noise=True), "missing_noise"),
]


def library_check(exercise_id: str, fn) -> None:
    """Run an exercise's checks on sdlearn's own implementation: do the library and the first-principles references
    agree? (``check`` itself refuses sdlearn's implementations, as the grader does; these tests bypass that.)"""
    grading.CHECKS[exercise_id](fn)


# ---------------------------------------------------------------------------- tests
# Chapters whose checks are tested in a module of their own (correct versions, planted mistakes, library parity).
ELSEWHERE = {5: "test_checks_conditioning.py", 7: "test_checks_pipeline.py"}
HERE = {e for e, ex in EXERCISES.items() if ex.chapter not in ELSEWHERE}  # the exercises this module tests


def test_every_exercise_has_metadata_and_a_check():
    assert set(EXERCISES) == set(grading.CHECKS)
    assert HERE == set(CORRECT)
    from pathlib import Path
    for chapter, name in ELSEWHERE.items():
        source = (Path(__file__).parent / name).read_text(encoding="utf-8")
        assert all(f'"{e}"' in source for e, ex in EXERCISES.items() if ex.chapter == chapter), (chapter, name)
    for exercise_id, ex in EXERCISES.items():
        assert ex.chapter == int(exercise_id[2:4])
        assert ex.points > 0 and ex.equation and ex.formula and ex.signature
        assert grading.CHECKS[exercise_id].__doc__, f"{exercise_id}'s check needs a docstring naming its equation"


def test_noise_at_last_step_mentions_t0():
    _, feedback = run_check("ch02.ddpm_step", make_ddpm_step(noise_at_t0=True))
    assert "t = 0" in feedback and "last step" in feedback


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
def test_not_implemented_says_not_written(exercise_id):
    def stub(*args, **kwargs):
        raise NotImplementedError()
    passed, feedback = run_check(exercise_id, stub)
    assert not passed and "not written this exercise yet" in feedback


def test_exceptions_are_shown_with_type_message_and_line():
    def crashes(x_t, t, eps_pred, alphas_cumprod):
        raise ValueError("boom")
    passed, feedback = run_check("ch02.predict_x0", crashes)
    assert not passed and "ValueError: boom" in feedback and 'raise ValueError("boom")' in feedback


def test_generic_failures_shape_dtype_nan_not_tensor_in_place():
    cases = {
        "shape": lambda x_t, t, e, ab: x_t[:, 0],
        "dtype": lambda x_t, t, e, ab: make_predict_x0()(x_t, t, e, ab).double(),
        "NaN": lambda x_t, t, e, ab: x_t * float("nan"),
        "torch.Tensor": lambda x_t, t, e, ab: x_t.numpy(),
    }
    for keyword, fn in cases.items():
        passed, feedback = run_check("ch02.predict_x0", fn)
        assert not passed and keyword in feedback, (keyword, feedback)

    def in_place(x_t, t, eps_pred, alphas_cumprod):
        ab = col(alphas_cumprod[t], x_t)
        x_t -= (1 - ab).sqrt() * eps_pred
        return x_t / ab.sqrt()
    passed, feedback = run_check("ch02.predict_x0", in_place)
    assert not passed and "in place" in feedback

    passed, feedback = run_check("ch02.posterior_mean_variance", lambda *a: make_posterior()(*a)[0])
    assert not passed and "pair (mean, variance)" in feedback


def test_run_check_never_raises():
    def exits(*args):
        raise SystemExit(3)

    def type_error(*args):
        return None + 1

    for exercise_id, fn in [("no.such.exercise", CORRECT["ch02.predict_x0"]), ("ch02.ddpm_step", None),
                            ("ch02.ddpm_step", exits), ("ch02.ddpm_step", type_error), ("ch02.simple_loss", print),
                            ("ch01.cosine_betas", lambda T: "betas")]:
        passed, feedback = run_check(exercise_id, fn)
        assert passed is False and isinstance(feedback, str) and feedback
    assert "no.such.exercise" in run_check("no.such.exercise", print)[1]


# The only sdlearn names sdlearn.course.checks imports from outside itself: the models and schedulers that chapter 4's
# checks hand to the learner's function (never sdlearn's VAE loss, KL, scale factor or pipelines).
GRADING_MAY_IMPORT = {"sdlearn.models.autoencoder_kl": {"AutoencoderKL", "AutoencoderKLConfig", "DiagonalGaussianDistribution"},
                      "sdlearn.schedulers": {"DDIMScheduler", "EulerDiscreteScheduler"},
                      "sdlearn.utils.files": {"PACKAGE_DIR"},  # to tell the learner's frames from sdlearn's
                      "sdlearn.course.grader.references": {"REFERENCES", "BLOCKED_CALLABLES"}}  # the paths the check cell takes away too


def test_grading_computes_references_itself():
    """The grader runs with sdlearn's reference code unavailable: each check computes its reference from the formula.
    sdlearn.course.checks's modules import each other, and otherwise only the models of GRADING_MAY_IMPORT."""
    for module in grading_modules():
        source = inspect.getsource(module)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.level != 1:  # level 1: within sdlearn.course.checks
                package = module.__name__.split(".")[:-1] if node.level else []  # these modules are not packages
                base = package[: len(package) - (node.level - 1)] if node.level else []
                name = node.module if node.level == 0 else ".".join(base + ([node.module] if node.module else []))
                if name.startswith("sdlearn"):
                    assert {a.name for a in node.names} <= GRADING_MAY_IMPORT.get(name, set()), (module.__name__, name)
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("sdlearn") for a in node.names), module.__name__
        tree = ast.parse(source)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & {"measure_scaling_factor", "vae_loss", "VAELoss", "diffusion_loss", "encode_dataset",
                            "LatentDiffusionPipeline", "DDPMPipeline", "add_noise"}, module.__name__
        assert not attributes & {"kl", "encode_images", "decode_latents", "denoise"}, module.__name__


def test_library_functions_pass_the_checks():
    """sdlearn's own implementations agree with grading's first-principles references."""
    from sdlearn.schedulers import DDPMScheduler
    from sdlearn.schedulers.ddpm import add_noise, predicted_original

    def q_sample(x0, t, eps, alphas_cumprod):
        return add_noise(alphas_cumprod, x0, eps, t)

    def predict_x0(x_t, t, eps_pred, alphas_cumprod):
        return predicted_original(eps_pred, x_t, col(alphas_cumprod[t], x_t), "epsilon")

    def ddpm_step(eps_pred, t, x_t, betas, alphas_cumprod, z):
        T = len(betas)
        for config in (dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
                       dict(beta_schedule="linear", beta_start=0.01, beta_end=0.3),
                       dict(beta_schedule="squaredcos_cap_v2")):
            scheduler = DDPMScheduler(num_train_timesteps=T, variance_type="fixed_large", clip_sample=False, **config)
            if torch.allclose(scheduler.betas.double(), betas.double()):
                scheduler.betas, scheduler.alphas_cumprod = betas, alphas_cumprod  # the caller's dtype
                return scheduler.step(eps_pred, t, x_t, variance_noise=z).prev_sample
        raise AssertionError("no scheduler config matches these betas")

    library_check("ch01.q_sample", q_sample)
    library_check("ch02.predict_x0", predict_x0)
    library_check("ch02.ddpm_step", ddpm_step)


# ============================================================================ chapter 6 (DDIM and the samplers)
def make_ddim_step(x0_pow=0.5, prev_pow=0.5, dir_pow=0.5, x0_sign=-1, noise_sign=1, noise_pow=1, sigma_sq=True,
                   sigma_pow=0.5, one_step_alpha=False, add_noise=True, dir_sigma=True, fixed_eta=None,
                   swap_ratio=False, one_factor=False):
    def ddim_step(eps_pred, x_t, alpha_bar_t, alpha_bar_prev, eta, noise):
        eta = eta if fixed_eta is None else fixed_eta
        ab, abp = alpha_bar_t, alpha_bar_prev
        ab_x0 = ab / abp if one_step_alpha else ab  # the trap: DDPM's one-step alpha where the DDIM paper means alpha_bar
        x0_pred = (x_t + x0_sign * (1 - ab_x0).sqrt() * eps_pred) / ab_x0**x0_pow  # DDPM eq. 15
        ratio = (1 - ab) / (1 - abp) if swap_ratio else (1 - abp) / (1 - ab)
        variance = ratio if one_factor else ratio * (1 - ab / abp)
        sigma = eta * variance**sigma_pow  # eq. 16
        taken = (sigma**2 if sigma_sq else sigma) if dir_sigma else 0.0
        x_prev = abp**prev_pow * x0_pred + (1 - abp - taken).clamp(min=0) ** dir_pow * eps_pred  # eq. 12
        return x_prev + noise_sign * sigma**noise_pow * noise if add_noise else x_prev
    return ddim_step


def make_timestep_grid(ascending=False, trailing_minus_one=True, leading_true_division=False, leading_offset=0,
                       linspace_to=None, dtype=torch.int64):
    def timestep_grid(num_inference_steps, num_train_timesteps, spacing):
        S, T = num_inference_steps, num_train_timesteps
        k = torch.arange(S, dtype=torch.float64)
        if spacing == "leading":
            ratio = T / S if leading_true_division else T // S
            grid = (k * ratio).round() + leading_offset
        elif spacing == "trailing":
            grid = (T - k * T / S).round() - (1 if trailing_minus_one else 0)
        elif spacing == "linspace":
            grid = torch.linspace(0, (T - 1) if linspace_to is None else linspace_to(T), S, dtype=torch.float64).round()
        else:
            raise ValueError(spacing)
        grid = grid.sort(descending=not ascending).values
        return grid.to(dtype)
    return timestep_grid


def make_euler_step(sigma_pow=1, reverse=False, scale_input=False, to_x0=False):
    def euler_step(x, sigma, sigma_next, eps_pred):
        if to_x0:
            return x - sigma * eps_pred  # x0_pred: all the way to sigma = 0
        x_in = x / (sigma**2 + 1).sqrt() if scale_input else x
        ds = sigma**sigma_pow - sigma_next**sigma_pow if reverse else sigma_next**sigma_pow - sigma**sigma_pow
        return x_in + ds * eps_pred  # d = (x - x0_pred) / sigma = eps_pred for epsilon prediction
    return euler_step


CH06_CORRECT = {
    "ch06.ddim_step": make_ddim_step(),
    "ch06.timestep_grid": make_timestep_grid(),
    "ch06.euler_step": make_euler_step(),
}
CORRECT.update(CH06_CORRECT)  # test_every_exercise_has_metadata_and_a_check compares EXERCISES with CORRECT

CH06_MISTAKES = [
    ("ch06.ddim_step", make_ddim_step(one_step_alpha=True), "alpha_vs_alpha_bar"),
    ("ch06.ddim_step", make_ddim_step(x0_pow=1.0), "missing_sqrt"),
    ("ch06.ddim_step", make_ddim_step(prev_pow=1.0), "missing_sqrt"),
    ("ch06.ddim_step", make_ddim_step(dir_pow=1.0), "missing_sqrt"),
    ("ch06.ddim_step", make_ddim_step(x0_sign=1), "wrong_sign"),
    ("ch06.ddim_step", make_ddim_step(noise_sign=-1), "wrong_sign"),
    ("ch06.ddim_step", make_ddim_step(noise_pow=2), "variance_for_std"),
    ("ch06.ddim_step", make_ddim_step(sigma_pow=1.0), "variance_for_std"),
    ("ch06.ddim_step", make_ddim_step(sigma_sq=False), "std_for_variance"),
    ("ch06.ddim_step", make_ddim_step(dir_sigma=False), "direction_without_sigma"),
    ("ch06.ddim_step", make_ddim_step(add_noise=False), "missing_noise"),
    ("ch06.ddim_step", make_ddim_step(fixed_eta=1.0), "ignored_argument"),
    ("ch06.ddim_step", make_ddim_step(swap_ratio=True), "swapped"),
    ("ch06.ddim_step", make_ddim_step(one_factor=True), "missing_coefficient"),
    ("ch06.timestep_grid", make_timestep_grid(ascending=True), "ascending"),
    ("ch06.timestep_grid", make_timestep_grid(trailing_minus_one=False), "off_by_one"),
    ("ch06.timestep_grid", make_timestep_grid(leading_true_division=True), "true_division"),
    ("ch06.timestep_grid", make_timestep_grid(leading_offset=1), "off_by_one"),
    ("ch06.timestep_grid", make_timestep_grid(linspace_to=lambda T: T), "off_by_one"),
    ("ch06.timestep_grid", make_timestep_grid(dtype=torch.float32), "LongTensor"),
    ("ch06.euler_step", make_euler_step(sigma_pow=2), "variance_for_std"),
    ("ch06.euler_step", make_euler_step(reverse=True), "reversed_difference"),
    ("ch06.euler_step", make_euler_step(scale_input=True), "scaled_input"),
    ("ch06.euler_step", make_euler_step(to_x0=True), "x0_for_step"),
]


def test_ch06_alpha_trap_feedback_names_the_ddim_paper():
    _, feedback = run_check("ch06.ddim_step", make_ddim_step(one_step_alpha=True))
    assert "DDIM paper's alpha_t is DDPM's alpha_bar_t" in feedback


def test_ch06_grid_cases_match_sdlearn_and_have_no_rounding_ties():
    """The check's own grids agree with sdlearn's (diffusers-parity-tested) grids, and every case avoids x.5 values,
    so any correct rounding (half to even, half up) passes."""
    from sdlearn.schedulers.base import spaced_timesteps

    for S, T, spacing in grading.GRID_CASES:
        assert spaced_timesteps(S, T, spacing).tolist() == grading._reference_grid(S, T, spacing)
        if spacing == "trailing":
            raw = [T - k * T / S for k in range(S)]
        elif spacing == "linspace" and S > 1:
            raw = [k * (T - 1) / (S - 1) for k in range(S)]
        else:
            raw = []
        assert all(abs(v - int(v) - 0.5) > 1e-3 for v in raw), (S, T, spacing)


def test_ch06_library_functions_pass_the_checks():
    """sdlearn's DDIM pieces, its grid and its Euler scheduler agree with grading's first-principles references."""
    from sdlearn.schedulers import EulerDiscreteScheduler
    from sdlearn.schedulers.base import spaced_timesteps
    from sdlearn.schedulers.ddim import ddim_sigma, ddim_update
    from sdlearn.schedulers.ddpm import predicted_original

    def ddim_step(eps_pred, x_t, alpha_bar_t, alpha_bar_prev, eta, noise):
        x0_pred = predicted_original(eps_pred, x_t, alpha_bar_t, "epsilon")
        return ddim_update(x0_pred, eps_pred, alpha_bar_prev, ddim_sigma(alpha_bar_t, alpha_bar_prev, eta), noise)

    def euler_step(x, sigma, sigma_next, eps_pred):
        scheduler = EulerDiscreteScheduler()
        scheduler.set_timesteps(1)
        scheduler.sigmas = torch.stack([sigma, sigma_next]).to(torch.float32)  # a one-step grid from sigma to sigma_next
        scheduler.scale_model_input(x, scheduler.timesteps[0])
        return scheduler.step(eps_pred, scheduler.timesteps[0], x).prev_sample

    library_check("ch06.ddim_step", ddim_step)
    library_check("ch06.timestep_grid", lambda S, T, spacing: spaced_timesteps(S, T, spacing))
    # the scheduler works in float32, so check it on the float32 cases only
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for sigma, sigma_next in ((80.0, 40.0), (1.5, 0.0)):
        got = euler_step(x, torch.tensor(sigma), torch.tensor(sigma_next), eps)
        torch.testing.assert_close(got, make_euler_step()(x, torch.tensor(sigma), torch.tensor(sigma_next), eps))


# ============================================================================ chapters 3-4 (the VAE, latent diffusion)
def make_reparameterize(std="exp_half", with_mean=True, detach=False):
    def reparameterize(mean, logvar, eps):
        sigma = {"exp_half": lambda: torch.exp(0.5 * logvar), "variance": lambda: torch.exp(logvar),
                 "sqrt": lambda: logvar.sqrt(), "logvar": lambda: logvar}[std]()
        z = (mean if with_mean else 0) + sigma * eps
        return z.detach() if detach else z
    return reparameterize


def make_kl(sign=1.0, half=0.5, reduce="sum", variance="exp", over_batch=None):
    def kl_diagonal_gaussian(mean, logvar):
        var = logvar.exp() if variance == "exp" else (0.5 * logvar).exp()
        terms = mean**2 + var - 1 - logvar
        kl = sign * half * (terms.sum(dim=(1, 2, 3)) if reduce == "sum" else terms.mean(dim=(1, 2, 3)))
        return {None: kl, "sum": kl.sum(), "mean": kl.mean()}[over_batch]
    return kl_diagonal_gaussian


def make_scaling_factor(kind="inverse_std", biased=False):
    def scaling_factor(latents):
        z = latents.flatten()
        std = z.std(correction=0 if biased else 1)
        return {"inverse_std": lambda: float(1 / std), "std": lambda: float(std), "inverse_var": lambda: float(1 / std**2),
                "per_channel": lambda: 1 / latents.transpose(0, 1).flatten(1).std(dim=1),
                "mean_abs": lambda: float(1 / z.abs().mean()), "tensor": lambda: 1 / std}[kind]()
    return scaling_factor


def make_latent_loss(scale="multiply", noise_image=False, posterior="mode", target="eps", detach=False):
    def latent_diffusion_loss(unet, vae, x0, t, eps, alphas_cumprod, scaling_factor):
        ab = col(alphas_cumprod[t], x0)
        if noise_image:  # planted: x_t of DDPM eq. 4 on the image, then encoded
            x0 = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        posterior_ = vae.encode(x0).latent_dist
        z = posterior_.mode() if posterior == "mode" else posterior_.sample()
        s = {"multiply": scaling_factor, "none": 1.0, "divide": 1 / scaling_factor,
             "config": vae.config.scaling_factor}[scale]
        z0 = s * z
        z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
        pred = unet(z_t, t)
        loss = (((eps if target == "eps" else z0) - pred) ** 2).mean()
        return loss.detach() if detach else loss
    return latent_diffusion_loss


def _reverse_loop(unet, scheduler, z, timesteps, scale_input=True):
    for t in timesteps:
        model_input = scheduler.scale_model_input(z, t) if scale_input else z
        z = scheduler.step(unet(model_input, t), t, z).prev_sample
    return z


def _decode(vae, z, unscale="divide", clamp=True):
    s = vae.config.scaling_factor
    images = vae.decode({"divide": z / s, "none": z, "multiply": z * s}[unscale]).sample
    return images.clamp(-1, 1) if clamp else images


def make_sample_latents(unscale="divide", init_sigma=True, scale_input=True, clamp=True, set_timesteps=True):
    @torch.no_grad()
    def sample_latents(unet, vae, scheduler, z_T, num_inference_steps):
        if set_timesteps:
            scheduler.set_timesteps(num_inference_steps)
        z = z_T * scheduler.init_noise_sigma if init_sigma else z_T
        return _decode(vae, _reverse_loop(unet, scheduler, z, scheduler.timesteps, scale_input), unscale, clamp)
    return sample_latents


def make_encode_diffuse_decode(noise_at="start", loop="start", encode_scale=True, unscale="divide", rounding=int,
                               init_sigma=False, zero_guard=True, posterior="mode", ddpm_noise=False, clamp=True,
                               start_offset=0):
    @torch.no_grad()
    def encode_diffuse_decode(unet, vae, scheduler, x0, strength, eps, num_inference_steps):
        S = num_inference_steps
        posterior_ = vae.encode(x0).latent_dist
        z = (posterior_.mode() if posterior == "mode" else posterior_.sample())
        z = z * vae.config.scaling_factor if encode_scale else z
        scheduler.set_timesteps(S)
        t_start = S - min(rounding(S * strength), S) + start_offset
        timesteps = scheduler.timesteps[t_start:]
        if t_start < S or not zero_guard:
            t_noise = scheduler.timesteps[t_start if noise_at == "start" else 0].reshape(1)
            if ddpm_noise:
                ab = scheduler.alphas_cumprod[t_noise.long()].to(z.dtype)
                z = ab.sqrt() * z + (1 - ab).sqrt() * eps
            else:
                z = scheduler.add_noise(z, eps, t_noise)
            z = z * scheduler.init_noise_sigma if init_sigma else z
        z = _reverse_loop(unet, scheduler, z, timesteps if loop == "start" else scheduler.timesteps)
        return _decode(vae, z, unscale, clamp)
    return encode_diffuse_decode


LATENT_CORRECT = {
    "ch03.reparameterize": make_reparameterize(),
    "ch03.kl_diagonal_gaussian": make_kl(),
    "ch03.scaling_factor": make_scaling_factor(),
    "ch04.latent_diffusion_loss": make_latent_loss(),
    "ch04.sample_latents": make_sample_latents(),
    "ch04.encode_diffuse_decode": make_encode_diffuse_decode(),
}
CORRECT.update(LATENT_CORRECT)

LATENT_MISTAKES = [
    ("ch03.reparameterize", make_reparameterize(std="variance"), "variance_for_std"),
    ("ch03.reparameterize", make_reparameterize(std="sqrt"), "sqrt_logvar"),
    ("ch03.reparameterize", make_reparameterize(std="logvar"), "logvar_as_std"),
    ("ch03.reparameterize", make_reparameterize(with_mean=False), "missing_mean"),
    ("ch03.reparameterize", make_reparameterize(detach=True), "no gradient"),
    ("ch03.kl_diagonal_gaussian", make_kl(sign=-1.0), "wrong_sign"),
    ("ch03.kl_diagonal_gaussian", make_kl(half=1.0), "missing_coefficient"),
    ("ch03.kl_diagonal_gaussian", make_kl(reduce="mean"), "mean_for_sum"),
    ("ch03.kl_diagonal_gaussian", make_kl(over_batch="sum"), "batch_reduced"),
    ("ch03.kl_diagonal_gaussian", make_kl(over_batch="mean"), "batch_reduced"),
    ("ch03.kl_diagonal_gaussian", make_kl(variance="std"), "std_for_variance"),
    ("ch03.scaling_factor", make_scaling_factor(kind="std"), "not_inverted"),
    ("ch03.scaling_factor", make_scaling_factor(kind="std", biased=True), "not_inverted"),
    ("ch03.scaling_factor", make_scaling_factor(kind="per_channel"), "per_channel"),
    ("ch03.scaling_factor", make_scaling_factor(kind="inverse_var"), "variance_for_std"),
    ("ch03.scaling_factor", make_scaling_factor(kind="mean_abs"), "mean_abs_for_std"),
    ("ch04.latent_diffusion_loss", make_latent_loss(scale="none"), "missing_scaling"),
    ("ch04.latent_diffusion_loss", make_latent_loss(scale="divide"), "divided"),
    ("ch04.latent_diffusion_loss", make_latent_loss(scale="config"), "ignored_argument"),
    ("ch04.latent_diffusion_loss", make_latent_loss(noise_image=True), "noised_image"),
    ("ch04.latent_diffusion_loss", make_latent_loss(posterior="sample"), "posterior_sample"),
    ("ch04.latent_diffusion_loss", make_latent_loss(target="z0"), "wrong_target"),
    ("ch04.latent_diffusion_loss", make_latent_loss(detach=True), "no gradient"),
    ("ch04.sample_latents", make_sample_latents(unscale="none"), "missing_scaling"),
    ("ch04.sample_latents", make_sample_latents(unscale="multiply"), "multiplied"),
    ("ch04.sample_latents", make_sample_latents(init_sigma=False), "missing_init_noise_sigma"),
    ("ch04.sample_latents", make_sample_latents(scale_input=False), "unscaled_model_input"),
    ("ch04.sample_latents", make_sample_latents(clamp=False), "no_clamp"),
    ("ch04.sample_latents", make_sample_latents(set_timesteps=False), "ignored_argument"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(noise_at="first"), "wrong_start"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(loop="all"), "all_timesteps"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(noise_at="first", loop="all"), "wrong_start"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(encode_scale=False, unscale="none"), "missing_scaling"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(unscale="none"), "missing_scaling"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(unscale="multiply"), "multiplied"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(rounding=round), "off_by_one"),
    # issue 17: t_start = S - n + 1 was diagnosed as a stale grid ("call set_timesteps first") though it was called
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(start_offset=1), "starting at S - n + 1"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(init_sigma=True), "extra_init_sigma"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(ddpm_noise=True), "wrong_space"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(zero_guard=False), "no_steps"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(posterior="sample"), "posterior_sample"),
    ("ch04.encode_diffuse_decode", make_encode_diffuse_decode(clamp=False), "no_clamp"),
]


def test_latent_library_functions_pass_the_checks():
    """sdlearn's posterior, scale factor and latent pipeline agree with grading's first-principles references."""
    from sdlearn.pipelines import LatentDiffusionPipeline
    from sdlearn.schedulers.ddpm import add_noise
    from sdlearn.models.autoencoder_kl import DiagonalGaussianDistribution, measure_scaling_factor

    def reparameterize(mean, logvar, eps):
        posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
        return posterior.mean + posterior.std * eps

    def kl_diagonal_gaussian(mean, logvar):
        return DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).kl()

    def latent_diffusion_loss(unet, vae, x0, t, eps, alphas_cumprod, scaling_factor):
        z_t = add_noise(alphas_cumprod, scaling_factor * vae.encode(x0).latent_dist.mode(), eps, t)
        return ((eps - unet(z_t, t)) ** 2).mean()

    def sample_latents(unet, vae, scheduler, z_T, num_inference_steps):
        pipe = LatentDiffusionPipeline(vae, unet, scheduler)
        z0 = pipe.denoise(tuple(z_T.shape), num_inference_steps, latents=z_T, progress=False)
        return pipe.decode_latents(z0).to(z_T.dtype)  # decode_latents returns float32

    library_check("ch03.reparameterize", reparameterize)
    library_check("ch03.kl_diagonal_gaussian", kl_diagonal_gaussian)
    library_check("ch03.scaling_factor", measure_scaling_factor)
    library_check("ch04.latent_diffusion_loss", latent_diffusion_loss)
    library_check("ch04.sample_latents", sample_latents)


def test_latent_checks_accept_equivalent_answers():
    """A biased std, a 0-dim tensor for the scale factor, set_begin_index (diffusers' img2img habit), the posterior's
    mean attribute and no torch.no_grad() are all fine."""
    check("ch03.scaling_factor", make_scaling_factor(biased=True))
    check("ch03.scaling_factor", make_scaling_factor(kind="tensor"))

    def encode_diffuse_decode(unet, vae, scheduler, x0, strength, eps, num_inference_steps):
        S, s = num_inference_steps, vae.config.scaling_factor
        z = s * vae.encode(x0).latent_dist.mean
        scheduler.set_timesteps(S)
        n = min(int(S * strength), S)
        if n == 0:
            return vae.decode(z / s).sample.clamp(-1, 1)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(S - n)
        timesteps = scheduler.timesteps[S - n:]
        z = scheduler.add_noise(z, eps, timesteps[:1].repeat(len(z)))
        for t in timesteps:
            z = scheduler.step(unet(scheduler.scale_model_input(z, t), t), t, z).prev_sample
        return vae.decode(z / s).sample.clamp(-1, 1)

    check("ch04.encode_diffuse_decode", encode_diffuse_decode)


def test_latent_checks_leave_the_random_state_alone():
    state = torch.random.get_rng_state()
    for exercise_id, fn in LATENT_CORRECT.items():
        run_check(exercise_id, fn)
    assert torch.equal(torch.random.get_rng_state(), state)


# ============================================================================ every chapter's exercises alike
ALL_CORRECT = {**CORRECT, **CH06_CORRECT, **LATENT_CORRECT}
ALL_MISTAKES = MISTAKES + CH06_MISTAKES + LATENT_MISTAKES


def test_every_exercise_has_a_correct_version_and_a_planted_mistake():
    assert set(ALL_CORRECT) == HERE
    assert {exercise_id for exercise_id, _, _ in ALL_MISTAKES} == HERE


# sdlearn's Euler warns about one planted mistake (calling the model without scale_model_input)
test_correct_implementation_passes, test_planted_mistake_is_caught_and_named = harness_tests(
    ALL_CORRECT, ALL_MISTAKES, filterwarnings=("ignore:call scale_model_input",))


@pytest.mark.filterwarnings("ignore:call scale_model_input")
def test_feedback_never_shows_reference_code():
    """Feedback quotes the learner's own line and the math, never a line of sdlearn.course.checks's code."""
    code_lines = [line.strip() for line in grading_source().splitlines()
                  if line.strip().startswith("return ") or " = " in line and not line.strip().startswith(('"', "#"))]
    code_lines = [line for line in code_lines if len(line) > 15]
    assert len(code_lines) > 50
    for exercise_id, fn, _ in ALL_MISTAKES:
        _, feedback = run_check(exercise_id, fn)
        leaked = [line for line in code_lines if line in feedback]
        assert not leaked, (exercise_id, leaked)


# ============================================================================ issue 17: what a newcomer met
def test_the_check_cell_refuses_the_library_as_the_grader_does():
    """A predict_x0 that calls sdlearn's predicted_original passed the check cell and scored 0 in the grader. Now
    both fail, and the check says why. The library, bound in the learner's namespace as the set-up cell binds it,
    is put back afterwards."""
    namespace: dict = {}
    exec("from sdlearn.schedulers.ddpm import predicted_original\n"
         "def predict_x0(x_t, t, eps_pred, alphas_cumprod):\n"
         "    ab = alphas_cumprod[t].view(-1, *[1] * (x_t.ndim - 1))\n"
         "    return predicted_original(eps_pred, x_t, ab, 'epsilon')\n", namespace)
    from sdlearn.schedulers import ddpm
    original = ddpm.predicted_original
    with pytest.raises(CheckFailed, match="scores nothing") as info:
        check("ch02.predict_x0", namespace["predict_x0"])
    assert "predicted_original" in str(info.value) and "DDPM eq. 15" in str(info.value)
    passed, feedback = run_check("ch02.predict_x0", namespace["predict_x0"])
    assert not passed and "scores nothing" in feedback
    assert ddpm.predicted_original is original and namespace["predicted_original"] is original
    library_check("ch02.predict_x0", namespace["predict_x0"])  # the library itself is right


def test_not_written_message_fits_the_student_copy():
    """Student copies show `# YOUR CODE HERE` / `raise NotImplementedError()`, not nbgrader's solution markers."""
    def stub(*args, **kwargs):
        # YOUR CODE HERE
        raise NotImplementedError()
    _, feedback = run_check("ch02.predict_x0", stub)
    assert "# YOUR CODE HERE" in feedback and "raise NotImplementedError()" in feedback
    assert "BEGIN SOLUTION" not in feedback


def test_formulas_are_math_not_code():
    """The 'expected:' line of every failed check prints the exercise's formula: it must be the equation, never the
    answer's code (ch04's used to be the whole solution: `scheduler.set_timesteps(...)`, `vae.decode(...).sample`)."""
    import re
    for exercise_id, ex in EXERCISES.items():
        code = re.findall(r"[A-Za-z_]\w*\.[A-Za-z_]\w*|\[[^\]]*:[^\]]*\]|\bfor \w+ in\b", ex.formula)
        assert not code, f"{exercise_id}'s formula reads like code: {code}"


def test_failed_check_shows_feedback_not_machinery():
    """IPython shows CheckFailed through _render_traceback_: the feedback lines, no frames of sdlearn's checks."""
    def crashes(x_t, t, eps_pred, alphas_cumprod):
        return x_t[t + 10**6]
    with pytest.raises(CheckFailed) as info:
        check("ch02.predict_x0", crashes)
    shown = "\n".join(info.value._render_traceback_())
    assert "x_t[t + 10**6]" in shown and "likely mistake" in shown
    assert "sdlearn/course" not in shown and "File " not in shown


def test_ldm_sections_agree_with_the_paper():
    """Rombach et al. 2022: sec. 3.1 perceptual image compression, sec. 3.2 latent diffusion models (eqs. 1-2: DMs
    on z, decoded with one pass of D), sec. 3.3 conditioning mechanisms (cross-attention). Sampling latents and
    decoding them is sec. 3.2; the grader once said 3.3 while the notebook said 3.2."""
    assert "sec. 3.2" in EXERCISES["ch04.sample_latents"].equation
    assert "LDM sec. 3.3" not in grading_source()
