"""sdlearn.pipelines.ddim_inversion (DDIM inversion and reconstruction) and sdlearn.viz.samplers (chapter 6's samplers and pictures).

Exact models stand in for a trained UNet where the right answer is known in closed form: for data that is
one point c, eps*(x, t) = (x - sqrt(alpha_bar_t) c) / sqrt(1 - alpha_bar_t) and the round trip is exact; for
Gaussian data N(mu, s^2), eps*(x, t) = sqrt(1 - ab) (x - sqrt(ab) mu) / (ab s^2 + 1 - ab) and the round trip
error must shrink as the steps get smaller.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from sdlearn.viz import samplers as sv
from sdlearn.pipelines.ddim_inversion import (
    ddim_invert,
    ddim_path,
    ddim_reconstruct,
    inversion_scheduler,
    inversion_table,
    psnr,
    round_trip_error,
)
from sdlearn.viz.samplers import plot_round_trip
from sdlearn.pipelines import DDPMPipeline
from sdlearn.schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from sdlearn.viz.diffusion import TrajectoryRecorder
from sdlearn.viz.images import image_grid

ROOT = Path(__file__).resolve().parents[2]


class PointMassModel(nn.Module):
    """The exact noise predictor when every training image is the same point c."""

    def __init__(self, alphas_cumprod: torch.Tensor, c: torch.Tensor):
        super().__init__()
        self.alphas_cumprod, self.c = alphas_cumprod.double(), c.double()

    def forward(self, x, t):
        ab = self.alphas_cumprod[int(t)]
        return ((x.double() - ab.sqrt() * self.c) / (1 - ab).sqrt()).to(x.dtype)


class GaussianModel(nn.Module):
    """The exact noise predictor for data N(mu, s^2 I): E[eps | x_t] in closed form."""

    def __init__(self, alphas_cumprod: torch.Tensor, mu: float, s: float):
        super().__init__()
        self.alphas_cumprod, self.mu, self.s = alphas_cumprod.double(), mu, s

    def forward(self, x, t):
        ab = self.alphas_cumprod[int(t)]
        return ((1 - ab).sqrt() * (x.double() - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)).to(x.dtype)


# ---------------------------------------------------------------------------- the path of noise levels
def test_path_follows_diffusers_or_the_paper():
    sched = DDIMScheduler(timestep_spacing="linspace")
    diffusers, paper = ddim_path(sched, 10, "diffusers"), ddim_path(sched, 10, "paper")
    assert [t for t, _ in diffusers] == [t for t, _ in paper] == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert diffusers[0] == (999, 899) and paper[0] == (999, 888)  # t - T // S vs the next grid point
    assert diffusers[-1] == paper[-1] == (0, -1)  # both end at the clean end
    leading = DDIMScheduler()  # "leading": the two rules agree
    assert ddim_path(leading, 10, "diffusers") == ddim_path(leading, 10, "paper")
    with pytest.raises(ValueError, match="rule"):
        ddim_path(leading, 10, "halfway")


def test_inversion_scheduler_copies_the_grid_and_turns_clipping_off():
    source = DDPMScheduler(timestep_spacing="trailing", steps_offset=1, clip_sample=True)
    ddim = inversion_scheduler(source)
    assert isinstance(ddim, DDIMScheduler) and not ddim.config.clip_sample
    assert ddim.config.timestep_spacing == "trailing" and ddim.config.steps_offset == 1


# ---------------------------------------------------------------------------- exact models
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("rule", ["diffusers", "paper"])
def test_point_mass_inversion_is_exact(spacing, rule):
    """Data = one point c: the exact model's x0_pred is c at every level, so x_T and the way back are known."""
    sched = DDIMScheduler(timestep_spacing=spacing)
    c = torch.linspace(-0.9, 0.9, 16, dtype=torch.float64).reshape(1, 1, 4, 4).repeat(2, 1, 1, 1)
    model = PointMassModel(sched.alphas_cumprod, c)
    x_T = ddim_invert(model, sched, c, 10, rule=rule, progress=False)
    torch.testing.assert_close(ddim_reconstruct(model, sched, x_T, 10, rule=rule, progress=False), c)
    if rule == "diffusers" and spacing == "linspace":
        return  # diffusers' steps land between grid points (999 -> 899, then 888 -> ...): no single closed form
    # one chain of levels: x_T = sqrt(ab_T) c + sqrt(1 - ab_T) eps*(c, 0), the noise the model sees in c at t = 0
    first = int(ddim_path(sched, 10, rule)[0][0])
    ab0, abT = sched.alphas_cumprod[0].double(), sched.alphas_cumprod[first].double()
    eps0 = (c - ab0.sqrt() * c) / (1 - ab0).sqrt()
    torch.testing.assert_close(x_T, abT.sqrt() * c + (1 - abT).sqrt() * eps0)


