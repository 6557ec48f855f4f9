"""benchmarks/pixel_vs_latent.py runs end to end (tiny: --quick, random VAEs) and writes its table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pixel_vs_latent_quick(tmp_path):
    for f in (4, 8):
        torch.manual_seed(f)
        cfg = AutoencoderKLConfig.with_factor(f, 8, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                                              sample_size=64, scaling_factor=0.5)
        AutoencoderKL(cfg).save_pretrained(tmp_path / f"vae-f{f}")
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pixel_vs_latent.py"), "--quick", "--threads", "1",
           "--vae-f4", str(tmp_path / "vae-f4"), "--vae-f8", str(tmp_path / "vae-f8"), "--out", str(out),
           "--num-samples", "4", "--batch", "8"]
    subprocess.run(cmd, check=True, cwd=tmp_path, timeout=600, capture_output=True)
    results = json.loads(out.read_text())
    assert list(results["arms"]) == ["pixel", "latent f=4", "latent f=8"]
    pixel, f4, f8 = (results["arms"][a] for a in ("pixel", "latent f=4", "latent f=8"))
    assert pixel["input_shape"] == [3, 64, 64] and f4["input_shape"] == [4, 16, 16] and f8["input_shape"] == [4, 8, 8]
    for entry in (pixel, f4, f8):
        assert entry["train_step_seconds"] > 0 and entry["maxrss_bytes"] > 0
        assert 0 <= entry["quality"]["well_formed_share"] <= 1 and entry["quality"]["train_steps_in_budget"] >= 1
    # the same UNet family on 16x smaller inputs: a latent step must be cheaper even in a tiny run
    assert f4["step_ratio_cached"] > 1.5
    assert (tmp_path / "results.md").read_text().count("\n|") >= 4


@pytest.mark.slow
def test_time_to_quality_tiny(tmp_path):
    """benchmarks/time_to_quality.py --tiny: every arm trains to each mark, is sampled and measured; JSON and plot."""
    pytest.importorskip("diffusers")
    out = tmp_path / "ttq.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), "--tiny", "--threads", "1",
           "--out", str(out), "--work", str(tmp_path / "runs")]
    subprocess.run(cmd, check=True, cwd=tmp_path, timeout=600, capture_output=True)
    results = json.loads(out.read_text())
    assert list(results["arms"]) == ["peer", "mnist-ddpm", "laptop"]
    for arm in results["arms"].values():
        marks = arm["marks"]
        assert [m["minutes"] for m in marks] == results["marks_minutes"]
        assert 0 < marks[0]["steps"] <= marks[1]["steps"] and marks[0]["train_seconds"] <= marks[1]["train_seconds"]
        for m in marks:
            assert m["train_seconds"] >= m["minutes"] * 60 and 0 <= m["confident_share"] <= 1
            assert len(m["class_shares_among_confident"]) == 10 and m["frechet_distance"] > 0
            assert 0 <= m["other_sampler"]["confident_share"] <= 1
    # the laptop arm resumed its run folder at each mark and exported what `sdlearn export` writes
    assert (tmp_path / "runs" / "laptop" / "export" / "model_index.json").is_file()
    assert (tmp_path / "ttq.png").stat().st_size > 1000


@pytest.mark.parametrize("extra", [[], ["--autocast", "bf16", "--channels-last"]])
def test_unet_speed_runs_in_every_setting(extra, capsys):
    """benchmarks/unet_speed.py on the laptop recipe's UNet, batch 2, one timed pair: both arms time a step."""
    pytest.importorskip("diffusers")
    import importlib.util

    spec = importlib.util.spec_from_file_location("unet_speed", ROOT / "benchmarks" / "unet_speed.py")
    unet_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unet_speed)
    result = unet_speed.main(["--recipe", "laptop-digits", "--batch", "2", "--repeats", "1", "--warmup", "0",
                              "--device", "cpu", *extra])
    assert result["sdlearn_median_s"] > 0 and result["diffusers_median_s"] > 0 and result["median_ratio"] > 0
    assert result["autocast"] == ("bf16" if extra else "off") and result["channels_last"] == bool(extra)
    assert "median_ratio" in capsys.readouterr().out


def test_laptop_sampler_ablation_scores_every_variant(tmp_path):
    """scripts/laptop_sampler_ablation.py on a tiny random laptop-shaped folder: every variant draws and is read."""
    import dataclasses
    import importlib.util

    from sdlearn.models.unet_2d import UNet2DModel
    from sdlearn.training.recipes import get_recipe
    from sdlearn.training.shipping import export_model

    recipe = get_recipe("laptop-digits")
    torch.manual_seed(0)
    unet = UNet2DModel(dataclasses.replace(recipe.unet, block_out_channels=(8, 16, 16), attention_head_dim=8))
    export_model("laptop-digits", unet, str(tmp_path / "F"))
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "scripts" / "laptop_sampler_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    out = ablation.main([str(tmp_path / "F"), "--num-samples", "4", "--threads", "1", "--out", str(tmp_path / "a.json")])
    assert set(out["variants"]) == set(ablation.VARIANTS)
    assert {v["scheduler"] for v in out["variants"].values()} == {"DDPMScheduler", "DDIMScheduler"}
    for v in out["variants"].values():
        assert 0 <= v["confident_share"] <= 1 and v["frechet_distance"] > 0
    assert json.loads((tmp_path / "a.json").read_text())["variants"].keys() == out["variants"].keys()
    with pytest.raises(SystemExit):
        ablation.main([str(tmp_path / "F"), "--variants", "ddpm,nope"])
