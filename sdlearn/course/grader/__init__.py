"""Grade completed student notebooks: every exercise in its own process, with a time limit.

``sdlearn grade NOTEBOOK...`` (or :func:`grade_notebooks`) does, for each notebook:

1. **Find the exercises** (nbgrader's markup: ``### BEGIN SOLUTION`` regions in cells whose metadata
   says ``nbgrader.solution``). Each check cell calls
   ``check("ch02.ddpm_step", ddpm_step)``: that names the exercise and the function. The exercise
   cell is the cell that defines the function (preferably one marked nbgrader ``solution``), so
   extra cells, moved cells and lost metadata do not matter. Points come from
   :data:`sdlearn.course.checks.EXERCISES` (what the check cell shows; a student cannot raise them), and
   every registered exercise of the notebook's chapter is listed, so a deleted exercise scores 0
   instead of vanishing from the gradebook.
2. **Run each exercise on its own**, in a fresh process (forked from a warm grading process on
   Linux; a new interpreter elsewhere), killed when it exceeds its time limit. That process runs
   only the notebook's set-up cells, then the exercise cell, then
   ``sdlearn.course.checks.run_check(exercise_id, fn)``: the same checks the learner's check cell runs.
   Nothing else of the notebook runs, so an answer cannot use a value computed elsewhere in it.
3. **Take sdlearn's own answers away.** Before any notebook code runs, the functions of sdlearn
   that compute the exercise's equation (:data:`REFERENCES`), the checks' private helpers, and
   ``import diffusers`` raise :class:`ReferenceUnavailable` when they are called from the
   notebook's code (directly or through another sdlearn function); sdlearn's own code and the
   checks still use them. An answer that only calls sdlearn's implementation therefore fails,
   and the feedback says why. Other libraries' one-call answers to an exercise
   (:data:`BLOCKED_CALLABLES`: torch's ``scaled_dot_product_attention`` for cross-attention,
   transformers' CLIP loss) are taken away for that exercise the same way.

**Set-up cells** (what runs before each exercise), in order of precedence:

- the code cells tagged ``setup``, if any cell is;
- otherwise every code cell above the cell tagged ``parameters``, and that cell itself: the
  chapter's imports and parameters (every chapter opens with them);
- otherwise the code cells above the first exercise that hold only imports.

Exercise and check cells are never set-up cells. An error in a set-up cell does not stop the
exercise (it is mentioned in the feedback when the exercise fails). IPython magics and shell
lines (``%matplotlib``, ``!pip``) are skipped; ``%%time`` and ``%%capture`` cells run their body.
Output on stdout or stderr, and warnings, are ignored.

The package, by concern: ``notebook`` finds the exercises and set-up cells; ``references`` lists what is
taken away; ``sandbox`` runs one exercise inside a grading process; ``runner`` manages the processes and
time limits; ``report`` holds the results and writes them.

Results: :class:`NotebookResult` per notebook, :class:`ExerciseResult` per exercise (``score``,
``max_score``, ``passed``, ``status``, ``feedback``), as a table (:func:`format_table`), JSON
(:func:`results_json`) or CSV (:func:`write_csv`).

The grader runs students' code: on a shared machine, grade inside a container or a throwaway
account (GitHub Classroom's runners are throwaway virtual machines).
"""

from ..checks.guard import ReferenceUnavailable  # the class the check cell raises too
from .notebook import ExerciseSpec, NotebookReadError, collect_notebooks, exercises_of, find_exercises, read_notebook
from .references import BLOCKED_CALLABLES, BLOCKED_PACKAGES, REFERENCES
from .report import ExerciseResult, NotebookResult, format_table, results_json, write_csv
from .runner import DEFAULT_TIMEOUT, Grader, GraderError, grade_notebooks, run_grade_command

__all__ = [
    "BLOCKED_CALLABLES", "BLOCKED_PACKAGES", "DEFAULT_TIMEOUT", "ExerciseResult", "ExerciseSpec", "Grader", "GraderError", "NotebookReadError",
    "NotebookResult", "REFERENCES", "ReferenceUnavailable", "collect_notebooks", "exercises_of", "find_exercises",
    "format_table", "grade_notebooks", "read_notebook", "results_json", "run_grade_command", "write_csv",
]
