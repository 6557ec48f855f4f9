"""Inside a grading process: guards on sdlearn's references, running the cells, the check."""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import inspect
import linecache
import os
import re
import sys
import traceback

from ..checks.core import NOT_WRITTEN
from ..checks.guard import guard  # one wrapper (and one ReferenceUnavailable) for the check cell and the grader
from .notebook import _defined_names, _to_python
from .references import BLOCKED_PACKAGES

_STUDENT = "<sdlearn-grade "  # file names given to the notebook's code, so a guard can tell it from sdlearn's


_BLOCKED_CALLS: list[str] = []  # references the student's code tried to call (this process only)


def _called_from_student_code() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(_STUDENT):
            return True
        frame = frame.f_back
    return False


def _reference_message(name: str) -> str:
    return (f"{name} is sdlearn's own implementation of this exercise's equation; it is unavailable during "
            "grading: an answer that only calls sdlearn's reference earns no points. Write the equation yourself "
            "with torch operations.")


def _library_message(name: str) -> str:
    return (f"{name} is a library function that computes this exercise's whole equation in one call; it is "
            "unavailable during grading: an answer that only calls an existing implementation earns no points. "
            "Compute the equation by hand, step by step, with basic torch operations (matmul, softmax, exp, ...).")


def _guard(original, name: str, message=_reference_message):
    return guard(original, name, message, active=_called_from_student_code, marker="__sdlearn_guarded__",
                 on_block=_BLOCKED_CALLS.append)


class _BlockPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED_PACKAGES:
            _BLOCKED_CALLS.append(f"import {fullname}")
            raise ImportError(f"{fullname.split('.')[0]} is unavailable during grading: it implements the exercises' "
                              "equations, and an answer that only calls an existing implementation earns no points. "
                              "Write the equation yourself with torch operations.")
        return None


def _grading_modules() -> list:
    """sdlearn.course.checks and its modules (core, and the checks of each part of the course), by identity."""
    import pkgutil

    from .. import checks as grading

    return [grading] + [importlib.import_module(f"{grading.__name__}.{m.name}")
                        for m in pkgutil.iter_modules(grading.__path__)]


def _install_guards(references, blocked=()) -> None:
    """Replace the references (and the checks' private helpers) by guards, everywhere sdlearn holds them; and the
    other libraries' functions of ``blocked`` (BLOCKED_CALLABLES) in their own module too."""
    targets = [(module, n, f, _reference_message) for module in _grading_modules() for n, f in vars(module).items()
               if n.startswith("_") and not n.startswith("__") and inspect.isfunction(f) and f.__module__ == module.__name__]
    for paths, message in ((references, _reference_message), (blocked, _library_message)):
        for path in paths:
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
                targets.append((owner, attr, original, message))
    for owner, attr, original, message in targets:
        if getattr(original, "__sdlearn_guarded__", False):
            continue
        where = f"{owner.__module__}.{owner.__qualname__}" if inspect.isclass(owner) else owner.__name__
        guarded = _guard(original, f"{where}.{attr}", message)
        if inspect.isclass(owner):
            setattr(owner, attr, guarded)
            continue
        holders = [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "sdlearn" and m is not None]
        for module in holders + ([] if owner in holders else [owner]):
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
    """What the checks rely on, by identity: the functions of torch, math, built-ins and sdlearn.course.checks's modules."""
    import builtins
    import math

    import torch
    import torch.nn.functional

    from .. import checks as grading

    spaces = {"builtins": builtins, "math": math, "torch": torch, "torch.Tensor": torch.Tensor,
              "torch.nn.functional": torch.nn.functional, "torch.testing": torch.testing,
              "torch.nn.Module": torch.nn.Module}
    spaces |= {module.__name__: module for module in _grading_modules()}  # sdlearn.course.checks, sdlearn.course.checks.core, ...
    watched = {f"{prefix}.{name}": value for prefix, space in spaces.items() for name, value in vars(space).items()
               if name != "_" and not inspect.ismodule(value)}
    watched |= {f"sdlearn.course.checks.CHECKS[{k!r}]": v for k, v in grading.CHECKS.items()}
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

    from ..checks import run_check

    exercise_id, fn_source = job["exercise_id"], job["function"]
    _install_guards(job.get("references", ()), job.get("blocked", ()))
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
            feedback = NOT_WRITTEN.format(exercise_id=exercise_id)
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


BASE_IMPORTS = ("torch", "numpy", "sdlearn.course.checks", "sdlearn.schedulers.schedules", "sdlearn.schedulers", "sdlearn.training.loop",
                "IPython.core.inputtransformer2")


def _quiet() -> None:
    """Send this process's stdin/stdout/stderr to the null device: what students print is not graded."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
