"""Chapter 6's samplers side by side: timestep grids, the eta and steps sliders, quality against steps.

- :func:`make_sampler` builds the chapter's samplers (DDPM, DDIM with a chosen eta, Euler, DPM-Solver++)
  from one scheduler configuration, so the notebook and ``benchmarks/sampler_quality.py`` sample alike;
  :class:`DDIMWithEta` lets a pipeline's loop, which passes no eta to ``step``, sample DDIM with eta > 0.
- :func:`previous_timesteps` and :func:`plot_timestep_grids`: each spacing's grid (Lin et al. 2023, Table 2),
  and where a DDIM step goes from each grid point under diffusers' rule (t - T // S, whatever the spacing)
  and under the paper's (the next point of the sub-sequence tau, DDIM sec. 4.2).
- :func:`plot_samplers` (the same seed through every sampler), :func:`eta_steps_frame` (the picture the
  sliders draw: a plain function), :func:`eta_steps_slider` (the ipywidgets viewer) and
  :func:`plot_eta_steps`.
- :data:`QUALITY_CELLS`, :func:`summarize_runs`, :func:`quality_table_markdown` and :func:`plot_quality`:
  the small-scale analogue of the DDIM paper's Table 1 (Frechet distance and confident share against S).

Figures follow sdlearn.viz.diffusion's conventions: images in [-1, 1] shown as (x + 1) / 2, and every function
returns a matplotlib Figure that is already closed in pyplot (it displays itself in Jupyter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from ..schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from ..schedulers.base import spaced_timesteps
from .images import image_grid

SAMPLERS = ("DDPM", "DDIM", "Euler", "DPM-Solver++")
SPACINGS = ("leading", "trailing", "linspace")


def _figure(width: float, height: float) -> Figure:
    """A Figure made through pyplot (so Jupyter's inline backend shows it) and closed there at once."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(max(width, 1.0), max(height, 1.0)), layout="constrained")
    plt.close(fig)
    return fig


# ============================================================================ the chapter's samplers
class DDIMWithEta:
    """A DDIMScheduler whose ``step`` uses ``eta`` (and ``use_clipped_model_output``) unless told otherwise;
    everything else is the scheduler's.

    DDPMPipeline's loop (like diffusers' DDPMPipeline) calls ``step(model_output, t, x_t, generator=...)``
    without an eta; diffusers' DDIMPipeline takes ``eta`` as a call argument instead.
    """

    def __init__(self, scheduler: DDIMScheduler, eta: float, use_clipped_model_output: bool = False):
        if not isinstance(scheduler, DDIMScheduler):
            raise TypeError(f"DDIMWithEta wraps a DDIMScheduler, got {type(scheduler).__name__}.")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1] (0 = DDIM, 1 = DDPM's variance, DDIM eq. 16), got {eta}.")
        self.scheduler, self.eta = scheduler, float(eta)
        self.use_clipped_model_output = bool(use_clipped_model_output)

    def step(self, model_output, timestep, sample, eta: float | None = None,
             use_clipped_model_output: bool | None = None, generator=None, variance_noise=None):
        """DDIMScheduler.step with the wrapper's ``eta`` and ``use_clipped_model_output`` where none is given.

        The signature is DDIMScheduler.step's, so a pipeline that asks "does step take eta?" gets a true answer:
        ``DDPMPipeline(unet, make_sampler("DDIM", config))(eta=0.5)`` overrides the wrapper's eta for that call.
        """
        return self.scheduler.step(
            model_output, timestep, sample,
            eta=self.eta if eta is None else eta,
            use_clipped_model_output=(self.use_clipped_model_output if use_clipped_model_output is None
                                      else use_clipped_model_output),
            generator=generator, variance_noise=variance_noise)

    def __getattr__(self, name):  # set_timesteps, timesteps, init_noise_sigma, scale_model_input, config, ...
        return getattr(self.__dict__["scheduler"], name)

    def __repr__(self) -> str:
        return (f"DDIMWithEta({type(self.scheduler).__name__}, eta={self.eta}, "
                f"use_clipped_model_output={self.use_clipped_model_output})")


# Euler and DPM-Solver++ use their diffusers default grid ("linspace": it starts at T - 1, where x_T is pure noise);
# DDPM and DDIM keep the model's own configuration ("leading" for mnist-ddpm, as in the DDIM paper's experiments).
OWN_SPACING = {"Euler": "linspace", "DPM-Solver++": "linspace"}


def make_sampler(kind: str, config: dict, eta: float = 0.0, use_clipped_model_output: bool = True):
    """One of the chapter's samplers, built from a scheduler ``config`` (e.g. ``pipe.scheduler.config``).

    kind: "DDPM" (ancestral sampling, Algorithm 2, as configured), "DDIM" (with ``eta``, DDIM eq. 16),
    "Euler" (probability-flow ODE, Karras et al. 2022) or "DPM-Solver++" (2M, Lu et al. 2022).
    Each works in any pipeline: ``DDPMPipeline(unet, make_sampler("DDIM", pipe.scheduler.config, eta=0.5))``.

    ``use_clipped_model_output`` (DDIM with ``clip_sample``, as mnist-ddpm is configured): step with the noise that
    the *clipped* x0_pred implies, so that x0_pred and eps_pred describe the same x_t (chapter 6, section 7).
    True here; diffusers' and sdlearn's DDIMScheduler.step default to False, which moves x_t by the whole clipping
    correction at every step: harmless for a few steps, visible as speckles after hundreds.
    """
    config = dict(config)
    if kind == "DDPM":
        return DDPMScheduler.from_config(config)
    if kind == "DDIM":
        return DDIMWithEta(DDIMScheduler.from_config(config), eta, use_clipped_model_output)
    if kind == "Euler":
        return EulerDiscreteScheduler.from_config(config, timestep_spacing=OWN_SPACING["Euler"])
    if kind == "DPM-Solver++":
        return DPMSolverMultistepScheduler.from_config(config, timestep_spacing=OWN_SPACING["DPM-Solver++"])
    raise ValueError(f"Unknown sampler {kind!r}; choose one of {SAMPLERS}.")


def sampler_label(kind: str, steps: int, eta: float | None = None) -> str:
    """"DDIM S=50 eta=0", "Euler S=20": the name of a sampler setting in tables and figures."""
    return f"{kind} S={steps}" + (f" eta={eta:g}" if kind == "DDIM" else "")


# ============================================================================ timestep grids
def previous_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000, spacing: str = "leading",
                       steps_offset: int = 0) -> list[dict]:
    """For each grid point t (descending): where DDIM steps to under diffusers' rule and under the paper's.

    {"t": t, "diffusers": t - T // S, "paper": the next grid point}; -1 means "past the end" (the step that
    lands on alpha_bar = final_alpha_cumprod, i.e. the clean sample). Under diffusers' rule a value below -1
    is shown as -1 too (DDIMScheduler treats every negative t_prev alike).
    """
    grid = spaced_timesteps(num_inference_steps, num_train_timesteps, spacing, steps_offset).tolist()
    jump = num_train_timesteps // num_inference_steps
    return [{"t": t, "diffusers": max(t - jump, -1), "paper": grid[k + 1] if k + 1 < len(grid) else -1}
            for k, t in enumerate(grid)]


