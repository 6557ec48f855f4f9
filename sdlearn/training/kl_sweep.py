"""The KL weight's effect, measured once and shipped: what chapter 3's slider shows.

For each KL weight beta (Higgins et al. 2017) in a list, the ``mnist-vae`` architecture is trained from the
same initial weights on the 4,500 training digits for a few hundred steps with
``VAELoss(kl_weight=beta)`` (per-image sums: L1 over the pixels + beta * KL over the latent elements), and
measured on the 500 held-out digits with the posterior's mode: PSNR ([0, 1] scale), KL per latent element,
latent standard deviation (1 / the scale factor) and mean posterior standard deviation. It keeps pictures
too: reconstructions of 8 fixed held-out digits, decodings of 8 latents drawn from N(0, I) / scaling_factor
(what "generate by sampling the prior" would give), and the latent channels of one digit.

    python -m sdlearn.training.kl_sweep [--steps 300] [--weights 0 1e-3 ...] [--out FOLDER] [--threads 1]

writes ``results.json``, ``images.safetensors`` (fp16) and ``README.md`` (command, time, machine) in ``--out``
(default: the shipped folder, ``sdlearn/pretrained/kl-sweep``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time

import torch

from ..utils.files import PRETRAINED_DIR

DEFAULT_WEIGHTS = (0.0, 1e-3, 1e-2, 2e-2, 5e-2, 1e-1)  # sharp .. posterior collapse; 1e-3: the recipes'
DEFAULT_STEPS = 300
DEFAULT_OUT = os.path.join(PRETRAINED_DIR, "kl-sweep")
NUM_SHOWN = 8  # held-out digits reconstructed, and prior samples decoded, per weight
SEED = 0


def train_config(steps: int, seed: int = SEED):
    """The short training run of every weight (the recipe's optimiser, fewer and smaller steps)."""
    from .loop import TrainConfig

    return TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup_steps=min(50, max(1, steps // 5)),
                       lr_schedule="cosine", min_lr_ratio=0.05, grad_clip=1.0, ema_decay=0.99, seed=seed,
                       checkpoint_every=10**9)


def shown_indices(labels: torch.Tensor, n: int = NUM_SHOWN) -> list[int]:
    """The first held-out digit of each class 0, 1, ..., n-1: a fixed set of different digits."""
    return [int(torch.nonzero(labels == c)[0]) for c in range(n)]


@torch.no_grad()
def measure(vae, test_images: torch.Tensor, batch_size: int = 100) -> tuple[dict, torch.Tensor]:
    """Held-out figures of one trained VAE; also returns the mode latents (N, c, h, w)."""
    vae.eval()
    sq_err, latents, kls, stds = [], [], [], []
    for start in range(0, len(test_images), batch_size):
        x = test_images[start:start + batch_size]
        posterior = vae.encode(x).latent_dist
        x_rec = vae.decode(posterior.mode()).sample.clamp(-1, 1)
        sq_err.append(((x_rec - x) / 2).pow(2).flatten(1).mean(1))  # per-image MSE on the [0, 1] scale
        latents.append(posterior.mode())
        kls.append(posterior.kl())  # (B,), summed over the latent elements
        stds.append(posterior.std.flatten(1).mean(1))
    latents = torch.cat(latents)
    mse = torch.cat(sq_err)
    per_element = latents[0].numel()
    figures = {
        "psnr": 10 * math.log10(1.0 / float(mse.mean())),  # of the mean squared error over all held-out pixels
        "psnr_mean_per_image": float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()),
        "kl_per_element": float(torch.cat(kls).mean()) / per_element,  # nats
        "latent_mean": float(latents.mean()),
        "latent_std": float(latents.std()),
        "posterior_std": float(torch.cat(stds).mean()),
    }
    return figures, latents


def sweep(weights=DEFAULT_WEIGHTS, steps: int = DEFAULT_STEPS, seed: int = SEED, progress: bool = True,
          num_train: int | None = None, num_test: int | None = None) -> tuple[dict, dict]:
    """Train and measure one VAE per KL weight. Returns (results for results.json, fp16-able image tensors).

    ``num_train`` / ``num_test``: use only the first digits of each split (for quick tests)."""
    from tqdm.auto import tqdm

    from ..data.digits import load_digits, split_indices
    from .recipes import get_recipe
    from .loop import train
    from ..models.autoencoder_kl import AutoencoderKL
    from .losses import VAELoss

    recipe = get_recipe("mnist-vae")
    digits = load_digits("all")  # read once, split as load_digits("train") / ("test") do
    train_idx, test_idx = split_indices(digits.labels.numpy())
    train_images = digits.images[train_idx][:num_train]  # (4500, 1, 32, 32) in [-1, 1]
    test_images, test_labels = digits.images[test_idx], digits.labels[test_idx]  # the 500 held-out digits
    shown = shown_indices(test_labels)
    originals = test_images[shown]  # (8, 1, 32, 32)
    test_images = test_images[:num_test]
    cfg = train_config(steps, seed)
    f = recipe.vae.downsampling_factor
    latent_shape = (recipe.vae.latent_channels, 32 // f, 32 // f)
    prior_eps = torch.randn((NUM_SHOWN, *latent_shape), generator=torch.Generator().manual_seed(seed + 1))

    entries, recs, priors, channels = [], [], [], []
    bar = tqdm(list(weights), desc="KL weights", disable=not progress)
    for beta in bar:
        bar.set_postfix(kl_weight=f"{beta:g}")
        torch.manual_seed(seed)  # the same initial weights for every beta
        vae = AutoencoderKL(recipe.vae)
        tic = time.perf_counter()
        result = train(vae, None, train_images, cfg, progress=progress, loss_fn=VAELoss(kl_weight=float(beta)))
        seconds = time.perf_counter() - tic
        model = result.ema_model.eval()
        figures, latents = measure(model, test_images)
        scaling = 1.0 / max(figures["latent_std"], 1e-8)
        with torch.no_grad():
            posterior = model.encode(originals).latent_dist
            recs.append(model.decode(posterior.mode()).sample.clamp(-1, 1))  # (8, 1, 32, 32)
            channels.append(posterior.mode()[0])  # (c, h, w): the first shown digit
            priors.append(model.decode(prior_eps / scaling).sample.clamp(-1, 1))  # z = eps / scaling_factor
        entries.append({"kl_weight": float(beta), **{k: round(v, 5) for k, v in figures.items()},
                        "scaling_factor": round(scaling, 5),
                        "final_loss": round(sum(result.losses[-20:]) / len(result.losses[-20:]), 3),
                        "train_seconds": round(seconds, 1),
                        "losses": [round(v, 2) for v in result.losses]})
        bar.write(f"kl_weight {beta:g}: PSNR {figures['psnr']:.2f} dB, KL {figures['kl_per_element']:.3f} nats per "
                  f"element, latent std {figures['latent_std']:.3f}, posterior std {figures['posterior_std']:.3f} "
                  f"({seconds:.0f} s)")
    results = {
        "what": "mnist-vae architecture trained for `steps` steps at each KL weight (VAELoss, per-image sums); "
                "figures on the 500 held-out digits with the posterior's mode",
        "recipe": "mnist-vae",
        "steps": steps,
        "seed": seed,
        "num_train_images": len(train_images),
        "num_test_images": len(test_images),
        "train_config": dataclasses.asdict(cfg),
        "reconstruction": "l1",
        "shown_test_indices": shown,
        "latent_shape": list(latent_shape),
        "weights": [float(b) for b in weights],
        "entries": entries,
    }
    images = {"originals": originals, "reconstructions": torch.stack(recs), "prior_samples": torch.stack(priors),
              "latents": torch.stack(channels)}
    return results, images


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def write_readme(out: str, results: dict) -> None:
    from .recipes import get_recipe

    recipe = get_recipe(results.get("recipe", "mnist-vae"))
    rows = "\n".join(
        f"| {e['kl_weight']:g} | {e['psnr']:.2f} | {e['kl_per_element']:.3f} | {e['latent_std']:.3f} | "
        f"{e['posterior_std']:.3f} | {e['train_seconds']:.0f} |" for e in results["entries"])
    run = results["run"]
    text = f"""# kl-sweep: the KL weight's effect on a small VAE (chapter 3's slider)

The `mnist-vae` architecture (sdlearn.training.recipes), trained from the same seed for {results['steps']} steps of 32
digits at each KL weight beta, with `VAELoss(kl_weight=beta)`: per image, the L1 error summed over the pixels
plus beta times KL(q(z | x) || N(0, I)) summed over the {math.prod(results['latent_shape'])} latent elements.
Measured on the 500 held-out digits, reconstructing with the posterior's mode; PSNR on the [0, 1] scale.
These are short runs, to show the trend: the shipped `mnist-vae` trains for {recipe.train.steps:,} steps of
{recipe.train.batch_size} with beta = {recipe.loss.kl_weight:g}.

| KL weight | PSNR (dB) | KL per latent element (nats) | latent std | mean posterior std | train s |
|---|---|---|---|---|---|
{rows}

Files: `results.json` (these figures, the loss curves, the settings) and `images.safetensors` (fp16):
`originals` (8, 1, 32, 32), the held-out digits `shown_test_indices`; per weight, stacked on the first axis,
`reconstructions` (W, 8, 1, 32, 32), `prior_samples` (W, 8, 1, 32, 32), decodings of z = eps / scaling_factor
with eps ~ N(0, I) (the same eps for every weight) and `latents` (W, 4, 8, 8), the mode latent of the first digit.

Command: `{run['command']}`
Time: {run['seconds']:.0f} s wall, {run['cpu_seconds']:.0f} s CPU, {run['threads']} thread(s), torch {run['torch']}.
Machine: {run['machine']}.
"""
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


def save_sweep(out: str, results: dict, images: dict) -> None:
    from ..utils.files import atomic_save_file, atomic_write_json

    os.makedirs(out, exist_ok=True)
    atomic_save_file({k: v.to(torch.float16) for k, v in images.items()}, os.path.join(out, "images.safetensors"))
    atomic_write_json(os.path.join(out, "results.json"), results)
    write_readme(out, results)


def load_sweep(folder_or_name: str | os.PathLike = "kl-sweep") -> tuple[dict, dict]:
    """(results, images) of a sweep folder, or of the shipped one by name ("kl-sweep"); images in float32."""
    from safetensors.torch import load_file

    from ..utils.files import resolve_pretrained

    folder = resolve_pretrained(folder_or_name)
    paths = [os.path.join(folder, n) for n in ("results.json", "images.safetensors")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{folder!r} has no {', '.join(map(os.path.basename, missing))}; "
                                "make it with: python -m sdlearn.training.kl_sweep --out FOLDER")
    with open(paths[0]) as f:
        results = json.load(f)
    images = {k: v.float() for k, v in load_file(paths[1]).items()}
    return results, images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdlearn.training.kl_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per KL weight")
    parser.add_argument("--weights", type=float, nargs="+", default=list(DEFAULT_WEIGHTS), help="KL weights (beta)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for results.json, images.safetensors, README.md")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--num-train", type=int, default=None, help="use only the first N training digits (tests)")
    parser.add_argument("--num-test", type=int, default=None, help="measure on the first N held-out digits (tests)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if any(w < 0 or not math.isfinite(w) for w in args.weights):
        parser.error(f"KL weights must be finite and >= 0, got {args.weights}")
    if args.threads:
        torch.set_num_threads(args.threads)
    tic, cpu_tic = time.perf_counter(), time.process_time()
    results, images = sweep(args.weights, args.steps, args.seed, progress=not args.no_progress,
                            num_train=args.num_train, num_test=args.num_test)
    shown_argv = sys.argv[1:] if argv is None else list(argv)
    results["run"] = {"command": "python -m sdlearn.training.kl_sweep " + shlex.join(shown_argv),
                      "seconds": round(time.perf_counter() - tic, 1),
                      "cpu_seconds": round(time.process_time() - cpu_tic, 1),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": machine()}
    save_sweep(args.out, results, images)
    print(f"wrote {args.out} in {results['run']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
