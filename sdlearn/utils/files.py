"""Model folders and atomic files: always safetensors + JSON (never pickle), always written atomically.

- A *model folder* is diffusers' layout: ``config.json`` + ``diffusion_pytorch_model.safetensors``.
- ``resolve_pretrained`` turns a shipped model's name ("mnist-ddpm") into its folder inside the package.
- Every file is written under a temporary name and renamed, so a process killed at any moment leaves
  either the old or the new file, never half of one. (Training checkpoints: ``sdlearn.training.checkpoint``.)
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
from safetensors.torch import load_file, save_file

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../sdlearn
PRETRAINED_DIR = os.path.join(PACKAGE_DIR, "pretrained")  # the shipped models


def atomic_write_json(path: str, obj) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; shipped files must be readable by everyone
    os.replace(tmp, path)


def atomic_save_file(tensors: dict, path: str, metadata: dict | None = None) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    os.close(fd)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def resolve_pretrained(folder_or_name: str | os.PathLike) -> str:
    """A folder path, or the name of a model shipped inside the package (e.g. "mnist-ddpm")."""
    path = os.fspath(folder_or_name)
    if os.path.isdir(path):
        return path
    shipped = os.path.join(PRETRAINED_DIR, path)
    if os.path.isdir(shipped):
        return shipped
    names = sorted(n for n in os.listdir(PRETRAINED_DIR) if os.path.isdir(os.path.join(PRETRAINED_DIR, n))) \
        if os.path.isdir(PRETRAINED_DIR) else []
    raise FileNotFoundError(f"{path!r} is neither a folder nor a shipped model; shipped models: {names}.")


def save_model_folder(model: torch.nn.Module, folder: str | os.PathLike, config: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    atomic_save_file(model.state_dict(), os.path.join(folder, model.weights_name))
    atomic_write_json(os.path.join(folder, model.config_name), config)


def load_model_folder(model_cls, config_cls, folder_or_name):
    folder = resolve_pretrained(folder_or_name)
    config_path = os.path.join(folder, model_cls.config_name)
    weights_path = os.path.join(folder, model_cls.weights_name)
    for p in (config_path, weights_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{folder!r} has no {os.path.basename(p)}; was it written by save_pretrained()?")
    with open(config_path) as f:
        config = config_cls.from_dict(json.load(f))
    model = model_cls(config)
    state = load_file(weights_path)
    expected = model.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} in file, {tuple(expected[k].shape)} in model"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"Weights in {weights_path!r} do not fit the model built from its config.json: {wrong[:3]}.")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Weights in {weights_path!r} do not fit the model built from its config.json: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}."
        )
    return model.eval()


# ---------------------------------------------------------------------------- training checkpoints


