"""Schedulers: the reverse-process step x_t -> x_{t-1}, one class per sampler, one interface for all."""

from .base import SchedulerConfig, SchedulerOutput
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpmsolver import DPMSolverMultistepScheduler
from .euler import EulerDiscreteScheduler
from .pndm import PNDMScheduler

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "PNDMScheduler",
    "SchedulerConfig",
    "SchedulerOutput",
]
