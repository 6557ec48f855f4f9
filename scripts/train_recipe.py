"""Train a named recipe (resumable). Same as ``python -m sdlearn train NAME``."""
import sys

from sdlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
