"""The correct-answer / planted-mistake harness every chapter's check tests share.

``harness_tests(CORRECT, MISTAKES)`` returns the two parametrized tests a chapter's test file binds at module level:
each correct implementation passes with the grader's exact message, and each planted mistake fails with a message
that names the exercise's equation and the likely mistake (``LABELS``) or the given plain text.
"""

from __future__ import annotations

import pytest

from sdlearn.course.checks import EXERCISES, LABELS, CheckFailed, check, run_check


def expected_text(key: str) -> str:
    """A mistake key of grading.LABELS becomes the exact 'likely mistake (...)' phrase; other keys are plain text."""
    return f"likely mistake ({LABELS[key]})" if key in LABELS else key


def harness_tests(correct: dict, mistakes: list, filterwarnings: tuple[str, ...] = ()):
    """(test_correct_implementation_passes, test_planted_mistake_is_caught_and_named) over these cases."""

    @pytest.mark.parametrize("exercise_id", sorted(correct))
    def test_correct_implementation_passes(exercise_id, capsys):
        check(exercise_id, correct[exercise_id])
        assert f"✓ {exercise_id}: all checks passed" in capsys.readouterr().out
        assert run_check(exercise_id, correct[exercise_id]) == (True, f"✓ {exercise_id}: all checks passed")

    @pytest.mark.parametrize("exercise_id, fn, expected", mistakes,
                             ids=[f"{e}-{k}-{i}" for i, (e, _, k) in enumerate(mistakes)])
    def test_planted_mistake_is_caught_and_named(exercise_id, fn, expected):
        with pytest.raises(CheckFailed) as info:
            check(exercise_id, fn)
        message = str(info.value)
        assert isinstance(info.value, AssertionError)
        assert EXERCISES[exercise_id].equation in message
        assert expected_text(expected) in message, message
        assert run_check(exercise_id, fn) == (False, message)

    for warning in filterwarnings:
        test_planted_mistake_is_caught_and_named = pytest.mark.filterwarnings(warning)(
            test_planted_mistake_is_caught_and_named)
    return test_correct_implementation_passes, test_planted_mistake_is_caught_and_named
