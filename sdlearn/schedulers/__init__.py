"""Schedulers: the reverse-process step x_t -> x_{t-1}, one class per sampler, one interface for all."""

from .base import SchedulerConfig, SchedulerOutput
from .ddpm import DDPMScheduler

__all__ = ["DDPMScheduler", "SchedulerConfig", "SchedulerOutput"]
