"""Measure the shipped mnist-ddpm against its quality bar. Same as ``python -m sdlearn evaluate mnist-ddpm``."""
import sys

from sdlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
