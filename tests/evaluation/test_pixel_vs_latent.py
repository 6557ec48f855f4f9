"""sdlearn.evaluation.pixel_vs_latent: what chapter 4 needs of the pixel-vs-latent benchmark, inside the package."""

from __future__ import annotations

import json
from pathlib import Path

from sdlearn.evaluation.pixel_vs_latent import SHIPPED_RESULTS, markdown_table, shipped_results, unet_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_results_are_the_benchmarks_own():
    """The package ships a copy of benchmarks/results/pixel_vs_latent.json (chapter 4 must not read files next to
    its folder); a re-run of the benchmark that updates one must update the other."""
    benchmark = REPO / "benchmarks" / "results" / "pixel_vs_latent.json"
    assert json.loads(benchmark.read_text()) == shipped_results(), (
        f"{SHIPPED_RESULTS} differs from {benchmark}: copy the benchmark's new results into the package.")
    table = markdown_table(shipped_results())
    assert table.count("\n| ") == len(shipped_results()["arms"])


def test_unet_family_differs_only_in_input():
    pixel, latent = unet_config(3, 64), unet_config(4, 16)
    assert pixel.block_out_channels == latent.block_out_channels and pixel.down_block_types == latent.down_block_types
    assert (pixel.in_channels, pixel.sample_size, latent.in_channels, latent.sample_size) == (3, 64, 4, 16)
