"""Checks for chapter 6: DDIM and the samplers (Song et al. 2021; Lin et al. 2023; Karras et al. 2022).

One DDIM step (DDIM eqs. 12 and 16, in DDPM's notation), the inference timestep grids of each
spacing (DDIM sec. 4.2; Lin et al. 2023, Table 2), and an Euler step of the probability-flow ODE
in sigma space (DDIM eq. 14; Karras et al. 2022, Algorithm 1).
"""

from __future__ import annotations

import torch

from .core import (
    EXERCISES,
    Exercise,
    _call,
    _Case,
    _describe,
    _diagnose,
    _expect_tensor,
    _randn,
    _register,
    _tables,
    _unchanged,
)

EXERCISES.update({
    "ch06.ddim_step": Exercise(
        6, "one DDIM step", "DDIM eqs. 12 and 16",
        "x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps_pred) / sqrt(alpha_bar_t); "
        "sigma_t = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev); "
        "x_prev = sqrt(alpha_bar_prev) x0_pred + sqrt(1 - alpha_bar_prev - sigma_t^2) eps_pred + sigma_t noise "
        "(the DDIM paper writes alpha for alpha_bar)",
        "ddim_step(eps_pred, x_t, alpha_bar_t, alpha_bar_prev, eta, noise) -> x_prev   "
        "(alpha_bar_t, alpha_bar_prev 0-dim tensors; eta a float)", 3),
    "ch06.timestep_grid": Exercise(
        6, "the inference timesteps of one spacing", "DDIM sec. 4.2; Lin et al. 2023, Table 2",
        "leading: k (T // S) for k = 0..S-1; trailing: round(T - k T / S) - 1 for k = 0..S-1; "
        "linspace: round(k (T - 1) / (S - 1)) for k = 0..S-1; each returned in descending order",
        "timestep_grid(num_inference_steps, num_train_timesteps, spacing) -> LongTensor (S,), descending "
        "(spacing 'leading', 'trailing' or 'linspace'; steps_offset 0)", 2),
    "ch06.euler_step": Exercise(
        6, "an Euler step of the probability-flow ODE", "DDIM eq. 14; Karras et al. 2022, Algorithm 1",
        "x_next = x + (sigma_next - sigma) d, with d = (x - x0_pred) / sigma = eps_pred (epsilon prediction, "
        "x0_pred = x - sigma eps_pred)",
        "euler_step(x, sigma, sigma_next, eps_pred) -> x_next   (sigma, sigma_next 0-dim tensors)", 2),
})


