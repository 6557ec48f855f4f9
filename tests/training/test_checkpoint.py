"""Training checkpoints: atomic writes, leftovers of killed runs, pruning; the model card lists every stage."""

from __future__ import annotations

import json
import os

import torch

from sdlearn.training.checkpoint import load_training_checkpoint, save_training_checkpoint


def tensors(value: float) -> dict:
    return {"model.w": torch.full((2, 3), value), "rng.generator": torch.arange(4, dtype=torch.uint8)}


def test_training_checkpoint_round_trip_and_pruning(tmp_path):
    run = str(tmp_path)
    assert load_training_checkpoint(run) is None  # nothing there yet
    for step in (10, 20, 30):
        final = save_training_checkpoint(run, step, tensors(float(step)), {"step": step, "losses": [0.5] * step})
        assert os.path.basename(final) == f"step-{step:07d}"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latest.json", "step-0000020", "step-0000030"], "keeps the newest two, nothing temporary"
    assert json.loads((tmp_path / "latest.json").read_text()) == {"checkpoint": "step-0000030", "step": 30}
    loaded, state = load_training_checkpoint(run)
    assert state == {"step": 30, "losses": [0.5] * 30}
    assert torch.equal(loaded["model.w"], torch.full((2, 3), 30.0))
    assert sorted(os.listdir(tmp_path / "step-0000030")) == ["state.json", "weights.safetensors"]
    # never pickle: the weights are a plain safetensors file
    assert (tmp_path / "step-0000030" / "weights.safetensors").read_bytes()[8:9] == b"{"


def test_leftover_tmp_dir_of_a_killed_run_is_ignored_then_cleaned(tmp_path):
    run = str(tmp_path)
    save_training_checkpoint(run, 5, tensors(5.0), {"step": 5})
    # what a run killed half-way through writing step 10 leaves behind
    half = tmp_path / ".tmp-abc123"
    half.mkdir()
    (half / "weights.safetensors").write_bytes(b"\x00\x01 half a file")
    loaded, state = load_training_checkpoint(run)
    assert state["step"] == 5 and torch.equal(loaded["model.w"], torch.full((2, 3), 5.0))
    save_training_checkpoint(run, 10, tensors(10.0), {"step": 10})
    assert not half.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-0000005", "step-0000010"]


def test_rewriting_the_same_step_replaces_it(tmp_path):
    run = str(tmp_path)
    save_training_checkpoint(run, 7, tensors(1.0), {"step": 7})
    save_training_checkpoint(run, 7, tensors(2.0), {"step": 7, "again": True})
    loaded, state = load_training_checkpoint(run)
    assert state["again"] and torch.equal(loaded["model.w"], torch.full((2, 3), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-0000007"]


def test_model_card_lists_every_training_stage_in_order(tmp_path):
    """A model trained past its recipe (warm restarts with --steps) gets a card with every command, in order."""
    from sdlearn.evaluation.model_cards import write_model_card
    from sdlearn.training.recipes import get_recipe

    quality = {"n": 256, "num_inference_steps": 1000, "seed": 0, "confident_share": 0.95, "min_class_share": 0.08,
               "class_shares_among_confident": [0.1] * 10, "frechet_distance": 30.0, "real_vs_real_frechet": 10.7,
               "sampling_seconds": 1.0, "device": "cpu", "torch_threads": 2, "passes_bar": True,
               "batch_size": 64}
    training = {"step": 20000, "train_config": {"steps": 20000, "seed": 0}, "dtype": "float16", "train_seconds": 60.0}
    card = open(write_model_card(str(tmp_path), "mnist-ddpm", quality, training, "a test machine")).read()
    stages = get_recipe("mnist-ddpm").continued_to
    assert stages and list(stages) == sorted(stages) and stages[0] > get_recipe("mnist-ddpm").train.steps
    lines = [card.index("python -m sdlearn train mnist-ddpm --run-dir runs/mnist-ddpm        #")]
    lines += [card.index(f"--steps {n}   #") for n in stages]
    lines.append(card.index("python -m sdlearn export mnist-ddpm"))
    assert lines == sorted(lines)
    assert f"then continued to {stages[0]:,}" in card and "warm restart" in card
    assert "python -m sdlearn evaluate mnist-ddpm --threads 2 --batch-size 64   #" in card  # how it was measured
