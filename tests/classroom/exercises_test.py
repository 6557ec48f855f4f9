"""GitHub Classroom's entry point: one test per exercise of the notebooks handed in.

GitHub Classroom's Python grader runs every file named ``*_test.py``; this one grades the student's
notebooks with ``sdlearn grade`` (each exercise in its own process, with a time limit; sdlearn's own
implementations of the exercises unavailable), one test per exercise, and the assertion message is
the exercise's feedback. Which notebooks:

- ``SDLEARN_NOTEBOOKS``: a notebook or a folder of notebooks (several: separated by ``os.pathsep``);
- otherwise the chapter notebooks (``01_forward_diffusion.ipynb``, ...) in the repository root;
- otherwise ``chapters/``: in the sdlearn repository those are the solutions, which pass.

``SDLEARN_GRADE_TIMEOUT`` sets the seconds one exercise may take (default 60). Select one exercise
with ``pytest tests/classroom/exercises_test.py -k ch02.ddpm_step`` (what ``make_workflow.py``
writes, one workflow step per exercise, to give each exercise its own points).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from sdlearn.course import grader

ROOT = Path(__file__).resolve().parents[2]  # this file lives in tests/classroom/ of the repository


def notebooks() -> list[Path]:
    chosen = os.environ.get("SDLEARN_NOTEBOOKS", "")
    if chosen.strip():
        return grader.collect_notebooks(p for p in chosen.split(os.pathsep) if p.strip())
    return sorted(ROOT.glob("[0-9][0-9]_*.ipynb")) or sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def cases() -> list:
    """(notebook, exercise id) per exercise; an unreadable notebook is one case (it fails with the reason)."""
    found = []
    for path in notebooks():
        try:
            found += [(path, spec.exercise_id) for spec in grader.exercises_of(path)]
        except grader.NotebookReadError:
            found.append((path, None))
    if not found:
        return [pytest.param(None, None, id="no-notebooks")]
    repeated = Counter(exercise_id for _, exercise_id in found)
    return [pytest.param(path, exercise_id, id=exercise_id if exercise_id and repeated[exercise_id] == 1
                         else f"{path.stem}:{exercise_id or 'unreadable'}") for path, exercise_id in found]


@pytest.fixture(scope="module")
def grading():
    with grader.Grader(timeout=float(os.environ.get("SDLEARN_GRADE_TIMEOUT", "60"))) as g:
        yield g


@pytest.mark.parametrize("notebook, exercise_id", cases())
def test_exercise(grading, notebook, exercise_id):
    if notebook is None:
        pytest.fail(f"No notebooks to grade: put them in the repository root, in {ROOT / 'chapters'}, or name them "
                    "in SDLEARN_NOTEBOOKS.")
    if exercise_id is None:
        grader.read_notebook(notebook)  # raises NotebookReadError, which says what is wrong with the file
    result = grading.grade_notebook(notebook, only={exercise_id}).exercises[0]
    summary = f"{notebook.name}, {exercise_id}: {result.score:g}/{result.max_score:g} points"
    print(summary + ("" if result.passed else "\n" + result.feedback))
    assert result.passed, f"{summary}\n{result.feedback}"
