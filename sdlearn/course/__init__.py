"""The course itself: running the chapters, student copies, the exercises' checks and the grader.

- ``notebooks``: run every chapter headlessly (executed notebook + HTML page), release student copies.
- ``checks``: the checks behind every exercise, one module per part of the course (what a check cell calls).
- ``grader``: ``sdlearn grade``, which grades handed-in notebooks with the same checks.
"""
