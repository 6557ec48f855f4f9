"""Checks for chapters 1 and 2: the forward process and DDPM (Ho et al. 2020; Nichol & Dhariwal 2021).

Chapter 1: one forward step (DDPM eq. 2), q(x_t | x_0) in closed form (eq. 4) and the cosine
schedule (Improved DDPM eq. 17). Chapter 2: x_0 from the predicted noise (eq. 15), the posterior
q(x_{t-1} | x_t, x_0) (eqs. 6-7), the loss L_simple (eq. 14) and one ancestral sampling step
(Algorithm 2). Each reference is computed here from the formula, never by calling sdlearn.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .core import (
    EXERCISES,
    OFF_BY_ONE_MINUS,
    OFF_BY_ONE_PLUS,
    Exercise,
    _alpha_at,
    _at,
    _call,
    _Case,
    _close,
    _cosine_reference,
    _describe,
    _diagnose,
    _expect_tensor,
    _randn,
    _register,
    _tables,
    _unchanged,
)

EXERCISES.update({
    "ch01.forward_step": Exercise(
        1, "one step of the forward process", "DDPM eq. 2",
        "x_t = sqrt(1 - beta_t) * x_{t-1} + sqrt(beta_t) * eps",
        "forward_step(x_prev, beta_t, eps) -> x_t   (beta_t a 0-dim tensor)", 2),
    "ch01.q_sample": Exercise(
        1, "q(x_t | x_0) in closed form", "DDPM eq. 4",
        "x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps",
        "q_sample(x0, t, eps, alphas_cumprod) -> x_t   (t a LongTensor (B,))", 2),
    "ch01.cosine_betas": Exercise(
        1, "the cosine schedule", "Improved DDPM eq. 17",
        "alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2); "
        "beta_t = min(1 - alpha_bar(t+1)/alpha_bar(t), max_beta), t = 0..T-1",
        "cosine_betas(num_train_timesteps, s=0.008, max_beta=0.999) -> betas   (float32, shape (T,))", 2),
    "ch02.predict_x0": Exercise(
        2, "x_0 from the predicted noise", "DDPM eq. 15",
        "x0_pred = (x_t - sqrt(1 - alpha_bar_t) * eps_pred) / sqrt(alpha_bar_t)",
        "predict_x0(x_t, t, eps_pred, alphas_cumprod) -> x0_pred   (t a LongTensor (B,))", 2),
    "ch02.posterior_mean_variance": Exercise(
        2, "the posterior q(x_{t-1} | x_t, x_0)", "DDPM eqs. 6-7",
        "mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x_0 "
        "+ sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t; "
        "variance = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t",
        "posterior_mean_variance(x0, x_t, t, betas, alphas_cumprod) -> (mean, variance)   (t an int >= 1)", 3),
    "ch02.simple_loss": Exercise(
        2, "the simplified training loss L_simple", "DDPM eq. 14",
        "loss = mean((eps - model(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t))^2)",
        "simple_loss(model, x0, t, eps, alphas_cumprod) -> scalar tensor   (t a LongTensor (B,))", 3),
    "ch02.ddpm_step": Exercise(
        2, "one step of ancestral sampling", "DDPM Algorithm 2, line 4",
        "x_{t-1} = 1/sqrt(alpha_t) * (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_pred) + sigma_t z, "
        "sigma_t = sqrt(beta_t), and no noise on the last step (t = 0)",
        "ddpm_step(eps_pred, t, x_t, betas, alphas_cumprod, z) -> x_prev   (t an int)", 3),
})


# ============================================================================ chapter 1
@_register("ch01.forward_step")
def _check_forward_step(fn) -> None:
    """DDPM eq. 2: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), so x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps."""
    cases = [((4, 1, 32, 32), torch.float32, 0.02), ((1, 1, 8, 8), torch.float64, 0.3),
             ((3, 3, 16, 16), torch.float32, 1e-4), ((2, 1, 8, 8), torch.float64, 0.999)]
    for n, (shape, dtype, beta) in enumerate(cases):
        x_prev, eps = _randn(shape, dtype, 10 + n), _randn(shape, dtype, 20 + n)
        beta_t = torch.tensor(beta, dtype=dtype)
        case = _Case("ch01.forward_step", _describe(dtype, x_prev=x_prev, beta_t=beta))
        got = _call(case, fn, x_prev.clone(), beta_t.clone(), eps.clone())
        x, e, b = x_prev.double(), eps.double(), float(beta_t)
        want = math.sqrt(1 - b) * x + math.sqrt(b) * e
        got = _expect_tensor(case, got, want, dtype)
        _diagnose(case, got, want, dtype, {
            "var_noise": ("variance_for_std", b * e + math.sqrt(1 - b) * x,
                          "the noise is scaled by beta_t, its variance; scale it by its standard deviation sqrt(beta_t)."),
            "var_both": ("missing_sqrt", (1 - b) * x + b * e,
                         "both coefficients lack their square roots: scale x_{t-1} by sqrt(1 - beta_t) and eps by sqrt(beta_t)."),
            "var_signal": ("missing_sqrt", (1 - b) * x + math.sqrt(b) * e,
                           "x_{t-1} is scaled by 1 - beta_t; take the square root, sqrt(1 - beta_t)."),
            "unscaled": ("missing_coefficient", x + math.sqrt(b) * e,
                         "x_{t-1} is not shrunk: without the factor sqrt(1 - beta_t) the variance grows at every step "
                         "instead of staying 1."),
            "sign": ("wrong_sign", math.sqrt(1 - b) * x - math.sqrt(b) * e, "the noise term is added, not subtracted."),
            "swapped": ("swapped", math.sqrt(b) * x + math.sqrt(1 - b) * e,
                        "sqrt(1 - beta_t) belongs to x_{t-1} and sqrt(beta_t) to the noise."),
        })


@_register("ch01.q_sample")
def _check_q_sample(fn) -> None:
    """DDPM eq. 4: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)."""
    cases = [("linear-1000", (4, 1, 32, 32), torch.float32, [500, 17, 999, 0]),
             ("linear-1000", (1, 1, 8, 8), torch.float64, [250]),
             ("cosine-50", (8, 1, 8, 8), torch.float32, [1, 5, 10, 20, 30, 40, 45, 48]),
             ("linear-20", (3, 3, 16, 16), torch.float64, [0, 10, 19]),
             ("linear-1000", (1, 1, 16, 16), torch.float32, [999]),
             ("linear-1000", (2, 1, 8, 8), torch.float32, [0, 0])]
    for n, (schedule, shape, dtype, ts) in enumerate(cases):
        _, ab_table = _tables(schedule, dtype)
        x0, eps, t = _randn(shape, dtype, 30 + n), _randn(shape, dtype, 40 + n), torch.tensor(ts)
        case = _Case("ch01.q_sample", _describe(dtype, x0=x0, t=t) + f", schedule {schedule}")
        args = (x0.clone(), t.clone(), eps.clone(), ab_table.clone())
        got = _call(case, fn, *args)
        _unchanged(case, x0=(args[0], x0), eps=(args[2], eps))
        x, e, nd = x0.double(), eps.double(), x0.ndim

        def q(ab, signal_pow=0.5, noise_pow=0.5):
            return ab**signal_pow * x + (1 - ab) ** noise_pow * e

        ab = _at(ab_table, t, nd)
        want = q(ab)
        got = _expect_tensor(case, got, want, dtype)
        width = ab_table.double()[t].reshape(1, 1, 1, -1) if shape[0] == shape[-1] else None
        _diagnose(case, got, want, dtype, {
            "minus": ("off_by_one", q(_at(ab_table, t - 1, nd)), OFF_BY_ONE_MINUS),
            "plus": ("off_by_one", q(_at(ab_table, t + 1, nd)), OFF_BY_ONE_PLUS),
            "no_sqrt_signal": ("missing_sqrt", q(ab, signal_pow=1.0),
                               "x_0 is scaled by alpha_bar_t; its coefficient is sqrt(alpha_bar_t)."),
            "var_noise": ("variance_for_std", q(ab, noise_pow=1.0),
                          "the noise is scaled by its variance 1 - alpha_bar_t; scale it by the standard deviation "
                          "sqrt(1 - alpha_bar_t)."),
            "no_sqrt_both": ("missing_sqrt", q(ab, 1.0, 1.0),
                             "both coefficients lack square roots: a Gaussian with variance v is sqrt(v) times a standard one."),
            "alpha": ("alpha_vs_alpha_bar", q(_alpha_at(ab_table, t, nd)),
                      "you used the one-step alpha_t = 1 - beta_t; the closed form jumps from x_0 in one go and needs "
                      "the product alpha_bar_t = alphas_cumprod[t]."),
            "sign": ("wrong_sign", ab**0.5 * x - (1 - ab) ** 0.5 * e, "the noise term is added, not subtracted."),
            "swapped": ("swapped", (1 - ab) ** 0.5 * x + ab**0.5 * e,
                        "sqrt(alpha_bar_t) multiplies x_0 and sqrt(1 - alpha_bar_t) multiplies eps."),
            "width": ("broadcast", None if width is None else width**0.5 * x + (1 - width) ** 0.5 * e,
                      "alphas_cumprod[t] has shape (B,), which broadcasts against the LAST axis (width) of a "
                      "(B, C, H, W) tensor; reshape it to (B, 1, 1, 1) first."),
        }, t_per_sample=ts)


@_register("ch01.cosine_betas")
def _check_cosine_betas(fn) -> None:
    """Improved DDPM eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2); beta_t = min(1 - alpha_bar(t+1)/alpha_bar(t), max_beta)."""
    cases = [((1000,), {}), ((10,), {}), ((50,), {"s": 0.05, "max_beta": 0.5}), ((1,), {}),
             ((200,), {"s": 0.008, "max_beta": 0.999})]
    for args, kwargs in cases:
        T, s, max_beta = args[0], kwargs.get("s", 0.008), kwargs.get("max_beta", 0.999)
        call = ", ".join([str(T)] + [f"{k}={v}" for k, v in kwargs.items()])
        case = _Case("ch01.cosine_betas", f"cosine_betas({call})")
        got = _call(case, fn, *args, **kwargs)
        want = _cosine_reference(T, s, max_beta)
        got = _expect_tensor(case, got, want, torch.float32, "betas",
                             shape_hint=f"T = {T} betas need T + 1 values of alpha_bar, at t/T for t = 0..T.",
                             dtype_hint="Betas are built in float32, as diffusers builds them: compute in float64 "
                                        "and return .to(torch.float32).")

        def variant(power=2, shift=0, s_=s, clip=max_beta):
            def f(u):
                return math.cos((u + s_) / (1 + s_) * math.pi / 2) ** power
            return torch.tensor([min(1 - f((i + 1 + shift) / T) / f((i + shift) / T), clip) for i in range(T)],
                                dtype=torch.float64)

        atol = 2e-6  # float32 arithmetic on 1 - ratio loses a few ulps near beta_0 ~ 4e-5
        _diagnose(case, got, want, torch.float32, {
            "no_clip": ("no_clip", variant(clip=math.inf),
                        "the last beta is not clipped: without min(., max_beta) it reaches 1, which would wipe x out "
                        "entirely (Improved DDPM clips at 0.999)."),
            "max_beta_ignored": ("ignored_argument", variant(clip=0.999),
                                 "the max_beta argument is ignored; clip at the max_beta you are given."),
            "no_s": ("missing_offset", variant(s_=0.0),
                     "the offset s is missing (or ignored): without it beta_t near t = 0 is far too small "
                     "(Improved DDPM sec. 3.2)."),
            "not_squared": ("not_squared", variant(power=1),
                            "f(t) is cos(...) squared; the square is missing."),
            "shift_minus": ("off_by_one", variant(shift=-1),
                            "beta_t uses alpha_bar at (t+1)/T and t/T, for t = 0..T-1; yours is shifted one step back."),
            "shift_plus": ("off_by_one", variant(shift=1),
                           "beta_t uses alpha_bar at (t+1)/T and t/T, for t = 0..T-1; yours is shifted one step ahead."),
        }, atol=atol)


# ============================================================================ chapter 2
@_register("ch02.predict_x0")
def _check_predict_x0(fn) -> None:
    """DDPM eq. 15 (solved for x_0): x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps_pred) / sqrt(alpha_bar_t)."""
    cases = [("linear-1000", (4, 1, 32, 32), torch.float32, [500, 17, 999, 0]),
             ("linear-1000", (1, 1, 8, 8), torch.float64, [300]),
             ("cosine-50", (8, 1, 8, 8), torch.float32, [1, 5, 10, 20, 30, 40, 45, 48]),
             ("linear-20", (3, 3, 16, 16), torch.float64, [0, 7, 19]),
             ("linear-1000", (1, 1, 16, 16), torch.float32, [999]),
             ("linear-1000", (2, 1, 8, 8), torch.float64, [0, 0])]
    for n, (schedule, shape, dtype, ts) in enumerate(cases):
        _, ab_table = _tables(schedule, dtype)
        x_t, eps_pred, t = _randn(shape, dtype, 50 + n), _randn(shape, dtype, 60 + n), torch.tensor(ts)
        case = _Case("ch02.predict_x0", _describe(dtype, x_t=x_t, t=t) + f", schedule {schedule}")
        args = (x_t.clone(), t.clone(), eps_pred.clone(), ab_table.clone())
        got = _call(case, fn, *args)
        _unchanged(case, x_t=(args[0], x_t), eps_pred=(args[2], eps_pred))
        x, e, nd = x_t.double(), eps_pred.double(), x_t.ndim

        def x0(ab, signal_pow=0.5, noise_pow=0.5, sign=-1):
            return (x + sign * (1 - ab) ** noise_pow * e) / ab**signal_pow

        ab = _at(ab_table, t, nd)
        want = x0(ab)
        got = _expect_tensor(case, got, want, dtype)
        width = ab_table.double()[t].reshape(1, 1, 1, -1) if shape[0] == shape[-1] else None
        _diagnose(case, got, want, dtype, {
            "minus": ("off_by_one", x0(_at(ab_table, t - 1, nd)), OFF_BY_ONE_MINUS),
            "plus": ("off_by_one", x0(_at(ab_table, t + 1, nd)), OFF_BY_ONE_PLUS),
            "no_sqrt_ab": ("missing_sqrt", x0(ab, signal_pow=1.0),
                           "you divide by alpha_bar_t; x_0 enters x_t scaled by sqrt(alpha_bar_t), so divide by that."),
            "var_noise": ("variance_for_std", x0(ab, noise_pow=1.0),
                          "the noise is scaled by the variance 1 - alpha_bar_t; the noise in x_t has standard deviation "
                          "sqrt(1 - alpha_bar_t)."),
            "no_sqrt_both": ("missing_sqrt", x0(ab, 1.0, 1.0),
                             "both coefficients lack square roots: use sqrt(1 - alpha_bar_t) and sqrt(alpha_bar_t)."),
            "alpha": ("alpha_vs_alpha_bar", x0(_alpha_at(ab_table, t, nd)),
                      "you used the one-step alpha_t = 1 - beta_t; x_t was made from x_0 in one jump with the "
                      "cumulative alpha_bar_t = alphas_cumprod[t] (the DDIM paper calls this alpha_t: a classic trap)."),
            "sign": ("wrong_sign", x0(ab, sign=+1), "the predicted noise must be subtracted from x_t, not added."),
            "multiply": ("multiplied", (x - (1 - ab) ** 0.5 * e) * ab**0.5,
                         "you multiply by sqrt(alpha_bar_t); solving x_t = sqrt(alpha_bar_t) x_0 + ... for x_0 divides by it."),
            "unscaled_eps": ("missing_coefficient", (x - e) / ab**0.5,
                             "the predicted noise needs its coefficient sqrt(1 - alpha_bar_t)."),
            "width": ("broadcast", None if width is None else (x - (1 - width) ** 0.5 * e) / width**0.5,
                      "alphas_cumprod[t] has shape (B,), which broadcasts against the LAST axis (width) of a "
                      "(B, C, H, W) tensor; reshape it to (B, 1, 1, 1) first."),
        }, t_per_sample=ts)


@_register("ch02.posterior_mean_variance")
def _check_posterior(fn) -> None:
    """DDPM eqs. 6-7: q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I), the mean mixing x_0 and x_t."""
    cases = [("linear-1000", (4, 1, 32, 32), torch.float32, 500), ("linear-1000", (1, 1, 8, 8), torch.float64, 1),
             ("linear-1000", (2, 1, 16, 16), torch.float32, 999), ("cosine-50", (3, 1, 8, 8), torch.float64, 25),
             ("linear-20", (2, 3, 8, 8), torch.float32, 1), ("linear-20", (1, 1, 8, 8), torch.float64, 19),
             ("linear-1000", (3, 1, 8, 8), torch.float32, 2)]
    for n, (schedule, shape, dtype, t) in enumerate(cases):
        betas, ab_table = _tables(schedule, dtype)
        x0, x_t = _randn(shape, dtype, 70 + n), _randn(shape, dtype, 80 + n)
        case = _Case("ch02.posterior_mean_variance", _describe(dtype, x0=x0, t=t) + f", schedule {schedule}")
        args = (x0.clone(), x_t.clone(), t, betas.clone(), ab_table.clone())
        out = _call(case, fn, *args)
        _unchanged(case, x0=(args[0], x0), x_t=(args[1], x_t))
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise case.fail(f"return a pair (mean, variance); got {type(out).__name__}"
                            + (f" of length {len(out)}." if isinstance(out, (tuple, list)) else "."))
        mean, variance = out
        b64, ab64 = betas.double(), ab_table.double()
        a0, at = x0.double(), x_t.double()
        T = len(betas)

        def tables(k):  # (beta_t, alpha_bar_t, alpha_bar_{t-1}) read with every index shifted by k (Python wrap)
            i = min(t + k, T - 1)
            return float(b64[i]), float(ab64[i]), float(ab64[i - 1])

        def mu(beta, ab, ab_prev, alpha=None, x0_pow=0.5, xt_pow=0.5, sign=1):
            alpha = 1 - beta if alpha is None else alpha
            return (ab_prev**x0_pow * beta / (1 - ab) * a0) + sign * (alpha**xt_pow * (1 - ab_prev) / (1 - ab) * at)

        def var(beta, ab, ab_prev):
            return (1 - ab_prev) / (1 - ab) * beta

        beta, ab, ab_prev = tables(0)
        want_var, want_mean = var(beta, ab, ab_prev), mu(beta, ab, ab_prev)

        # the mean first: a slip in the indices shows there, and the variance alone cannot tell it apart
        got = _expect_tensor(case, mean, want_mean, dtype, "the mean")
        alpha_prev = 1 - float(b64[t - 1])
        _diagnose(case, got, want_mean, dtype, {
            "minus": ("off_by_one", mu(*tables(-1)), OFF_BY_ONE_MINUS),
            "plus": ("off_by_one", mu(*tables(1)), OFF_BY_ONE_PLUS),
            "same": ("off_by_one", mu(beta, ab, ab),
                     "alpha_bar_{t-1} is alphas_cumprod[t - 1]; you used alphas_cumprod[t] for it."),
            "no_sqrt_prev": ("missing_sqrt", mu(beta, ab, ab_prev, x0_pow=1.0),
                             "the x_0 coefficient needs sqrt(alpha_bar_{t-1}), not alpha_bar_{t-1}."),
            "no_sqrt_alpha": ("missing_sqrt", mu(beta, ab, ab_prev, xt_pow=1.0),
                              "the x_t coefficient needs sqrt(alpha_t), not alpha_t."),
            "ab_for_alpha": ("alpha_vs_alpha_bar", mu(beta, ab, ab_prev, alpha=ab),
                             "the x_t coefficient uses the one-step alpha_t = 1 - beta_t, not the cumulative alpha_bar_t."),
            "alpha_for_ab_prev": ("alpha_vs_alpha_bar", mu(beta, ab, alpha_prev),
                                  "alpha_bar_{t-1} is the cumulative product alphas_cumprod[t - 1], not the one-step "
                                  "alpha_{t-1} = 1 - beta_{t-1}."),
            "swapped": ("swapped", (ab_prev**0.5 * beta / (1 - ab) * at) + ((1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab) * a0),
                        "the coefficient with sqrt(alpha_bar_{t-1}) beta_t multiplies x_0, the one with sqrt(alpha_t) "
                        "multiplies x_t."),
            "sign": ("wrong_sign", mu(beta, ab, ab_prev, sign=-1), "the two terms of the mean are added."),
        }, what="the mean")

        # the variance: a tensor (or float) that broadcasts to x_t's shape
        if isinstance(variance, (int, float)):
            variance = torch.tensor(float(variance), dtype=dtype)
        if not isinstance(variance, torch.Tensor):
            raise case.fail(f"the variance should be a tensor (or a float), got {type(variance).__name__}.")
        try:
            variance = variance.expand(shape)
        except RuntimeError:
            raise case.fail(f"the variance has shape {tuple(variance.shape)}, which does not broadcast to x_t's shape "
                            f"{shape}; return one number (a 0-dim tensor) for beta_tilde_t.") from None
        want_v = torch.full(shape, want_var, dtype=torch.float64)
        if not torch.isfinite(variance).all():
            raise case.fail("the variance contains NaN or inf; check 1 - alpha_bar_t in the denominator.")
        v_atol = 1e-9
        _diagnose(case, variance, want_v, dtype, {
            "std": ("std_for_variance", want_v.sqrt(), "you return the standard deviation sqrt(beta_tilde_t); return "
                                                       "the variance beta_tilde_t itself (eq. 7)."),
            "beta": ("beta_for_beta_tilde", torch.full(shape, beta, dtype=torch.float64),
                     "you return beta_t; the posterior variance is beta_tilde_t = (1 - alpha_bar_{t-1}) / "
                     "(1 - alpha_bar_t) * beta_t, which is smaller (beta_t is the other choice of sigma_t^2 for sampling)."),
            "minus": ("off_by_one", torch.full(shape, var(*tables(-1)), dtype=torch.float64), OFF_BY_ONE_MINUS),
            "plus": ("off_by_one", torch.full(shape, var(*tables(1)), dtype=torch.float64), OFF_BY_ONE_PLUS),
        }, what="the variance", atol=v_atol)


class _ProbeModel(nn.Module):
    """A stand-in for eps_theta that depends on x and t and remembers how it was called."""

    def __init__(self, dtype: torch.dtype, T: int):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.7, dtype=dtype))
        self.T = T
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t)
        self.calls.append((x.detach().clone(), t.detach().clone()))
        tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) / self.T  # (B, 1, 1, 1)
        return self.w * torch.tanh(x) + 0.3 * torch.sin(3 * x + 5 * tt)


@_register("ch02.simple_loss")
def _check_simple_loss(fn) -> None:
    """DDPM eq. 14: L_simple = E || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2."""
    cases = [("linear-1000", (4, 1, 16, 16), torch.float32, [500, 17, 999, 0]),
             ("linear-1000", (1, 1, 8, 8), torch.float64, [250]),
             ("cosine-50", (3, 3, 8, 8), torch.float32, [1, 25, 49]),
             ("linear-20", (2, 1, 8, 8), torch.float64, [0, 19])]
    for n, (schedule, shape, dtype, ts) in enumerate(cases):
        _, ab_table = _tables(schedule, dtype)
        x0, eps, t = _randn(shape, dtype, 90 + n), _randn(shape, dtype, 100 + n), torch.tensor(ts)
        model = _ProbeModel(dtype, len(ab_table))
        case = _Case("ch02.simple_loss", _describe(dtype, x0=x0, t=t) + f", schedule {schedule}, a test model")
        got = _call(case, fn, model, x0.clone(), t.clone(), eps.clone(), ab_table.clone())

        ref = _ProbeModel(torch.float64, len(ab_table))  # same function, float64, no gradients needed
        x, e, nd = x0.double(), eps.double(), x0.ndim

        def x_t_of(ab, signal_pow=0.5, noise_pow=0.5, sign=1):
            return ab**signal_pow * x + sign * (1 - ab) ** noise_pow * e

        def loss(x_in, target=e, reduce="mean", power=2):
            err = (target - ref(x_in, t).detach()).abs() ** power
            return err.mean() if reduce == "mean" else err.sum()

        ab = _at(ab_table, t, nd)
        x_t = x_t_of(ab)
        want = loss(x_t)
        if not isinstance(got, torch.Tensor):
            raise case.fail(f"the loss should be a tensor, got {type(got).__name__}. Keep it a tensor (no .item()) so "
                            "that loss.backward() can train the model.")
        if got.ndim != 0:
            raise case.fail(f"the loss has shape {tuple(got.shape)}; it should be one number (a 0-dim tensor). "
                            "Average over every element with .mean().")
        if not model.calls:
            raise case.fail("the model was never called: eps_theta(x_t, t) is what the loss trains.")
        seen_x, seen_t = model.calls[-1]
        if seen_x.shape == x0.shape and _close(seen_x, x, dtype) and not _close(x, x_t, dtype):
            raise case.fail("the loss differs from eq. 14.", ("model_input", "the model was given x_0; it must see the noisy "
                                                                      "x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (eq. 4)."))
        if seen_t.numel() != t.numel() or not torch.equal(seen_t.reshape(-1).double(), t.double()):
            raise case.fail(f"the model was called with timesteps {seen_t.reshape(-1).tolist()}; pass the same t "
                            f"({t.tolist()}) that chose alpha_bar_t.")
        got = _expect_tensor(case, got, want, dtype, "the loss")
        _diagnose(case, got, want, dtype, {
            "minus": ("off_by_one", loss(x_t_of(_at(ab_table, t - 1, nd))), OFF_BY_ONE_MINUS),
            "plus": ("off_by_one", loss(x_t_of(_at(ab_table, t + 1, nd))), OFF_BY_ONE_PLUS),
            "no_sqrt_signal": ("missing_sqrt", loss(x_t_of(ab, signal_pow=1.0)),
                               "in x_t, x_0 is scaled by alpha_bar_t; its coefficient is sqrt(alpha_bar_t) (eq. 4)."),
            "var_noise": ("variance_for_std", loss(x_t_of(ab, noise_pow=1.0)),
                          "in x_t the noise is scaled by its variance 1 - alpha_bar_t; use the standard deviation "
                          "sqrt(1 - alpha_bar_t) (eq. 4)."),
            "alpha": ("alpha_vs_alpha_bar", loss(x_t_of(_alpha_at(ab_table, t, nd))),
                      "x_t is made from x_0 in one jump with the cumulative alpha_bar_t = alphas_cumprod[t], not the "
                      "one-step alpha_t."),
            "sign_xt": ("wrong_sign", loss(x_t_of(ab, sign=-1)), "in x_t the noise is added to sqrt(alpha_bar_t) x_0."),
            "target_x0": ("wrong_target", loss(x_t, target=x),
                          "the target is the noise eps, not x_0: the model learns to predict the noise that was added."),
            "sum": ("sum_for_mean", loss(x_t, reduce="sum"), "you sum the squared errors; L_simple takes their mean."),
            "l1": ("not_squared_error", loss(x_t, power=1), "the error is squared in L_simple (the absolute error is L1)."),
        }, what="the loss")
        if not got.requires_grad:
            raise case.fail("the loss carries no gradient: did you call .item() or .detach(), or compute it under "
                            "torch.no_grad()? Training calls loss.backward() on it.")


@_register("ch02.ddpm_step")
def _check_ddpm_step(fn) -> None:
    """DDPM Algorithm 2, line 4: x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1 - alpha_bar_t) eps) + sigma_t z, sigma_t^2 = beta_t."""
    cases = [("linear-1000", (4, 1, 32, 32), torch.float32, 500), ("linear-1000", (1, 1, 8, 8), torch.float64, 999),
             ("linear-1000", (2, 1, 16, 16), torch.float32, 0), ("cosine-50", (3, 1, 8, 8), torch.float64, 25),
             ("linear-20", (2, 3, 8, 8), torch.float32, 1), ("linear-20", (1, 1, 8, 8), torch.float64, 0),
             ("linear-1000", (3, 1, 8, 8), torch.float32, torch.tensor(10))]  # a 0-dim tensor, as scheduler.timesteps gives
    for n, (schedule, shape, dtype, t) in enumerate(cases):
        betas, ab_table = _tables(schedule, dtype)
        eps_pred, x_t, z = _randn(shape, dtype, 110 + n), _randn(shape, dtype, 120 + n), _randn(shape, dtype, 130 + n)
        ti = int(t)
        t_text = f"tensor({ti})" if isinstance(t, torch.Tensor) else ti
        case = _Case("ch02.ddpm_step", _describe(dtype, x_t=x_t, t=t_text) + f", schedule {schedule}")
        args = (eps_pred.clone(), t, x_t.clone(), betas.clone(), ab_table.clone(), z.clone())
        got = _call(case, fn, *args)
        _unchanged(case, eps_pred=(args[0], eps_pred), x_t=(args[2], x_t), z=(args[5], z))
        e, x, zz = eps_pred.double(), x_t.double(), z.double()
        b64, ab64 = betas.double(), ab_table.double()
        T = len(betas)

        def step(k=0, alpha_from="beta", noise_pow=0.5, sqrt_ab=0.5, sqrt_alpha=0.5, sign=-1, noise=True,
                 at_zero=False, noise_sign=1, tilde=False):
            i = min(ti + k, T - 1)  # indices shifted by k (negative ones wrap, as in Python)
            beta, ab = float(b64[i]), float(ab64[i])
            alpha = ab if alpha_from == "alpha_bar" else 1 - beta
            mean = (x + sign * beta / (1 - ab) ** sqrt_ab * e) / alpha**sqrt_alpha
            if not noise or (ti == 0 and not at_zero):
                return mean
            ab_prev = float(ab64[i - 1]) if i > 0 else 1.0
            var = (1 - ab_prev) / (1 - ab) * beta if tilde else beta
            return mean + noise_sign * var**noise_pow * zz

        want = step()
        got = _expect_tensor(case, got, want, dtype)
        _diagnose(case, got, want, dtype, {
            "noise_at_t0": ("noise_at_t0", step(at_zero=True) if ti == 0 else None,
                            "at t = 0 (the last step, t = 1 in the paper's numbering) Algorithm 2 sets z = 0: the final "
                            "sample is the mean, with no noise added."),
            "no_noise": ("missing_noise", step(noise=False) if ti > 0 else None,
                         "no noise is added: for t > 0, add sigma_t z with sigma_t = sqrt(beta_t) (Algorithm 2, line 4)."),
            "var_sigma": ("variance_for_std", step(noise_pow=1.0),
                          "the noise is scaled by sigma_t^2 = beta_t, a variance; scale z by the standard deviation "
                          "sigma_t = sqrt(beta_t)."),
            "tilde": ("beta_tilde_for_beta", step(tilde=True) if ti > 0 else None,
                      "you used sigma_t^2 = beta_tilde_t (the posterior variance, eq. 7). That is the other valid choice "
                      "(DDPM sec. 3.2), but this exercise follows Algorithm 2 as tested: sigma_t^2 = beta_t."),
            "noise_sign": ("wrong_sign", step(noise_sign=-1) if ti > 0 else None,
                           "add sigma_t z; subtracting it draws from the same distribution, but the check gives you z "
                           "and expects + sigma_t z."),
            "alpha_bar": ("alpha_vs_alpha_bar", step(alpha_from="alpha_bar"),
                          "1/sqrt(alpha_t) uses the one-step alpha_t = 1 - beta_t; you used alpha_bar_t (the DDIM "
                          "paper's alpha_t is DDPM's alpha_bar_t: a classic trap)."),
            "no_sqrt_ab": ("missing_sqrt", step(sqrt_ab=1.0),
                           "the noise coefficient is beta_t / sqrt(1 - alpha_bar_t); the square root is missing."),
            "no_sqrt_alpha": ("missing_sqrt", step(sqrt_alpha=1.0),
                              "divide by sqrt(alpha_t), not alpha_t."),
            "minus": ("off_by_one", step(k=-1), OFF_BY_ONE_MINUS.replace("alphas_cumprod[t - 1] for alpha_bar_t",
                                                                         "betas[t - 1] for beta_t")),
            "plus": ("off_by_one", step(k=1), OFF_BY_ONE_PLUS),
            "sign": ("wrong_sign", step(sign=1), "the scaled predicted noise is subtracted from x_t, not added."),
        })
