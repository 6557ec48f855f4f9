"""sdlearn: learn how Stable Diffusion works by building it."""

__version__ = "0.1.0"