def _pair(schedule: str, t: int, t_prev: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_bar_t, alpha_bar_prev) as 0-dim tensors; t_prev = -1 is the clean end, alpha_bar = 1."""
    _, ab_table = _tables(schedule, dtype)
    ab_prev = ab_table[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=dtype)
    return ab_table[t].clone(), ab_prev.clone()


ALPHA_TRAP = ("the DDIM paper's alpha_t is DDPM's alpha_bar_t (the cumulative product), so eq. 12 in this course's "
              "notation uses alpha_bar_t and alpha_bar_prev exactly as given. You used a one-step alpha_t = 1 - beta_t "
              "(here alpha_bar_t / alpha_bar_prev, the DDIM paper's alpha_t / alpha_{t-1}).")


@_register("ch06.ddim_step")
def _check_ddim_step(fn) -> None:
    """DDIM eq. 12 with sigma_t(eta) of eq. 16, in DDPM's notation (the DDIM paper's alpha is DDPM's alpha_bar)."""
    # (schedule, shape, dtype, t, t_prev, eta): t_prev = t - T // S as a sampler would pick it; -1 = the clean end
    cases = [("linear-1000", (4, 1, 16, 16), torch.float32, 500, 400, 0.5),
             ("linear-1000", (1, 1, 8, 8), torch.float64, 999, 899, 1.0),
             ("linear-1000", (2, 1, 8, 8), torch.float32, 20, 0, 0.0),
             ("linear-1000", (2, 1, 8, 8), torch.float64, 0, -1, 1.0),
             ("cosine-50", (3, 3, 8, 8), torch.float32, 40, 30, 0.3),
             ("linear-20", (2, 1, 8, 8), torch.float64, 19, 9, 1.0)]
    for n, (schedule, shape, dtype, t, t_prev, eta) in enumerate(cases):
        ab_t, ab_prev = _pair(schedule, t, t_prev, dtype)
        eps_pred, x_t, noise = _randn(shape, dtype, 140 + n), _randn(shape, dtype, 150 + n), _randn(shape, dtype, 160 + n)
        prev_text = f"{t_prev}" if t_prev >= 0 else "the clean end (alpha_bar_prev = 1)"
        case = _Case("ch06.ddim_step", _describe(dtype, x_t=x_t) + f", schedule {schedule}, alpha_bar of t = {t} and of "
                                                                   f"t_prev = {prev_text}, eta = {eta}")
        args = (eps_pred.clone(), x_t.clone(), ab_t.clone(), ab_prev.clone(), eta, noise.clone())
        got = _call(case, fn, *args)
        _unchanged(case, eps_pred=(args[0], eps_pred), x_t=(args[1], x_t), noise=(args[5], noise))
        e, x, z = eps_pred.double(), x_t.double(), noise.double()
        A, P = float(ab_t), float(ab_prev)

        def step(ab=A, abp=P, x0_ab=None, x0_pow=0.5, prev_pow=0.5, dir_pow=0.5, x0_sign=-1, noise_sign=1, noise_pow=1,
                 sigma_in_dir=2, sigma_pow=0.5, eta_=eta, noise_on=True, ratio_swapped=False, second_factor=True,
                 dir_sigma=True):
            a0 = ab if x0_ab is None else x0_ab  # alpha_bar used in x0_pred
            x0_pred = (x + x0_sign * (1 - a0) ** 0.5 * e) / a0**x0_pow
            ratio = (1 - ab) / (1 - abp) if ratio_swapped else (1 - abp) / (1 - ab)
            variance = ratio * ((1 - ab / abp) if second_factor else 1.0)
            if variance < 0 and eta_ != 0:
                raise ValueError("no real sigma_t for this slip")
            sigma = eta_ * variance**sigma_pow if eta_ != 0 else 0.0
            direction = max(1 - abp - (sigma**sigma_in_dir if dir_sigma else 0.0), 0.0) ** dir_pow * e
            out = abp**prev_pow * x0_pred + direction
            return out + noise_sign * sigma**noise_pow * z if noise_on else out

        def slip(**changes):  # a wrong variant, or None where it has no value (a division by zero, a negative variance)
            try:
                return step(**changes)
            except (ZeroDivisionError, ValueError):
                return None

        want = step()
        got = _expect_tensor(case, got, want, dtype)
        one_step_alpha = A / P  # DDPM's alpha_t = 1 - beta_t of this jump, what the DDIM paper's alpha_t / alpha_{t-1} is
        _diagnose(case, got, want, dtype, {
            "alpha_x0": ("alpha_vs_alpha_bar", slip(x0_ab=one_step_alpha), ALPHA_TRAP),
            "alpha": ("alpha_vs_alpha_bar", slip(ab=one_step_alpha), ALPHA_TRAP),
            "no_sqrt_x0": ("missing_sqrt", slip(x0_pow=1.0),
                           "x0_pred divides by sqrt(alpha_bar_t) (DDPM eq. 15), not by alpha_bar_t."),
            "no_sqrt_prev": ("missing_sqrt", slip(prev_pow=1.0),
                             "x0_pred is scaled by sqrt(alpha_bar_prev), not alpha_bar_prev."),
            "no_sqrt_dir": ("missing_sqrt", slip(dir_pow=1.0),
                            "the direction pointing to x_t is sqrt(1 - alpha_bar_prev - sigma_t^2) * eps_pred: the square "
                            "root is missing."),
            "x0_sign": ("wrong_sign", slip(x0_sign=1), "in x0_pred the predicted noise is subtracted from x_t."),
            "noise_sign": ("wrong_sign", slip(noise_sign=-1), "add sigma_t * noise; the check gives you the noise and "
                                                              "expects + sigma_t noise."),
            "sigma2_noise": ("variance_for_std", slip(noise_pow=2),
                             "the random noise is scaled by sigma_t, a standard deviation; you scaled it by sigma_t^2."),
            "sigma_is_variance": ("variance_for_std", slip(sigma_pow=1.0),
                                  "sigma_t (eq. 16) is eta times the SQUARE ROOT of (1 - alpha_bar_prev) / (1 - alpha_bar_t) "
                                  "* (1 - alpha_bar_t / alpha_bar_prev); you used that variance itself as sigma_t."),
            "sigma_in_dir": ("std_for_variance", slip(sigma_in_dir=1),
                             "the direction term takes out the variance: sqrt(1 - alpha_bar_prev - sigma_t^2); you "
                             "subtracted sigma_t."),
            "dir_no_sigma": ("direction_without_sigma", slip(dir_sigma=False),
                             "the direction term is sqrt(1 - alpha_bar_prev - sigma_t^2) * eps_pred: the noise sigma_t z "
                             "takes over part of the variance, so sigma_t^2 comes out of the direction term."),
            "no_noise": ("missing_noise", slip(noise_on=False),
                         "for eta > 0 add sigma_t * noise (the last term of eq. 12)."),
            "eta_ignored": ("ignored_argument", slip(eta_=1.0), "use the eta you are given (sigma_t = eta * ..., eq. 16)."),
            "ratio_swapped": ("swapped", slip(ratio_swapped=True),
                              "eq. 16 has (1 - alpha_bar_prev) / (1 - alpha_bar_t): the previous level's over the current's."),
            "one_factor": ("missing_coefficient", slip(second_factor=False),
                           "sigma_t (eq. 16) has two factors under the root: (1 - alpha_bar_prev) / (1 - alpha_bar_t) "
                           "and (1 - alpha_bar_t / alpha_bar_prev)."),
        })