def plot_timestep_grids(num_inference_steps: int = 10, num_train_timesteps: int = 1000, steps_offset: int = 0,
                        spacings=SPACINGS) -> Figure:
    """One row per spacing: the grid's timesteps (dots), diffusers' steps t -> t - T//S (arcs above the axis)
    and the paper's steps tau_i -> tau_{i-1} (arcs below). Red arcs: the two rules disagree."""
    S, T = num_inference_steps, num_train_timesteps
    fig = _figure(11, 1.35 * len(spacings) + 0.6)
    axes = fig.subplots(len(spacings), 1, sharex=True, squeeze=False)[:, 0]
    for ax, spacing in zip(axes, spacings):
        rows = previous_timesteps(S, T, spacing, steps_offset)
        grid = [r["t"] for r in rows]
        ax.axhline(0, color="0.6", lw=0.8, zorder=0)
        for r in rows:
            for key, sign in (("diffusers", 1), ("paper", -1)):
                end = r[key]
                differs = r["diffusers"] != r["paper"]
                ax.annotate("", xy=(end, 0), xytext=(r["t"], 0),
                            arrowprops=dict(arrowstyle="->", lw=1.0, color="tab:red" if differs else "0.35",
                                            connectionstyle=f"arc3,rad={0.45 * sign}", shrinkA=2, shrinkB=2))
        off_grid = sorted({r["diffusers"] for r in rows if r["diffusers"] not in grid and r["diffusers"] >= 0})
        ax.plot(grid, [0] * len(grid), "o", color="tab:blue", ms=5, zorder=3, label="grid timesteps")
        if off_grid:
            ax.plot(off_grid, [0] * len(off_grid), "x", color="tab:red", ms=6, zorder=3,
                    label="t - T//S off the grid")
        ax.plot([-1], [0], "s", color="k", ms=4, zorder=3)
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        ax.set_ylabel(spacing, rotation=0, ha="right", va="center")
        ax.text(1.0, 0.95, "above: diffusers, t → t − T//S", transform=ax.transAxes, ha="right", va="top",
                fontsize=7)
        ax.text(1.0, 0.05, "below: paper, τ_i → τ_{i−1}", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=7)
        ax.legend(loc="upper left", fontsize=7, frameon=False, ncols=2)
    axes[-1].set_xlabel("timestep t (the black square at −1 is the clean end, alpha_bar = 1)")
    axes[-1].set_xlim(-T * 0.03, T * 1.01)
    axes[0].set_title(f"S = {S} inference steps out of T = {T} (steps_offset = {steps_offset})", fontsize=10)
    return fig


