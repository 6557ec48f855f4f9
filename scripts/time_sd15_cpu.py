"""How long a 512x512 Stable Diffusion 1.5 image takes on this CPU, in sdlearn's code, without downloading anything.

The compute does not depend on the weights, so the modules are built with SD 1.5's shapes and random weights:
the UNet (860M parameters: 320/640/1280/1280 channels, 2 residual blocks per level, 8 heads, 768-wide text tokens)
on 4x64x64 latents, run on a batch of 2 (classifier-free guidance: the prompt and the empty prompt), and the
autoencoder's decoder (KL-f8) from 4x64x64 to 3x512x512. The text encoder runs once per image and is left out (CLIP
ViT-L/14's text tower on 77 tokens: well under a second).

    python scripts/time_sd15_cpu.py --threads 2     # -> benchmarks/results/sd15_cpu_timing.json
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig  # noqa: E402
from sdlearn.models.unet_2d_condition import UNet2DConditionConfig, UNet2DConditionModel  # noqa: E402

SD15_UNET = UNet2DConditionConfig(sample_size=64, cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280),
                                  layers_per_block=2, attention_head_dim=8, norm_num_groups=32)


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first-call allocations
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


@torch.no_grad()
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a tiny UNet and VAE: checks that the script runs")
    p.add_argument("--note", default="", help="what else the machine was doing (recorded with the figures)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "results" /
                                        "sd15_cpu_timing.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet_cfg, vae_cfg, latent = SD15_UNET, AutoencoderKLConfig(), 64
    if args.quick:
        unet_cfg = UNet2DConditionConfig(sample_size=8, cross_attention_dim=32, block_out_channels=(32, 64),
                                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                         attention_head_dim=2, norm_num_groups=8)
        vae_cfg, latent = AutoencoderKLConfig.with_factor(4, (8, 16, 16), norm_num_groups=8), 8
    unet = UNet2DConditionModel(unet_cfg).eval()
    vae = AutoencoderKL(vae_cfg).eval()
    z = torch.randn(2, 4, latent, latent)  # (2, 4, 64, 64): both branches of guidance
    c = torch.randn(2, 77, unet_cfg.cross_attention_dim)  # (2, 77, 768): the prompt's and the empty prompt's tokens
    t = torch.tensor(500)
    unet_s = timed(lambda: unet(z, t, encoder_hidden_states=c), args.repeats)
    vae_s = timed(lambda: vae.decode(z[:1]), args.repeats)
    step, decode = statistics.median(unet_s), statistics.median(vae_s)
    result = {
        "what": "one guided UNet step (batch 2) at 4x64x64 latents and one VAE decode to 512x512, SD 1.5 shapes, "
                "random weights, float32" + (" (QUICK: tiny modules, not SD 1.5)" if args.quick else ""),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "unet_seconds_per_step": round(step, 2), "unet_seconds_runs": [round(s, 2) for s in unet_s],
        "vae_decode_seconds": round(decode, 2), "vae_decode_runs": [round(s, 2) for s in vae_s],
        "image_seconds": {str(n): round(n * step + decode, 1) for n in (20, 50)},
        "torch_threads": args.threads, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s)",
        "note": args.note,
        "command": "python scripts/time_sd15_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
