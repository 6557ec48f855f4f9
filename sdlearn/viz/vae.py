"""Chapter 3's pictures: latents, reconstructions, interpolations, the scale factor, the KL weight's effect.

- :func:`psnr` and :func:`plot_reconstructions`: originals above their reconstructions, PSNR per image.
- :func:`show_latent_channels`: the c channels of a latent z (B, c, h, w) as grey pictures on one shared
  scale (so a faint channel looks faint); :func:`pca_rgb` / :func:`latent_pca_rgb`: the c channels projected
  on their 3 principal components (fitted on the batch) and shown as the R, G, B of one picture per latent.
- :func:`plot_interpolation`: decodings of (1 - a) z_a + a z_b between two posterior means, above the
  pixel cross-fade (1 - a) x_a + a x_b for comparison.
- :func:`plot_latent_histograms`: latent values before and after the scale factor (Rombach et al. 2022,
  sec. 4.3.2), with the N(0, 1) density the diffusion model expects drawn over.
- :func:`plot_kl_sweep_entry`, :func:`plot_kl_sweep_overview` and :func:`kl_slider`: the pre-computed
  sweep over the KL weight (``python -m sdlearn.training.kl_sweep``, shipped as ``sdlearn/pretrained/kl-sweep``).

Images are in [-1, 1] and shown as (x + 1) / 2 (sdlearn.viz.diffusion's convention); every function returns a
matplotlib Figure already closed in pyplot (it displays itself in Jupyter, ``fig.savefig`` in a script).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from matplotlib.figure import Figure

from .images import image_grid, to_display


def _figure(width: float, height: float) -> Figure:
    """A Figure made through pyplot (so Jupyter's inline backend shows it) and closed there at once."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(max(width, 1.0), max(height, 1.0)), layout="constrained")
    plt.close(fig)
    return fig


def _batch(x, name: str, channels: int | None = None) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W), tensor or array -> float CPU (B, C, H, W), finite."""
    x = torch.as_tensor(x).detach().float().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"{name} must be shaped (B, C, H, W) (or (C, H, W) for one), got {tuple(x.shape)}.")
    if channels is not None and x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be images with 1 or 3 channels, got C={x.shape[1]} in {tuple(x.shape)}; "
                         "for latents use show_latent_channels or latent_pca_rgb.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf; nothing sensible can be drawn.")
    return x


def _show(ax, arr: np.ndarray, **kwargs) -> None:
    """An (H, W, C) array in [0, 1] (gray for C = 1) or an (H, W) array with explicit vmin/vmax; no ticks."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    elif arr.ndim == 3:
        ax.imshow(arr, interpolation="nearest")
    else:
        ax.imshow(arr, cmap="gray", interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------- reconstructions
def psnr(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image (B,), in dB, on the [0, 1] scale: 10 log10(1 / MSE).

    Both batches are in [-1, 1] and are mapped with (x + 1) / 2, clamped, as they are displayed.
    """
    x, x_rec = _batch(x, "x"), _batch(x_rec, "x_rec")
    if x.shape != x_rec.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_rec {tuple(x_rec.shape)} must have the same shape.")
    mse = (to_display(x) - to_display(x_rec)).pow(2).flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def plot_reconstructions(x: torch.Tensor, x_rec: torch.Tensor, title: str | None = None) -> Figure:
    """Originals (top row) above their reconstructions (bottom row), with each reconstruction's PSNR."""
    x, x_rec = _batch(x, "x", channels=True), _batch(x_rec, "x_rec", channels=True)
    if x.shape != x_rec.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_rec {tuple(x_rec.shape)} must have the same shape; "
                         "reconstruct with vae(x).sample (or vae.decode(vae.encode(x).latent_dist.mode()).sample).")
    scores = psnr(x, x_rec)
    n = x.shape[0]
    fig = _figure(1.0 + 1.1 * n, 2.8)
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    for j in range(n):
        _show(axes[0, j], image_grid(x[j:j + 1], padding=0))
        _show(axes[1, j], image_grid(x_rec[j:j + 1], padding=0))
        axes[1, j].set_title(f"{scores[j]:.1f} dB", fontsize=8)
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("reconstruction", fontsize=8)
    head = f"mean PSNR {scores.mean():.1f} dB (on the [0, 1] scale)"
    fig.suptitle(f"{title}: {head}" if title else head, fontsize=10)
    return fig


# ---------------------------------------------------------------------------- latents as pictures
def show_latent_channels(z: torch.Tensor, title: str | None = None, max_rows: int = 8) -> Figure:
    """The c channels of latents z (B, c, h, w) or (c, h, w): one grey picture per channel, rows = latents.

    One colour scale for every picture, symmetric around 0 (mid grey = 0, white = +max |z|), so the channels
    can be compared with each other; the colour bar gives the values.
    """
    z = _batch(z, "z")[:max_rows]
    B, c = z.shape[:2]
    vmax = float(z.abs().max()) or 1.0
    fig = _figure(1.2 + 1.25 * c, 0.6 + 1.25 * B)
    axes = np.asarray(fig.subplots(B, c, squeeze=False))
    for b in range(B):
        for k in range(c):
            _show(axes[b, k], z[b, k].numpy(), vmin=-vmax, vmax=vmax)
            if b == 0:
                axes[b, k].set_title(f"channel {k}", fontsize=8)
    fig.colorbar(axes[0, 0].images[0], ax=axes.ravel().tolist(), shrink=0.8, label="latent value")
    fig.suptitle(title or f"latent channels, {c} x {z.shape[2]} x {z.shape[3]} (shared scale)", fontsize=10)
    return fig


def pca_rgb(z_batch: torch.Tensor, num_std_clip: float = 0.99) -> tuple[np.ndarray, np.ndarray]:
    """Project the c channels of every latent pixel on their top 3 principal components -> RGB.

    Fitted on the batch (all pixels of all latents together): the components are the eigenvectors of the
    c x c covariance of the channel vectors, largest variance first, each with the sign that makes its
    largest loading positive (so the colours do not flip between runs). Component k becomes colour channel
    k: 0.5 + 0.5 * value / (the ``num_std_clip`` quantile of |value|), clipped to [0, 1]. With c < 3 the
    missing colours are 0.5. Returns (rgb (B, h, w, 3) in [0, 1], explained-variance ratios (k,)).
    """
    z = _batch(z_batch, "z_batch").double()
    B, c, h, w = z.shape
    X = z.permute(0, 2, 3, 1).reshape(-1, c)  # (B*h*w, c): one channel vector per latent pixel
    X = X - X.mean(0)
    cov = X.T @ X / max(len(X) - 1, 1)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(values, descending=True)[: min(3, c)]
    values, vectors = values[order], vectors[:, order]  # (k,), (c, k)
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))  # largest loading positive
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    proj = X @ vectors  # (B*h*w, k)
    scale = torch.quantile(proj.abs(), num_std_clip, dim=0).clamp_min(1e-12)
    rgb = torch.full((len(X), 3), 0.5, dtype=torch.float64)
    rgb[:, : proj.shape[1]] = (0.5 + 0.5 * proj / scale).clamp(0, 1)
    explained = (values / torch.linalg.eigvalsh(cov).sum().clamp_min(1e-12)).clamp(0, 1)
    return rgb.reshape(B, h, w, 3).float().numpy(), explained.float().numpy()