# ============================================================================ samples side by side
def plot_samplers(samples: dict, nrow: int | None = None) -> Figure:
    """One row per sampler (``samples``: name -> (B, C, H, W) in [-1, 1]); column j is the same x_T everywhere."""
    if not samples:
        raise ValueError("plot_samplers needs at least one sampler's samples.")
    names = list(samples)
    n = nrow or len(next(iter(samples.values())))
    fig = _figure(1.6 + 0.62 * n, 0.66 * len(names) + 0.4)
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        x = samples[name][:n]
        arr = image_grid(x.detach().float().cpu(), nrow=n)
        ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, loc="left", fontsize=8, pad=2)
    return fig


# ============================================================================ the eta and steps sliders
@torch.no_grad()
def ddim_samples(unet, config: dict, x_T: torch.Tensor, eta: float, num_inference_steps: int,
                 seed: int = 0, use_clipped_model_output: bool = True) -> torch.Tensor:
    """DDIM samples (B, C, H, W) in [-1, 1] from the fixed noise ``x_T``; eta > 0 draws from a generator seeded
    ``seed``."""
    from ..pipelines import DDPMPipeline

    pipe = DDPMPipeline(unet, make_sampler("DDIM", config, eta=eta, use_clipped_model_output=use_clipped_model_output))
    images = pipe(batch_size=len(x_T), num_inference_steps=num_inference_steps, latents=x_T,
                  generator=torch.Generator().manual_seed(seed), output_type="pt", progress=False).images
    return images * 2 - 1


# ============================================================================ clipping and the deterministic sampler
CLIPPING_LABELS = {False: "DDIM, the model's eps (diffusers' default)",
                   True: "DDIM, the eps of the clipped x0 (use_clipped_model_output)"}


def clipping_samples(unet, config: dict, x_T: torch.Tensor, num_inference_steps: int) -> dict:
    """DDIM (eta = 0) from the same ``x_T`` twice, for a model configured with ``clip_sample``: stepping with the
    model's own eps_pred next to the clipped x0_pred (DDIMScheduler.step's default, as in diffusers), and with the
    eps_pred that the clipped x0_pred implies. Returns {label: samples (B, C, H, W) in [-1, 1]} (CLIPPING_LABELS)."""
    if not dict(config).get("clip_sample"):
        raise ValueError("clipping_samples compares two ways of clipping; the configuration has clip_sample=False, "
                         "so both would be the same sampler. Pass a configuration with clip_sample=True.")
    return {CLIPPING_LABELS[u]: ddim_samples(unet, config, x_T, 0.0, num_inference_steps, use_clipped_model_output=u)
            for u in (False, True)}


def stray_ink(images: torch.Tensor, threshold: float = -0.5, window: int = 5, max_count: int = 4) -> float:
    """Share of pixels that are "stray ink": brighter than ``threshold`` (images in [-1, 1]), with at most
    ``max_count`` bright pixels (itself included) in the ``window`` x ``window`` block around them. A digit's stroke
    is 2-3 pixels wide and connected, so its pixels have more bright neighbours; specks of noise have fewer."""
    x = torch.as_tensor(images).float()
    if x.ndim != 4:
        raise ValueError(f"stray_ink takes images (B, C, H, W), got shape {tuple(x.shape)}.")
    if window % 2 != 1:
        raise ValueError(f"window must be odd (a block centred on the pixel), got {window}.")
    bright = (x > threshold).float()
    block_count = torch.nn.functional.avg_pool2d(bright, window, stride=1, padding=window // 2,
                                                 count_include_pad=True) * window**2  # bright pixels in each block
    stray = (bright > 0) & (block_count.round() <= max_count)
    return float(stray.float().mean())


