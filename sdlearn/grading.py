"""Automatic checks for the course exercises, with feedback that names the likely mistake.

Every exercise re-implements one equation of a paper. ``check(exercise_id, fn)`` runs the
learner's ``fn`` on seeded inputs (float32 and float64, batch sizes 1 and more, timesteps including
the edges t = 0 and t = T - 1), compares the result with a reference computed *here, from the
formula itself* (not by calling the sdlearn function the learner may have called), and on a
mismatch raises :class:`CheckFailed` (an ``AssertionError``) saying which equation, which test
case, and -- by comparing the output with common wrong versions of the formula -- the likely
mistake. It never shows a solution, only the math that the notebook already teaches.

``run_check(exercise_id, fn) -> (passed, feedback)`` does the same for a grader and never raises.
``EXERCISES`` lists every exercise: chapter, equation, signature and points.

Timesteps are 0-based as in code: t = 0..T-1, and ``alphas_cumprod[t]`` is alpha_bar of step t.
"""

from __future__ import annotations

import math
import os
import traceback
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class CheckFailed(AssertionError):
    """An exercise disagrees with its equation; the message says where and, if it can, why."""


@dataclass(frozen=True)
class Exercise:
    chapter: int
    title: str
    equation: str  # where the formula is in the paper
    formula: str  # the math the check compares against (plain text)
    signature: str  # how the check calls the learner's function
    points: int  # what the check cell is worth (the notebook's nbgrader "points")


EXERCISES: dict[str, Exercise] = {
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
}

# What a likely mistake is called in the feedback ("likely mistake (LABEL): details").
LABELS = {
    "off_by_one": "off-by-one timestep",
    "missing_sqrt": "missing square root",
    "variance_for_std": "variance instead of standard deviation",
    "std_for_variance": "standard deviation instead of variance",
    "noise_at_t0": "noise on the last step",
    "alpha_vs_alpha_bar": "alpha_t vs alpha_bar_t",
    "wrong_sign": "wrong sign",
    "swapped": "swapped coefficients",
    "broadcast": "broadcasting over the wrong axis",
    "missing_coefficient": "missing coefficient",
    "multiplied": "multiplied instead of divided",
    "no_clip": "no clipping at max_beta",
    "ignored_argument": "an argument is ignored",
    "missing_offset": "missing offset s",
    "not_squared": "cosine not squared",
    "beta_for_beta_tilde": "beta_t instead of beta_tilde_t",
    "beta_tilde_for_beta": "beta_tilde_t instead of beta_t",
    "model_input": "the model sees x_0",
    "wrong_target": "wrong target",
    "sum_for_mean": "sum instead of mean",
    "not_squared_error": "absolute instead of squared error",
    "missing_noise": "missing noise",
    "direction_without_sigma": "sigma_t^2 not taken out of the direction term",
    "ascending": "ascending order",
    "true_division": "T / S instead of T // S",
    "reversed_difference": "reversed difference",
    "scaled_input": "x scaled as the model's input",
    "x0_for_step": "x0_pred instead of one step",
}

CHECKS: dict[str, Callable] = {}  # exercise id -> check function, filled by @_register


def _register(exercise_id: str):
    def wrap(check_fn):
        CHECKS[exercise_id] = check_fn
        return check_fn
    return wrap


# ============================================================================ public API
def check(exercise_id: str, fn) -> None:
    """Run the checks of ``exercise_id`` on ``fn``; print a tick, or raise CheckFailed with a hint."""
    if exercise_id not in CHECKS:
        raise KeyError(f"No exercise {exercise_id!r}; the exercises are {sorted(CHECKS)}.")
    if not callable(fn):
        raise CheckFailed(f"✗ {exercise_id}: pass the function itself (e.g. check({exercise_id!r}, my_function)), "
                          f"not {type(fn).__name__} — no parentheses after its name.")
    CHECKS[exercise_id](fn)
    print(f"✓ {exercise_id}: all checks passed")


def run_check(exercise_id: str, fn) -> tuple[bool, str]:
    """(passed, feedback) for a grader: the same checks as :func:`check`, and it never raises."""
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            check(exercise_id, fn)
        return True, f"✓ {exercise_id}: all checks passed"
    except CheckFailed as e:
        return False, str(e)
    except KeyError as e:
        return False, str(e.args[0]) if e.args else repr(e)
    except BaseException as e:  # noqa: BLE001 - a grader must survive anything the learner's code does
        if isinstance(e, KeyboardInterrupt):
            return False, f"✗ {exercise_id}: interrupted."
        return False, f"✗ {exercise_id}: the check itself failed with {type(e).__name__}: {e}"


