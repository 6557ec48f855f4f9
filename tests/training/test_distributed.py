"""Data-parallel training under `accelerate launch` (2 CPU processes, gloo): the same run as one process.

Each process takes its slice of the global batch and of the global batch's t and eps draws, and DDP averages the
gradients, so with the same global batch the loss curve and the final weights match one process within float
tolerance; within an epoch no image is seen twice; a run killed on one process resumes from the main process's
checkpoint and ends where the uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sdlearn.training.checkpoint import load_training_checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS, BATCH, N_IMAGES = 8, 8, 32  # 4 steps per epoch: two epochs

SCRIPT = textwrap.dedent('''
    import json, os, signal, sys
    import torch
    from sdlearn.models.unet_2d import UNet2DModel, UNetConfig
    from sdlearn.schedulers import DDPMScheduler
    from sdlearn.training.loop import TrainConfig, train
    from sdlearn.training.losses import diffusion_loss

    torch.set_num_threads(1)
    run_dir, log, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    N = {n_images}
    images = torch.rand(N, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    images[:, 0, 0, 0] = torch.arange(N) / N * 2 - 1  # pixel (0, 0) names the image
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    config = TrainConfig(steps={steps}, batch_size={batch}, lr=1e-3, warmup_steps=2, checkpoint_every=2, ema_decay=0.9,
                         loss_weighting="min_snr")
    seen = []

    def loss_fn(model, x0, generator):
        if len(seen) == kill_at and rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of a run, without warning
        seen.append(((x0[:, 0, 0, 0] + 1) / 2 * N).round().long().tolist())
        return diffusion_loss(model, scheduler, x0, generator, "min_snr", 5.0, shard=(rank, world))

    torch.manual_seed(0)
    model = UNet2DModel(UNetConfig(sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D",
        "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=4))
    result = train(model, scheduler, images, config, run_dir=run_dir, progress=False, loss_fn=loss_fn)
    with open(f"{{log}}.rank{{rank}}.json", "w") as f:
        json.dump({{"seen": seen, "losses": result.losses, "ema": result.ema_model is not None}}, f)
''').format(n_images=N_IMAGES, steps=STEPS, batch=BATCH)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, processes: int, run_dir: Path, log: str, kill_at: int = -1) -> subprocess.CompletedProcess:
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # CPU processes over gloo, also on a GPU machine
    if processes == 1:
        cmd = [sys.executable, str(script)]
    else:
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
        # --multi_gpu starts the processes (torchrun); they see no GPU and train on the CPU over gloo
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
        cmd += [str(script)]
    return subprocess.run(cmd + [str(run_dir), str(tmp_path / log), str(kill_at)], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def _weights(run_dir: Path) -> dict:
    tensors, state = load_training_checkpoint(str(run_dir))
    assert state["step"] == STEPS
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema."))}


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_a_kill(tmp_path):
    pytest.importorskip("accelerate")
    one = _launch(tmp_path, 1, tmp_path / "one", "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _launch(tmp_path, 2, tmp_path / "two", "two")
    assert two.returncode == 0, two.stderr[-3000:]
    ref = json.loads((tmp_path / "one.rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"two.rank{r}.json").read_text()) for r in (0, 1)]

    # the loss curve (the global batch's mean loss, on every process) and the final weights match one process
    for r in ranks:
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(ref["losses"]), rtol=1e-4, atol=1e-6)
    assert [r["ema"] for r in ranks] == [True, False]  # the EMA lives on the main process only
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)

    # each step, the two processes take the two halves of the one-process batch: within an epoch, no image twice
    per_epoch = N_IMAGES // BATCH
    for step in range(STEPS):
        a, b = ranks[0]["seen"][step], ranks[1]["seen"][step]
        assert len(a) == len(b) == BATCH // 2 and a + b == ref["seen"][step]
    for epoch in range(STEPS // per_epoch):
        steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        ids = [i for s in steps for r in ranks for i in r["seen"][s]]
        assert sorted(ids) == list(range(N_IMAGES))

    # a kill on the main process at step 5 (checkpoints every 2 steps), then the same command again
    killed = _launch(tmp_path, 2, tmp_path / "killed", "killed", kill_at=5)
    assert killed.returncode != 0
    assert load_training_checkpoint(str(tmp_path / "killed"))[1]["step"] == 4
    resumed = _launch(tmp_path, 2, tmp_path / "killed", "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "resumed.rank0.json").read_text())["losses"] == ranks[0]["losses"]
    for k, v in _weights(tmp_path / "killed").items():
        torch.testing.assert_close(v, w2[k], rtol=1e-5, atol=1e-6, msg=k)
