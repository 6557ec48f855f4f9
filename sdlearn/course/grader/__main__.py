"""``python -m sdlearn.course.grader --serve | --run-job FILE``: the grading processes the grader starts itself."""

import sys

from sdlearn.course.grader.runner import _entry  # the importable module, so its globals are not a second copy

sys.exit(_entry(sys.argv[1:]))