def eta_steps_frame(unet, config: dict, x_T: torch.Tensor, eta: float, num_inference_steps: int,
                    seed: int = 0) -> np.ndarray:
    """What the sliders draw: DDIM samples for (eta, S) from the same x_T, as an (H, W, C) array in [0, 1]."""
    return image_grid(ddim_samples(unet, config, x_T, eta, num_inference_steps, seed).cpu(), nrow=len(x_T))


def eta_steps_slider(unet, config: dict, x_T: torch.Tensor, seed: int = 0, steps=(5, 10, 20, 50, 100),
                     etas=(0.0, 0.25, 0.5, 0.75, 1.0), scale: int = 4):
    """An ipywidgets viewer: sliders for eta and S, redrawn with :func:`eta_steps_frame` (results are cached).

    Needs a live Jupyter kernel: in a static page the widget does not move.
    """
    import io

    import ipywidgets as widgets
    from PIL import Image

    cache: dict = {}

    def png(eta: float, S: int) -> bytes:
        if (eta, S) not in cache:
            frame = eta_steps_frame(unet, config, x_T, eta, S, seed)
            arr8 = np.round(np.clip(frame, 0, 1) * 255).astype(np.uint8)
            img = Image.fromarray(arr8[..., 0] if arr8.shape[-1] == 1 else arr8)
            img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            cache[(eta, S)] = buf.getvalue()
        return cache[(eta, S)]

    eta_slider = widgets.SelectionSlider(options=list(etas), value=etas[0], description="eta", continuous_update=False)
    steps_slider = widgets.SelectionSlider(options=list(steps), value=steps[len(steps) // 2], description="S",
                                           continuous_update=False)
    image = widgets.Image(value=png(eta_slider.value, steps_slider.value), format="png")
    label = widgets.Label()

    def redraw(change=None) -> None:
        image.value = png(eta_slider.value, steps_slider.value)
        label.value = (f"DDIM, eta = {eta_slider.value:g} (sigma_t = eta * sqrt(beta-tilde_t), eq. 16), "
                       f"S = {steps_slider.value} steps, the same x_T")

    redraw()
    eta_slider.observe(redraw, names="value")
    steps_slider.observe(redraw, names="value")
    return widgets.VBox([widgets.HBox([eta_slider, steps_slider]), image, label])


def plot_eta_steps(unet, config: dict, x_T: torch.Tensor, etas=(0.0, 0.5, 1.0), steps=(10, 50),
                   seed: int = 0) -> Figure:
    """The slider's pictures as one static figure: a row per (eta, S), calling :func:`eta_steps_frame`."""
    frames = {f"eta={eta:g}, S={S}": eta_steps_frame(unet, config, x_T, eta, S, seed) for S in steps for eta in etas}
    h, w = next(iter(frames.values())).shape[:2]
    fig = _figure(1.6 + w / 40, len(frames) * (h / 40 + 0.1) + 0.3)
    axes = fig.subplots(len(frames), 1, squeeze=False)[:, 0]
    for ax, (name, arr) in zip(axes, frames.items()):
        ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, loc="left", fontsize=8, pad=2)
    return fig


# ============================================================================ quality against steps
@dataclass(frozen=True)
class QualityCell:
    kind: str  # one of SAMPLERS
    steps: int  # S, the number of model evaluations
    eta: float | None = None  # DDIM only

    @property
    def name(self) -> str:
        return sampler_label(self.kind, self.steps, self.eta)


# The table (the DDIM paper's Table 1 in small): DDIM at S = 10..100 for three etas, S = 1000, DDPM,
# and the ODE solvers.
QUALITY_CELLS = (
    *[QualityCell("DDIM", S, eta) for S in (10, 20, 50, 100) for eta in (0.0, 0.5, 1.0)],
    QualityCell("DDIM", 1000, 0.0), QualityCell("DDIM", 1000, 1.0),
    QualityCell("DDPM", 1000),
    *[QualityCell(kind, S) for kind in ("Euler", "DPM-Solver++") for S in (10, 20)],
)
REFERENCE_CELL = "DDPM S=1000"
TARGET_CELLS = ("DDIM S=50 eta=0", "DPM-Solver++ S=20")  # must come within TARGET of the reference
TARGET = {"frechet_ratio": 1.25, "confident_points": 5.0}


