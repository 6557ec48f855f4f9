"""benchmarks/sd_unet_speed.py (issue 15's GPU comparison) runs end to end on a CPU in its tiny configuration."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("sd_unet_speed", ROOT / "benchmarks" / "sd_unet_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sd_unet_speed_tiny_runs_and_both_arms_agree(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "sd_unet.json"
    load_script().main(["--tiny", "--device", "cpu", "--out", str(out)])
    results = json.loads(out.read_text())
    (cell,) = results["cells"]
    assert cell["dtype"] == "fp32" and cell["batch"] == 1
    assert cell["seconds_per_image"]["sdlearn"] > 0 and cell["seconds_per_image"]["diffusers"] > 0
    assert cell["max_abs_difference"] < 1e-4  # the same weights, the same loop: the same latents
    assert results["config"]["block_out_channels"] == [16, 32]
    large = results["large"]
    assert large["latent_side"] == 32 and all(large[k]["seconds"] > 0 for k in
                                              ("unet_step", "unet_step_sliced", "vae_decode", "vae_decode_tiled"))


def test_sd_unet_speed_refuses_an_unknown_precision():
    with pytest.raises(SystemExit, match=r"unknown precision \['fp8'\]"):
        load_script().main(["--tiny", "--device", "cpu", "--dtypes", "fp8"])
