"""Measured quality of every shipped model: one entry point, :func:`evaluate`.

- ``evaluate_ddpm`` (mnist-ddpm): of 256 samples drawn with 1000 DDPM steps, >= 90% are classified with
  confidence >= 0.9 by the project's classifier, every digit class makes up >= 5% of the confident ones, and
  the Frechet distance to the 500 held-out digits is reported next to the real-vs-real figure (500 training
  digits against the same 500 held-out ones).
- ``evaluate_vae`` (mnist-vae, shapes-vae): held-out images reconstructed with the posterior's mode,
  D(mode of q(z | x)). PSNR on the [0, 1] scale, 10 log10(1 / MSE) with the MSE over all held-out pixels
  (bars: >= 30 dB on shapes, >= 24 dB on digits); shapes: the attribute checker reads the reconstruction as
  showing what the original's specification says (bar >= 95%); digits: the project's classifier reads the
  reconstruction as the original's label (bar >= 95%).
- ``evaluate_t2i`` (shapes-t2i, in text_to_image.py): 512 test captions (one-shape, two-shape, held-out pair),
  read back by the shapes checker against issue 14's bars, with shapes-clip scores.
- ``evaluate_cond`` (mnist-cond): 100 samples per digit, each asked for by its class label, with guidance 3 and
  50 steps of the folder's own scheduler: >= 97% are read as the requested digit with confidence >= 0.9 by the
  classifier, and no digit below 90%; a guidance sweep (s = 1 ... 7.5) measures the quality/diversity trade-off
  of classifier-free guidance (Ho & Salimans 2022, Figure 4): requested share, confident share, Frechet distance.
- ``evaluate_ldm`` (shapes-ldm): 256 samples read by the attribute checker: >= 90% well-formed shapes of a
  known colour, and no colour or shape of the training data missing from the mix.

    python -m sdlearn evaluate mnist-ddpm     # -> quality.json, samples.png and the model card in its folder
    python -m sdlearn evaluate shapes-vae     # -> quality.json, reconstructions.png, README.md
"""

from __future__ import annotations

import math
import os
import time

import torch

from ..data.digits import load_digits
from ..pipelines import DDPMPipeline
from ..training.recipes import ClipRecipe, LatentRecipe, VAERecipe, get_recipe
from .classifier import DigitClassifier, classify, digit_report
from .frechet import frechet_distance
from .text_to_image import is_text_to_image

BAR = {"confident_share": 0.90, "min_class_share": 0.05}
VAE_BARS = {"shapes": {"psnr_db": 30.0, "read_same": 0.95}, "digits": {"psnr_db": 24.0, "read_same": 0.95}}
LDM_BAR = {"well_formed_share": 0.90}
COND_BAR = {"requested_share": 0.97, "min_digit_share": 0.90}  # mnist-cond: guidance 3, 50 steps, 100 per digit
GUIDANCE_SWEEP = (1.0, 1.5, 2.0, 3.0, 5.0, 7.5)


@torch.no_grad()
def sample_digits(pipeline: DDPMPipeline, num_samples: int, num_inference_steps: int, seed: int,
                  batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """num_samples digits (N, 1, 32, 32) in [-1, 1] drawn with a seeded generator.

    The samples depend on ``batch_size`` (the generator is drawn from batch by batch): keep it to reproduce a
    recorded figure. On a CPU, batches of 64 are faster per image (larger ones fall out of cache).
    """
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        images = pipeline(batch_size=n, num_inference_steps=num_inference_steps, generator=generator,
                          output_type="pt", progress=progress).images  # (n, 1, 32, 32) in [0, 1]
        chunks.append(images * 2 - 1)
    return torch.cat(chunks)


def real_vs_real(classifier: DigitClassifier) -> float:
    """Frechet distance between 500 training digits (every 9th) and the 500 held-out digits: the floor to compare with."""
    train, test = load_digits("train").images, load_digits("test").images
    _, f_train = classify(classifier, train[::9][:500])
    _, f_test = classify(classifier, test)
    return frechet_distance(f_train, f_test)


def evaluate_ddpm(name_or_folder: str = "mnist-ddpm", num_samples: int = 256, num_inference_steps: int = 1000,
             seed: int = 0, progress: bool = True, batch_size: int = 256) -> dict:
    pipeline = DDPMPipeline.from_pretrained(name_or_folder)
    classifier = DigitClassifier.from_pretrained("mnist-classifier")
    started = time.time()
    samples = sample_digits(pipeline, num_samples, num_inference_steps, seed, batch_size=batch_size, progress=progress)
    seconds = time.time() - started
    report = digit_report(samples, classifier, load_digits("test").images)
    report.update(
        num_inference_steps=num_inference_steps, seed=seed, batch_size=batch_size, sampling_seconds=round(seconds, 1),
        real_vs_real_frechet=real_vs_real(classifier),
        passes_bar=report["confident_share"] >= BAR["confident_share"] and report["min_class_share"] >= BAR["min_class_share"],
        device=str(pipeline.device), torch_threads=torch.get_num_threads(),
    )
    return report, samples


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1], measured on the [0, 1] scale (peak 1)."""
    mse = ((x.float() - y.float()) / 2).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def held_out(data: str, num_images: int | None = None):
    """(images, labels): the held-out digits with their classes, or held-out shapes with their specs."""
    if data == "digits":
        from ..data.digits import load_digits

        d = load_digits("test")
        return d.images[:num_images], d.labels[:num_images].tolist()
    from ..data import load_shapes

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
    from ..models.autoencoder_kl import AutoencoderKL

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
        from .classifier import DigitClassifier, classify

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
    from ..pipelines import LatentDiffusionPipeline
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


@torch.no_grad()
def sample_classes(pipeline, per_class: int, guidance_scale: float, num_inference_steps: int, seed: int,
                   batch_size: int = 100, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 32, 32) in [-1, 1], requested labels (N,)): ``per_class`` samples of each digit, seeded."""
    labels = torch.arange(10).repeat_interleave(per_class)  # 0, 0, ..., 9, 9
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, len(labels), batch_size):
        out = pipeline(class_labels=labels[start:start + batch_size], guidance_scale=guidance_scale,
                       num_inference_steps=num_inference_steps, generator=generator, output_type="pt",
                       progress=False).images  # (n, 1, 32, 32) in [0, 1]
        chunks.append(out * 2 - 1)
        if progress:
            print(f"  guidance {guidance_scale:g}: {start + len(out)}/{len(labels)} samples", flush=True)
    return torch.cat(chunks), labels


