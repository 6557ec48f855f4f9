"""What every sdlearn scheduler shares: its config, its output type and the beta-schedule tables.

A scheduler turns the model's output at timestep t into the sample at the previous timestep
(x_t -> x_{t-1}). The interface follows Hugging Face diffusers, so learners can move there
without relearning names: ``set_timesteps``, ``timesteps``, ``init_noise_sigma``,
``scale_model_input``, ``step`` (returning ``prev_sample`` and ``pred_original_sample``),
``add_noise`` and ``from_config``.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass

import torch

from .schedules import alphas_cumprod, make_betas, rescale_zero_terminal_snr

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


class SchedulerConfig(dict):
    """A read-only dict whose keys are also attributes: ``scheduler.config.num_train_timesteps``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no field {name!r}; it has {sorted(self)}") from None

    def __setitem__(self, key, value):
        raise TypeError("a scheduler config is read-only; build a new scheduler with from_config(config, **changes)")


@dataclass
class SchedulerOutput:
    """What ``step`` returns: the sample one step less noisy, and the model's estimate of x_0."""

    prev_sample: torch.Tensor  # x_{t-1}
    pred_original_sample: torch.Tensor | None = None  # x-hat_0


class SchedulerMixinLite:
    """Config handling shared by the schedulers (a plain base class, not a diffusers-style mixin zoo)."""

    config_name = "scheduler_config.json"
    order = 1  # step() calls per entry of the grid, diffusers' attribute (2 for its Heun); img2img starts at t_start * order
    # diffusers options this class does not implement, with the values that mean "off"; from_config refuses a
    # config that turns one on instead of silently sampling differently (e.g. {"use_karras_sigmas": (False, None)}).
    unsupported_options: dict[str, tuple] = {}

    def _register_config(self, local_vars: dict) -> None:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        self.config = SchedulerConfig({n: local_vars[n] for n in names})
        self.config = SchedulerConfig(dict(self.config, _class_name=type(self).__name__))

    @classmethod
    def from_config(cls, config: dict, **changes):
        """Build this scheduler from another scheduler's config (unknown keys are ignored), as diffusers does."""
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        for name, off_values in cls.unsupported_options.items():
            if name in config and config[name] not in off_values:
                raise NotImplementedError(
                    f"{cls.__name__} in sdlearn does not implement {name}={config[name]!r} (diffusers does); "
                    f"use {name}={off_values[0]!r}, or diffusers' {cls.__name__} for that option."
                )
        kwargs = {k: v for k, v in dict(config).items() if k in accepted}
        unknown = set(changes) - accepted
        if unknown:
            raise TypeError(f"{cls.__name__} has no config fields {sorted(unknown)}; it accepts {sorted(accepted)}")
        kwargs.update(changes)
        return cls(**kwargs)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``scheduler_config.json`` into ``folder`` (diffusers' layout)."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, self.config_name), "w") as f:
            json.dump(dict(self.config), f, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike):
        path = os.path.join(folder, cls.config_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No {cls.config_name} in {folder!r}; save a scheduler there with save_pretrained().")
        with open(path) as f:
            return cls.from_config(json.load(f))

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def build_noise_tables(
    num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str, rescale_betas_zero_snr: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """betas, alphas = 1 - betas, and alphas_cumprod (alpha_bar), all float32 as diffusers builds them."""
    betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas = 1.0 - betas
    return betas, alphas, alphas_cumprod(betas)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {choices}.")


def randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """Standard normal noise, drawn on the generator's device and then moved to ``device``.

    So a CPU generator works for a model on a GPU and gives the same numbers there (diffusers' randn_tensor does
    the same); ``torch.randn(..., generator=cpu_generator, device="cuda")`` would raise instead.
    """
    device = torch.device(device)
    draw_on = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device)


def check_num_inference_steps(num_inference_steps, num_train_timesteps: int) -> None:
    """S must be a positive int no larger than T: the model only knows T noise levels."""
    S, T = num_inference_steps, num_train_timesteps
    if isinstance(S, bool) or not isinstance(S, int) or S < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {S!r}.")
    if S > T:
        raise ValueError(
            f"num_inference_steps ({S}) cannot be larger than num_train_timesteps ({T}): "
            f"the model only knows {T} noise levels."
        )


def locate_step(timesteps: torch.Tensor, step_index: int | None, begin_index: int | None, timestep) -> int:
    """Where ``timestep`` sits in the inference grid, for schedulers that keep a step counter (Euler, DPM-Solver).

    On the first call (``step_index is None``) the grid is searched; if ``timestep`` appears twice, the second
    one is taken, as diffusers does (so a loop that starts mid-grid, as image-to-image does, skips no sigma).
    ``begin_index`` (set by ``set_begin_index``) overrides the search. Later calls must follow the grid in order.
    """
    t = float(timestep)
    grid = timesteps.tolist()
    if step_index is None:
        if begin_index is not None:
            return begin_index
        hits = [i for i, g in enumerate(grid) if float(g) == t]
        if not hits:
            raise ValueError(
                f"timestep {timestep!r} is not in this scheduler's grid {_short(grid)}; "
                "loop over scheduler.timesteps after set_timesteps()."
            )
        return hits[1] if len(hits) > 1 else hits[0]
    if step_index >= len(grid):
        raise ValueError(
            f"all {len(grid)} steps of the grid are done; call set_timesteps() again before sampling again."
        )
    if float(grid[step_index]) != t:
        raise ValueError(
            f"step {step_index} of the grid is t={grid[step_index]}, but got t={t}: loop over scheduler.timesteps "
            "in order, one step() per timestep (call set_timesteps() again to restart)."
        )
    return step_index


def _short(grid: list) -> str:
    return str(grid) if len(grid) <= 8 else f"[{grid[0]}, {grid[1]}, {grid[2]}, ..., {grid[-2]}, {grid[-1]}]"


def spaced_timesteps(
    num_inference_steps: int, num_train_timesteps: int, timestep_spacing: str, steps_offset: int = 0
) -> torch.Tensor:
    """The descending inference grid for a spacing name (Lin et al. 2023, Table 2), as diffusers computes it.

    - "leading":  0, T//S, 2*T//S, ... (+ steps_offset), reversed; never reaches T-1.
    - "trailing": round(T, T - T/S, ..., T/S) - 1; always starts at T-1.
    - "linspace": round(linspace(0, T-1, S)), reversed.
    """
    import numpy as np

    S, T = num_inference_steps, num_train_timesteps
    check_num_inference_steps(S, T)
    check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
    if timestep_spacing == "linspace":
        grid = np.linspace(0, T - 1, S).round()[::-1].copy().astype(np.int64)
    elif timestep_spacing == "leading":
        step_ratio = T // S
        grid = (np.arange(0, S) * step_ratio).round()[::-1].copy().astype(np.int64)
        grid += steps_offset
    else:  # trailing
        step_ratio = T / S
        grid = np.round(np.arange(T, 0, -step_ratio)).astype(np.int64) - 1
    return torch.from_numpy(grid)
