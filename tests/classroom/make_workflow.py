"""Write a GitHub Classroom workflow that gives each exercise its own points.

GitHub Classroom's Python grader splits the assignment's points equally between tests; to weight
each exercise by its points (sdlearn.course.checks.EXERCISES), this writes a workflow with one
command-grader step per exercise (``pytest tests/classroom/exercises_test.py -k EXERCISE``, its
max-score the exercise's points) and the reporter step that sends the total to Classroom:

    python tests/classroom/make_workflow.py 02_ddpm.ipynb > .github/workflows/classroom.yml

Give the notebooks as the students will have them (the released copies); only their exercise
markup is read. ``--install`` is the command that installs sdlearn on the runner.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from sdlearn.course import grader

CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def workflow(notebooks: list[str], install: str, python: str, minutes: int) -> str:
    exercises = list(dict.fromkeys((s.exercise_id, s.points) for nb in notebooks for s in grader.exercises_of(nb)))
    if not exercises:
        raise SystemExit("No exercises (check(...) cells) found in " + ", ".join(notebooks))
    q = json.dumps  # a JSON string is a valid YAML string
    lines = [
        "# Written by tests/classroom/make_workflow.py: one autograding step per exercise, worth its points.",
        "name: Autograding Tests",
        "'on': [push, repository_dispatch]",
        "permissions: {checks: write, actions: read, contents: read}",
        "jobs:",
        "  run-autograding-tests:",
        "    runs-on: ubuntu-latest",
        "    if: github.actor != 'github-classroom[bot]'",
        "    steps:",
        "    - uses: actions/checkout@v4",
        "    - uses: actions/setup-python@v5",
        f"      with: {{python-version: {q(python)}}}",
        "    - name: Install sdlearn",
        f"      run: {q(install)}",
    ]
    ids = []
    for exercise_id, points in exercises:
        step = re.sub(r"\W", "-", exercise_id)  # ch02.ddpm_step -> ch02-ddpm_step
        ids.append(step)
        lines += [
            f"    - name: {q(exercise_id)}",
            f"      id: {step}",
            "      uses: classroom-resources/autograding-command-grader@v1",
            "      with:",
            f"        test-name: {q(exercise_id)}",
            f"        command: {q(f'python -m pytest tests/classroom/exercises_test.py -q -k {exercise_id}')}",
            f"        timeout: {minutes}",
            f"        max-score: {points:g}",
        ]
    lines += ["    - name: Autograding Reporter", "      uses: classroom-resources/autograding-grading-reporter@v1",
              "      env:"]
    lines += [f"        {step.upper()}_RESULTS: \"${{{{steps.{step}.outputs.result}}}}\"" for step in ids]
    lines += ["      with:", f"        runners: {','.join(ids)}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", help="the student notebooks of the assignment")
    parser.add_argument("--install", default=f"{CPU_TORCH} && pip install -e .",
                        help="installs sdlearn on the runner (default: a CPU torch, then this repository)")
    parser.add_argument("--python", default="3.11")
    parser.add_argument("--timeout", type=int, default=10, help="minutes per exercise step")
    args = parser.parse_args(argv)
    sys.stdout.write(workflow(args.notebooks, args.install, args.python, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
