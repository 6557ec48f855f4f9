"""Grade completed student notebooks: every exercise in its own process, with a time limit.

``sdlearn grade NOTEBOOK...`` (or :func:`grade_notebooks`) does, for each notebook:

1. **Find the exercises** (COURSE.md, "Exercise markup"). Each check cell calls
   ``check("ch02.ddpm_step", ddpm_step)``: that names the exercise and the function. The exercise
   cell is the cell that defines the function (preferably one marked nbgrader ``solution``), so
   extra cells, moved cells and lost metadata do not matter. Points come from
   :data:`sdlearn.grading.EXERCISES` (what the check cell shows; a student cannot raise them), and
   every registered exercise of the notebook's chapter is listed, so a deleted exercise scores 0
   instead of vanishing from the gradebook.
2. **Run each exercise on its own**, in a fresh process (forked from a warm grading process on
   Linux; a new interpreter elsewhere), killed when it exceeds its time limit. That process runs
   only the notebook's set-up cells, then the exercise cell, then
   ``sdlearn.grading.run_check(exercise_id, fn)``: the same checks the learner's check cell runs.
   Nothing else of the notebook runs, so an answer cannot use a value computed elsewhere in it.
3. **Take sdlearn's own answers away.** Before any notebook code runs, the functions of sdlearn
   that compute the exercise's equation (:data:`REFERENCES`), the checks' private helpers, and
   ``import diffusers`` raise :class:`ReferenceUnavailable` when they are called from the
   notebook's code (directly or through another sdlearn function); sdlearn's own code and the
   checks still use them. An answer that only calls sdlearn's implementation therefore fails,
   and the feedback says why.

**Set-up cells** (what runs before each exercise), in order of precedence:

- the code cells tagged ``setup``, if any cell is;
- otherwise every code cell above the cell tagged ``parameters``, and that cell itself: the
  chapter's imports and parameters (COURSE.md, "The shape of a chapter", step 2);
- otherwise the code cells above the first exercise that hold only imports.

Exercise and check cells are never set-up cells. An error in a set-up cell does not stop the
exercise (it is mentioned in the feedback when the exercise fails). IPython magics and shell
lines (``%matplotlib``, ``!pip``) are skipped; ``%%time`` and ``%%capture`` cells run their body.
Output on stdout or stderr, and warnings, are ignored.

Results: :class:`NotebookResult` per notebook, :class:`ExerciseResult` per exercise (``score``,
``max_score``, ``passed``, ``status``, ``feedback``), as a table (:func:`format_table`), JSON
(:func:`results_json`) or CSV (:func:`write_csv`).

The grader runs students' code: on a shared machine, grade inside a container or a throwaway
account (GitHub Classroom's runners are throwaway virtual machines).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import datetime
import functools
import importlib
import importlib.abc
import inspect
import json
import linecache
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_TIMEOUT = 30.0  # seconds per exercise: the checks take well under one
STARTUP_TIMEOUT = 300.0  # seconds for a grading process to import torch (a cold disk can take a minute)

# sdlearn's implementations of each exercise's equation: "module:function" or "module:Class.method".
# While the notebook's code runs they raise ReferenceUnavailable (when called from that code, even
# through other sdlearn functions). A chapter that adds an exercise adds its references here.
_ADD_NOISE = (
    "sdlearn.schedulers.ddpm:add_noise",  # eq. 4; with a one-entry table it is eq. 2 as well
    "sdlearn.schedulers.ddpm:DDPMScheduler.add_noise",
    "sdlearn.schedulers.ddim:DDIMScheduler.add_noise",
    "sdlearn.schedulers.euler:EulerDiscreteScheduler.add_noise",
    "sdlearn.schedulers.dpmsolver:DPMSolverMultistepScheduler.add_noise",
)
_STEPS = (
    "sdlearn.schedulers.ddpm:DDPMScheduler.step",
    "sdlearn.schedulers.ddim:DDIMScheduler.step",
    "sdlearn.schedulers.euler:EulerDiscreteScheduler.step",
    "sdlearn.schedulers.dpmsolver:DPMSolverMultistepScheduler.step",
)
REFERENCES: dict[str, tuple[str, ...]] = {
    "ch01.forward_step": _ADD_NOISE,
    "ch01.q_sample": _ADD_NOISE,
    "ch01.cosine_betas": ("sdlearn.schedules:cosine_betas", "sdlearn.schedules:cosine_alpha_bar"),
    "ch02.predict_x0": ("sdlearn.schedulers.ddpm:predicted_original", "sdlearn.schedulers.dpmsolver:data_prediction",
                        *_STEPS),
    "ch02.posterior_mean_variance": ("sdlearn.schedulers.ddpm:DDPMScheduler.posterior_variance", *_STEPS),
    "ch02.simple_loss": ("sdlearn.train:diffusion_loss",),
    "ch02.ddpm_step": ("sdlearn.schedulers.ddpm:DDPMScheduler.posterior_variance", *_STEPS),
}
# Chapter 6: the DDIM update (eq. 12) and sigma (eq. 16), the spacing grids, and the Euler step.
_SET_TIMESTEPS = (
    "sdlearn.schedulers.base:spaced_timesteps",
    "sdlearn.schedulers.ddpm:DDPMScheduler.set_timesteps",
    "sdlearn.schedulers.ddim:DDIMScheduler.set_timesteps",
    "sdlearn.schedulers.euler:EulerDiscreteScheduler.set_timesteps",
    "sdlearn.schedulers.dpmsolver:DPMSolverMultistepScheduler.set_timesteps",
)
REFERENCES.update({
    "ch06.ddim_step": ("sdlearn.schedulers.ddim:ddim_update", "sdlearn.schedulers.ddim:ddim_sigma",
                       "sdlearn.inversion:ddim_invert", "sdlearn.inversion:ddim_reconstruct", *_STEPS),
    "ch06.timestep_grid": (*_SET_TIMESTEPS, "sdlearn.samplers_viz:previous_timesteps"),
    "ch06.euler_step": (*_STEPS,),
})
# Chapters 3-4: the VAE's posterior (reparameterised sample, KL), the scale factor, and the latent pipeline.
# Not the VAE's encode/decode, the UNet or the scheduler's step: chapter 4's answers must call those. Diffusers'
# versions (its DiagonalGaussianDistribution, AutoencoderKL, pipelines) are covered by BLOCKED_PACKAGES.
_POSTERIOR = (
    "sdlearn.vae:DiagonalGaussianDistribution.__init__",  # it computes std = exp(0.5 logvar) and var = exp(logvar)
    "sdlearn.vae:vae_loss",
    "sdlearn.vae:VAELoss.__call__",
)
_LATENT_PIPELINE = (
    "sdlearn.pipelines.latent:LatentDiffusionPipeline.__call__",
    "sdlearn.pipelines.latent:LatentDiffusionPipeline.decode_latents",
    "sdlearn.pipelines.latent:LatentDiffusionPipeline.encode_images",
    "sdlearn.pipelines.ddpm:DDPMPipeline.__call__",
    "sdlearn.pipelines.ddpm:DDPMPipeline.denoise",  # LatentDiffusionPipeline inherits its loop
)
REFERENCES.update({
    "ch03.reparameterize": ("sdlearn.vae:DiagonalGaussianDistribution.sample", *_POSTERIOR),
    "ch03.kl_diagonal_gaussian": ("sdlearn.vae:DiagonalGaussianDistribution.kl", *_POSTERIOR),
    "ch03.scaling_factor": ("sdlearn.vae:measure_scaling_factor",),
    "ch04.latent_diffusion_loss": ("sdlearn.train:diffusion_loss", *_LATENT_PIPELINE),
    "ch04.sample_latents": _LATENT_PIPELINE,
    "ch04.encode_diffuse_decode": _LATENT_PIPELINE,
})
BLOCKED_PACKAGES = ("diffusers",)  # whole libraries that implement the exercises

_PROTOCOL = "@@sdlearn-grader@@ "  # marks the grading process's answers among anything else it prints
_STUDENT = "<sdlearn-grade "  # file names given to the notebook's code, so a guard can tell it from sdlearn's


class GraderError(RuntimeError):
    """The grader itself could not run (not a student's mistake): e.g. its grading process failed to start."""


class NotebookReadError(ValueError):
    """A handed-in file that is not a readable notebook; the message is meant for the student."""


class ReferenceUnavailable(RuntimeError):
    """Raised when a student's code calls sdlearn's own implementation of the exercise during grading."""


# =============================================================================================
# Results
# =============================================================================================
@dataclasses.dataclass
class ExerciseResult:
    exercise_id: str  # "ch02.ddpm_step"
    grade_id: str | None  # nbgrader grade_id of the exercise cell, when it has one
    score: float
    max_score: float
    status: str  # passed, failed, timeout, crashed (the process died), missing (no such exercise cell)
    feedback: str
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict:
        return {"exercise": self.exercise_id, "grade_id": self.grade_id, "score": self.score,
                "max_score": self.max_score, "passed": self.passed, "status": self.status,
                "feedback": self.feedback, "seconds": round(self.seconds, 2)}


@dataclasses.dataclass
class NotebookResult:
    notebook: str  # the path as given
    exercises: list[ExerciseResult]
    error: str | None = None  # the notebook could not be read (then every exercise scores 0)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(e.score for e in self.exercises)

    @property
    def max_score(self) -> float:
        return sum(e.max_score for e in self.exercises)

    def to_json(self) -> dict:
        return {"notebook": self.notebook, "score": self.score, "max_score": self.max_score, "error": self.error,
                "seconds": round(self.seconds, 2), "exercises": [e.to_json() for e in self.exercises]}


# =============================================================================================
# Reading a notebook: which exercises, which cells (no code runs here)
# =============================================================================================
@dataclasses.dataclass
class ExerciseSpec:
    """One exercise of one notebook, as found in its cells."""

    exercise_id: str
    function: str  # the expression the check passes (usually the function's name)
    points: float
    cell: int | None  # index of the exercise cell; None when the notebook has none
    grade_id: str | None = None
    note: str = ""  # something the instructor should know (e.g. the check cell claims other points)


def read_notebook(path: str | os.PathLike):
    """The notebook at ``path`` (nbformat 4), or :class:`NotebookReadError` saying what is wrong with the file."""
    import nbformat

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotebookReadError(f"{path.name} is not a text file (byte {e.start} is not UTF-8); hand in the .ipynb "
                                "file that Jupyter saves.") from None
    if not text.strip():
        raise NotebookReadError(f"{path.name} is empty; hand in the notebook again (save it in Jupyter first).")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise NotebookReadError(f"{path.name} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the file "
                                "was probably cut off or edited outside Jupyter. Open it in Jupyter to see, or hand in "
                                "a fresh copy.") from None
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise NotebookReadError(f"{path.name} is JSON but not a Jupyter notebook (it has no cells).")
    try:
        return nbformat.reads(text, as_version=4)
    except Exception as e:  # noqa: BLE001 - whatever nbformat dislikes, the student needs one sentence
        raise NotebookReadError(f"{path.name} is not a readable Jupyter notebook ({type(e).__name__}: {e}).") from None


@functools.lru_cache(maxsize=4096)
def _to_python(source: str) -> str:
    """A cell's source as plain Python: IPython magics and ``!shell`` lines become get_ipython() calls."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # without IPython: comment magics out
        return re.sub(r"^(\s*)([%!])", r"\1# \2", source, flags=re.M)
    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 - an unfinished cell; the syntax error is reported when it runs
        return source


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(_to_python(source))
    except (SyntaxError, ValueError):
        return None


def _check_calls(source: str) -> list[tuple[str, str]]:
    """The ``check("exercise id", fn)`` calls of a cell: [(exercise id, source of fn)], in order."""
    tree = _parse(source)
    if tree is None:  # a broken check cell: read the call with a pattern instead
        return [(m[0], m[1]) for m in re.findall(r"""\bcheck\(\s*["']([\w.]+)["']\s*,\s*([\w.]+)\s*\)""", source)]
    calls = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and len(node.args) >= 2
                and (getattr(node.func, "id", None) == "check" or getattr(node.func, "attr", None) == "check")
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            calls.append((node.lineno, node.args[0].value, ast.unparse(node.args[1])))
    return [(exercise_id, fn) for _, exercise_id, fn in sorted(calls)]


def _defined_names(source: str) -> set[str]:
    """Names a cell binds at top level: def, class, assignment, import."""
    tree = _parse(source)
    if tree is None:  # a syntax error: still find the def, so that the error is reported for this exercise
        defs = re.findall(r"^\s*(?:async\s+)?def\s+(\w+)", source, re.M)
        return set(defs) | set(re.findall(r"^(\w+)\s*=", source, re.M))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _nbgrader(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _tags(cell) -> list:
    tags = cell.get("metadata", {}).get("tags", [])
    return tags if isinstance(tags, list) else []


def _only_imports(source: str) -> bool:
    tree = _parse(source)
    return tree is not None and bool(tree.body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) or (
        isinstance(n, ast.Expr) and "get_ipython()" in ast.unparse(n)) for n in tree.body)


def find_exercises(nb, name: str = "") -> list[ExerciseSpec]:
    """The exercises of a notebook, in the order of their check cells (then registered ones without one)."""
    from .grading import EXERCISES

    code = {i: c for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    solution_cells = [i for i, c in code.items() if _nbgrader(c).get("solution")]
    checks: dict[str, tuple[int, str]] = {}  # exercise id -> (check cell, fn source); the first check counts
    for i, c in code.items():
        for exercise_id, fn in _check_calls(c.source):
            checks.setdefault(exercise_id, (i, fn))
    check_cells = {i for i, _ in checks.values()}

    # Which chapter(s) this notebook is: from its checks, its grade_ids ("ch02-..."), else its file name ("02_...").
    chapters = {EXERCISES[e].chapter for e in checks if e in EXERCISES}
    grade_ids = [str(_nbgrader(c).get("grade_id", "")) for c in code.values()]
    chapters |= {int(m[1]) for g in grade_ids if (m := re.match(r"ch(\d+)\W", g))}
    if not chapters and (m := re.match(r"(\d+)[_\-. ]", name)):
        chapters = {int(m[1])}
    wanted = list(checks) + [e for e, ex in EXERCISES.items() if ex.chapter in chapters and e not in checks]

    defines = {i: _defined_names(c.source) for i, c in code.items() if i not in check_cells}
    specs, claimed = [], set()
    for exercise_id in wanted:
        check_at, fn = checks.get(exercise_id, (None, None))
        if fn is None:  # no check cell: the function named in the exercise's signature
            fn = EXERCISES[exercise_id].signature.split("(")[0].strip()
        root = re.split(r"\W", fn, maxsplit=1)[0]
        candidates = [i for i, names in defines.items() if root in names]
        before = [i for i in candidates if check_at is None or i < check_at]
        cell = next((c for c in (max([i for i in before if i in solution_cells], default=None),
                                 max(before, default=None), max(candidates, default=None)) if c is not None), None)
        if cell is None and check_at is not None:  # renamed function: the exercise cell just above the check
            cell = max([i for i in solution_cells if i < check_at and i not in claimed], default=None)
        claimed.add(cell)
        registered = EXERCISES.get(exercise_id)
        cell_points = _nbgrader(nb.cells[check_at]).get("points") if check_at is not None else None
        points = registered.points if registered else _number(cell_points)
        note = ""
        if registered and cell_points is not None and _number(cell_points) != registered.points:
            note = (f"note: the check cell says {cell_points} points; sdlearn registers {registered.points} for "
                    f"{exercise_id}, which is what counts.")
        grade_id = _nbgrader(nb.cells[cell]).get("grade_id") if cell is not None else None
        specs.append(ExerciseSpec(exercise_id, fn, points, cell, grade_id, note))
    return specs


def _number(value) -> float | int:
    """Points as a number (an int when whole): 0 for anything that is not one."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0
    return int(value) if value.is_integer() else value


def setup_cells(nb, exclude: set[int]) -> list[int]:
    """The set-up cells (see the module docstring for the rule), never one of ``exclude``."""
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and i not in exclude]
    tagged = [i for i in code if "setup" in _tags(nb.cells[i])]
    if tagged:
        return tagged
    parameters = [i for i in code if "parameters" in _tags(nb.cells[i])]
    if parameters:
        return [i for i in code if i <= parameters[0]]
    first_exercise = min(exclude, default=len(nb.cells))
    return [i for i in code if i < first_exercise and _only_imports(nb.cells[i].source)]


def _imported_modules(sources: list[str]) -> list[str]:
    """Top-level modules the set-up cells import: the warm grading process imports them once, before forking."""
    names = []
    for source in sources:
        for node in ast.walk(_parse(source) or ast.Module(body=[], type_ignores=[])):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
    return [n for n in dict.fromkeys(names) if n.split(".")[0] not in BLOCKED_PACKAGES]


# =============================================================================================
# Inside the grading process: guards, running cells, the check
# =============================================================================================
_BLOCKED_CALLS: list[str] = []  # references the student's code tried to call (this process only)


def _called_from_student_code() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(_STUDENT):
            return True
        frame = frame.f_back
    return False


def _guard(original, name: str):
    @functools.wraps(original)
    def guarded(*args, **kwargs):
        if _called_from_student_code():
            _BLOCKED_CALLS.append(name)
            raise ReferenceUnavailable(
                f"{name} is sdlearn's own implementation of this exercise's equation; it is unavailable during "
                "grading: an answer that only calls sdlearn's reference earns no points. Write the equation yourself "
                "with torch operations.")
        return original(*args, **kwargs)

    guarded.__sdlearn_guarded__ = True
    return guarded


class _BlockPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED_PACKAGES:
            _BLOCKED_CALLS.append(f"import {fullname}")
            raise ImportError(f"{fullname.split('.')[0]} is unavailable during grading: it implements the exercises' "
                              "equations, and an answer that only calls an existing implementation earns no points. "
                              "Write the equation yourself with torch operations.")
        return None


def _grading_modules() -> list:
    """sdlearn.grading and its modules (core, and the checks of each part of the course), by identity."""
    import pkgutil

    from . import grading

    return [grading] + [importlib.import_module(f"{grading.__name__}.{m.name}")
                        for m in pkgutil.iter_modules(grading.__path__)]


def _install_guards(references) -> None:
    """Replace the references (and the checks' private helpers) by guards, everywhere sdlearn holds them."""
    targets = [(module, n, f) for module in _grading_modules() for n, f in vars(module).items()
               if n.startswith("_") and not n.startswith("__") and inspect.isfunction(f) and f.__module__ == module.__name__]
    for path in references:
        module_name, _, qualname = path.partition(":")
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            continue
        *parents, attr = qualname.split(".")
        for part in parents:
            owner = getattr(owner, part, None)
        original = vars(owner).get(attr) if owner is not None else None
        if callable(original):
            targets.append((owner, attr, original))
    for owner, attr, original in targets:
        if getattr(original, "__sdlearn_guarded__", False):
            continue
        where = f"{owner.__module__}.{owner.__qualname__}" if inspect.isclass(owner) else owner.__name__
        guarded = _guard(original, f"{where}.{attr}")
        if inspect.isclass(owner):
            setattr(owner, attr, guarded)
            continue
        for module in [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "sdlearn" and m is not None]:
            for name, value in list(vars(module).items()):  # also the copies made by `from .x import f`
                if value is original:
                    setattr(module, name, guarded)
    for name in [n for n in sys.modules if n.split(".")[0] in BLOCKED_PACKAGES]:
        del sys.modules[name]
    sys.meta_path.insert(0, _BlockPackages())


class _ShellStub:
    """get_ipython() for notebook code run outside IPython: magics are skipped, %%time/%%capture run their body."""

    def __init__(self, namespace: dict, filename: str):
        self.namespace, self.filename, self.user_ns = namespace, filename, namespace

    def run_line_magic(self, name, line, *args, **kwargs):
        return None

    def run_cell_magic(self, name, line, cell, *args, **kwargs):
        if name in ("time", "capture", "timeit", "prun"):
            exec(compile(_to_python(cell), self.filename, "exec"), self.namespace)

    def system(self, *args, **kwargs):
        return None

    getoutput = system


def _watched() -> dict:
    """What the checks rely on, by identity: the functions of torch, math, built-ins and sdlearn.grading's modules."""
    import builtins
    import math

    import torch
    import torch.nn.functional

    from . import grading

    spaces = {"builtins": builtins, "math": math, "torch": torch, "torch.Tensor": torch.Tensor,
              "torch.nn.functional": torch.nn.functional, "torch.testing": torch.testing,
              "torch.nn.Module": torch.nn.Module}
    spaces |= {module.__name__: module for module in _grading_modules()}  # sdlearn.grading, sdlearn.grading.core, ...
    watched = {f"{prefix}.{name}": value for prefix, space in spaces.items() for name, value in vars(space).items()
               if name != "_" and not inspect.ismodule(value)}
    watched |= {f"sdlearn.grading.CHECKS[{k!r}]": v for k, v in grading.CHECKS.items()}
    return watched


def _tampered(before: dict) -> list[str]:
    """Names whose object was replaced or deleted since ``before`` (a student's monkeypatch)."""
    after = _watched()
    return [name for name, value in before.items() if after.get(name, _MISSING) is not value]


_MISSING = object()


def _where(error: BaseException) -> str:
    """' (line N: `code`)' for the deepest line of the notebook's code in a traceback."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(_STUDENT)]
    if not frames:
        return ""
    f = frames[-1]
    return f" (line {f.lineno}" + (f": `{f.line.strip()}`)" if f.line else ")")


def _run_cell(source: str, filename: str, namespace: dict) -> list[str]:
    """Run a cell statement by statement (a failing line does not stop the next def); returns the errors."""
    python = _to_python(source)
    linecache.cache[filename] = (len(python), None, python.splitlines(keepends=True), filename)  # for tracebacks
    tree = ast.parse(python, filename)  # a SyntaxError goes to the caller: nothing of the cell runs
    errors = []
    for node in tree.body:
        try:
            exec(compile(ast.Module(body=[node], type_ignores=[]), filename, "exec"), namespace)
        except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt from a student's cell too
            errors.append(f"{type(e).__name__}: {e}{_where(e)}")
    return errors


def _syntax_feedback(exercise_id: str, e: SyntaxError) -> str:
    line = (e.text or "").rstrip()
    pointer = f"\n      {line}\n      {' ' * max((e.offset or 1) - 1, 0)}^" if line else ""
    return (f"✗ {exercise_id}: your exercise cell has a syntax error, so none of it ran: line {e.lineno}: {e.msg}"
            f"{pointer}\n  Fix it (running the cell in Jupyter shows the same error), then run the check cell again.")


def run_job(job: dict) -> dict:
    """Grade one exercise in this process: guards, set-up cells, the exercise cell, the check."""
    import torch

    from .grading import run_check

    exercise_id, fn_source = job["exercise_id"], job["function"]
    _install_guards(job.get("references", ()))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if job.get("cwd") and os.path.isdir(job["cwd"]):
        os.chdir(job["cwd"])
        sys.path.insert(0, job["cwd"])
    pristine = _watched()
    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    namespace["display"] = lambda *args, **kwargs: None
    notes = []
    for index, source in job["setup"]:
        filename = f"{_STUDENT}set-up cell {index}>"
        namespace["get_ipython"] = lambda shell=_ShellStub(namespace, filename): shell
        try:
            errors = _run_cell(source, filename, namespace)
        except SyntaxError as e:
            errors = [f"SyntaxError: {e.msg} (line {e.lineno})"]
        notes += [f"note: set-up cell {index} raised {err}" for err in errors]

    index, source = job["cell"]
    filename = f"{_STUDENT}exercise cell {index}>"
    namespace["get_ipython"] = lambda shell=_ShellStub(namespace, filename): shell
    try:
        errors = _run_cell(source, filename, namespace)
    except SyntaxError as e:
        return {"passed": False, "feedback": _syntax_feedback(exercise_id, e)}
    notes += [f"note: your exercise cell raised {err}" for err in errors]
    try:
        fn = eval(compile(fn_source, f"{_STUDENT}check>", "eval"), namespace)
    except Exception:  # noqa: BLE001 - usually a NameError: the function is not there
        defined = sorted(n for n in _defined_names(source) if callable(namespace.get(n)) and not n.startswith("_"))
        if any(e.startswith("NotImplementedError") for e in errors):
            feedback = (f"✗ {exercise_id}: you have not written this exercise yet (the cell raises "
                        "NotImplementedError); replace `raise NotImplementedError()` with your code.")
        else:
            feedback = (f"✗ {exercise_id}: the check calls `{fn_source}`, but your exercise cell does not define it"
                        + (f" (it defines: {', '.join(defined)})" if defined else "")
                        + ". Keep the function name and signature that the exercise gives.")
        return {"passed": False, "feedback": "\n  ".join([feedback, *notes])}

    passed, feedback = run_check(exercise_id, fn)
    changed = _tampered(pristine)
    if changed:
        return {"passed": False, "feedback": f"✗ {exercise_id}: not graded: your code replaced "
                                             f"{', '.join(changed[:5])}, which the checks rely on. Answers may not "
                                             "modify torch, Python's built-ins or sdlearn's checks."}
    if not passed:
        # the line that raised is the guard's, not the student's: leave it out
        feedback = re.sub(r" \(line \d+ of (?:guarded|find_spec): `[^`]*`\)", "", feedback)
        if _BLOCKED_CALLS and "unavailable during grading" not in feedback:
            notes.insert(0, f"note: your answer calls {', '.join(dict.fromkeys(_BLOCKED_CALLS))}, which is unavailable "
                            "during grading: an answer that only calls an existing implementation of the exercise "
                            "(sdlearn's or diffusers') earns no points.")
        if "NameError" in feedback or any("NameError" in n for n in notes):
            notes.append("note: the grader runs each exercise cell on its own, after the notebook's set-up cells "
                         "(imports and parameters); names defined in other cells do not exist there. Define what "
                         "your function needs inside the exercise cell or the function itself.")
        feedback = "\n  ".join([feedback, *notes])
    return {"passed": passed, "feedback": feedback}


def _preimport(modules) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except (Exception, SystemExit):  # noqa: BLE001 - the set-up cell reports it when it runs
            pass


BASE_IMPORTS = ("torch", "numpy", "sdlearn.grading", "sdlearn.schedules", "sdlearn.schedulers", "sdlearn.train",
                "IPython.core.inputtransformer2")


def _quiet() -> None:
    """Send this process's stdin/stdout/stderr to the null device: what students print is not graded."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


_PROTOCOL_OUT = None  # the warm grading process's channel to the grader (closed in its children)


def _serve() -> int:
    """The warm grading process (Linux): imports once, then forks one child per exercise job read from stdin."""
    global _PROTOCOL_OUT
    _preimport(BASE_IMPORTS)
    _PROTOCOL_OUT = protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    print(_PROTOCOL + json.dumps({"ready": True}), file=protocol)
    while line := sys.stdin.readline():
        job = json.loads(line)
        _preimport([*job.get("preimport", ()), *(r.partition(":")[0] for r in job.get("references", ()))])
        print(_PROTOCOL + json.dumps(_fork_and_run(job)), file=protocol)
    return 0


def _fork_and_run(job: dict) -> dict:
    fd, result_path = tempfile.mkstemp(prefix="sdlearn-grade-", suffix=".json")
    os.close(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: one exercise, then exit without running any of the parent's clean-up
        try:
            os.setpgid(0, 0)  # its own process group, so that whatever it starts is killed with it
            if _PROTOCOL_OUT is not None:
                os.close(_PROTOCOL_OUT.fileno())
            _quiet()
            _write_result(result_path, job)
        finally:
            os._exit(0)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    timed_out, status = False, 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - started > job["timeout"]:
            timed_out = True
            break
        time.sleep(0.005)
    _kill_group(pid)
    if timed_out:
        os.waitpid(pid, 0)
    seconds = time.monotonic() - started
    result = _read_result(result_path)
    if timed_out:
        return {"status": "timeout", "seconds": seconds}
    if result is None:
        return {"status": "crashed", "seconds": seconds, "detail": _describe_exit(status)}
    return {**result, "status": "done", "seconds": seconds}


def _write_result(result_path: str, job: dict) -> None:
    """Run the job here and write its result; a failure of the grader itself is written too."""
    try:
        result = run_job(job)
    except BaseException as e:  # noqa: BLE001 - a bug of the grader, not the student's: say where
        result = {"internal_error": f"{type(e).__name__}: {e}",
                  "traceback": "".join(traceback.format_exception(e))[-2000:]}
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _read_result(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
    finally:
        try:
            os.remove(path)
        except OSError:
            pass


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig}" + (" (out of memory?)" if sig == signal.SIGKILL else "")
    return f"exit status {os.WEXITSTATUS(status)} (does the code call os._exit()?)"


def _run_one(result_path: str) -> int:
    """A fresh grading process for one job read from stdin (where fork is not available)."""
    job = json.loads(sys.stdin.readline())
    _preimport([*BASE_IMPORTS, *job.get("preimport", ())])
    print(_PROTOCOL + "ready", flush=True)  # the time limit starts now
    _quiet()
    _write_result(result_path, job)
    return 0


# =============================================================================================
# The grading side: processes, jobs, results
# =============================================================================================
def _grading_env() -> dict[str, str]:
    """The grading processes' environment: CPU only, FAST, one thread, no display, this sdlearn importable."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.update(SDLEARN_FAST="1", SDLEARN_DEVICE="cpu", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    return env


def _fork_available() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class _ForkServer:
    """A warm grading process that forks a child per exercise (Linux): no torch import per exercise."""

    def __init__(self):
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "sdlearn.grader", "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=_grading_env(), text=True,
                                     encoding="utf-8", bufsize=1)
        self.answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._answer(STARTUP_TIMEOUT, "start")

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(_PROTOCOL):
                self.answers.put(json.loads(line[len(_PROTOCOL):]))
        self.answers.put(None)  # the process ended

    def _answer(self, timeout: float, what: str) -> dict:
        try:
            answer = self.answers.get(timeout=timeout)
        except queue.Empty:
            answer = None
        if answer is None:
            self.close()
            self._stderr.seek(0)
            log = self._stderr.read().decode("utf-8", "replace").strip().splitlines()[-15:]
            raise GraderError(f"the grading process failed to {what}" + (":\n" + "\n".join(log) if log else "."))
        return answer

    def run(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._answer(job["timeout"] + 60, "grade an exercise")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class _SpawnRunner:
    """A fresh interpreter per exercise (Windows, macOS): slower to start; the time limit starts when it is ready."""

    def run(self, job: dict) -> dict:
        fd, result_path = tempfile.mkstemp(prefix="sdlearn-grade-", suffix=".json")
        os.close(fd)
        extra = {"start_new_session": True} if os.name == "posix" else {}
        proc = subprocess.Popen([sys.executable, "-m", "sdlearn.grader", "--run-job", result_path],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=_grading_env(), text=True, encoding="utf-8", **extra)
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.close()
        ready: queue.Queue = queue.Queue()

        def read():
            for line in proc.stdout:
                if line.startswith(_PROTOCOL):
                    ready.put(True)
            ready.put(False)

        threading.Thread(target=read, daemon=True).start()
        try:
            if not ready.get(timeout=STARTUP_TIMEOUT):
                proc.wait()
                raise GraderError("a grading process failed to start (run "
                                  "`python -c \"import torch, sdlearn.grading\"` to see why).")
        except queue.Empty:
            proc.kill()
            raise GraderError(f"a grading process did not start within {STARTUP_TIMEOUT:.0f} s.") from None
        started = time.monotonic()
        try:
            proc.wait(timeout=job["timeout"])
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            if os.name == "posix":
                _kill_group(proc.pid)
            proc.kill()
            proc.wait()
        seconds = time.monotonic() - started
        result = _read_result(result_path)
        if timed_out:
            return {"status": "timeout", "seconds": seconds}
        if result is None:
            return {"status": "crashed", "seconds": seconds, "detail": f"exit status {proc.returncode}"}
        return {**result, "status": "done", "seconds": seconds}

    def close(self) -> None:
        pass


class Grader:
    """Grades notebooks; holds the warm grading processes between calls (use it as a context manager).

    timeout: seconds each exercise may take (set-up cells, exercise cell and check together).
    jobs: exercises graded at the same time (each in its own process).
    mode: "fork" (Linux default: a warm process forks a child per exercise) or "spawn" (a fresh
        interpreter per exercise; the default elsewhere).
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, jobs: int = 1, mode: str | None = None):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}.")
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}.")
        self.timeout, self.jobs = float(timeout), jobs
        self.mode = mode or ("fork" if _fork_available() else "spawn")
        if self.mode not in ("fork", "spawn") or (self.mode == "fork" and not _fork_available()):
            raise ValueError(f"mode must be 'spawn' or, on Linux, 'fork'; got {mode!r}.")
        self._idle: queue.Queue = queue.Queue()
        self._runners: list = []
        self._lock = threading.Lock()

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for runner in self._runners:
            runner.close()
        self._runners.clear()
        self._idle = queue.Queue()

    # ---------------------------------------------------------------------- running jobs
    def _take_runner(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            runner = _ForkServer() if self.mode == "fork" else _SpawnRunner()
            with self._lock:
                self._runners.append(runner)
            return runner

    def _run(self, job: dict) -> dict:
        runner = self._take_runner()
        try:
            answer = runner.run(job)
        except GraderError:
            with self._lock:
                if runner in self._runners:
                    self._runners.remove(runner)
            raise
        self._idle.put(runner)
        return answer

    # ---------------------------------------------------------------------- notebooks
    def _plan(self, path: Path, timeout: float, only=None):
        """(read error, [(spec, job or None)]) for one notebook; nothing runs yet."""
        try:
            nb = read_notebook(path)
        except NotebookReadError as e:
            return str(e), [(spec, None) for spec in _expected_from_name(path.name)]
        specs = find_exercises(nb, path.name)
        if only is not None:
            specs = [s for s in specs if s.exercise_id in only]
        code = {i: c for i, c in enumerate(nb.cells) if c.cell_type == "code"}
        exclude = {s.cell for s in specs if s.cell is not None}  # exercise cells, check cells, solution cells
        exclude |= {i for i, c in code.items() if _check_calls(c.source) or _nbgrader(c).get("solution")}
        setup = [(i, nb.cells[i].source) for i in setup_cells(nb, exclude)]
        preimport = _imported_modules([s for _, s in setup])
        plan = []
        for spec in specs:
            job = None
            if spec.cell is not None:
                job = {"exercise_id": spec.exercise_id, "function": spec.function, "setup": setup,
                       "cell": (spec.cell, nb.cells[spec.cell].source), "timeout": timeout,
                       "cwd": str(path.resolve().parent), "preimport": preimport,
                       "references": REFERENCES.get(spec.exercise_id, ())}
            plan.append((spec, job))
        return None, plan

    def _result(self, spec: ExerciseSpec, job: dict | None, timeout: float, read_error: str | None) -> ExerciseResult:
        def result(status, feedback, score=0, seconds=0.0):
            feedback = "\n  ".join(p for p in (feedback, spec.note) if p)
            return ExerciseResult(spec.exercise_id, spec.grade_id, score, spec.points, status, feedback, seconds)

        if read_error is not None:
            return result("missing", f"✗ {spec.exercise_id}: not graded: {read_error}")
        if job is None:
            return result("missing", f"✗ {spec.exercise_id}: the notebook has no cell that defines "
                                     f"`{spec.function}` and no check cell for this exercise. Were its cells deleted? "
                                     "Work in the notebook that was handed out, and keep the exercise and check cells.")
        answer = self._run(job)
        seconds = answer.get("seconds", 0.0)
        if answer["status"] == "timeout":
            return result("timeout", f"✗ {spec.exercise_id}: stopped after {timeout:g} s, the time limit of one "
                                     "exercise (the checks take well under a second). Look for a loop that never ends, "
                                     "or work that grows far beyond what the exercise asks. The other exercises were "
                                     "graded as usual.", seconds=seconds)
        if answer["status"] == "crashed":
            return result("crashed", f"✗ {spec.exercise_id}: the process grading this exercise ended without a "
                                     f"result ({answer.get('detail', 'unknown')}); does your code exit, or "
                                     "allocate far too much memory?", seconds=seconds)
        if "internal_error" in answer:
            raise GraderError(f"grading {spec.exercise_id} failed inside the grader (a bug in sdlearn, not the "
                              f"student's): {answer['internal_error']}\n{answer.get('traceback', '')}")
        passed = bool(answer.get("passed"))
        return result("passed" if passed else "failed", answer.get("feedback", ""),
                      spec.points if passed else 0, seconds)

    def grade(self, paths, timeout: float | None = None, progress=None) -> list[NotebookResult]:
        """Grade notebooks (paths, in order). ``progress(done, total, result)`` is called after each one."""
        timeout = float(timeout or self.timeout)
        paths = [Path(p) for p in paths]
        plans = [self._plan(p, timeout) for p in paths]
        tasks = [(n, k) for n, (_, plan) in enumerate(plans) for k in range(len(plan))]
        outcomes: dict[tuple[int, int], ExerciseResult] = {}
        remaining = [len(plan) for _, plan in plans]
        results: list[NotebookResult | None] = [None] * len(paths)
        started = [time.monotonic()] * len(paths)
        done = [0]
        lock = threading.Lock()

        def finish(n: int) -> None:
            read_error, plan = plans[n]
            results[n] = NotebookResult(str(paths[n]), [outcomes[(n, k)] for k in range(len(plan))], read_error,
                                        time.monotonic() - started[n])
            done[0] += 1
            if progress is not None:
                progress(done[0], len(paths), results[n])

        def work(task) -> None:
            n, k = task
            read_error, plan = plans[n]
            spec, job = plan[k]
            outcome = self._result(spec, job, timeout, read_error)
            with lock:
                outcomes[task] = outcome
                remaining[n] -= 1
                if remaining[n] == 0:
                    finish(n)

        for n, (_, plan) in enumerate(plans):
            if not plan:
                finish(n)
        if self.jobs == 1:
            for task in tasks:
                work(task)
        else:
            with ThreadPoolExecutor(self.jobs) as pool:
                list(pool.map(work, tasks))
        return results

    def grade_notebook(self, path, timeout: float | None = None, only=None) -> NotebookResult:
        """Grade one notebook; ``only``: a set of exercise ids to grade (the others are left out)."""
        timeout = float(timeout or self.timeout)
        started = time.monotonic()
        read_error, plan = self._plan(Path(path), timeout, only)
        exercises = [self._result(spec, job, timeout, read_error) for spec, job in plan]
        return NotebookResult(str(path), exercises, read_error, time.monotonic() - started)


def _expected_from_name(name: str) -> list[ExerciseSpec]:
    """For an unreadable notebook: the exercises of the chapter its file name starts with ("02_..."), at 0 points."""
    from .grading import EXERCISES

    m = re.match(r"(\d+)[_\-. ]", name)
    chapter = int(m[1]) if m else None
    return [ExerciseSpec(e, ex.signature.split("(")[0].strip(), ex.points, None)
            for e, ex in EXERCISES.items() if ex.chapter == chapter]


def grade_notebooks(paths, timeout: float = DEFAULT_TIMEOUT, jobs: int = 1) -> list[NotebookResult]:
    """Grade notebooks with a fresh :class:`Grader` (see the module docstring)."""
    with Grader(timeout=timeout, jobs=jobs) as grader:
        return grader.grade(paths)


def exercises_of(path: str | os.PathLike) -> list[ExerciseSpec]:
    """The exercises of one notebook, without running anything (NotebookReadError for an unreadable file)."""
    return find_exercises(read_notebook(path), Path(path).name)


def collect_notebooks(paths) -> list[Path]:
    """Notebook files from files and folders (folders: every ``*.ipynb`` below, checkpoints skipped)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"No notebook or folder at {p}; give the completed notebooks (.ipynb) or the "
                                    "folders that hold them.")
    return list(dict.fromkeys(found))


# =============================================================================================
# Reports
# =============================================================================================
def _points(x: float) -> str:
    return f"{x:g}"


def _wrap(text: str, indent: int, width: int = 120) -> list[str]:
    """Feedback lines indented under their row; long lines wrapped (short ones, like a caret under code, kept)."""
    out = []
    for line in text.splitlines():
        lead = len(line) - len(line.lstrip())
        if indent + len(line) <= width:
            out.append(" " * indent + line)
            continue
        pieces = textwrap.wrap(line.strip(), width=max(40, width - indent - lead), subsequent_indent="  ",
                               break_long_words=False, break_on_hyphens=False)
        out += [" " * (indent + lead) + piece for piece in pieces]
    return out


def format_table(results: list[NotebookResult], feedback: bool = True) -> str:
    """A readable report: per notebook, per exercise the points, the result and (for failures) the feedback."""
    words = {"passed": "passed", "failed": "FAILED", "timeout": "TIMEOUT", "crashed": "CRASHED", "missing": "MISSING"}
    lines = []
    for r in results:
        lines.append(f"{r.notebook}: {_points(r.score)}/{_points(r.max_score)} points")
        if r.error:
            lines.append(f"  cannot be graded: {r.error}")
        if not r.exercises and not r.error:
            lines.append("  (no exercises found: no check(...) cells and no chapter number in the file name)")
        for e in r.exercises:
            points = f"{_points(e.score)}/{_points(e.max_score)}"
            lines.append(f"  {points:>7}  {words.get(e.status, e.status):8} {e.exercise_id}")
            if feedback and not e.passed and not r.error:
                lines += _wrap(e.feedback, indent=13)
        lines.append("")
    if len(results) > 1:
        lines.append(f"summary: {len(results)} notebooks")
        width = max(len(r.notebook) for r in results)
        for r in results:
            lines.append(f"  {r.notebook:{width}}  {_points(r.score):>5}/{_points(r.max_score)}"
                         + ("  (unreadable)" if r.error else ""))
    return "\n".join(lines).rstrip() + "\n"


def results_json(results: list[NotebookResult], timeout: float) -> dict:
    """The gradebook as JSON: per notebook, per exercise ``score`` and ``max_score``, with totals."""
    from . import __version__

    return {"grader": f"sdlearn {__version__}",
            "graded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "timeout_seconds": timeout, "score": sum(r.score for r in results),
            "max_score": sum(r.max_score for r in results), "notebooks": [r.to_json() for r in results]}


def write_csv(results: list[NotebookResult], path: str | os.PathLike) -> Path:
    """One row per notebook: notebook, score, max_score, then one column per exercise (its score)."""
    exercise_ids = list(dict.fromkeys(e.exercise_id for r in results for e in r.exercises))
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["notebook", "score", "max_score", *exercise_ids, "error"])
        for r in results:
            scores = {e.exercise_id: _points(e.score) for e in r.exercises}
            writer.writerow([r.notebook, _points(r.score), _points(r.max_score),
                             *(scores.get(e, "") for e in exercise_ids), r.error or ""])
    return path


def run_grade_command(paths, json_path=None, csv_path=None, timeout: float = DEFAULT_TIMEOUT, jobs: int = 1) -> int:
    """``sdlearn grade``: 0 when grading ran (whatever the scores), 2 for a usage error, 1 if the grader broke."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")  # ✓ and ✗ on a terminal that cannot show them
    try:
        notebooks = collect_notebooks(paths)
        if not notebooks:
            raise FileNotFoundError(f"No notebooks (.ipynb) in {', '.join(map(str, paths))}.")
        grader = Grader(timeout=timeout, jobs=jobs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"grading {len(notebooks)} notebook(s): each exercise in its own process, at most {timeout:g} s each; "
          "sdlearn's own implementations of the exercises are unavailable to the answers.", file=sys.stderr)

    def progress(done, total, result):
        if total > 1:
            print(f"[{done}/{total}] {result.notebook}: {_points(result.score)}/{_points(result.max_score)}",
                  file=sys.stderr, flush=True)

    try:
        with grader:
            results = grader.grade(notebooks, progress=progress)
    except GraderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(results), end="")
    if json_path:
        Path(json_path).write_text(json.dumps(results_json(results, timeout), indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
        print(f"grades written to {json_path}", file=sys.stderr)
    if csv_path:
        write_csv(results, csv_path)
        print(f"grades written to {csv_path}", file=sys.stderr)
    return 0


def _entry(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        return _serve()
    if argv[:1] == ["--run-job"] and len(argv) == 2:
        return _run_one(argv[1])
    print("sdlearn.grader is run by `python -m sdlearn grade NOTEBOOK...`.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    from sdlearn.grader import _entry as entry  # the importable module, not a second copy named __main__

    sys.exit(entry(sys.argv[1:]))