def latent_pca_rgb(z_batch: torch.Tensor, images: torch.Tensor | None = None, title: str | None = None,
                   max_images: int = 8) -> Figure:
    """One RGB picture per latent from :func:`pca_rgb` (PCA fitted on the whole batch), under its image if given.

    Similar colours mean similar channel vectors: the same kind of content at that place in the image.
    """
    z = _batch(z_batch, "z_batch")
    rgb, explained = pca_rgb(z)
    n = min(len(z), max_images)
    rows = 2 if images is not None else 1
    if images is not None:
        images = _batch(images, "images", channels=True)
        if len(images) < n:
            raise ValueError(f"got {len(images)} images for {len(z)} latents; give one image per latent.")
    fig = _figure(1.0 + 1.15 * n, 0.7 + 1.25 * rows)
    axes = np.asarray(fig.subplots(rows, n, squeeze=False))
    for j in range(n):
        if images is not None:
            _show(axes[0, j], image_grid(images[j:j + 1], padding=0))
        _show(axes[-1, j], rgb[j])
    if images is not None:
        axes[0, 0].set_ylabel("image", fontsize=8)
    axes[-1, 0].set_ylabel("latent (PCA)", fontsize=8)
    share = ", ".join(f"{v:.0%}" for v in explained)
    head = f"{z.shape[1]} latent channels -> 3 principal components as R, G, B (variance explained: {share})"
    fig.suptitle(title or head, fontsize=9)
    return fig


