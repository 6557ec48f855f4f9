"""sdlearn.device: the CPU thread count, chosen in one place (SDLEARN_THREADS) and applied by every chapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdlearn import device
from sdlearn.course.notebooks import _kernel_env

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "chapters").glob("*.ipynb"))


def test_threads_default_and_setting(monkeypatch):
    monkeypatch.delenv("SDLEARN_THREADS", raising=False)
    assert device.num_threads() == device.DEFAULT_THREADS == 1
    monkeypatch.setenv("SDLEARN_THREADS", "2")
    assert device.num_threads() == 2
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv("SDLEARN_THREADS", bad)
        with pytest.raises(ValueError, match="SDLEARN_THREADS must be a whole number"):
            device.num_threads()


def test_set_threads_applies_it(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("SDLEARN_THREADS", "1")
        assert device.set_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_kernel_gets_the_same_threads(monkeypatch):
    """Issue 17: torch's default (one thread per core) ran chapter 2 several times slower on a 2-core machine with a
    core busy. The kernel of `make course` and the tests gets SDLEARN_THREADS and OpenMP's and MKL's pools of that
    size before torch starts."""
    monkeypatch.setenv("SDLEARN_THREADS", "1")
    env = _kernel_env(fast=True)
    assert env["SDLEARN_THREADS"] == env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    monkeypatch.setenv("SDLEARN_THREADS", "3")
    assert _kernel_env(fast=True)["OMP_NUM_THREADS"] == "3"


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_sets_its_threads_before_any_work(path):
    """A learner's own Jupyter does not go through _kernel_env: the set-up cell applies the setting itself."""
    sources = ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    where = [i for i, s in enumerate(sources) if "sdlearn.device.set_threads()" in s]
    assert where, f"{path.name}: call sdlearn.device.set_threads() in the set-up cell"
    assert not any("load_digits(" in s or "from_pretrained(" in s for s in sources[:where[0]]), path.name
