"""Evaluation: the measurements behind every quality bar of the course.

- ``classifier``: the digit classifier that judges generated digits (confident share, per-class shares).
- ``frechet``: the Frechet distance between feature sets (the distance behind FID).
- ``shapes_checker``: reads shapes images back (colour, shape, size, position) to check what a caption asked for.
- ``edits``: img2img colour edits and blended inpainting with a text-to-image shapes model, read back (chapter 7).
- ``evaluate``: one entry point, ``evaluate(name)``, for every shipped model; ``model_cards``: their README.md.
"""

from .classifier import DigitClassifier, classify, confident_share
from .evaluate import evaluate
from .frechet import frechet_distance

__all__ = ["DigitClassifier", "classify", "confident_share", "evaluate", "frechet_distance"]
