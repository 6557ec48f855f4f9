"""Reading a notebook: which exercises it has, which cells are set-up cells (no code runs here)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
import re
from pathlib import Path

from .references import BLOCKED_PACKAGES

class NotebookReadError(ValueError):
    """A handed-in file that is not a readable notebook; the message is meant for the student."""


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
    from ..checks import EXERCISES

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


def _expected_from_name(name: str) -> list[ExerciseSpec]:
    """For an unreadable notebook: the exercises of the chapter its file name starts with ("02_..."), at 0 points."""
    from ..checks import EXERCISES

    m = re.match(r"(\d+)[_\-. ]", name)
    chapter = int(m[1]) if m else None
    return [ExerciseSpec(e, ex.signature.split("(")[0].strip(), ex.points, None)
            for e, ex in EXERCISES.items() if ex.chapter == chapter]


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