class TimeOnlyModel(nn.Module):
    """A model whose output depends on t only: then each DDIM step is affine and its inverse is known."""

    def forward(self, x, t):
        g = torch.Generator().manual_seed(int(t))
        return torch.randn(x.shape[1:], generator=g, dtype=torch.float64).to(x.dtype).expand_as(x)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("rule", ["diffusers", "paper"])
def test_inversion_undoes_sampling_when_the_model_agrees_at_both_ends(spacing, rule):
    """Inversion's only approximation is eps(x_from, .) standing in for eps(x_to, t): where the model ignores x,
    model_timestep="next" (the step's own t, as sampling uses it) makes the round trip exact in both directions."""
    sched = DDIMScheduler(timestep_spacing=spacing)
    model = TimeOnlyModel()
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x_T = ddim_invert(model, sched, x0, 7, rule=rule, model_timestep="next", progress=False)
    torch.testing.assert_close(ddim_reconstruct(model, sched, x_T, 7, rule=rule, progress=False), x0)
    x_T2 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    x0_2 = ddim_reconstruct(model, sched, x_T2, 7, rule=rule, progress=False)
    x_T2_again = ddim_invert(model, sched, x0_2, 7, rule=rule, model_timestep="next", progress=False)
    torch.testing.assert_close(x_T2_again, x_T2)


def test_gaussian_round_trip_error_falls_as_steps_grow():
    sched = DDPMScheduler()
    model = GaussianModel(sched.alphas_cumprod, mu=0.2, s=0.5)
    x0 = 0.2 + 0.5 * torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for model_timestep in ("current", "next"):
        errors = []
        for S in (5, 10, 20, 50):
            x_T = ddim_invert(model, sched, x0, S, model_timestep=model_timestep, progress=False)
            errors.append(float((ddim_reconstruct(model, sched, x_T, S, progress=False) - x0).pow(2).mean()))
        assert all(a > b for a, b in zip(errors, errors[1:])), (model_timestep, errors)
        assert errors[-1] < 0.05 * errors[0]  # about 1 / S^2: a first-order method on both legs