def class_report(samples: torch.Tensor, labels: torch.Tensor, classifier: DigitClassifier,
                 reference_feats: torch.Tensor) -> dict:
    """How often each requested digit is what the classifier reads, with confidence >= 0.9."""
    probs, feats = classify(classifier, samples)
    confident = probs.max(dim=1).values >= 0.9
    requested = confident & (probs.argmax(dim=1) == labels)
    per_digit = [float(requested[labels == d].float().mean()) for d in range(10)]
    return {"requested_share": float(requested.float().mean()), "per_digit_requested_share": per_digit,
            "min_digit_share": min(per_digit), "confident_share": float(confident.float().mean()),
            "frechet_distance": frechet_distance(feats, reference_feats)}


def evaluate_cond(name_or_folder: str = "mnist-cond", per_class: int = 100, num_inference_steps: int = 50,
                  seed: int = 0, guidance_scales=GUIDANCE_SWEEP, bar_scale: float = 3.0, sweep_per_class: int = 30,
                  progress: bool = True) -> tuple[dict, torch.Tensor]:
    """The bar at guidance ``bar_scale`` (``per_class`` samples of each digit) and the guidance sweep at the other
    scales (``sweep_per_class`` each, to keep the CPU time reasonable); returns (report, 8 samples per digit at the
    bar)."""
    from ..pipelines import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(name_or_folder)
    classifier = DigitClassifier.from_pretrained("mnist-classifier")
    _, reference_feats = classify(classifier, load_digits("test").images)
    sweep, shown = {}, None
    for s in sorted(set(guidance_scales) | {bar_scale}):
        started = time.time()
        n = per_class if s == bar_scale else sweep_per_class
        samples, labels = sample_classes(pipeline, n, s, num_inference_steps, seed, progress=progress)
        sweep[f"{s:g}"] = dict(class_report(samples, labels, classifier, reference_feats), samples=len(labels),
                               sampling_seconds=round(time.time() - started, 1))
        if s == bar_scale:
            shown = torch.cat([samples[labels == d][:8] for d in range(10)])  # 8 of each digit, in rows of 8
    at_bar = sweep[f"{bar_scale:g}"]
    report = dict(at_bar, guidance_scale=bar_scale, num_inference_steps=num_inference_steps, per_class=per_class,
                  sweep_per_class=sweep_per_class,
                  seed=seed, scheduler=type(pipeline.scheduler).__name__, sweep=sweep,
                  real_vs_real_frechet=real_vs_real(classifier), torch_threads=torch.get_num_threads(),
                  passes_bar=at_bar["requested_share"] >= COND_BAR["requested_share"]
                  and at_bar["min_digit_share"] >= COND_BAR["min_digit_share"])
    return report, shown


def evaluate(name_or_folder: str, num_samples: int = 256, num_inference_steps: int = 1000, seed: int = 0,
             progress: bool = True, batch_size: int = 64) -> tuple[dict, str, torch.Tensor]:
    """Measure any shipped model by its recipe's kind: (report, picture name, images for the picture).

    The picture is 64 samples (``samples.png``) or 16 held-out images above their reconstructions
    (``reconstructions.png``). ``report["passes_bar"]`` says whether the model meets its bar.
    """
    name = os.path.basename(os.path.normpath(os.fspath(name_or_folder)))
    recipe = get_recipe(name)
    if isinstance(recipe, ClipRecipe):  # retrieval and word order on the test split (clip_metrics.py); no picture
        from .clip_metrics import evaluate_clip

        return evaluate_clip(name_or_folder), None, None
    if is_text_to_image(recipe):  # issue 14's bars on 512 test captions (text_to_image.py)
        from .text_to_image import evaluate_t2i_card

        report, shown = evaluate_t2i_card(name_or_folder, num_samples=512, seed=seed, progress=progress,
                                          batch_size=min(batch_size, 64))
        return report, "samples.png", shown
    if isinstance(recipe, VAERecipe):
        report, images, rec = evaluate_vae(name_or_folder)
        pick = torch.linspace(0, len(images) - 1, 16).long()  # spread over the set (the digits are sorted by class)
        return report, "reconstructions.png", torch.cat([images[pick], rec[pick]])
    if isinstance(recipe, LatentRecipe) and recipe.class_conditional:
        report, shown = evaluate_cond(name_or_folder, progress=progress)
        return report, "samples.png", shown
    if isinstance(recipe, LatentRecipe):
        report, samples = evaluate_ldm(name_or_folder, num_samples, num_inference_steps, seed, progress=progress,
                                       batch_size=min(batch_size, 64))
        return report, "samples.png", samples[:64]
    report, samples = evaluate_ddpm(name_or_folder, num_samples=num_samples, num_inference_steps=num_inference_steps,
                                    seed=seed, progress=progress, batch_size=batch_size)
    return report, "samples.png", samples[:64]