# ============================================================================ machinery
@dataclass
class _Case:
    """One test case: which exercise, and a description of the inputs for the feedback."""

    exercise_id: str
    description: str

    def fail(self, problem: str, mistake: tuple[str, str] | None = None) -> CheckFailed:
        ex = EXERCISES[self.exercise_id]
        lines = [f"✗ {self.exercise_id} — {ex.equation} ({ex.title})",
                 f"  expected: {ex.formula}",
                 f"  test case: {self.description}",
                 f"  problem: {problem}"]
        if mistake is not None:
            key, detail = mistake
            lines.append(f"  likely mistake ({LABELS[key]}): {detail}")
        return CheckFailed("\n".join(lines))


def _tol(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol): loose enough for any order of operations, tight enough to catch every slip below."""
    return (1e-4, 1e-5) if dtype != torch.float64 else (1e-6, 1e-8)


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, atol: float | None = None) -> bool:
    rtol, default_atol = _tol(dtype)
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=default_atol if atol is None else atol))


def _learner_line(e: BaseException) -> str:
    """Where in the learner's code the exception happened (their own line, never ours)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not os.path.abspath(f.filename).startswith(package)]
    frames = [f for f in frames if "site-packages" not in f.filename] or frames
    cells = [f for f in frames if f.filename.startswith("<") or "ipykernel" in f.filename]  # notebook cells
    frames = cells or frames
    if not frames:
        return ""
    f = frames[-1]
    return f" (line {f.lineno} of {f.name}: `{(f.line or '').strip()}`)"


def _exception_hint(e: Exception) -> tuple[str, str] | None:
    text = str(e)
    if isinstance(e, IndexError) and "out of bounds" in text:
        return ("off_by_one", "an index past the end usually means reading step t + 1 (e.g. alphas_cumprod[t + 1]) "
                              "at the last timestep t = T - 1. Timesteps are 0-based: step t's value is at index t.")
    if isinstance(e, RuntimeError) and "must match the size" in text:
        return ("broadcast", "alphas_cumprod[t] has shape (B,); reshape it to (B, 1, 1, 1) "
                             "(e.g. with .view(-1, 1, 1, 1)) so it multiplies each image of the batch.")
    return None


def _call(case: _Case, fn, *args, **kwargs):
    """Call the learner's function; turn 'not written yet' and crashes into feedback."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(
            f"✗ {case.exercise_id}: you have not written this exercise yet. Replace `raise NotImplementedError()` "
            "with your code between ### BEGIN SOLUTION and ### END SOLUTION, run that cell, then run this check again."
        ) from None
    except Exception as e:  # noqa: BLE001 - any crash becomes feedback
        raise case.fail(f"your function raised {type(e).__name__}: {e}{_learner_line(e)}", _exception_hint(e)) from None


def _unchanged(case: _Case, **pairs) -> None:
    """Inputs must not be modified in place: each value is (tensor given to the learner, pristine copy)."""
    for name, (given, copy) in pairs.items():
        if isinstance(given, torch.Tensor) and not torch.equal(given, copy):
            raise case.fail(f"your function changed its input `{name}` in place (e.g. `{name} -= ...` or `{name}.mul_`); "
                            "compute a new tensor and leave the inputs as they were.")


def _expect_tensor(case: _Case, got, want: torch.Tensor, dtype: torch.dtype, what: str = "the result",
                   shape_hint: str = "", dtype_hint: str = "") -> torch.Tensor:
    """Generic checks before comparing values: a tensor, of the right shape and dtype, finite."""
    if not isinstance(got, torch.Tensor):
        raise case.fail(f"{what} should be a torch.Tensor, got {type(got).__name__}. "
                        "Build it from the input tensors with torch operations (no .item(), .tolist() or numpy).")
    if got.shape != want.shape:
        raise case.fail(f"{what} has shape {tuple(got.shape)} but should have shape {tuple(want.shape)}. {shape_hint}".strip(),
                        _shape_mistake(got.shape, want.shape))
    if got.dtype != dtype:
        raise case.fail(f"{what} has dtype {got.dtype} but should have dtype {dtype}. " + (dtype_hint or (
            "Keep the input's dtype: do not create new float32 tensors or call .float()/.double(); compute from the "
            "inputs, and their dtype carries over.")))
    if not torch.isfinite(got).all():
        raise case.fail(f"{what} contains NaN or inf. Look for a square root of a negative number or a division by "
                        "zero, e.g. 1 - alpha_bar_t written as alpha_bar_t - 1, or a table read at the wrong index.")
    return got


def _shape_mistake(got, want) -> tuple[str, str] | None:
    if len(got) > len(want) or (len(got) == len(want) and len(want) >= 2 and got[-1] != want[-1]):
        return ("broadcast", "a per-sample coefficient of shape (B,) must be reshaped to (B, 1, 1, 1) "
                             "(e.g. .view(-1, 1, 1, 1)) before it multiplies a (B, C, H, W) tensor.")
    return None


def _diagnose(case: _Case, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, variants: dict,
              what: str = "the result", t_per_sample: list[int] | None = None, atol: float | None = None) -> None:
    """Compare values; on a mismatch, name the planted wrong variant that the output matches, if any.

    ``variants``: {name: (mistake key, tensor the mistake would give, explanation)}.
    """
    if _close(got, want, dtype, atol):
        return
    for key, wrong, detail in variants.values():
        if wrong is None or _close(wrong, want, dtype, atol):
            continue  # this slip makes no difference on this case, so it cannot explain the mismatch
        if _close(got, wrong.to(torch.float64), dtype, atol):
            raise case.fail(f"{what} differs from the equation (largest difference "
                            f"{_max_diff(got, want):.3g}).", (key, detail))
    problem = (f"{what} differs from the equation (largest difference {_max_diff(got, want):.3g}); none of the "
               "usual slips explains it, so compare each factor of your code with the expected formula above.")
    if t_per_sample is not None and got.ndim >= 1 and got.shape[0] == len(t_per_sample):
        rtol, default_atol = _tol(dtype)
        bad = [t for i, t in enumerate(t_per_sample)
               if not torch.allclose(got[i].double(), want[i].double(), rtol=rtol, atol=default_atol if atol is None else atol)]
        good = sorted(set(t_per_sample) - set(bad))
        problem += f" Wrong for t = {sorted(set(bad))}" + (f", right for t = {good}." if good else ".")
        if good and set(bad) <= {0}:
            problem += (" Only the edge t = 0 is wrong. If you index a table with t - 1 anywhere: at t = 0 that is -1, "
                        "which silently reads the LAST entry.")
    raise case.fail(problem)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


# ----------------------------------------------------------------------------- seeded inputs, first-principles tables
def _randn(shape, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _linear_betas(T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """DDPM sec. 4: betas evenly spaced, built in float32 as diffusers builds them."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)