def _reference_grid(S: int, T: int, spacing: str) -> list[int]:
    """The descending grid of each spacing, from its formula (Lin et al. 2023, Table 2; diffusers' definitions)."""
    if spacing == "leading":
        values = [k * (T // S) for k in range(S)]
    elif spacing == "trailing":
        values = [round(T - k * T / S) - 1 for k in range(S)]
    else:
        values = [round(k * (T - 1) / (S - 1)) for k in range(S)] if S > 1 else [0]
    return sorted(values, reverse=True)


GRID_CASES = [(10, 1000, "leading"), (10, 1000, "trailing"), (10, 1000, "linspace"), (7, 1000, "leading"),
              (7, 1000, "trailing"), (50, 1000, "linspace"), (20, 50, "leading"), (15, 50, "trailing"),
              (4, 50, "linspace"), (1, 1000, "leading"), (1, 1000, "trailing"), (1000, 1000, "trailing"),
              (1000, 1000, "linspace")]  # chosen so that no value is a tie (x.5) when rounded


@_register("ch06.timestep_grid")
def _check_timestep_grid(fn) -> None:
    """The S inference timesteps of a spacing (DDIM sec. 4.2's sub-sequence tau; Lin et al. 2023, Table 2), descending."""
    for S, T, spacing in GRID_CASES:
        case = _Case("ch06.timestep_grid", f"timestep_grid({S}, {T}, {spacing!r})")
        got = _call(case, fn, S, T, spacing)
        want = torch.tensor(_reference_grid(S, T, spacing), dtype=torch.int64)
        got = _expect_tensor(case, got, want, torch.int64, "the grid",
                             shape_hint=f"Return S = {S} timesteps, one per sampling step.",
                             dtype_hint="Timesteps are integers: return a LongTensor (round, then .long()).")
        k = range(S)
        variants = {
            "ascending": ("ascending", want.flip(0),
                          "the sampling loop goes from noise to data, so the grid is descending (largest t first): "
                          "flip it."),
        }
        if spacing == "trailing":
            variants["no_minus_one"] = ("off_by_one", torch.tensor(sorted([round(T - i * T / S) for i in k], reverse=True)),
                                        "trailing spacing subtracts 1: round(T - k T / S) - 1, so the grid starts at "
                                        "T - 1 (the last training step; t = T does not exist).")
        if spacing == "leading":
            variants["true_division"] = ("true_division", torch.tensor(sorted([round(i * T / S) for i in k], reverse=True)),
                                         "leading spacing steps by the integer T // S (so it never reaches T - 1 when S "
                                         "does not divide T); you used T / S.")
            variants["offset"] = ("off_by_one", want + 1,
                                  "with steps_offset = 0 the leading grid starts at 0: k * (T // S). (Stable "
                                  "Diffusion's configuration adds steps_offset = 1; this exercise does not.)")
        if spacing == "linspace" and S > 1:
            variants["to_T"] = ("off_by_one", torch.tensor(sorted([round(i * T / (S - 1)) for i in k], reverse=True)),
                                "linspace spacing spans 0 .. T - 1 (the last training step), not 0 .. T.")
        _diagnose(case, got, want, torch.float64, variants, what="the grid", atol=0.0)


@_register("ch06.euler_step")
def _check_euler_step(fn) -> None:
    """An Euler step of the probability-flow ODE in sigma space (DDIM eq. 14; Karras et al. 2022, Algorithm 1): dx/dsigma = eps."""
    def sigmas(schedule: str, dtype: torch.dtype) -> torch.Tensor:
        _, ab = _tables(schedule, torch.float64)
        return ((1 - ab) / ab).sqrt().to(dtype)  # sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)

    # (schedule, shape, dtype, t, t_next): t_next = -1 means sigma_next = 0 (the last step lands on the clean sample)
    cases = [("linear-1000", (4, 1, 16, 16), torch.float32, 999, 888), ("linear-1000", (1, 1, 8, 8), torch.float64, 500, 400),
             ("linear-1000", (2, 1, 8, 8), torch.float32, 100, -1), ("cosine-50", (3, 3, 8, 8), torch.float64, 40, 30),
             ("linear-20", (2, 1, 8, 8), torch.float32, 19, 9)]
    for n, (schedule, shape, dtype, t, t_next) in enumerate(cases):
        table = sigmas(schedule, dtype)
        sigma = table[t].clone()
        sigma_next = table[t_next].clone() if t_next >= 0 else torch.tensor(0.0, dtype=dtype)
        s, sn = float(sigma), float(sigma_next)
        x = (_randn(shape, dtype, 170 + n).double() * (1 + s**2) ** 0.5).to(dtype)  # sigma space: x = x0 + sigma eps
        eps_pred = _randn(shape, dtype, 180 + n)
        case = _Case("ch06.euler_step", _describe(dtype, x=x) + f", sigma = {s:.4g}, sigma_next = {sn:.4g} "
                                                                f"(schedule {schedule}, t = {t} -> {t_next if t_next >= 0 else 'the end'})")
        args = (x.clone(), sigma.clone(), sigma_next.clone(), eps_pred.clone())
        got = _call(case, fn, *args)
        _unchanged(case, x=(args[0], x), eps_pred=(args[3], eps_pred))
        xx, e = x.double(), eps_pred.double()
        want = xx + (sn - s) * e
        got = _expect_tensor(case, got, want, dtype)
        _diagnose(case, got, want, dtype, {
            "squared": ("variance_for_std", xx + (sn**2 - s**2) * e,
                        "the ODE moves in sigma, not sigma^2: dx/dsigma = eps_pred, so the step is (sigma_next - sigma) "
                        "* eps_pred."),
            "reversed": ("reversed_difference", xx + (s - sn) * e,
                         "the step is (sigma_next - sigma) * d: sigma_next is smaller, so the step is negative and "
                         "removes noise."),
            "scaled": ("scaled_input", xx / (s**2 + 1) ** 0.5 + (sn - s) * e,
                       "x / sqrt(sigma^2 + 1) is what the model is given (scale_model_input); the Euler step moves "
                       "x itself, in sigma space."),
            "x0": ("x0_for_step", xx - s * e if sn != 0 else None,
                   "x - sigma * eps_pred is x0_pred, a jump all the way to sigma = 0; one Euler step goes only to "
                   "sigma_next: x + (sigma_next - sigma) * eps_pred."),
        })
