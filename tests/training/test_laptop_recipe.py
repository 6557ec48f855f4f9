"""laptop-digits (issue 16): its config, the time budget and its schedule, and the command line's refusals."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from sdlearn.cli import main
from sdlearn.models.unet_2d import UNet2DModel
from sdlearn.schedulers import DDPMScheduler
from sdlearn.training.loop import TrainConfig, learning_rate, train
from sdlearn.training.recipes import get_recipe, training_images


def test_laptop_recipe_config():
    recipe = get_recipe("laptop-digits")
    assert recipe.data == "digits-28" and recipe.unet.sample_size == 28
    images = training_images(recipe.data)
    assert images.shape == (4500, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    unet = UNet2DModel(recipe.unet)
    params = sum(p.numel() for p in unet.parameters())
    assert 0.8e6 < params < 1.5e6  # "1.1 M parameters", as the recipe's comment says
    assert unet(images[:2], torch.tensor([0, 999])).shape == (2, 1, 28, 28)  # 28 -> 14 -> 7 and back
    t = recipe.train
    assert t.schedule_clock == "time" and t.budget_minutes is None  # the budget is the command's --max-minutes
    assert t.autocast == "bf16" and t.loss_weighting == "min_snr" and t.lr_schedule == "cosine"
    assert t.batch_size % 2 == 0  # two processes under accelerate launch take equal slices
    assert recipe.sampling_scheduler is None  # the folder samples with the training DDPMScheduler (50 steps)
    assert recipe.scheduler["clip_sample"] and recipe.scheduler["variance_type"] == "fixed_small"


def test_exported_folder_samples_28x28_digits_with_default_arguments(tmp_path):
    from sdlearn.pipelines import DiffusionPipeline
    from sdlearn.training.shipping import export_model

    torch.manual_seed(0)
    export_model("laptop-digits", UNet2DModel(get_recipe("laptop-digits").unet), str(tmp_path / "f"))
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "f")
    assert type(pipe.scheduler).__name__ == "DDPMScheduler" and pipe.scheduler.config.clip_sample
    out = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 28, 28, 1)


def test_time_schedule_decays_over_the_budget_fraction():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, schedule_clock="time", budget_minutes=20)
    assert learning_rate(4, cfg, 0.9) == pytest.approx(5e-4)  # warm-up is counted in steps
    floor = 1e-4
    assert learning_rate(50, cfg, 0.0) == pytest.approx(1e-3)
    assert learning_rate(50, cfg, 0.5) == pytest.approx(floor + (1e-3 - floor) * 0.5)  # cos(pi / 2) = 0
    assert learning_rate(50, cfg, 0.25) == pytest.approx(floor + (1e-3 - floor) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(50, cfg, 1.0) == pytest.approx(floor) == learning_rate(50, cfg, 3.0)


def test_budgets_must_be_positive():
    for bad in (0, -5):
        with pytest.raises(ValueError, match="positive number of minutes"):
            TrainConfig(budget_minutes=bad)
    with pytest.raises(ValueError, match="time budget"):
        train(UNet2DModel(get_recipe("laptop-digits").unet), DDPMScheduler(), torch.zeros(8, 1, 28, 28),
              TrainConfig(steps=2, batch_size=4, schedule_clock="time"), progress=False)


def test_cli_refuses_missing_zero_and_negative_budgets(tmp_path, capsys):
    for extra in ([], ["--max-minutes", "0"], ["--max-minutes", "-3"]):
        assert main(["train", "laptop-digits", "--run-dir", str(tmp_path / "r"), *extra]) == 2
        assert "--max-minutes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_trains_for_what_is_left_of_the_budget(tmp_path, tiny_unet_config):
    images = torch.rand(32, 1, 16, 16) * 2 - 1
    cfg = TrainConfig(steps=100_000, batch_size=8, warmup_steps=2, schedule_clock="time", budget_minutes=0.02,
                      checkpoint_every=1000)

    def run(**kw):
        torch.manual_seed(0)
        return train(UNet2DModel(tiny_unet_config), DDPMScheduler(), images, cfg, run_dir=tmp_path, progress=False,
                     **kw)

    first = run(max_seconds=0.4)  # paused part-way (as the time-to-quality benchmark pauses at a mark)
    state = json.loads((tmp_path / f"step-{first.step:07d}" / "state.json").read_text())
    assert 0.4 <= state["train_seconds"] < 1.2
    second = run()  # continues with what is left of the 1.2-second budget
    state = json.loads((tmp_path / f"step-{second.step:07d}" / "state.json").read_text())
    assert second.step > first.step and 1.2 <= state["train_seconds"] < 3.0
    assert run().step == second.step  # the budget is spent: nothing more is trained
    longer = dataclasses.replace(cfg, budget_minutes=0.03)
    torch.manual_seed(0)
    model = UNet2DModel(tiny_unet_config)
    with pytest.warns(UserWarning, match="budget"):
        more = train(model, DDPMScheduler(), images, longer, run_dir=tmp_path, progress=False)
    assert more.step > second.step
