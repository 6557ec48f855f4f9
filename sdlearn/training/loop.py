"""Training a noise-prediction model: one readable loop.

DDPM's Algorithm 1 (Ho et al. 2020): repeat { x_0 ~ data; t ~ Uniform({0..T-1}); eps ~ N(0, I);
take a gradient step on || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2 }.
That squared error is the "simplified" objective L_simple, eq. 14.

Around it, what makes training practical: AdamW with warm-up and cosine decay, gradient clipping,
an exponential moving average (EMA) of the weights (DDPM used decay 0.9999), optional min-SNR-gamma
loss weighting (Hang et al. 2023), bf16 autocast, a progress bar, and atomic checkpoints
from which a killed run resumes exactly as if it had never stopped.

A run can be given a wall-clock budget (``budget_minutes``): it stops when its training time, summed over
resumed runs, reaches the budget, and with ``schedule_clock="time"`` the cosine decay runs over the budget's
elapsed fraction instead of over ``steps`` (a time-budget recipe does not know in advance how many steps it gets).
Under ``accelerate launch`` the same loop trains data-parallel on several processes (sdlearn.training.distributed).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import torch

from .checkpoint import load_training_checkpoint, save_training_checkpoint
from .distributed import Distributed
from .losses import diffusion_loss


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps in total
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # peak learning rate
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    lr_schedule: str = "cosine"  # "cosine" decay to min_lr_ratio * lr after warm-up, or "constant"
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # clip the global gradient norm to this
    ema_decay: float = 0.999  # EMA decay; the effective decay warms up as min(decay, (1+n)/(10+n))
    loss_weighting: str = "none"  # "none" = L_simple (eq. 14), or "min_snr" (Hang et al. 2023)
    min_snr_gamma: float = 5.0
    seed: int = 0  # seeds data order, t and eps draws, and dropout
    checkpoint_every: int = 200  # steps between checkpoints (also written at the end and on Ctrl-C)
    condition_dropout: float = 0.1  # conditional training: share of conditions replaced by the null one (CFG)
    budget_minutes: float | None = None  # stop when training time (summed over resumed runs) reaches this
    schedule_clock: str = "steps"  # cosine over "steps", or over the "time" budget's elapsed fraction
    autocast: str = "auto"  # "auto": bf16 on CUDA only; "bf16": also on a CPU (fast where it has AVX512-BF16); "off"

    def __post_init__(self):
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise ValueError(f"budget_minutes must be a positive number of minutes, got {self.budget_minutes!r}; "
                             "e.g. python -m sdlearn train laptop-digits --max-minutes 20.")
        if self.schedule_clock not in ("steps", "time"):
            raise ValueError(f"schedule_clock must be 'steps' or 'time', got {self.schedule_clock!r}.")
        if self.autocast not in ("auto", "bf16", "off"):
            raise ValueError(f"autocast must be 'auto', 'bf16' or 'off', got {self.autocast!r}.")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}.")
        if self.loss_weighting not in ("none", "min_snr"):
            raise ValueError(f"loss_weighting must be 'none' or 'min_snr', got {self.loss_weighting!r}.")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive.")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    model: torch.nn.Module  # the raw weights after the last step
    ema_model: torch.nn.Module  # the EMA weights: sample with these
    losses: list[float] = field(default_factory=list)  # one per step, from step 0
    step: int = 0
    train_seconds: float = 0.0  # wall-clock training time of the whole run, resumed runs included


def learning_rate(step: int, cfg: TrainConfig, budget_fraction: float = 0.0) -> float:
    """Linear warm-up for ``warmup_steps``, then constant or cosine decay to ``min_lr_ratio * lr``.

    The cosine's progress is (step - warmup) / (steps - warmup), or with ``schedule_clock="time"`` the elapsed
    fraction of the time budget, ``budget_fraction`` = training seconds / (budget_minutes * 60).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.schedule_clock == "time":
        progress = min(1.0, max(0.0, budget_fraction))
    else:
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """theta_ema <- d * theta_ema + (1 - d) * theta, with d = min(decay, (1 + n) / (10 + n)) after n updates."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1 - d)  # p_ema + (1 - d)(p - p_ema) = d p_ema + (1 - d) p
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def batch_indices(step: int, num_items: int, batch_size: int, seed: int) -> torch.Tensor:
    """Which items form batch number ``step``: a fresh seeded permutation per epoch, so order is a function of step."""
    if batch_size > num_items:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({num_items} items).")
    per_epoch = num_items // batch_size  # the incomplete last batch of an epoch is dropped
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[i * batch_size : (i + 1) * batch_size]


def _pack(model, ema: EMA, optimizer, generator: torch.Generator) -> dict:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.model.state_dict().items()})
    for i, p in enumerate(model.parameters()):
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"optim.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors


def _unpack(tensors: dict, model, ema: EMA, optimizer, generator: torch.Generator) -> None:
    def sub(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(sub("model."))
    if ema is not None:  # None on the processes other than the main one
        ema.model.load_state_dict(sub("ema."))
    device = next(model.parameters()).device
    for i, p in enumerate(model.parameters()):
        state = {k: v.to(device) if k != "step" else v for k, v in sub(f"optim.{i}.").items()}
        if state:
            optimizer.state[p] = state
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def train(model: torch.nn.Module, scheduler, images: torch.Tensor, config: TrainConfig,
          run_dir: str | os.PathLike | None = None, resume: bool = True, progress: bool = True,
          loss_fn=None, data_range: tuple[float, float] | None = (-1.0, 1.0),
          max_seconds: float | None = None, conditions: torch.Tensor | None = None,
          null_condition=None) -> TrainResult:
    """Train ``model`` to predict the scheduler's target from x_t; returns the model, its EMA and the loss curve.

    ``images``: the training set, (N, C, H, W) in [-1, 1]. With ``run_dir``, checkpoints are written
    there and, if ``resume``, a run already there continues from its last checkpoint.

    The same loop trains other models: ``loss_fn(model, x0, generator) -> loss`` replaces the diffusion
    loss (the VAE passes ``sdlearn.training.losses.VAELoss``; a dataclass, so its settings are saved and checked on
    resume), and ``data_range=None`` accepts data outside [-1, 1] (latent diffusion trains on scaled latents).
    ``max_seconds`` stops after that much wall-clock time in this call, checkpointing there; ``config.budget_minutes``
    bounds the training time of the whole run, resumed calls included (a resumed run trains for what is left).

    Conditional training: ``conditions`` holds one condition per image (class labels (N,), or text embeddings
    (N, T, C)); each batch takes the conditions of its images, and the diffusion loss drops them to
    ``null_condition`` with probability ``config.condition_dropout`` (classifier-free guidance). For class labels
    the null condition defaults to the model's last label row, ``num_class_embeds - 1``. A custom ``loss_fn`` then
    receives each batch's conditions as ``condition=`` (a contrastive loss gets the captions' token ids this way).
    """
    from tqdm.auto import tqdm

    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}.")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf; check the data loading before training.")
    if data_range is not None and (images.min() < data_range[0] - 1e-3 or images.max() > data_range[1] + 1e-3):
        raise ValueError(f"images must be scaled to [{data_range[0]:g}, {data_range[1]:g}] (DDPM's data range); "
                         "see sdlearn.data.digits.to_model_range. Latents: pass data_range=None.")
    if conditions is not None:
        if len(conditions) != len(images):
            raise ValueError(f"conditions must give one condition per image: {len(conditions)} for {len(images)} images.")
        if loss_fn is None and null_condition is None and not conditions.is_floating_point():
            num = getattr(getattr(model, "config", None), "num_class_embeds", None)
            if num is None:
                raise ValueError("class labels need a class-conditional model: set num_class_embeds in its config "
                                 "(the number of classes + 1 for the null class of classifier-free guidance).")
            null_condition = num - 1
        if loss_fn is None and null_condition is None:
            raise ValueError("pass null_condition (the empty prompt's encoding) with text-embedding conditions.")
    if config.schedule_clock == "time" and config.budget_minutes is None:
        raise ValueError("this learning-rate schedule runs over a time budget (schedule_clock='time'): set "
                         "budget_minutes, e.g. python -m sdlearn train laptop-digits --max-minutes 20.")
    dist = Distributed()  # one process, or this process's place among those accelerate launch started
    shard = (dist.rank, dist.world_size)
    dist.local_batch_size(config.batch_size)  # config.batch_size is the global batch: refused unless it divides
    if loss_fn is None:
        if scheduler is None:
            raise ValueError("pass a noise scheduler (the diffusion loss needs one) or a loss_fn.")

        def loss_fn(model, x0, generator, condition=None):
            return diffusion_loss(model, scheduler, x0, generator, config.loss_weighting, config.min_snr_gamma,
                                  condition, config.condition_dropout, null_condition, shard=shard)
    loss_settings = dataclasses.asdict(loss_fn) if dataclasses.is_dataclass(loss_fn) else None
    if dist.device is not None:
        model.to(dist.device)
    device = next(model.parameters()).device
    images = images.to(device)
    conditions = conditions.to(device) if conditions is not None else None
    generator = torch.Generator().manual_seed(config.seed)  # t and eps draws (on CPU, then moved: same on any device)
    torch.manual_seed(config.seed)  # dropout
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = EMA(model, config.ema_decay) if dist.is_main else None  # the EMA lives on the main process only
    losses: list[float] = []
    start, seconds_before = 0, 0.0
    run_dir = os.fspath(run_dir) if run_dir is not None else None
    budget = config.budget_minutes * 60 if config.budget_minutes is not None else None

    if run_dir is not None and resume:
        found = load_training_checkpoint(run_dir)
        if found is not None:
            tensors, state = found
            saved = {**dataclasses.asdict(TrainConfig()), **state["config"]}  # fields added since take their defaults
            now = dataclasses.asdict(dataclasses.replace(config, steps=saved["steps"],
                                                         budget_minutes=saved["budget_minutes"]))
            if saved != now:
                raise ValueError(
                    f"{run_dir!r} holds a run with a different TrainConfig ({state['config']}); "
                    "use another run_dir, or resume=False to start over there."
                )
            if state.get("loss") != loss_settings:
                raise ValueError(f"{run_dir!r} holds a run with a different loss ({state.get('loss')}, now "
                                 f"{loss_settings}); use another run_dir, or resume=False to start over there.")
            if saved["steps"] != config.steps and config.schedule_clock == "steps":
                warnings.warn(f"resuming with steps={config.steps} instead of {saved['steps']}: "
                              "the cosine learning-rate schedule changes from here on.")
            if saved["budget_minutes"] != config.budget_minutes:
                warnings.warn(f"resuming with a budget of {config.budget_minutes} minutes instead of "
                              f"{saved['budget_minutes']}: the run stops (and a time schedule decays) by the new one.")
            if state.get("world_size", 1) != dist.world_size:
                warnings.warn(f"resuming a run of {state.get('world_size', 1)} process(es) on {dist.world_size}: the "
                              "batches, t and eps are functions of the step, so training continues the same up to "
                              "float summation order; only dropout's per-process draws differ.")
            _unpack(tensors, model, ema, optimizer, generator)
            if ema is not None:
                ema.num_updates = state["ema_updates"]
            losses, start = state["losses"], state["step"]
            seconds_before = state.get("train_seconds", 0.0)

    base_optimizer = optimizer  # its state is what checkpoints hold
    net, optimizer = dist.prepare(model, optimizer)  # net: the model to call (DDP-wrapped on several processes)

    def checkpoint(step, clock, wait=True):
        if run_dir is None:
            return None
        path = None
        if dist.is_main:  # one writer; the others wait until the files are there
            state = {"step": step, "ema_updates": ema.num_updates, "losses": losses, "train_seconds": clock,
                     "config": dataclasses.asdict(config), "model_config": _model_config(model),
                     "loss": loss_settings, "world_size": dist.world_size}
            path = save_training_checkpoint(run_dir, step, _pack(model, ema, base_optimizer, generator), state)
        if wait:
            dist.wait()
        return path

    started = time.perf_counter()  # wall time is recorded in every checkpoint (summed over resumed runs)
    clock = seconds_before  # training seconds so far: the main process's, the same on every process

    def seconds_now():
        return seconds_before + time.perf_counter() - started

    use_bf16 = (config.autocast == "bf16" or (config.autocast == "auto" and device.type == "cuda")
                or dist.autocast_bf16)
    model.train()
    if budget is not None and seconds_before >= budget:
        print(f"{run_dir!r}: the budget of {config.budget_minutes:g} minutes is spent ({seconds_before / 60:.1f} "
              f"minutes trained, step {start}); nothing to do. Give a larger --max-minutes to train on.")
        model.eval()
        return TrainResult(model=model, ema_model=ema.model if ema else None, losses=losses, step=start,
                           train_seconds=seconds_before)
    # A time budget: the bar counts steps with no step total (tqdm takes inf as "unknown": no fake ETA over
    # config.steps); the postfix says how many minutes are left.
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps if budget is None else float("inf"),
               disable=not (progress and dist.is_main), desc="training")
    step = start
    stop, restore_signals = _stop_on_signals()  # `kill`, `kill -INT`, Ctrl-C: finish the step, checkpoint, stop
    # Ctrl-C can land anywhere in a step. Before the update, the step's random draws are undone (rng_before) so
    # the checkpoint resumes exactly; during the update (updating) no checkpoint is written: the last one stands.
    rng_before, updating = None, False
    try:
        for step in bar:
            rng_before = (generator.get_state(), torch.get_rng_state())
            fraction = clock / budget if budget is not None else 0.0
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config, fraction)
            index = dist.shard(batch_indices(step, len(images), config.batch_size, config.seed)).to(device)
            x0 = images[index]  # (batch_size / processes, C, H, W): this process's slice of the global batch
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if conditions is None:
                    loss = loss_fn(net, x0, generator)
                else:
                    loss = loss_fn(net, x0, generator, condition=conditions[index])
            global_loss = dist.mean(loss)  # the global batch's loss, the same on every process
            if not torch.isfinite(global_loss):
                where = f"the last good checkpoint is kept in {run_dir!r}" if run_dir else "no run_dir was given"
                raise NonFiniteLossError(
                    f"loss became {global_loss.item()} at step {step}; {where}. Lower the learning rate or check "
                    "the data."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # on several processes, DDP averages the gradients here
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            updating = True
            optimizer.step()
            if ema is not None:
                ema.update(model)
            losses.append(global_loss.item())
            rng_before = None
            updating = False
            time_up = ((max_seconds is not None and time.perf_counter() - started >= max_seconds)
                       or (budget is not None and seconds_now() >= budget))
            clock, time_up, signalled = dist.main_clock(seconds_now(), time_up, bool(stop))
            if step % 10 == 0:
                left = f", {max(0.0, budget - clock) / 60:.1f} min left" if budget is not None else ""
                bar.set_postfix_str(f"loss={sum(losses[-50:]) / len(losses[-50:]):.4f}, "
                                    f"lr={learning_rate(step, config, fraction):.1e}{left}")
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps and not time_up:
                checkpoint(step + 1, clock)
            if time_up:
                break
            if signalled:  # a signal arrived during this step: stop between steps (the checkpoint is written below)
                raise KeyboardInterrupt(f"stopped by signal {stop[0] if stop else '(another process)'} after step "
                                        f"{len(losses)}")
        step = len(losses)
    except KeyboardInterrupt:
        if not updating:  # nothing lost: the run continues from here next time, exactly as if uninterrupted
            if rng_before is not None:
                generator.set_state(rng_before[0])
                torch.set_rng_state(rng_before[1])
            checkpoint(len(losses), seconds_now(), wait=False)
        raise
    finally:
        bar.close()
        restore_signals()
    if start < step:
        checkpoint(step, clock)
    model.eval()
    return TrainResult(model=model, ema_model=ema.model if ema is not None else None, losses=losses, step=step,
                       train_seconds=clock)


def _stop_on_signals() -> tuple[list, object]:
    """While training, SIGTERM and SIGINT (Ctrl-C; also ``kill -INT`` of a background job, which starts with SIGINT
    ignored) ask the loop to stop after the current step: it then checkpoints and raises KeyboardInterrupt. A second
    signal stops at once (the last checkpoint stands). Returns (the list a signal appends to, a restore function)."""
    import signal
    import threading

    stop: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        return stop, lambda: None

    def request_stop(signum, frame):
        if stop:
            raise KeyboardInterrupt(f"signal {signum} (second)")
        stop.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    return stop, lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]


def _model_config(model) -> dict | None:
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else None