def test_reconstruction_is_the_ddim_scheduler_loop(tiny_unet):
    """ddim_reconstruct with diffusers' rule = DDIMScheduler.step(eta=0) looped over the grid (clipping off)."""
    x_T = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for spacing in ("leading", "linspace"):
        config = DDPMScheduler(timestep_spacing=spacing).config
        sched = DDIMScheduler.from_config(config, clip_sample=False)
        sched.set_timesteps(8)
        x = x_T
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(tiny_unet(x, t), t, x, eta=0.0).prev_sample
        torch.testing.assert_close(ddim_reconstruct(tiny_unet, DDPMScheduler.from_config(config), x_T, 8,
                                                    progress=False), x, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- a tiny random UNet2DModel
def test_tiny_unet_round_trip_is_finite_with_shapes_and_callbacks(tiny_unet):
    x0 = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    recorder = TrajectoryRecorder(num_keep=3)
    x_T = ddim_invert(tiny_unet, DDIMScheduler(), x0, 6, callback=recorder, progress=False)
    assert x_T.shape == x0.shape and torch.isfinite(x_T).all()
    assert [f["i"] for f in recorder.frames] == [0, 2, 5]
    assert set(recorder.frames[0]) >= {"x_t", "model_output", "x0_pred", "x_prev"}
    torch.testing.assert_close(recorder.frames[0]["x_t"], x0)  # the first step starts at the image
    torch.testing.assert_close(recorder.frames[-1]["x_prev"], x_T)  # the last lands on the noise
    x_rec = ddim_reconstruct(tiny_unet, DDIMScheduler(), x_T, 6, progress=False)
    assert x_rec.shape == x0.shape and np.isfinite(round_trip_error(x0, x_rec))
    rows = inversion_table(tiny_unet, x0, steps=(2, 4), scheduler=DDIMScheduler(), batch_size=2, progress=False)
    assert [r["steps"] for r in rows] == [2, 4]
    for r in rows:
        assert set(r) == {"steps", "mse", "psnr", "noise_std", "seconds"}
        assert np.isfinite([r["mse"], r["psnr"], r["noise_std"]]).all() and r["seconds"] >= 0
        assert r["psnr"] == pytest.approx(10 * np.log10(1 / r["mse"]))
    pipe_rows = inversion_table(DDPMPipeline(tiny_unet, DDPMScheduler()), x0, steps=(2,), progress=False)
    assert pipe_rows[0]["mse"] == pytest.approx(inversion_table(tiny_unet, x0, steps=(2,), scheduler=DDIMScheduler(),
                                                                progress=False)[0]["mse"])
    fig = plot_round_trip(x0, x_T, x_rec, title="round trip")
    assert isinstance(fig, Figure) and len(fig.axes) == 4


def test_psnr_and_error():
    x = torch.zeros(1, 1, 2, 2)
    assert round_trip_error(x, x + 0.2) == pytest.approx(0.01)  # (0.2 / 2)^2 on the [0, 1] scale
    assert round_trip_error(x, x + 5) == pytest.approx(0.25)  # the reconstruction is clamped to [-1, 1] first
    assert psnr(0.01) == pytest.approx(20.0) and psnr(0.0) == float("inf")


def test_clear_errors(tiny_unet):
    sched = DDIMScheduler()
    good = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ddim_invert(tiny_unet, sched, torch.zeros(1, 16, 16), 5, progress=False)
    with pytest.raises(ValueError, match="UNet works on"):
        ddim_invert(tiny_unet, sched, torch.zeros(1, 3, 16, 16), 5, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        ddim_reconstruct(tiny_unet, sched, good * float("nan"), 5, progress=False)
    with pytest.raises(ValueError, match="cannot be larger than num_train_timesteps"):
        ddim_invert(tiny_unet, sched, good, 1001, progress=False)
    with pytest.raises(ValueError, match="model_timestep"):
        ddim_invert(tiny_unet, sched, good, 5, model_timestep="middle", progress=False)
    with pytest.raises(ValueError, match="needs a scheduler"):
        inversion_table(tiny_unet, good, steps=(2,), progress=False)
    with pytest.raises(ValueError, match="one shape"):
        plot_round_trip(good, good, torch.zeros(2, 1, 16, 16))


# ---------------------------------------------------------------------------- samplers_viz: the samplers
def test_ddim_with_eta_passes_eta_and_everything_else_through():
    sched = DDIMScheduler()
    wrapped = sv.DDIMWithEta(DDIMScheduler(), 0.5)
    sched.set_timesteps(10)
    wrapped.set_timesteps(10)
    assert torch.equal(wrapped.timesteps, sched.timesteps) and wrapped.init_noise_sigma == 1.0
    x, out = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = sched.timesteps[3]
    want = sched.step(out, t, x, eta=0.5, generator=torch.Generator().manual_seed(0)).prev_sample
    got = wrapped.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(wrapped.step(out, t, x, eta=0.0).prev_sample, sched.step(out, t, x).prev_sample)
    clip = DDIMScheduler(clip_sample=True)
    clip.set_timesteps(10)
    big = torch.full((2, 1, 4, 4), 3.0)  # x0_pred far outside [-1, 1] at t = 900: the clipping matters
    for use_clipped in (False, True):
        got = sv.DDIMWithEta(clip, 0.0, use_clipped_model_output=use_clipped).step(out, 900, big).prev_sample
        want = clip.step(out, 900, big, use_clipped_model_output=use_clipped).prev_sample
        torch.testing.assert_close(got, want)
    assert not torch.allclose(clip.step(out, 900, big).prev_sample,
                              clip.step(out, 900, big, use_clipped_model_output=True).prev_sample)
    assert sv.make_sampler("DDIM", clip.config).use_clipped_model_output  # the chapter's and benchmark's choice
    assert not sv.make_sampler("DDIM", clip.config, use_clipped_model_output=False).use_clipped_model_output
    with pytest.raises(ValueError, match="eta must be in"):
        sv.DDIMWithEta(DDIMScheduler(), 1.5)
    with pytest.raises(TypeError, match="wraps a DDIMScheduler"):
        sv.DDIMWithEta(DDPMScheduler(), 0.5)


def test_pipeline_eta_reaches_the_wrapped_ddim_step(tiny_unet):
    """DDPMPipeline(unet, make_sampler("DDIM", ...))(eta=...) overrides the wrapper's eta for that call."""
    config = DDIMScheduler().config

    def sample(scheduler, **kwargs):
        pipe = DDPMPipeline(tiny_unet, scheduler)
        return pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                    output_type="pt", progress=False, **kwargs).images

    wrapped_half = sample(sv.make_sampler("DDIM", config, eta=0.5))
    wrapped_zero_told_half = sample(sv.make_sampler("DDIM", config, eta=0.0), eta=0.5)
    torch.testing.assert_close(wrapped_zero_told_half, wrapped_half)
    assert not torch.allclose(sample(sv.make_sampler("DDIM", config, eta=0.0)), wrapped_half)


def test_make_sampler_builds_each_kind_from_one_config():
    config = DDPMScheduler(clip_sample=True).config
    kinds = {"DDPM": DDPMScheduler, "DDIM": sv.DDIMWithEta, "Euler": EulerDiscreteScheduler,
             "DPM-Solver++": DPMSolverMultistepScheduler}
    for kind, cls in kinds.items():
        sampler = sv.make_sampler(kind, config, eta=0.5)
        assert isinstance(sampler, cls)
        sampler.set_timesteps(10)
        assert len(sampler.timesteps) == 10
    assert sv.make_sampler("Euler", config).config.timestep_spacing == "linspace"
    assert sv.make_sampler("DDIM", config).config.timestep_spacing == "leading"
    assert sv.sampler_label("DDIM", 50, 0.0) == "DDIM S=50 eta=0" and sv.sampler_label("Euler", 20) == "Euler S=20"
    with pytest.raises(ValueError, match="Unknown sampler"):
        sv.make_sampler("PNDM", config)


def test_each_sampler_runs_in_the_pipeline(tiny_unet):
    config = DDPMScheduler().config
    for kind in sv.SAMPLERS:
        images = DDPMPipeline(tiny_unet, sv.make_sampler(kind, config, eta=1.0))(
            batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt",
            progress=False).images
        assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()


# ---------------------------------------------------------------------------- samplers_viz: grids and pictures
def test_previous_timesteps_table():
    rows = sv.previous_timesteps(10, 1000, "linspace")
    assert rows[0] == {"t": 999, "diffusers": 899, "paper": 888}
    assert rows[-1] == {"t": 0, "diffusers": -1, "paper": -1}
    leading = sv.previous_timesteps(10, 1000, "leading")
    assert all(r["diffusers"] == r["paper"] for r in leading)  # the spacing diffusers' rule was written for
    trailing = sv.previous_timesteps(3, 1000, "trailing")  # T // S = 333, but the grid is 999, 666, 332
    assert [r["t"] for r in trailing] == [999, 666, 332] and trailing[1]["diffusers"] == 333
    # what DDIMScheduler does: the table's diffusers column is its previous_timestep (clamped at -1)
    sched = DDIMScheduler(timestep_spacing="linspace")
    sched.set_timesteps(10)
    assert [max(sched.previous_timestep(r["t"]), -1) for r in rows] == [r["diffusers"] for r in rows]


def test_plot_timestep_grids_and_plot_samplers():
    fig = sv.plot_timestep_grids(10)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert [ax.get_ylabel() for ax in fig.axes] == ["leading", "trailing", "linspace"]
    samples = {"DDIM": torch.rand(4, 1, 8, 8) * 2 - 1, "Euler": torch.rand(4, 1, 8, 8) * 2 - 1}
    fig = sv.plot_samplers(samples)
    assert isinstance(fig, Figure) and [ax.get_title(loc="left") for ax in fig.axes] == ["DDIM", "Euler"]
    with pytest.raises(ValueError, match="at least one"):
        sv.plot_samplers({})


def test_eta_steps_frame_is_a_plain_function(tiny_unet):
    config = DDPMScheduler().config
    x_T = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    frame = sv.eta_steps_frame(tiny_unet, config, x_T, 0.0, 5, seed=0)
    assert frame.shape == image_grid(x_T, nrow=3).shape and frame.min() >= 0 and frame.max() <= 1
    np.testing.assert_array_equal(frame, sv.eta_steps_frame(tiny_unet, config, x_T, 0.0, 5, seed=1))  # eta 0: no draws
    assert not np.array_equal(sv.eta_steps_frame(tiny_unet, config, x_T, 1.0, 5, seed=0),
                              sv.eta_steps_frame(tiny_unet, config, x_T, 1.0, 5, seed=1))
    np.testing.assert_array_equal(sv.eta_steps_frame(tiny_unet, config, x_T, 1.0, 5, seed=0),
                                  sv.eta_steps_frame(tiny_unet, config, x_T, 1.0, 5, seed=0))
    # what it draws: the pipeline's DDIM samples from x_T
    want = DDPMPipeline(tiny_unet, sv.make_sampler("DDIM", config))(
        batch_size=3, num_inference_steps=5, latents=x_T, output_type="pt", progress=False).images * 2 - 1
    np.testing.assert_allclose(frame, image_grid(want, nrow=3), atol=1e-6)
    fig = sv.plot_eta_steps(tiny_unet, config, x_T, etas=(0.0, 1.0), steps=(2, 3))
    assert isinstance(fig, Figure) and len(fig.axes) == 4


def test_clipping_samples_differ_only_by_the_noise_used(tiny_unet):
    config = DDPMScheduler(clip_sample=True).config
    x_T = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    rows = sv.clipping_samples(tiny_unet, config, x_T, 6)
    assert list(rows) == [sv.CLIPPING_LABELS[False], sv.CLIPPING_LABELS[True]]
    for use_clipped in (False, True):
        want = DDPMPipeline(tiny_unet, sv.make_sampler("DDIM", config, use_clipped_model_output=use_clipped))(
            batch_size=3, num_inference_steps=6, latents=x_T, output_type="pt", progress=False).images * 2 - 1
        torch.testing.assert_close(rows[sv.CLIPPING_LABELS[use_clipped]], want)
    assert not torch.allclose(*rows.values())  # an untrained UNet's x0_pred is clipped: the two paths part
    with pytest.raises(ValueError, match="clip_sample=False"):
        sv.clipping_samples(tiny_unet, DDPMScheduler(clip_sample=False).config, x_T, 6)


def test_stray_ink_counts_specks_not_strokes():
    img = -torch.ones(1, 1, 16, 16)
    assert sv.stray_ink(img) == 0
    stroke = img.clone()
    stroke[0, 0, 3:13, 7:9] = 1.0  # a 10 x 2 stroke: every pixel has >= 6 bright pixels in its 5 x 5 block
    assert sv.stray_ink(stroke) == 0
    specks = stroke.clone()
    specks[0, 0, 1, 1] = 0.8  # a lone pixel far from the stroke
    specks[0, 0, 13:15, 13:15] = 0.5  # a 2 x 2 speck: 4 bright pixels in each block, still stray
    assert sv.stray_ink(specks) == pytest.approx(5 / 256)
    assert sv.stray_ink(specks, threshold=0.6) == pytest.approx(1 / 256)  # the dim speck is below this threshold
    with pytest.raises(ValueError, match="B, C, H, W"):
        sv.stray_ink(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="odd"):
        sv.stray_ink(img, window=4)


def test_eta_steps_slider_redraws(tiny_unet):
    pytest.importorskip("ipywidgets")
    x_T = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    box = sv.eta_steps_slider(tiny_unet, DDPMScheduler().config, x_T, steps=(2, 3), etas=(0.0, 1.0))
    (eta_slider, steps_slider), image, label = box.children[0].children, box.children[1], box.children[2]
    first = image.value
    assert "eta = 0" in label.value and "S = 3" in label.value
    eta_slider.value = 1.0
    assert image.value != first and "eta = 1" in label.value
    steps_slider.value = 2
    assert "S = 2" in label.value


# ---------------------------------------------------------------------------- samplers_viz: the quality table
def fake_results() -> dict:
    def cell(kind, steps, eta, fds, shares):
        runs = {str(s): {"frechet_distance": f, "confident_share": c, "seconds": 1.0 + s}
                for s, (f, c) in enumerate(zip(fds, shares))}
        return {"kind": kind, "steps": steps, "eta": eta, "spacing": "leading", "runs": runs,
                "summary": sv.summarize_runs(runs)}
    cells = {"DDIM S=10 eta=0": cell("DDIM", 10, 0.0, [20, 22, 24], [0.80, 0.82, 0.84]),
             "DDIM S=50 eta=0": cell("DDIM", 50, 0.0, [11, 12, 13], [0.90, 0.91, 0.92]),
             "DDPM S=1000": cell("DDPM", 1000, None, [10, 10, 10], [0.93, 0.93, 0.93]),
             "DPM-Solver++ S=20": cell("DPM-Solver++", 20, None, [14, 13, 12], [0.80, 0.80, 0.80])}
    return {"num_samples": 256, "seeds": [0, 1, 2], "cells": cells, "real_vs_real_frechet": 5.0, "device": "cpu",
            "inversion": {"num_images": 64, "rows": [{"steps": 10, "mse": 0.05, "psnr": 13.0, "noise_std": 0.7,
                                                      "seconds": 1.0}]}}


def test_summarize_runs_and_targets():
    s = sv.summarize_runs({"0": {"frechet_distance": 1.0, "confident_share": 0.5, "seconds": 2.0},
                           "1": {"frechet_distance": 3.0, "confident_share": 0.7, "seconds": 4.0}})
    assert s["frechet_distance"] == 2.0 and s["frechet_distance_sd"] == pytest.approx(np.sqrt(2))
    assert (s["confident_share_min"], s["confident_share_max"], s["num_seeds"]) == (0.5, 0.7, 2)
    with pytest.raises(ValueError):
        sv.summarize_runs({})
    targets = {t["cell"]: t for t in sv.check_targets(fake_results()["cells"])}
    ddim, dpm = targets["DDIM S=50 eta=0"], targets["DPM-Solver++ S=20"]
    assert ddim["frechet_ratio"] == pytest.approx(1.2) and ddim["confident_points"] == pytest.approx(-2.0)
    assert ddim["passes"] is True
    assert dpm["frechet_ratio"] == pytest.approx(1.3) and dpm["passes"] is False  # 1.3 > 1.25 (and 13 points below)
    assert sv.check_targets({})[0]["passes"] is None  # nothing measured yet


def test_quality_table_and_plot():
    results = fake_results()
    text = sv.quality_table_markdown(results)
    assert "| DDIM (leading) | 50 | 0 | 3 | 12.00 ± 1.00 | 91.0% ± 1.0 | 2.0 |" in text
    assert "| DDPM (leading) | 1000 |  | 3 | 10.00 ± 0.00 |" in text
    assert text.index("| DDIM (leading) | 10 |") < text.index("| DDPM (leading)")  # the benchmark's cell order
    assert "Not measured yet: DDIM S=10 eta=0.5" in text  # cells missing from the JSON are named
    one_seed = fake_results()
    one_seed["cells"]["DDPM S=1000"]["runs"] = {"0": {"frechet_distance": 9.0, "confident_share": 0.9, "seconds": 1.0}}
    one_seed["cells"]["DDPM S=1000"]["summary"] = sv.summarize_runs(one_seed["cells"]["DDPM S=1000"]["runs"])
    assert "| DDPM (leading) | 1000 |  | 1 | 9.00 | 90.0% | 1.0 |" in sv.quality_table_markdown(one_seed)  # no "± 0"
    assert "Real against real (500 training digits): 5.00" in text and "| 10 | 0.05000 | 13.0 | 0.70 | 1.0 |" in text
    fig = sv.plot_quality(results)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert "use_clipped_model_output" not in text  # the fake DDIM runs record no options
    for name in ("DDIM S=10 eta=0", "DDIM S=50 eta=0"):
        for run in results["cells"][name]["runs"].values():
            run["options"] = {"use_clipped_model_output": True}
    assert "DDIM steps with the noise of the clipped x0 prediction" in sv.quality_table_markdown(results)


def test_shipped_table_is_complete_and_the_readme_quotes_it():
    """sampler_quality.json shipped with mnist-ddpm measures every cell of the issue, the targets with 3 seeds, for
    the UNet that ships beside it; the README's target rows and ratios are its figures, and its verdict agrees."""
    folder = ROOT / "sdlearn" / "pretrained" / "mnist-ddpm"
    results = json.loads((folder / "sampler_quality.json").read_text())
    bench = load_benchmark()
    assert results["model"] == bench.model_identity(str(folder)) | {"name": results["model"]["name"]}
    assert results["num_samples"] == 256 and not results.get("quick")
    cells = results["cells"]
    assert set(cells) == {c.name for c in sv.QUALITY_CELLS}
    readme = (ROOT / "README.md").read_text()
    for name in (sv.REFERENCE_CELL, *sv.TARGET_CELLS):
        s = cells[name]["summary"]
        assert s["num_seeds"] == 3, name
        row = (f"| {s['frechet_distance']:.1f} ± {s['frechet_distance_sd']:.1f} "
               f"| {100 * s['confident_share']:.1f}% ± {100 * s['confident_share_sd']:.1f} |")
        assert row in readme, f"README.md should quote {name} from sampler_quality.json as {row!r}"
    targets = sv.check_targets(cells)
    for t in targets:
        assert f"{t['frechet_ratio']:.2f}x" in readme, t
    assert ("targets are **met**" in readme) == all(t["passes"] for t in targets)
    assert results["inversion_error_falls"] is True


# ---------------------------------------------------------------------------- the benchmark script
def load_benchmark():
    spec = importlib.util.spec_from_file_location("sampler_quality", ROOT / "benchmarks" / "sampler_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_starts_afresh_for_another_model(tmp_path):
    bench = load_benchmark()
    path = tmp_path / "q.json"
    identity = {"name": "m", "step": 1, "unet_sha256": "abc"}
    assert bench.load_results(path, identity, 16, fresh=False)["cells"] == {}
    path.write_text(json.dumps({"format": bench.FORMAT_VERSION, "model": identity, "num_samples": 16,
                                "cells": {"x": {"runs": {"0": {}}}}}))
    assert "x" in bench.load_results(path, identity, 16, fresh=False)["cells"]  # same model: resume
    assert bench.load_results(path, identity, 16, fresh=True)["cells"] == {}
    assert bench.load_results(path, dict(identity, step=2), 16, fresh=False)["cells"] == {}  # another model
    assert (tmp_path / "q.stale.json").is_file() and not path.exists()


def test_benchmark_measures_again_runs_with_other_sampler_options():
    bench = load_benchmark()
    assert bench.sampler_options("DDIM") == {"use_clipped_model_output": True} and bench.sampler_options("Euler") == {}
    results = fake_results()  # no run records options: the DDIM runs were made with other ones
    results["cells"]["DDIM S=50 eta=0"]["runs"]["1"]["options"] = {"use_clipped_model_output": True}
    dropped = bench.drop_other_options(results)
    assert dropped == ["DDIM S=10 eta=0, seed 0", "DDIM S=10 eta=0, seed 1", "DDIM S=10 eta=0, seed 2",
                       "DDIM S=50 eta=0, seed 0", "DDIM S=50 eta=0, seed 2"]
    assert "DDIM S=10 eta=0" not in results["cells"]  # no run left: the cell goes
    kept = results["cells"]["DDIM S=50 eta=0"]
    assert list(kept["runs"]) == ["1"] and kept["summary"]["num_seeds"] == 1 and kept["summary"]["frechet_distance"] == 12
    assert len(results["cells"]["DDPM S=1000"]["runs"]) == 3  # other samplers keep their runs
    assert bench.drop_other_options(results) == []


@pytest.mark.slow
def test_benchmark_quick_run_and_resume(tmp_path, capsys):
    """The real script on the shipped model, tiny: 8 samples, two cells, a two-size inversion; then a resume."""
    bench = load_benchmark()
    out = tmp_path / "quality.json"
    argv = ["--quick", "--num-samples", "8", "--cells", "DDIM|DDPM", "--inversion-images", "4",
            "--inversion-steps", "2", "4", "--out", str(out), "--markdown", str(tmp_path / "table.md"), "--no-progress"]
    results = bench.main(argv)
    assert set(results["cells"]) == {"DDIM S=10 eta=0", "DDPM S=50"}
    saved = json.loads(out.read_text())
    assert saved["cells"]["DDPM S=50"]["runs"]["0"]["seconds"] > 0 and len(saved["inversion"]["rows"]) == 2
    assert "| DDIM (leading) | 10 | 0 |" in (tmp_path / "table.md").read_text()
    capsys.readouterr()
    bench.main(argv)  # everything is there: nothing is sampled again
    assert "0 to do" in capsys.readouterr().out
