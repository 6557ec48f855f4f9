"""sdlearn: learn how Stable Diffusion works by building it.

The main classes and loaders, importable from here as in diffusers (``from sdlearn import UNet2DModel``).
The package's rooms, from the bottom up (each imports only from rooms below it):

    utils, data, device      model folders on disk; the digits and shapes data sets; the device choice
    models | schedulers      the networks (UNet2DModel, AutoencoderKL) | the samplers and beta schedules
    pipelines                models + a scheduler = the sampling loop
    training                 the training loop, losses, recipes of the shipped models
    evaluation               the classifier, Frechet distance, shapes checker, `evaluate` for every shipped model
    viz                      every tensor as a picture
    course, cli              the chapters, exercise checks and grader; the `sdlearn` command
"""

__version__ = "0.1.0"

from .data import load_digits, load_shapes  # noqa: E402
from .models import AutoencoderKL, UNet2DConditionModel, UNet2DModel  # noqa: E402
from .pipelines import DDPMPipeline, DiffusionPipeline, LatentDiffusionPipeline  # noqa: E402
from .schedulers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)

__all__ = [
    "AutoencoderKL",
    "DDIMScheduler",
    "DDPMPipeline",
    "DDPMScheduler",
    "DiffusionPipeline",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "LatentDiffusionPipeline",
    "UNet2DConditionModel",
    "UNet2DModel",
    "load_digits",
    "load_shapes",
]
