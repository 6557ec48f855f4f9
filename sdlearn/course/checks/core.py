"""The machinery behind every exercise check: the registry, ``check``/``run_check``, and shared helpers.

The registry (:data:`EXERCISES`, :data:`CHECKS`) is filled by the chapter modules
(``diffusion``, ``latent``, ``samplers``) when :mod:`sdlearn.course.checks` imports them. The helpers here
call the learner's function safely (:func:`_call`), compare results with a reference at a tolerance
fit for the dtype (:func:`_close`), and name the likely mistake by matching the output against
wrong variants of the formula (:func:`_diagnose`). Seeded inputs and the noise schedules used by the
checks are built here from first principles (DDPM eq. 4, Improved DDPM eq. 17).
"""

from __future__ import annotations

import math
import os
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from ...utils.files import PACKAGE_DIR
from .guard import ReferenceUnavailable, learner_running, references_unavailable


class CheckFailed(AssertionError):
    """An exercise disagrees with its equation; the message says where and, if it can, why."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the feedback (with the learner's own line when their code
        # raised), not the frames of the checking machinery, which say nothing about the learner's mistake.
        return [f"\033[0;31m{line}\033[0m" if i == 0 else line for i, line in enumerate(str(self).splitlines())]


@dataclass(frozen=True)
class Exercise:
    chapter: int
    title: str
    equation: str  # where the formula is in the paper
    formula: str  # the math the check compares against (plain text)
    signature: str  # how the check calls the learner's function
    points: int  # what the check cell is worth (the notebook's nbgrader "points")



EXERCISES: dict[str, Exercise] = {}  # exercise id -> Exercise, filled by the chapter modules

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
    # sdlearn's own answer is unavailable to fn, as in the grader, so both give the same verdict
    with references_unavailable(exercise_id, namespaces=[getattr(fn, "__globals__", {})]):
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
    # what an exception in the learner's code likely means for this case: exception -> (mistake key, detail) or None
    hint: Callable[[Exception], tuple[str, str] | None] | None = None

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
    package = PACKAGE_DIR + os.sep  # sdlearn/
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


NOT_WRITTEN = ("✗ {exercise_id}: you have not written this exercise yet: the exercise cell still raises "
               "NotImplementedError. Replace its lines `# YOUR CODE HERE` and `raise NotImplementedError()` with your "
               "code, run that cell, then run this check again.")


def _call(case: _Case, fn, *args, **kwargs):
    """Call the learner's function; turn 'not written yet' and crashes into feedback."""
    try:
        with learner_running():
            return fn(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(NOT_WRITTEN.format(exercise_id=case.exercise_id)) from None
    except ReferenceUnavailable as e:
        ex = EXERCISES[case.exercise_id]
        raise CheckFailed(f"✗ {case.exercise_id} — {ex.equation} ({ex.title})\n  {e}") from None
    except Exception as e:  # noqa: BLE001 - any crash becomes feedback
        hint = (case.hint(e) if case.hint is not None else None) or _exception_hint(e)
        raise case.fail(f"your function raised {type(e).__name__}: {e}{_learner_line(e)}", hint) from None


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