def _cosine_reference(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM eq. 17 in float64, returned as float32."""
    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=torch.float32)


def _tables(schedule: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(betas, alphas_cumprod) of a named test schedule, in ``dtype``; alpha_bar is a cumulative product (DDPM eq. 4)."""
    betas = {"linear-1000": lambda: _linear_betas(1000, 1e-4, 0.02),
             "cosine-50": lambda: _cosine_reference(50),
             "linear-20": lambda: _linear_betas(20, 0.01, 0.3)}[schedule]().to(dtype)
    return betas, torch.cumprod(1 - betas, dim=0)


def _at(table: torch.Tensor, t, ndim: int) -> torch.Tensor:
    """table[t] in float64, shaped (B, 1, ..., 1) for a (B,) t (negative t wraps, as Python indexing does)."""
    t = torch.as_tensor(t).long()
    T = len(table)
    t = torch.where(t >= T, torch.full_like(t, T - 1), t)  # only used by the "t + 1" variants
    return table.double()[t].reshape(-1, *([1] * (ndim - 1)))


def _alpha_at(alphas_cumprod: torch.Tensor, t, ndim: int) -> torch.Tensor:
    """alpha_t = alpha_bar_t / alpha_bar_{t-1} (alpha_bar_{-1} = 1): the per-step alpha, for the alpha/alpha_bar slip."""
    t = torch.as_tensor(t).long()
    prev = torch.where(t > 0, _at(alphas_cumprod, t - 1, 1).flatten(), torch.ones(t.shape, dtype=torch.float64))
    return _at(alphas_cumprod, t, ndim) / prev.reshape(-1, *([1] * (ndim - 1)))


def _describe(dtype: torch.dtype, **named) -> str:
    parts = [str(dtype).replace("torch.", "")]
    for name, value in named.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 2:
            parts.append(f"{name} {tuple(value.shape)}")
        elif isinstance(value, torch.Tensor):
            parts.append(f"{name} = {value.tolist()}")
        else:
            parts.append(f"{name} = {value}")
    return ", ".join(parts)


OFF_BY_ONE_MINUS = ("you used the values of step t - 1 where step t's belong (e.g. alphas_cumprod[t - 1] for alpha_bar_t). "
                    "Timesteps are 0-based in code: alpha_bar_t is alphas_cumprod[t]. (At t = 0, index -1 silently reads "
                    "the last entry.)")
OFF_BY_ONE_PLUS = ("you used the values of step t + 1 where step t's belong (e.g. alphas_cumprod[t + 1]). Timesteps are "
                   "0-based in code: alpha_bar_t is alphas_cumprod[t], not alphas_cumprod[t + 1].")


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


# ============================================================================ chapter 6
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