# ---------------------------------------------------------------------------- interpolation
@torch.no_grad()
def plot_interpolation(vae, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8, pixel_blend: bool = True) -> Figure:
    """Decodings of z = (1 - a) z_a + a z_b for a = 0 .. 1 (z_a, z_b: the posterior means of x_a, x_b).

    With ``pixel_blend`` a second row shows the cross-fade (1 - a) x_a + a x_b: the pixel average passes
    through double exposures, the latent path through images the decoder can make.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the two ends), got {steps}.")
    x_a, x_b = _batch(x_a, "x_a", channels=True)[:1], _batch(x_b, "x_b", channels=True)[:1]
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a {tuple(x_a.shape)} and x_b {tuple(x_b.shape)} must have the same shape.")
    was_training = vae.training
    vae.eval()
    device, dtype = vae.device, vae.dtype
    z = vae.encode(torch.cat([x_a, x_b]).to(device, dtype)).latent_dist.mode()  # (2, c, h, w)
    a = torch.linspace(0, 1, steps, device=device, dtype=dtype).view(-1, 1, 1, 1)  # (steps, 1, 1, 1)
    decoded = vae.decode((1 - a) * z[:1] + a * z[1:]).sample.float().cpu().clamp(-1, 1)  # (steps, C, H, W)
    vae.train(was_training)
    a = a.float().cpu()
    rows = [("latent path", decoded)]
    if pixel_blend:
        rows.append(("pixel cross-fade", (1 - a) * x_a + a * x_b))
    fig = _figure(1.0 + 1.1 * steps, 0.6 + 1.25 * len(rows))
    axes = np.asarray(fig.subplots(len(rows), steps, squeeze=False))
    for r, (label, row) in enumerate(rows):
        for j in range(steps):
            _show(axes[r, j], image_grid(row[j:j + 1], padding=0))
            if r == 0:
                axes[r, j].set_title(f"a = {float(a[j]):.2f}", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(r"decode$((1-a)\,z_a + a\,z_b)$ between two posterior means", fontsize=10)
    return fig


# ---------------------------------------------------------------------------- the scale factor
def plot_latent_histograms(z: torch.Tensor, scaling_factor: float, bins: int = 80) -> Figure:
    """Histograms of the latent values per channel, unscaled (left) and times ``scaling_factor`` (right),
    with the standard normal density drawn over both: the diffusion model's noise schedule assumes data of
    about unit variance (Rombach et al. 2022, sec. 4.3.2)."""
    z = _batch(z, "z")
    if not math.isfinite(scaling_factor) or scaling_factor <= 0:
        raise ValueError(f"scaling_factor must be a positive number, got {scaling_factor}.")
    fig = _figure(11, 3.4)
    axes = fig.subplots(1, 2)
    for ax, values, name in ((axes[0], z, "z (unscaled)"),
                             (axes[1], z * scaling_factor, rf"$z_0$ = {scaling_factor:.4g} $\cdot$ z")):
        limit = max(4.0, 4.0 * float(values.std()))  # +-4 standard deviations, and at least N(0, 1)'s +-4
        edges = np.linspace(-limit, limit, bins + 1)
        for k in range(values.shape[1]):
            ax.hist(values[:, k].flatten().numpy(), bins=edges, density=True, histtype="step", lw=1.2,
                    label=f"channel {k}")
        grid = np.linspace(-limit, limit, 401)  # odd: the peak at 0 is drawn
        ax.plot(grid, np.exp(-grid**2 / 2) / math.sqrt(2 * math.pi), "k--", lw=1.2, label="N(0, 1)")
        ax.set(title=f"{name}: mean {float(values.mean()):+.2f}, std {float(values.std()):.3f}", xlabel="value",
               ylabel="density", xlim=(-limit, limit))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper right")
    return fig


# ---------------------------------------------------------------------------- the KL-weight sweep
def _entry_text(entry: dict) -> str:
    return (f"KL weight {entry['kl_weight']:g}: PSNR {entry['psnr']:.1f} dB, KL {entry['kl_per_element']:.2f} "
            f"nats per latent element, latent std {entry['latent_std']:.2f}, "
            f"posterior std {entry['posterior_std']:.2f}")


def _plot_tradeoff(ax, results: dict, index: int | None = None) -> None:
    """PSNR (left axis) and KL per element (right axis) against the KL weight; the chosen weight marked."""
    entries = results["entries"]
    w = np.array([e["kl_weight"] for e in entries])
    positive = w[w > 0]
    ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
    ax.plot(w, [e["psnr"] for e in entries], "o-", color="tab:blue")
    ax.set_ylabel("held-out PSNR (dB)", color="tab:blue", fontsize=8)
    ax.set_xlabel("KL weight (symlog)", fontsize=8)
    twin = ax.twinx()
    twin.plot(w, [e["kl_per_element"] for e in entries], "s--", color="tab:red")
    twin.set_ylabel("KL per latent element (nats)", color="tab:red", fontsize=8)
    if index is not None:
        ax.axvline(w[index], color="gray", lw=6, alpha=0.3)
    ax.tick_params(labelsize=7)
    twin.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _check_index(results: dict, images: dict, index: int) -> None:
    n = len(results["entries"])
    if not -n <= index < n:
        raise IndexError(f"index {index} is out of range: the sweep has {n} KL weights {results['weights']}.")
    for key in ("originals", "reconstructions", "prior_samples", "latents"):
        if key not in images:
            raise KeyError(f"images has no {key!r}; load both files with sdlearn.training.kl_sweep.load_sweep(folder).")


def plot_kl_sweep_entry(results: dict, images: dict, index: int) -> Figure:
    """One KL weight of the sweep: held-out digits over their reconstructions, decodings of prior samples,
    the latent channels of one digit (shared scale), and where this weight sits on the PSNR/KL curves."""
    _check_index(results, images, index)
    entry = results["entries"][index]
    fig = _figure(12.5, 4.4)
    grid = fig.add_gridspec(2, 2, width_ratios=[2.1, 1.0])
    ax_rec, ax_prior = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0])
    ax_lat, ax_curve = fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])
    pairs = torch.cat([images["originals"], images["reconstructions"][index]])  # (16, 1, H, W)
    _show(ax_rec, image_grid(pairs, nrow=len(images["originals"])))
    ax_rec.set_title("held-out digits (top) and their reconstructions (bottom)", fontsize=9)
    _show(ax_prior, image_grid(images["prior_samples"][index], nrow=len(images["prior_samples"][index])))
    ax_prior.set_title(r"decoded prior samples $z = \epsilon\,/\,$scaling, $\epsilon \sim \mathcal{N}(0, I)$",
                       fontsize=9)
    z = images["latents"][index]  # (c, h, w)
    vmax = float(images["latents"].abs().max()) or 1.0  # one grey scale for every weight: flat means "nothing"
    _show(ax_lat, image_grid((z / vmax).unsqueeze(1), nrow=z.shape[0], pad_value=1.0))
    ax_lat.set_title(f"the {z.shape[0]} latent channels of the first digit\n(grey scale +-{vmax:.2g}, the same "
                     "for every weight)", fontsize=9)
    _plot_tradeoff(ax_curve, results, index)
    fig.suptitle(_entry_text(entry), fontsize=10)
    return fig


def plot_kl_sweep_overview(results: dict, images: dict, num_images: int = 6) -> Figure:
    """Every weight of the sweep at once: per row, reconstructions (left) and decoded prior samples (right)."""
    entries = results["entries"]
    n = min(num_images, len(images["originals"]))
    fig = _figure(11, 0.8 + 0.95 * (len(entries) + 1))
    axes = np.asarray(fig.subplots(len(entries) + 1, 2, squeeze=False))
    _show(axes[0, 0], image_grid(images["originals"][:n], nrow=n))
    axes[0, 0].set_title("reconstructions of held-out digits", fontsize=9)
    axes[0, 0].set_ylabel("originals", fontsize=8, rotation=0, ha="right", va="center")
    axes[0, 1].axis("off")
    for i, entry in enumerate(entries):
        _show(axes[i + 1, 0], image_grid(images["reconstructions"][i][:n], nrow=n))
        _show(axes[i + 1, 1], image_grid(images["prior_samples"][i][:n], nrow=n))
        axes[i + 1, 0].set_ylabel(f"beta = {entry['kl_weight']:g}\n{entry['psnr']:.1f} dB\n"
                                  f"KL {entry['kl_per_element']:.2f}", fontsize=8, rotation=0, ha="right", va="center")
    axes[1, 1].set_title(r"decoded prior samples, $z = \epsilon\,/\,$scaling", fontsize=9)
    return fig


def _png(fig: Figure, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _nearest(weights: list[float], target: float) -> int:
    """Index of the weight closest to ``target`` on a log scale (0 is only closest to 0)."""
    if target in weights or target <= 0:
        return weights.index(target) if target in weights else 0
    positive = [(abs(math.log10(w) - math.log10(target)), i) for i, w in enumerate(weights) if w > 0]
    return min(positive)[1] if positive else 0


def kl_slider(results_folder: str = "kl-sweep", start_weight: float | None = None, dpi: int = 80):
    """An ipywidgets viewer of the shipped sweep: a SelectionSlider over the KL weights that redraws
    :func:`plot_kl_sweep_entry`. Returns a VBox [slider, image, label]; pictures are cached.

    ``results_folder``: a folder written by ``python -m sdlearn.training.kl_sweep --out FOLDER``, or the shipped
    "kl-sweep". ``start_weight``: the weight shown first (the nearest in the sweep); default: the
    ``mnist-vae`` recipe's. Needs a live Jupyter kernel to move (in a static page only the first picture is there).
    """
    import ipywidgets as widgets

    from ..training.kl_sweep import load_sweep

    results, images = load_sweep(results_folder)
    weights = [e["kl_weight"] for e in results["entries"]]
    cache: dict[int, bytes] = {}

    def png(index: int) -> bytes:
        if index not in cache:
            cache[index] = _png(plot_kl_sweep_entry(results, images, index), dpi)
        return cache[index]

    if start_weight is None:
        from ..training.recipes import get_recipe

        start_weight = get_recipe("mnist-vae").loss.kl_weight
    start = _nearest(weights, float(start_weight))
    slider = widgets.SelectionSlider(options=[(f"{w:g}", i) for i, w in enumerate(weights)], value=start,
                                     description="KL weight", continuous_update=False,
                                     style={"description_width": "initial"})
    image = widgets.Image(value=png(start), format="png")
    label = widgets.Label(_entry_text(results["entries"][start]))

    def redraw(change) -> None:
        index = int(change["new"])
        image.value = png(index)
        label.value = _entry_text(results["entries"][index])

    slider.observe(redraw, names="value")
    return widgets.VBox([slider, image, label])
