"""Grading results and their forms: a table for the terminal, JSON, and CSV for a gradebook."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import os
import textwrap
from pathlib import Path

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
    from ... import __version__

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
