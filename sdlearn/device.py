"""Pick the device once: CUDA, then Apple MPS, then CPU.

Every notebook and script calls :func:`get_device` instead of writing ``.cuda()``.
Set ``SDLEARN_DEVICE`` (``cpu``, ``cuda``, ``mps``) to override the choice.

The CPU thread count is chosen here too (:func:`num_threads`, applied by :func:`set_threads`; the chapters call
it in their set-up cell): ``SDLEARN_THREADS`` sets it, the one place to change it.
"""

from __future__ import annotations

import os

import torch


def get_device(preferred: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then MPS, then CPU.

    ``preferred`` (or the ``SDLEARN_DEVICE`` environment variable) forces a device; asking for
    one that is not there raises an error that says what is available.
    """
    name = preferred or os.environ.get("SDLEARN_DEVICE")
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("SDLEARN_DEVICE asks for CUDA but torch sees no CUDA GPU; unset it or use 'cpu'.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("SDLEARN_DEVICE asks for MPS but it is not available here; unset it or use 'cpu'.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def fast_mode() -> bool:
    """FAST mode: the shipped pretrained models instead of training, fewer steps and samples, so that every chapter
    runs on a laptop CPU (the README's Time table says how long each takes).

    ``SDLEARN_FAST=1`` or ``0`` decides when set; otherwise FAST is on when there is no GPU.
    """
    value = os.environ.get("SDLEARN_FAST")
    if value is not None and value.strip() != "":
        if value.strip() not in ("0", "1"):
            raise ValueError(f"SDLEARN_FAST must be 0 or 1, got {value!r}.")
        return value.strip() == "1"
    return get_device().type == "cpu"


DEFAULT_THREADS = 1  # measured (README, "Time"): see num_threads


def num_threads() -> int:
    """The number of CPU threads torch should use: ``SDLEARN_THREADS`` when set, else 1.

    Why 1 by default: torch starts one thread per core, and the course's models are small (a few million
    parameters, batches of 32 at 32x32). On a learner's 2-core laptop with a browser or a video call busy on one
    core, torch's 2 threads wait on each other every operation: measured on the 2-core development machine with
    the other core busy, one training step of chapter 2's demo UNet took several times longer with 2 threads than
    with 1 (README, "Time", lists the figures and the command). On an idle machine 2 threads gain little on these
    sizes. Set ``SDLEARN_THREADS=2`` (or more) on a machine with cores to spare.
    """
    value = os.environ.get("SDLEARN_THREADS", "").strip()
    if not value:
        return DEFAULT_THREADS
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"SDLEARN_THREADS must be a whole number of threads >= 1, got {value!r}; unset it for the "
                         f"default ({DEFAULT_THREADS}).")
    return int(value)


def set_threads(threads: int | None = None) -> int:
    """Apply the thread count (``threads``, else :func:`num_threads`) to torch and return it."""
    n = num_threads() if threads is None else int(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
