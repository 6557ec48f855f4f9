"""Pick the device once: CUDA, then Apple MPS, then CPU.

Every notebook and script calls :func:`get_device` instead of writing ``.cuda()``.
Set ``SDLEARN_DEVICE`` (``cpu``, ``cuda``, ``mps``) to override the choice.
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
