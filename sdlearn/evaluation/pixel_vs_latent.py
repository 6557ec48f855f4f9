"""Pixel against latent diffusion at 64x64 RGB: the benchmark's UNet family, its target and its table.

The benchmark itself (``benchmarks/pixel_vs_latent.py`` in the repository) times training steps, sampling and
memory of three UNets of one family, on pixels (3x64x64), on f = 4 latents (4x16x16) and on f = 8 latents (4x8x8),
and measures the quality each reaches after the same training budget. What the chapter needs to show its results
lives here, in the package, so that a notebook works wherever it is opened (a student copy in another folder, an
installed sdlearn without the repository):

- :func:`unet_config`: the family, the same depth and widths for every arm;
- :data:`TARGET_STEP_RATIO`: the target, a latent training step at least this many times cheaper than the pixel one;
- :func:`markdown_table`: the results as a Markdown table;
- :func:`shipped_results`: the measured results that ship with the package (a copy of
  ``benchmarks/results/pixel_vs_latent.json``; ``tests/evaluation/test_pixel_vs_latent.py`` keeps them equal).
"""

from __future__ import annotations

import json
import os

from ..models.unet_2d import UNetConfig
from ..utils.files import PRETRAINED_DIR

TARGET_STEP_RATIO = 4.0
SHIPPED_RESULTS = os.path.join(PRETRAINED_DIR, "pixel-vs-latent", "results.json")


def unet_config(in_channels: int, sample_size: int) -> UNetConfig:
    """The shared family: same depth and widths for every arm; only the input size and channels differ."""
    return UNetConfig(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                      block_out_channels=(32, 64, 128), down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=1,
                      attention_head_dim=32, norm_num_groups=8)


def shipped_results() -> dict:
    """The benchmark's measured results as shipped with sdlearn (the JSON the benchmark wrote)."""
    with open(SHIPPED_RESULTS) as f:
        return json.load(f)


def markdown_table(results: dict) -> str:
    """The benchmark's results (the JSON it writes) as a Markdown table, one row per arm."""
    what = next(iter(results["arms"].values()))["sample_what"] if results["arms"] else ""
    rows = [f"| arm | UNet input | train step (s) | with encoding (s) | step ratio vs pixel | sampling ({what}, s) "
            "| peak memory | well-formed after budget |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for arm, e in results["arms"].items():
        mem = (f"{e['cuda_peak_bytes'] / 2**20:.0f} MiB (CUDA)" if "cuda_peak_bytes" in e
               else f"{e['maxrss_bytes'] / 2**20:.0f} MiB (RSS)")
        q = e.get("quality", {})
        quality = f"{q['well_formed_share']:.0%} ({q['train_steps_in_budget']} steps)" if q else "-"
        enc = f"{e['train_step_seconds_with_encoding']:.3f}" if "train_step_seconds_with_encoding" in e else "-"
        ratio = (f"{e['step_ratio_cached']:.1f}x cached, {e['step_ratio_with_encoding']:.1f}x encoding"
                 if "step_ratio_cached" in e else "1x")
        rows.append(f"| {arm} | {'x'.join(map(str, e['input_shape']))} | {e['train_step_seconds']:.3f} | {enc} | {ratio} "
                    f"| {e['sample_seconds']:.1f} | {mem} | {quality} |")
    rows.append(f"\nBatch {results['batch']}, {results['device']} ({results['machine']}, {results['torch_threads']} "
                f"threads); training budget {results['budget_seconds']:.0f} s per arm; a subprocess doing nothing: "
                f"{results['baseline_maxrss_bytes'] / 2**20:.0f} MiB RSS.")
    return "\n".join(rows)


__all__ = ["TARGET_STEP_RATIO", "unet_config", "shipped_results", "markdown_table"]
