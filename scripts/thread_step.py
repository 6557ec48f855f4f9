"""Time one training step of chapter 2's FAST demo UNet at a given CPU thread count (issue 17: thread oversubscription).

    python scripts/thread_step.py 1          # 1 thread
    python scripts/thread_step.py 2          # 2 threads
    OMP_WAIT_POLICY=PASSIVE python scripts/thread_step.py 2

Batch 32 of 32x32 digits, the (16, 32, 32)-channel UNet of chapter 2's demo; prints the median of 10 steps after
2 warm-up steps, and the fastest and slowest. Run it with another core busy (e.g. `python -c "while True: pass" &`)
and idle to see what the README's Time section reports.
"""

import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sdlearn.models.unet_2d import UNet2DModel  # noqa: E402
from sdlearn.schedulers import DDPMScheduler  # noqa: E402
from sdlearn.training.losses import diffusion_loss  # noqa: E402
from sdlearn.training.recipes import get_recipe  # noqa: E402

if len(sys.argv) > 1:
    torch.set_num_threads(int(sys.argv[1]))
recipe = get_recipe("mnist-ddpm")
torch.manual_seed(0)
unet = UNet2DModel(dataclasses.replace(recipe.unet, block_out_channels=(16, 32, 32), attention_head_dim=16))
scheduler = DDPMScheduler(**recipe.scheduler)
optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
x = torch.rand(32, 1, 32, 32) * 2 - 1
g = torch.Generator().manual_seed(0)
times = []
for _ in range(12):
    t0 = time.perf_counter()
    loss = diffusion_loss(unet, scheduler, x, g)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    times.append(time.perf_counter() - t0)
print(f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}: "
      f"median step {statistics.median(times[2:]):.3f} s (fastest {min(times[2:]):.3f}, slowest {max(times[2:]):.3f})")
