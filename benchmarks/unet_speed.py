"""Time one training step of sdlearn's UNet against diffusers' UNet2DModel built to the same blocks.

Both models get the same weights (sdlearn's parameter names are diffusers'), the same batch, the same
timesteps and the same optimizer; runs are interleaved in one process (A, B, A, B, ...) so that drift
in machine load hits both alike. Prints the median time of each and the median of the per-pair ratios
(sdlearn / diffusers: below 1.0 means sdlearn is faster).

    python benchmarks/unet_speed.py [--batch 64] [--repeats 15] [--device cpu]
    python benchmarks/unet_speed.py --autocast bf16           # both under torch.autocast(bfloat16)
    python benchmarks/unet_speed.py --channels-last           # both models and the batch in channels_last memory
    python benchmarks/unet_speed.py --recipe laptop-digits    # another recipe's UNet (the laptop's 28x28 net)

``--autocast`` and ``--channels-last`` change both arms alike, so each ratio compares the two implementations under
the same setting; the medians also say what the setting itself buys against the plain float32 run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sdlearn.device import get_device
from sdlearn.training.recipes import get_recipe
from sdlearn.models.unet_2d import UNet2DModel


def diffusers_twin(cfg):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        block_out_channels=cfg.block_out_channels, down_block_types=cfg.down_block_types,
        up_block_types=cfg.up_block_types, layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups, norm_eps=cfg.norm_eps,
    )


def train_step(model, optimizer, x_t, t, eps, is_diffusers: bool, autocast: str = "off") -> float:
    if x_t.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    context = (torch.autocast(x_t.device.type, dtype=torch.bfloat16) if autocast == "bf16"
               else contextlib.nullcontext())
    with context:
        out = model(x_t, t).sample if is_diffusers else model(x_t, t)
    loss = torch.nn.functional.mse_loss(out.float(), eps)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if x_t.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="mnist-ddpm")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--autocast", choices=("off", "bf16"), default="off",
                        help="bf16: forward passes under torch.autocast(bfloat16), as TrainConfig(autocast='bf16')")
    parser.add_argument("--channels-last", action="store_true", help="models and batch in channels_last memory")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = get_device(args.device)
    cfg = get_recipe(args.recipe).unet
    torch.manual_seed(0)
    ours = UNet2DModel(cfg).to(device)
    theirs = diffusers_twin(cfg).to(device)
    theirs.load_state_dict(ours.state_dict())  # identical weights: the same computation, two implementations
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    x_t = torch.randn(shape, generator=g).to(device)
    eps = torch.randn(shape, generator=g).to(device)
    t = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    if args.channels_last:
        ours, theirs = ours.to(memory_format=torch.channels_last), theirs.to(memory_format=torch.channels_last)
        x_t, eps = x_t.contiguous(memory_format=torch.channels_last), eps.contiguous(memory_format=torch.channels_last)
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("ours", ours), ("theirs", theirs))}

    times = {"ours": [], "theirs": []}
    for i in range(args.warmup + args.repeats):
        order = [("ours", ours), ("theirs", theirs)] if i % 2 == 0 else [("theirs", theirs), ("ours", ours)]
        for name, model in order:
            dt = train_step(model, opts[name], x_t, t, eps, name == "theirs", args.autocast)
            if i >= args.warmup:
                times[name].append(dt)
    ratios = [a / b for a, b in zip(times["ours"], times["theirs"])]
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "batch": args.batch, "recipe": args.recipe,
        "autocast": args.autocast, "channels_last": args.channels_last,
        "params_millions": round(sum(p.numel() for p in ours.parameters()) / 1e6, 3),
        "sdlearn_median_s": round(statistics.median(times["ours"]), 4),
        "diffusers_median_s": round(statistics.median(times["theirs"]), 4),
        "median_ratio": round(statistics.median(ratios), 3),
    }
    for k, v in result.items():
        print(f"{k:>20}: {v}")
    return result


if __name__ == "__main__":
    main()
