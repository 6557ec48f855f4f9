"""Stable Diffusion 1.5's denoising loop, sdlearn's UNet2DConditionModel against diffusers', on one device.

An SD-1.5-shaped UNet (block_out_channels 320/640/1280/1280, 8 heads, cross-attention to 77 tokens of width 768)
with random weights: nothing is downloaded, and the compute is the same as with the published weights. Both models
hold the same weights (sdlearn's parameter names are diffusers'), run the same 50-step loop with classifier-free
guidance (a batch of 2B: empty prompt and prompt) at 512x512 (64x64 latents), with torch's scaled_dot_product_attention
in both, at each precision and batch size asked for. Runs alternate (sdlearn, diffusers, sdlearn, ...) so drift in
the machine hits both alike. Prints and writes seconds per image and peak GPU memory, and the ratio sdlearn / diffusers
(the issue's aim: <= 1.05 on both). Then, at 1024x1024 (128x128 latents): one UNet step with and without attention
slicing, and the VAE decode with and without tiling, with their peak memory.

    python benchmarks/sd_unet_speed.py                        # on a CUDA GPU: fp16 and bf16, batch 1 and 4
    python benchmarks/sd_unet_speed.py --tiny --device cpu    # seconds on a CPU: a tiny UNet, 2 steps (the tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sdlearn.models.unet_2d_condition import UNet2DConditionConfig, UNet2DConditionModel
from sdlearn.schedulers import DDIMScheduler

SD15 = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
TINY = dict(SD15, sample_size=8, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=12,
            attention_head_dim=2, norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def twins(config: dict, device, dtype):
    """(sdlearn's UNet, diffusers' UNet) with the same random weights, in eval mode on ``device`` in ``dtype``."""
    import diffusers

    torch.manual_seed(0)
    theirs = diffusers.UNet2DConditionModel(**config).eval()
    ours = UNet2DConditionModel(UNet2DConditionConfig.from_dict(config)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.to(device, dtype), theirs.to(device, dtype)


@torch.no_grad()
def denoise(unet, latents, context, steps: int, guidance_scale: float, is_diffusers: bool) -> torch.Tensor:
    """The pipeline's loop without the text encoder and VAE: guided eps, one DDIM step, ``steps`` times."""
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(steps, device=latents.device)
    for t in scheduler.timesteps:
        model_in = torch.cat([latents, latents])
        out = unet(model_in, t, encoder_hidden_states=context)
        eps = out.sample if is_diffusers else out
        eps_uncond, eps_cond = eps.chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def timed(fn, device) -> tuple[float, float]:
    """(seconds, peak memory in GiB; 0 off CUDA) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30
    return time.perf_counter() - start, 0.0


def run(config: dict, device: torch.device, dtypes: list[str], batches: list[int], steps: int, repeats: int) -> dict:
    results = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else str(device),
               "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
               "steps": steps, "repeats": repeats, "torch": torch.__version__, "cells": []}
    for name in dtypes:
        dtype = DTYPES[name]
        ours, theirs = twins(config, device, dtype)
        for batch in batches:
            g = torch.Generator().manual_seed(1)
            side = config["sample_size"]
            latents = torch.randn(batch, config["in_channels"], side, side, generator=g).to(device, dtype)
            context = torch.randn(2 * batch, 77, config["cross_attention_dim"], generator=g).to(device, dtype)
            arms = {"sdlearn": (ours, False), "diffusers": (theirs, True)}
            for model, is_d in arms.values():  # warm-up: kernels chosen, memory pools grown
                denoise(model, latents, context, min(steps, 2), 7.5, is_d)
            times = {a: [] for a in arms}
            memory = {a: 0.0 for a in arms}
            outputs = {}
            for _ in range(repeats):
                for arm, (model, is_d) in arms.items():
                    box = {}
                    seconds, peak = timed(lambda: box.setdefault("x", denoise(model, latents, context, steps, 7.5,
                                                                              is_d)), device)
                    times[arm].append(seconds / batch)
                    memory[arm] = max(memory[arm], peak)
                    outputs[arm] = box["x"]
            cell = {"dtype": name, "batch": batch,
                    "seconds_per_image": {a: statistics.median(v) for a, v in times.items()},
                    "peak_memory_gib": memory,
                    "max_abs_difference": (outputs["sdlearn"].float() - outputs["diffusers"].float()).abs().max().item()}
            cell["time_ratio"] = cell["seconds_per_image"]["sdlearn"] / cell["seconds_per_image"]["diffusers"]
            cell["memory_ratio"] = memory["sdlearn"] / memory["diffusers"] if memory["diffusers"] else None
            results["cells"].append(cell)
            print(f"{name} batch {batch}: sdlearn {cell['seconds_per_image']['sdlearn']:.3f} s/image, diffusers "
                  f"{cell['seconds_per_image']['diffusers']:.3f} s/image (ratio {cell['time_ratio']:.3f}); peak memory "
                  f"{memory['sdlearn']:.2f} / {memory['diffusers']:.2f} GiB; max |difference| "
                  f"{cell['max_abs_difference']:.2e}", flush=True)
    return results


@torch.no_grad()
def memory_large(config: dict, device: torch.device, dtype: torch.dtype, latent_side: int, vae_config: dict) -> dict:
    """Peak memory (GiB; CUDA only) and seconds of one guided UNet step and one VAE decode at ``latent_side`` latents
    (128: a 1024x1024 image), plain and with attention slicing / VAE tiling."""
    from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
    from sdlearn.models.attention import Attention, AttnProcessor
    from sdlearn.models.tiling import SlicedAttnProcessor

    ours, _ = twins(dict(config, sample_size=latent_side), device, dtype)
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(2, config["in_channels"], latent_side, latent_side, generator=g).to(device, dtype)
    context = torch.randn(2, 77, config["cross_attention_dim"], generator=g).to(device, dtype)
    t = torch.tensor(500, device=device)
    out = {"latent_side": latent_side}
    for name, processor in (("unet_step", None), ("unet_step_sliced", "max")):
        for m in ours.modules():
            if isinstance(m, Attention):
                m.processor = SlicedAttnProcessor(1) if processor else AttnProcessor()
        seconds, peak = timed(lambda: ours(latents, t, encoder_hidden_states=context), device)
        out[name] = {"seconds": seconds, "peak_memory_gib": peak}
    del ours
    vae = AutoencoderKL(AutoencoderKLConfig(**vae_config)).eval().to(device, torch.float32)  # SD decodes in fp32
    z = torch.randn(1, 4, latent_side, latent_side, generator=g).to(device)
    for name, tiled in (("vae_decode", False), ("vae_decode_tiled", True)):
        if tiled:
            vae.enable_tiling()
        try:
            seconds, peak = timed(lambda: vae.decode(z), device)
            out[name] = {"seconds": seconds, "peak_memory_gib": peak}
        except torch.cuda.OutOfMemoryError:
            out[name] = {"out_of_memory": True}
            torch.cuda.empty_cache()
    for k, v in out.items():
        if isinstance(v, dict):
            print(f"{latent_side}x{latent_side} latents, {k}: {v}", flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", default=None, help="comma-separated of fp32, fp16, bf16 (default: fp16,bf16 on CUDA, "
                                                   "fp32 elsewhere)")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a tiny UNet, 2 steps, batch 1: checks the script runs")
    p.add_argument("--no-large", action="store_true", help="skip the 1024x1024 slicing and tiling measurement")
    p.add_argument("--out", default=None, help="write the results here as JSON")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtypes = (args.dtypes or ("fp16,bf16" if device.type == "cuda" else "fp32")).split(",")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise SystemExit(f"unknown precision {unknown}; choose from {sorted(DTYPES)}")
    config, batches, steps, repeats = SD15, [int(b) for b in args.batches.split(",")], args.steps, args.repeats
    if args.tiny:
        config, batches, steps, repeats = TINY, [1], 2, 1
    results = run(config, device, dtypes, batches, steps, repeats)
    if not args.no_large:  # attention slicing and VAE tiling at 1024x1024 (tiny: 32x32 latents, 8-latent tiles)
        vae_config = dict(sample_size=512) if not args.tiny else dict(
            block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4, sample_size=16)
        results["large"] = memory_large(config, device, DTYPES[dtypes[0]], 32 if args.tiny else 128, vae_config)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
