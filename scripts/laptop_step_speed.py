"""Training-step time of laptop-digits design variants on this CPU (issue 16's ablations of speed).

    python scripts/laptop_step_speed.py                  # every variant, 1 thread
    python scripts/laptop_step_speed.py probe px28_bf16  # some of them

Batch 128, min-SNR diffusion loss, AdamW; the variants run interleaved (A, B, C, A, B, C, ...) in one process so that
machine load hits all alike; prints the median of 6 steps after 2 warm-up rounds. "probe" is the peers' tuned
probe (1.1 M parameters, 32/64/64 at 32x32, fp32); laptop-digits is "px28_bf16".
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sdlearn.models.unet_2d import UNet2DModel, UNetConfig  # noqa: E402
from sdlearn.schedulers import DDPMScheduler  # noqa: E402
from sdlearn.training.losses import diffusion_loss  # noqa: E402


def config(channels=(32, 64, 64), size=32, attention=(False, False, True)) -> UNetConfig:
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNetConfig(sample_size=size, in_channels=1, out_channels=1, block_out_channels=channels,
                      down_block_types=down, up_block_types=up, layers_per_block=1, attention_head_dim=32,
                      norm_num_groups=8)


VARIANTS = {  # name: (UNet config, "fp32" | "bf16" autocast, channels_last)
    "probe": (config(), "fp32", False),
    "probe_cl": (config(), "fp32", True),
    "probe_bf16": (config(), "bf16", False),
    "probe_bf16_cl": (config(), "bf16", True),
    "px28": (config(size=28), "fp32", False),
    "px28_bf16": (config(size=28), "bf16", False),
    "px28_bf16_cl": (config(size=28), "bf16", True),
    "px28_noattn_bf16": (config(size=28, attention=(False, False, False)), "bf16", False),
    "px28_c24_bf16": (config(channels=(24, 48, 64), size=28), "bf16", False),
}

torch.set_num_threads(1)
names = sys.argv[1:] or list(VARIANTS)
scheduler = DDPMScheduler()
runs = {}
for name in names:
    cfg, precision, channels_last = VARIANTS[name]
    torch.manual_seed(0)
    model = UNet2DModel(cfg)
    x = torch.rand(128, 1, cfg.sample_size, cfg.sample_size) * 2 - 1
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    runs[name] = (model, torch.optim.AdamW(model.parameters(), 1e-3), x, precision == "bf16")
g = torch.Generator().manual_seed(0)
times = {name: [] for name in names}
for i in range(8):
    for name in names:
        model, optimizer, x, bf16 = runs[name]
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, scheduler, x, g, "min_snr")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:
            times[name].append(time.perf_counter() - started)
for name in names:
    params = sum(p.numel() for p in runs[name][0].parameters()) / 1e6
    print(f"{name:18s} {params:.2f} M parameters: median {statistics.median(times[name]):.3f} s per step of 128")
