"""Pixel against latent diffusion at 64x64 RGB: what the autoencoder buys (issue 3's cost table).

Three arms, each a UNet of the same family (same depth and widths, 32/64/128 with attention at the lowest
level, sized to its input): on pixels (3x64x64), on f = 4 latents (4x16x16, the shipped `shapes-vae`) and on
f = 8 latents (4x8x8, a VAE of the `shapes-vae-f8` recipe). For each arm, in a fresh subprocess:

- training step time (batch 32, median of repeats): latent arms on cached latents (encoded once beforehand)
  and with the encoding done inside every step (the VAE encoder's forward, no gradient);
- sampling time for 50 DDIM steps of 16 images, decoding included;
- peak memory: CUDA's max_memory_allocated on a GPU, the subprocess's ru_maxrss on a CPU (which includes
  the ~0.3-0.5 GB of Python + torch that a subprocess doing nothing also has: reported as "baseline");
- quality after the same wall-clock training budget (--budget seconds of optimizer steps; the one-off
  encoding of the training set is timed separately): 256 samples with 50 DDIM steps, read by the
  attribute checker (share of well-formed shapes of a known colour).

    python benchmarks/pixel_vs_latent.py --budget 600           # CPU: about 40 minutes in all
    python benchmarks/pixel_vs_latent.py --quick                # seconds: checks that it works
    python -m sdlearn train shapes-vae-f8 && python -m sdlearn export shapes-vae-f8 --out runs/shapes-vae-f8/export

Results go to a JSON file (default benchmarks/results/pixel_vs_latent.json) and a Markdown table.
Target (issue 3): a latent training step >= 4x cheaper than the pixel one, with better quality for the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# the UNet family, the target and the table live in the package (chapter 4 shows them from there)
from sdlearn.evaluation.pixel_vs_latent import TARGET_STEP_RATIO, markdown_table, unet_config  # noqa: E402,F401

ARMS = ("pixel", "latent f=4", "latent f=8")
DEFAULT_VAES = {"latent f=4": "shapes-vae", "latent f=8": os.path.join("runs", "shapes-vae-f8", "export")}
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                 prediction_type="epsilon", clip_sample=False)

# ---------------------------------------------------------------------------- the child process
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def child(arm: str, what: str, args) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    from sdlearn.device import get_device
    from sdlearn.pipelines import DDPMPipeline, LatentDiffusionPipeline
    from sdlearn.schedulers import DDIMScheduler, DDPMScheduler
    from sdlearn.training.loop import TrainConfig, train
    from sdlearn.training.losses import diffusion_loss
    from sdlearn.models.unet_2d import UNet2DModel
    from sdlearn.models.autoencoder_kl import AutoencoderKL, encode_dataset

    device = get_device(args.device)
    torch.manual_seed(0)
    if what == "baseline":
        return {}
    vae = None if arm == "pixel" else AutoencoderKL.from_pretrained(args.vaes[arm]).to(device).eval()
    if vae is None:
        cfg = unet_config(3, 64)
    else:
        f = vae.config.downsampling_factor
        cfg = unet_config(vae.config.latent_channels, 64 // f)
    unet = UNet2DModel(cfg).to(device)
    scheduler = DDPMScheduler(**SCHEDULER)
    out = {"unet_parameters": sum(p.numel() for p in unet.parameters()),
           "input_shape": [cfg.in_channels, cfg.sample_size, cfg.sample_size]}

    if what == "timing":
        from sdlearn.data import load_shapes

        images = load_shapes("test", num_images=args.batch).images.to(device)  # (B, 3, 64, 64)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)

        def step(encode: bool) -> float:
            _sync(device)
            start = time.perf_counter()
            if vae is None:
                x0 = images
            elif encode:
                with torch.no_grad():
                    x0 = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
            else:
                x0 = cached
            loss = diffusion_loss(unet, scheduler, x0, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            return time.perf_counter() - start

        cached = None if vae is None else (vae.encode(images).latent_dist.mode() * vae.config.scaling_factor).detach()
        modes = [False] if vae is None else [False, True]
        for encode in modes:
            times = [step(encode) for _ in range(args.warmup + args.repeats)][args.warmup:]
            out["train_step_seconds" + ("_with_encoding" if encode else "")] = statistics.median(times)
        unet.eval()
        ddim = DDIMScheduler.from_config(scheduler.config)
        pipe = DDPMPipeline(unet, ddim) if vae is None else LatentDiffusionPipeline(vae, unet, ddim)
        _sync(device)
        start = time.perf_counter()
        pipe(batch_size=args.sample_batch, num_inference_steps=args.sample_steps,
             generator=torch.Generator().manual_seed(0), output_type="pt", progress=False)
        _sync(device)
        out["sample_seconds"] = time.perf_counter() - start
        out["sample_what"] = f"{args.sample_steps} DDIM steps of {args.sample_batch} images, decoding included"
    elif what == "quality":
        from sdlearn.data import load_shapes
        from sdlearn.evaluation.evaluate import sample_shapes
        from sdlearn.evaluation.shapes_checker import shapes_report

        images = load_shapes("train", num_images=args.num_train).images
        start = time.perf_counter()
        data = images if vae is None else encode_dataset(vae, images) * vae.config.scaling_factor
        out["encode_training_set_seconds"] = round(time.perf_counter() - start, 1)
        config = TrainConfig(steps=10**7, batch_size=args.batch, lr=1e-3, warmup_steps=100, lr_schedule="constant",
                             ema_decay=0.999, seed=0, checkpoint_every=10**7)
        result = train(unet, scheduler, data.to(device), config, progress=False,
                       data_range=(-1.0, 1.0) if vae is None else None, max_seconds=args.budget)
        out["train_steps_in_budget"] = result.step
        ddim = DDIMScheduler.from_config(scheduler.config)
        model = result.ema_model.eval()
        pipe = DDPMPipeline(model, ddim) if vae is None else LatentDiffusionPipeline(vae, model, ddim)
        samples = sample_shapes(pipe, args.num_samples, args.sample_steps, seed=0, progress=False)
        report = shapes_report(samples)
        out.update(well_formed_share=report["well_formed_share"], missing_colours=report["missing_colours"],
                   missing_shapes=report["missing_shapes"])
        if args.samples_dir:
            from sdlearn.viz.images import show_images

            os.makedirs(args.samples_dir, exist_ok=True)
            show_images(samples[:32], nrow=8, title=f"{arm}: after {args.budget:.0f} s of training").savefig(
                os.path.join(args.samples_dir, arm.replace(" ", "_").replace("=", "") + ".png"), dpi=80)
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ---------------------------------------------------------------------------- the parent
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("ARM", "WHAT"), help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training per arm (quality)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=None, help="training images (default: all 20,000)")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for the samples and their timing")
    parser.add_argument("--sample-batch", type=int, default=16, help="images in the timed sampling run")
    parser.add_argument("--vae-f4", default=DEFAULT_VAES["latent f=4"])
    parser.add_argument("--vae-f8", default=DEFAULT_VAES["latent f=8"])
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    parser.add_argument("--no-quality", action="store_true", help="timings and memory only")
    parser.add_argument("--quick", action="store_true", help="tiny budget and sample counts: checks that it works")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "pixel_vs_latent.json"))
    parser.add_argument("--samples-dir", default=None, help="save a grid of each arm's samples here")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.budget, args.num_train, args.num_samples, args.repeats, args.warmup = 3.0, 256, 8, 2, 1
        args.sample_steps, args.sample_batch = 5, 4
    args.vaes = {"latent f=4": args.vae_f4, "latent f=8": args.vae_f8}
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        result = child(args.child[0], args.child[1], args)
        result["maxrss_bytes"] = peak_rss_bytes()
        print(json.dumps(result))
        return {}

    arms = [a.strip() for a in args.arms.split(",")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; the arms are {list(ARMS)}")
    for arm in arms:
        if arm != "pixel":
            from sdlearn.utils.files import resolve_pretrained

            try:
                resolve_pretrained(args.vaes[arm])
            except FileNotFoundError:
                parser.error(f"{arm} needs the VAE {args.vaes[arm]!r}; for f = 8: python -m sdlearn train "
                             "shapes-vae-f8 && python -m sdlearn export shapes-vae-f8 --out runs/shapes-vae-f8/export")
    passthrough = list(argv if argv is not None else sys.argv[1:])
    device = "cuda" if torch.cuda.is_available() and args.device in (None, "cuda") else (args.device or "cpu")
    results = {"device": device, "machine": torch.cuda.get_device_name() if device == "cuda" else platform.machine(),
               "torch_threads": args.threads or torch.get_num_threads(), "batch": args.batch, "budget_seconds": args.budget,
               "arms": {}, "command": "python benchmarks/pixel_vs_latent.py " + " ".join(passthrough)}
    results["baseline_maxrss_bytes"] = measure(None, "baseline", passthrough)["maxrss_bytes"]
    for arm in arms:
        entry = measure(arm, "timing", passthrough)
        if not args.no_quality:
            entry["quality"] = measure(arm, "quality", passthrough)
        results["arms"][arm] = entry
        print(f"{arm}: {json.dumps(entry)}", flush=True)
    pixel = results["arms"].get("pixel")
    for arm, entry in results["arms"].items():
        if pixel and arm != "pixel":
            entry["step_ratio_cached"] = pixel["train_step_seconds"] / entry["train_step_seconds"]
            entry["step_ratio_with_encoding"] = pixel["train_step_seconds"] / entry["train_step_seconds_with_encoding"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    table = markdown_table(results)
    print("\n" + table)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table + "\n")
    return results


def measure(arm: str | None, what: str, passthrough: list[str]) -> dict:
    """One measurement in a fresh child process (so that its peak memory is its own)."""
    cmd = [sys.executable, __file__, *passthrough, "--child", arm or "pixel", what]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} / {what} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
