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

The package: ``core`` (the registry, ``check``, ``run_check`` and the shared helpers), then one
module of checks per part of the course: ``diffusion`` (chapters 1-2), ``vae`` (chapter 3),
``latent`` (chapter 4, whose checks hand the learner's function tiny seeded models: a VAE, a
denoiser, a scheduler), ``conditioning`` (chapter 5), ``samplers`` (chapter 6) and ``pipeline`` (chapter 7). Importing this package registers every check.
"""

from __future__ import annotations

# importing a chapter's module registers its exercises and checks: in the order of the course
from . import diffusion  # noqa: F401 - chapters 1-2
from . import vae  # noqa: F401 - chapter 3
from . import latent  # noqa: F401 - chapter 4
from . import conditioning  # noqa: F401 - chapter 5
from . import samplers  # noqa: F401 - chapter 6
from . import pipeline  # noqa: F401 - chapter 7
from .core import CHECKS, EXERCISES, LABELS, CheckFailed, Exercise, check, run_check
from .core import _cosine_reference  # noqa: F401 - used by the tests (and guarded by the grader)
from .samplers import GRID_CASES, _reference_grid  # noqa: F401 - used by the tests

__all__ = ["CHECKS", "EXERCISES", "LABELS", "CheckFailed", "Exercise", "check", "run_check"]
