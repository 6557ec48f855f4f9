"""Chapter 3's pictures (sdlearn.viz.vae) and the KL-weight sweep script (sdlearn.training.kl_sweep).

Tiny random VAEs and a fake sweep folder built here; the figures are checked by what they contain
(axes, titles, the data drawn), without a browser.
"""

from __future__ import annotations

import json
import math
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from sdlearn.viz import vae as vae_viz
from sdlearn.utils.files import resolve_pretrained
from sdlearn.training.kl_sweep import load_sweep, save_sweep
from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

matplotlib.use("Agg")

TINY_RGB = AutoencoderKLConfig.with_factor(2, (8, 8), in_channels=3, out_channels=3, latent_channels=4,
                                           layers_per_block=1, norm_num_groups=4, sample_size=8)


def images(n: int, c: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(TINY_RGB).eval()


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


# ---------------------------------------------------------------------------- reconstructions
def test_psnr_matches_its_definition():
    x = images(3)
    x_rec = (x + 0.1 * images(3, seed=1)).clamp(-1, 1)
    mse = (((x + 1) / 2 - (x_rec + 1) / 2) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(vae_viz.psnr(x, x_rec), 10 * torch.log10(1 / mse))
    assert vae_viz.psnr(x, x).min() >= 99  # identical images: capped, not infinite
    with pytest.raises(ValueError, match="same shape"):
        vae_viz.psnr(x, x[:2])


def test_plot_reconstructions_shows_pairs_and_psnr():
    x = images(4)
    x_rec = (x * 0.9).clamp(-1, 1)
    fig = vae_viz.plot_reconstructions(x, x_rec, title="shapes")
    assert len(image_axes(fig)) == 8  # 2 rows x 4 images
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    expected = vae_viz.psnr(x, x_rec)
    assert titles == [f"{v:.1f} dB" for v in expected]
    assert "shapes" in fig._suptitle.get_text() and f"{expected.mean():.1f} dB" in fig._suptitle.get_text()
    top = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(top, ((x[0] + 1) / 2).permute(1, 2, 0).numpy(), atol=1e-6)
    assert plt.get_fignums() == []  # closed in pyplot
    with pytest.raises(ValueError, match="same shape"):
        vae_viz.plot_reconstructions(x, x_rec[:3])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        vae_viz.plot_reconstructions(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8))


# ---------------------------------------------------------------------------- latents as pictures
def test_show_latent_channels_uses_one_symmetric_scale():
    z = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    z[1, 3] *= 5  # one loud channel sets the scale for all
    fig = vae_viz.show_latent_channels(z)
    shown = image_axes(fig)
    assert len(shown) == 8  # 2 latents x 4 channels (+ a colour bar, which holds no image)
    vmax = float(z.abs().max())
    for ax in shown:
        assert ax.images[0].get_clim() == pytest.approx((-vmax, vmax))
    assert [ax.get_title() for ax in shown[:4]] == [f"channel {k}" for k in range(4)]
    np.testing.assert_allclose(shown[7].images[0].get_array(), z[1, 3].numpy())
    assert len(fig.axes) == 9  # the colour bar
    one = vae_viz.show_latent_channels(z[0])  # a single (c, h, w) latent
    assert len(image_axes(one)) == 4


def test_pca_rgb_is_in_range_deterministic_and_recovers_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    direction = torch.tensor([3.0, -4.0, 0.0, 0.0]) / 5
    strength = torch.randn((6, 1, 5, 5), generator=g) * 4
    z = strength * direction.view(1, 4, 1, 1) + 0.05 * torch.randn((6, 4, 5, 5), generator=g)
    rgb, explained = vae_viz.pca_rgb(z)
    assert rgb.shape == (6, 5, 5, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert explained[0] > 0.95 and np.all(np.diff(explained) <= 1e-6)
    # red follows the planted direction, with the sign that makes its largest loading (-4/5) positive
    corr = np.corrcoef(rgb[..., 0].ravel(), -strength.squeeze(1).numpy().ravel())[0, 1]
    assert corr > 0.95
    np.testing.assert_array_equal(rgb, vae_viz.pca_rgb(z.clone())[0])  # deterministic
    np.testing.assert_allclose(vae_viz.pca_rgb(-z)[0], 1 - rgb, atol=1e-6)  # the colours follow z, not a random sign
    rgb2, explained2 = vae_viz.pca_rgb(z[:, :2])  # fewer than 3 channels: blue stays at 0.5
    assert rgb2.shape == (6, 5, 5, 3) and np.all(rgb2[..., 2] == 0.5) and len(explained2) == 2


def test_latent_pca_rgb_draws_images_over_latents():
    z = torch.randn((3, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    fig = vae_viz.latent_pca_rgb(z, images=images(3))
    shown = image_axes(fig)
    assert len(shown) == 6
    np.testing.assert_allclose(shown[-1].images[0].get_array(), vae_viz.pca_rgb(z)[0][2])
    assert "principal components" in fig._suptitle.get_text()
    assert len(image_axes(vae_viz.latent_pca_rgb(z))) == 3


# ---------------------------------------------------------------------------- interpolation
def test_plot_interpolation_ends_at_the_two_reconstructions(tiny_vae):
    x = images(2)
    fig = vae_viz.plot_interpolation(tiny_vae, x[0], x[1], steps=5)
    shown = image_axes(fig)
    assert len(shown) == 10  # latent path and pixel cross-fade, 5 steps each
    assert [ax.get_title() for ax in shown[:5]] == [f"a = {a:.2f}" for a in np.linspace(0, 1, 5)]
    with torch.no_grad():
        ends = tiny_vae(x).sample.clamp(-1, 1)
    np.testing.assert_allclose(shown[0].images[0].get_array(), ((ends[0] + 1) / 2).permute(1, 2, 0).numpy(), atol=1e-5)
    np.testing.assert_allclose(shown[4].images[0].get_array(), ((ends[1] + 1) / 2).permute(1, 2, 0).numpy(), atol=1e-5)
    middle = ((x[0] + x[1]) / 2 + 1) / 2  # the cross-fade at a = 0.5
    np.testing.assert_allclose(shown[7].images[0].get_array(), middle.permute(1, 2, 0).numpy(), atol=1e-6)
    assert len(image_axes(vae_viz.plot_interpolation(tiny_vae, x[:1], x[1:], steps=3, pixel_blend=False))) == 3
    with pytest.raises(ValueError, match="at least 2"):
        vae_viz.plot_interpolation(tiny_vae, x[0], x[1], steps=1)


# ---------------------------------------------------------------------------- the scale factor
def test_plot_latent_histograms_before_and_after_scaling():
    z = 5.0 * torch.randn((64, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    scale = float(1 / z.std())
    fig = vae_viz.plot_latent_histograms(z, scale)
    left, right = fig.axes
    assert f"std {float(z.std()):.3f}" in left.get_title() and "std 1.000" in right.get_title()
    assert left.get_xlim()[1] > 15 and right.get_xlim() == pytest.approx((-4, 4))
    for ax in (left, right):
        assert len(ax.patches) == 4  # one step histogram per channel
        density = [line for line in ax.lines if line.get_label() == "N(0, 1)"]
        assert len(density) == 1 and max(density[0].get_ydata()) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-3)
    with pytest.raises(ValueError, match="positive"):
        vae_viz.plot_latent_histograms(z, 0.0)


# ---------------------------------------------------------------------------- the KL-weight sweep
WEIGHTS = [0.0, 0.01, 1.0]


@pytest.fixture
def sweep_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    entries = [{"kl_weight": w, "psnr": 20.0 - 3 * i, "psnr_mean_per_image": 20.0 - 3 * i,
                "kl_per_element": 2.0 / (i + 1), "latent_mean": 0.0, "latent_std": 2.0 - 0.5 * i,
                "posterior_std": 0.1 + 0.4 * i, "scaling_factor": 1 / (2.0 - 0.5 * i), "final_loss": 1.0,
                "train_seconds": 1.0, "losses": [3.0, 2.0, 1.0]} for i, w in enumerate(WEIGHTS)]
    results = {"steps": 3, "weights": WEIGHTS, "entries": entries, "latent_shape": [4, 8, 8],
               "run": {"command": "python -m sdlearn.training.kl_sweep --steps 3", "seconds": 1.0, "cpu_seconds": 1.0,
                       "threads": 1, "torch": torch.__version__, "machine": "test"}}
    pics = {"originals": torch.rand((8, 1, 32, 32), generator=g) * 2 - 1,
            "reconstructions": torch.rand((3, 8, 1, 32, 32), generator=g) * 2 - 1,
            "prior_samples": torch.rand((3, 8, 1, 32, 32), generator=g) * 2 - 1,
            "latents": torch.randn((3, 4, 8, 8), generator=g)}
    save_sweep(str(tmp_path / "sweep"), results, pics)
    return tmp_path / "sweep"


def test_load_sweep_round_trip(sweep_folder, tmp_path):
    results, pics = load_sweep(sweep_folder)
    assert results["weights"] == WEIGHTS and pics["reconstructions"].shape == (3, 8, 1, 32, 32)
    assert pics["latents"].dtype == torch.float32  # stored as fp16, loaded as float32
    assert "python -m sdlearn.training.kl_sweep --steps 3" in (sweep_folder / "README.md").read_text()
    with pytest.raises(FileNotFoundError, match="kl_sweep"):
        load_sweep(tmp_path)


def test_plot_kl_sweep_entry(sweep_folder):
    results, pics = load_sweep(sweep_folder)
    fig = vae_viz.plot_kl_sweep_entry(results, pics, 1)
    assert len(fig.axes) == 5  # reconstructions, prior samples, latent channels, the curves and their twin axis
    assert len(image_axes(fig)) == 3
    assert "KL weight 0.01" in fig._suptitle.get_text() and "PSNR 17.0 dB" in fig._suptitle.get_text()
    rec = fig.axes[0].images[0].get_array()
    assert rec.shape == (2 * 33 + 1, 8 * 33 + 1)  # grey: 2 rows of 8 digits with 1-pixel padding
    curve = fig.axes[3]
    np.testing.assert_allclose(curve.lines[0].get_ydata(), [20.0, 17.0, 14.0])
    assert curve.get_xscale() == "symlog"
    with pytest.raises(IndexError, match="3 KL weights"):
        vae_viz.plot_kl_sweep_entry(results, pics, 3)
    overview = vae_viz.plot_kl_sweep_overview(results, pics)
    assert len(image_axes(overview)) == 1 + 2 * len(WEIGHTS)


def test_kl_slider_redraws_for_every_weight(sweep_folder):
    widget = vae_viz.kl_slider(str(sweep_folder), start_weight=0.01)
    slider, image, label = widget.children
    assert [value for _, value in slider.options] == [0, 1, 2] and slider.value == 1
    assert "KL weight 0.01" in label.value
    pictures = {1: image.value}
    for index in (0, 2, 1):
        slider.value = index
        assert f"KL weight {WEIGHTS[index]:g}:" in label.value
        assert image.value[:8] == b"\x89PNG\r\n\x1a\n"
        pictures[index] = image.value
    assert len(set(pictures.values())) == 3  # a different picture for each weight
    assert vae_viz.kl_slider(str(sweep_folder), start_weight=0.3).children[0].value == 2  # nearest on a log scale
    assert vae_viz.kl_slider(str(sweep_folder), start_weight=0.0).children[0].value == 0


def test_shipped_sweep_is_small_and_complete():
    try:
        results, pics = load_sweep("kl-sweep")
    except FileNotFoundError:
        pytest.skip("sdlearn/pretrained/kl-sweep not written yet (python -m sdlearn.training.kl_sweep)")
    n = len(results["entries"])
    assert n >= 4 and pics["reconstructions"].shape[0] == n and pics["prior_samples"].shape[0] == n
    psnrs = [e["psnr"] for e in results["entries"]]
    assert psnrs[0] > psnrs[-1] + 3  # a large KL weight costs reconstruction quality
    folder = resolve_pretrained("kl-sweep")
    assert sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) < 1_000_000


def test_kl_sweep_script_runs(tmp_path):
    from sdlearn.training.kl_sweep import main

    out = tmp_path / "sweep"
    argv = ["--steps", "2", "--weights", "0", "1", "--num-train", "64", "--num-test", "50", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [e["kl_weight"] for e in results["entries"]] == [0.0, 1.0]
    for e in results["entries"]:
        assert math.isfinite(e["psnr"]) and e["kl_per_element"] >= 0 and len(e["losses"]) == 2
    assert "--steps 2" in results["run"]["command"]
    _, pics = load_sweep(out)
    assert pics["prior_samples"].shape == (2, 8, 1, 32, 32) and pics["latents"].shape == (2, 4, 8, 8)
