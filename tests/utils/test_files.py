"""sdlearn.utils.files: atomic writers and finding shipped models by name."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from sdlearn.utils import files as checkpoint
from sdlearn.utils.files import atomic_save_file, atomic_write_json, resolve_pretrained


def test_atomic_writers_leave_no_temporary_files(tmp_path):
    atomic_write_json(str(tmp_path / "a.json"), {"x": 1})
    atomic_write_json(str(tmp_path / "a.json"), {"x": 2})  # replacing works too
    atomic_save_file({"w": torch.ones(3)}, str(tmp_path / "w.safetensors"), metadata={"format": "pt"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "w.safetensors"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert torch.equal(load_file(tmp_path / "w.safetensors")["w"], torch.ones(3))


def test_resolve_pretrained(tmp_path, monkeypatch):
    assert resolve_pretrained(tmp_path) == str(tmp_path)  # a folder is returned as is
    shipped = tmp_path / "pretrained"
    (shipped / "digits-a").mkdir(parents=True)
    (shipped / "digits-b").mkdir()
    (shipped / "README.md").write_text("not a model")
    monkeypatch.setattr(checkpoint, "PRETRAINED_DIR", str(shipped))
    assert resolve_pretrained("digits-b") == str(shipped / "digits-b")
    with pytest.raises(FileNotFoundError, match=r"'mnist-ddmp' is neither a folder nor a shipped model; "
                                                r"shipped models: \['digits-a', 'digits-b'\]"):
        resolve_pretrained("mnist-ddmp")


def test_resolve_pretrained_lists_the_real_shipped_models():
    real = checkpoint.PRETRAINED_DIR
    names = sorted(n for n in os.listdir(real) if os.path.isdir(os.path.join(real, n))) if os.path.isdir(real) else []
    with pytest.raises(FileNotFoundError, match="shipped models") as err:
        resolve_pretrained("surely-not-a-model")
    for name in names:
        assert name in str(err.value)
