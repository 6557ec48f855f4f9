"""Training checkpoints: the state a killed run resumes from, written atomically.

A training checkpoint is a folder ``step-000123/`` with ``weights.safetensors`` (model, EMA model,
optimizer moments, RNG states) and ``state.json`` (step, loss history, optimizer hyper-parameters).
It is written under a temporary name and renamed; ``latest.json`` is then replaced atomically to
point at it. A process killed at any moment leaves either the old or the new checkpoint, never half
of one. (Finished models are saved as model folders: ``sdlearn.utils.files``.)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from safetensors.torch import load_file, save_file

from ..utils.files import atomic_write_json


def save_training_checkpoint(run_dir: str, step: int, tensors: dict, state: dict, keep: int = 2) -> str:
    """Write ``run_dir/step-{step}`` atomically, point ``latest.json`` at it, and keep the newest ``keep``."""
    os.makedirs(run_dir, exist_ok=True)
    name = f"step-{step:07d}"
    final = os.path.join(run_dir, name)
    tmp = tempfile.mkdtemp(dir=run_dir, prefix=".tmp-")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, os.path.join(tmp, "weights.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(os.path.join(run_dir, "latest.json"), {"checkpoint": name, "step": step})
    old = sorted(n for n in os.listdir(run_dir) if n.startswith("step-") and n != name)
    for n in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(os.path.join(run_dir, n), ignore_errors=True)
    for n in os.listdir(run_dir):  # leftovers of a run killed mid-write
        path = os.path.join(run_dir, n)
        if n.startswith(".tmp-") and path != tmp:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
    return final


def load_training_checkpoint(run_dir: str) -> tuple[dict, dict] | None:
    """(tensors, state) of the checkpoint ``latest.json`` points at, or None if there is none."""
    pointer = os.path.join(run_dir, "latest.json")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = json.load(f)["checkpoint"]
    folder = os.path.join(run_dir, name)
    tensors = load_file(os.path.join(folder, "weights.safetensors"))
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    return tensors, state