def summarize_runs(runs: dict) -> dict:
    """Mean and spread over seeds of one cell's runs ({seed: {"frechet_distance", "confident_share", "seconds"}}).

    The spread is the sample standard deviation (0 for a single seed) and the min..max range.
    """
    if not runs:
        raise ValueError("no runs to summarize.")
    out = {"num_seeds": len(runs)}
    for key in ("frechet_distance", "confident_share", "seconds"):
        values = np.array([float(r[key]) for r in runs.values()])
        out[key] = float(values.mean())
        out[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[f"{key}_min"], out[f"{key}_max"] = float(values.min()), float(values.max())
    return out


def check_targets(cells: dict, reference: str = REFERENCE_CELL, targets=TARGET_CELLS) -> list[dict]:
    """The issue's targets: each target cell's mean Frechet distance <= 1.25 x the reference's, and its mean
    confident share within 5 points of the reference's, read as "at most 5 points below it" (a higher share is
    better, and beating the reference is no failure). One dict per target cell (None values when missing)."""
    results = []
    ref = cells.get(reference, {}).get("summary")
    for name in targets:
        cell = cells.get(name, {}).get("summary")
        row = {"cell": name, "reference": reference, "frechet_ratio": None, "confident_points": None, "passes": None}
        if ref is not None and cell is not None:
            row["frechet_ratio"] = cell["frechet_distance"] / ref["frechet_distance"]
            row["confident_points"] = 100 * (cell["confident_share"] - ref["confident_share"])
            row["passes"] = bool(row["frechet_ratio"] <= TARGET["frechet_ratio"]
                                 and row["confident_points"] >= -TARGET["confident_points"])
        results.append(row)
    return results


def quality_table_markdown(results: dict) -> str:
    """The quality-against-steps table as Markdown, from the benchmark's JSON (``results["cells"]``)."""
    cells = results.get("cells", {})
    n, seeds = results.get("num_samples"), results.get("seeds", [])
    lines = ["| sampler | S | eta | seeds | Fréchet distance (mean ± sd) | confident share (mean ± sd) "
             "| seconds per run |", "|---|---:|---:|---:|---:|---:|---:|"]
    order = {c.name: i for i, c in enumerate(QUALITY_CELLS)}
    for name, cell in sorted(cells.items(), key=lambda item: order.get(item[0], len(order))):
        s = cell.get("summary")
        if s is None:
            continue
        eta = "" if cell.get("eta") is None else f"{cell['eta']:g}"
        k = s.get("num_seeds", len(cell.get("runs", {})))
        fd = f"{s['frechet_distance']:.2f}" + (f" ± {s['frechet_distance_sd']:.2f}" if k > 1 else "")
        cs = f"{100 * s['confident_share']:.1f}%" + (f" ± {100 * s['confident_share_sd']:.1f}" if k > 1 else "")
        lines.append(f"| {cell['kind']} ({cell.get('spacing', '')}) | {cell['steps']} | {eta} | {k} | {fd} | {cs} "
                     f"| {s['seconds']:.1f} |")
    missing = [c.name for c in QUALITY_CELLS if c.name not in cells and not results.get("quick")]
    notes = [f"{n} samples per run, seeds {seeds}; Fréchet distance to the 500 held-out digits in the "
             "classifier's features (lower is better)."]
    if "real_vs_real_frechet" in results:
        notes.append(f"Real against real (500 training digits): {results['real_vs_real_frechet']:.2f}.")
    ddim_runs = [run for cell in cells.values() if cell.get("kind") == "DDIM" for run in cell.get("runs", {}).values()]
    if ddim_runs and all(run.get("options", {}).get("use_clipped_model_output") for run in ddim_runs):
        notes.append("DDIM steps with the noise of the clipped x0 prediction (use_clipped_model_output).")
    if results.get("device"):
        machine = f" ({results['machine']})" if results.get("machine") else ""
        notes.append(f"Times on {results['device']}{machine}.")
    for t in results.get("targets", []):
        if t.get("passes") is not None:
            notes.append(f"Target {t['cell']}: Fréchet {t['frechet_ratio']:.2f}x {t['reference']} (≤ "
                         f"{TARGET['frechet_ratio']}), confident share {t['confident_points']:+.1f} points "
                         f"(at most {TARGET['confident_points']:g} below): **{'pass' if t['passes'] else 'FAIL'}**.")
    if missing:
        notes.append(f"Not measured yet: {', '.join(missing)}.")
    inversion = results.get("inversion", {}).get("rows")
    text = "\n".join(lines) + "\n\n" + " ".join(notes)
    if inversion:
        text += ("\n\n| DDIM inversion, S | MSE per pixel ([0, 1] scale) | PSNR (dB) | std of inverted x_T "
                 "| seconds |\n|---:|---:|---:|---:|---:|\n")
        text += "\n".join(f"| {r['steps']} | {r['mse']:.5f} | {r['psnr']:.1f} | {r['noise_std']:.2f} "
                          f"| {r['seconds']:.1f} |" for r in inversion)
        text += (f"\n\n{results['inversion'].get('num_images', '?')} held-out digits, inverted and reconstructed "
                 "with S steps.")
    return text


def plot_quality(results: dict) -> Figure:
    """Frechet distance and confident share against S (log axis), one line per sampler/eta, DDPM-1000 dashed."""
    cells = results.get("cells", {})
    series: dict[str, list] = {}
    for cell in cells.values():
        if "summary" not in cell or cell["kind"] == "DDPM":
            continue
        key = cell["kind"] + (f" eta={cell['eta']:g}" if cell.get("eta") is not None else "")
        series.setdefault(key, []).append((cell["steps"], cell["summary"]))
    fig = _figure(11, 3.6)
    axes = fig.subplots(1, 2)
    for key, points in series.items():
        points.sort(key=lambda p: p[0])
        S = [p[0] for p in points]
        for ax, metric, scale in ((axes[0], "frechet_distance", 1), (axes[1], "confident_share", 100)):
            mean = np.array([p[1][metric] for p in points]) * scale
            sd = np.array([p[1][f"{metric}_sd"] for p in points]) * scale
            ax.errorbar(S, mean, yerr=sd, marker="o", ms=3, capsize=2, label=key)
    ref = cells.get(REFERENCE_CELL, {}).get("summary")
    all_steps = sorted({S for points in series.values() for S, _ in points})
    for ax, metric, scale in ((axes[0], "frechet_distance", 1), (axes[1], "confident_share", 100)):
        if ref is not None:
            ax.axhline(ref[metric] * scale, color="k", ls="--", lw=1, label=REFERENCE_CELL)
        ax.set_xscale("log")
        ax.set_xticks(all_steps, [str(S) for S in all_steps])
        ax.minorticks_off()
        ax.set_xlabel("S (model evaluations)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Fréchet distance (lower is better)")
    axes[1].set_ylabel("confident share, % (higher is better)")
    axes[1].legend(fontsize=7, loc="lower right")
    if results.get("num_samples"):
        fig.suptitle(f"quality against steps: {results['num_samples']} samples per run, "
                     f"{len(results.get('seeds', []))} seed(s), error bars = sd over seeds", fontsize=9)
    return fig


def plot_round_trip(x0: torch.Tensor, x_T: torch.Tensor, x_rec: torch.Tensor, title: str | None = None):
    """Rows: the images, their inverted noise x_T (shown as x_T / 3), the reconstructions, and |error| x 4.

    One column per image; returns a matplotlib Figure already closed in pyplot (as sdlearn.viz.diffusion's viewers do).
    """
    import matplotlib.pyplot as plt

    from ..viz.images import image_grid, noise_to_display

    if not (x0.shape == x_T.shape == x_rec.shape):
        raise ValueError(f"x0, x_T and x_rec must have one shape, got {tuple(x0.shape)}, {tuple(x_T.shape)}, "
                         f"{tuple(x_rec.shape)}.")
    x0, x_T, x_rec = (v.detach().float().cpu() for v in (x0, x_T, x_rec))
    error = ((x_rec.clamp(-1, 1) - x0).abs() * 4 - 1).clamp(-1, 1)  # |error| x 4 in [0, 2] -> [-1, 1]: 0 is black
    rows = [("image $x_0$", x0), ("inverted $x_T$ (/3)", noise_to_display(x_T)), ("reconstruction", x_rec),
            ("|error| x4", error)]
    n = len(x0)
    fig = plt.figure(figsize=(1.4 + 0.62 * n, 0.7 * len(rows) + 0.5), layout="constrained")
    plt.close(fig)  # returned, not shown twice
    axes = fig.subplots(len(rows), 1)
    for ax, (label, images) in zip(axes, rows):
        arr = image_grid(images, nrow=n)
        ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, loc="left", fontsize=8, pad=2)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
