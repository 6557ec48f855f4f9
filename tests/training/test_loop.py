"""Training: learning-rate schedule, EMA, the loss, data order, non-finite stops, and the SIGKILL resume test."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from sdlearn.training.checkpoint import load_training_checkpoint
from sdlearn.schedulers import DDPMScheduler
from sdlearn.training.loop import EMA, NonFiniteLossError, TrainConfig, batch_indices, learning_rate, train
from sdlearn.training.losses import diffusion_loss
from sdlearn.models.unet_2d import UNet2DModel

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- learning rate
def test_learning_rate_warmup_then_cosine():
    cfg = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)  # linear warm-up: lr * (step + 1) / warmup
    assert learning_rate(4, cfg) == pytest.approx(5e-4)
    assert learning_rate(9, cfg) == pytest.approx(1e-3)
    assert learning_rate(10, cfg) == pytest.approx(1e-3)  # cosine starts at the peak
    floor = 1e-4
    assert learning_rate(60, cfg) == pytest.approx(floor + (1e-3 - floor) * 0.5)  # half-way: cos(pi/2) = 0
    assert learning_rate(35, cfg) == pytest.approx(floor + (1e-3 - floor) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(110, cfg) == pytest.approx(floor)
    assert learning_rate(500, cfg) == pytest.approx(floor)  # stays at the floor past the end
    values = [learning_rate(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_learning_rate_constant():
    cfg = TrainConfig(steps=100, lr=2e-3, warmup_steps=4, lr_schedule="constant")
    assert [learning_rate(s, cfg) for s in (0, 3, 4, 99)] == pytest.approx([5e-4, 2e-3, 2e-3, 2e-3])


def test_train_config_validation():
    with pytest.raises(ValueError, match="lr_schedule must be 'cosine' or 'constant'"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainConfig(loss_weighting="p2")
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(steps=0)


# ---------------------------------------------------------------------------- EMA
def test_ema_update_formula():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    start = [p.detach().clone() for p in ema.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(start, model.parameters()))
    assert not any(p.requires_grad for p in ema.model.parameters())
    expected = start
    for n in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape))
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))  # warm-up of the decay, then the fixed decay
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
        for got, want in zip(ema.model.parameters(), expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert ema.num_updates == 39
    # the EMA copy is independent of the model
    assert ema.model.weight.data_ptr() != model.weight.data_ptr()


# ---------------------------------------------------------------------------- the loss
class Oracle(nn.Module):
    """Knows the noise the loss will draw, so it can return the exact target (plus ``offset``)."""

    def __init__(self, scheduler, x0, generator_seed, offset=0.0):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        g = torch.Generator().manual_seed(generator_seed)
        T = scheduler.config.num_train_timesteps
        self.t = torch.randint(0, T, (x0.shape[0],), generator=g)
        self.eps = torch.randn(x0.shape, generator=g)
        self.x0, self.scheduler, self.offset = x0, scheduler, offset

    def target(self):
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return self.eps
        if kind == "sample":
            return self.x0
        return self.scheduler.get_velocity(self.x0, self.eps, self.t)

    def forward(self, x_t, t):
        assert torch.equal(t, self.t)
        torch.testing.assert_close(x_t, self.scheduler.add_noise(self.x0, self.eps, self.t))  # eq. 4
        return self.target() + self.offset + 0 * self.dummy


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_diffusion_loss_targets(prediction):
    scheduler = DDPMScheduler(prediction_type=prediction)
    x0 = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    exact = Oracle(scheduler, x0, generator_seed=11)
    loss = diffusion_loss(exact, scheduler, x0, torch.Generator().manual_seed(11))
    assert loss.ndim == 0 and loss.item() == pytest.approx(0.0, abs=1e-12)
    off = Oracle(scheduler, x0, generator_seed=11, offset=0.5)
    loss = diffusion_loss(off, scheduler, x0, torch.Generator().manual_seed(11))
    assert loss.item() == pytest.approx(0.25, rel=1e-5)  # mean of 0.5^2 over every pixel
    loss.backward()  # the loss is differentiable w.r.t. the model


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_min_snr_weights(prediction):
    """Hang et al. 2023: weight min(SNR, gamma) on the x_0 error, i.e. min(SNR, gamma)/SNR for eps, /(SNR + 1) for v."""
    scheduler = DDPMScheduler(prediction_type=prediction)
    x0 = torch.zeros(64, 1, 2, 2)
    model = Oracle(scheduler, x0, generator_seed=5, offset=1.0)  # per-sample squared error exactly 1
    loss = diffusion_loss(model, scheduler, x0, torch.Generator().manual_seed(5), "min_snr", min_snr_gamma=5.0)
    ab = scheduler.alphas_cumprod[model.t].double()
    snr = ab / (1 - ab)
    weight = {"epsilon": snr.clamp(max=5) / snr, "v_prediction": snr.clamp(max=5) / (snr + 1),
              "sample": snr.clamp(max=5)}[prediction]
    assert loss.item() == pytest.approx(weight.mean().item(), rel=1e-5)
    if prediction == "epsilon":
        assert (weight <= 1).all() and (weight < 1).any()  # low-noise steps are down-weighted


def test_diffusion_loss_finite_on_a_real_unet(tiny_unet):
    scheduler = DDPMScheduler()
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1
    loss = diffusion_loss(tiny_unet, scheduler, x0, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() > 0.1  # an untrained net does not predict the noise


# ---------------------------------------------------------------------------- data order
def test_batch_indices_are_a_deterministic_permutation_per_epoch():
    n, b = 23, 5  # 4 full batches per epoch; the 3 left over are dropped
    for seed in (0, 7):
        epoch0 = torch.cat([batch_indices(s, n, b, seed) for s in range(4)])
        assert len(set(epoch0.tolist())) == 20 and epoch0.min() >= 0 and epoch0.max() < n
        epoch1 = torch.cat([batch_indices(s, n, b, seed) for s in range(4, 8)])
        assert len(set(epoch1.tolist())) == 20
        assert not torch.equal(epoch0, epoch1), "each epoch gets a fresh shuffle"
        again = torch.cat([batch_indices(s, n, b, seed) for s in range(4)])
        assert torch.equal(epoch0, again), "the order is a function of (step, seed) only"
    assert not torch.equal(batch_indices(0, n, b, 0), batch_indices(0, n, b, 1))
    with pytest.raises(ValueError, match="larger than the dataset"):
        batch_indices(0, 4, 5, 0)


# ---------------------------------------------------------------------------- train() in process
def tiny_images(n=16, size=8, seed=1):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def fresh_unet(config, seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(config)


def test_train_returns_losses_and_ema_and_is_deterministic(tiny_unet_config):
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-3, warmup_steps=2, ema_decay=0.5)
    scheduler = DDPMScheduler(num_train_timesteps=50)
    a = train(fresh_unet(tiny_unet_config), scheduler, tiny_images(), cfg, progress=False)
    b = train(fresh_unet(tiny_unet_config), scheduler, tiny_images(), cfg, progress=False)
    assert a.step == 6 and len(a.losses) == 6 and all(math.isfinite(x) for x in a.losses)
    assert a.losses == b.losses
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert not a.model.training
    untrained = fresh_unet(tiny_unet_config)
    assert any(not torch.equal(p, q) for p, q in zip(a.model.parameters(), untrained.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(a.ema_model.parameters(), a.model.parameters()))


def test_train_rejects_bad_images(tiny_unet):
    cfg = TrainConfig(steps=1, batch_size=2)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        train(tiny_unet, DDPMScheduler(), torch.zeros(4, 16, 16), cfg, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train(tiny_unet, DDPMScheduler(), torch.full((4, 1, 16, 16), 255.0), cfg, progress=False)


def test_max_seconds_stops_early_and_checkpoints_there(tmp_path, tiny_unet_config):
    cfg = TrainConfig(steps=10_000, batch_size=4, lr=1e-3, warmup_steps=2, checkpoint_every=10_000)
    result = train(fresh_unet(tiny_unet_config), DDPMScheduler(num_train_timesteps=50), tiny_images(), cfg,
                   run_dir=tmp_path, progress=False, max_seconds=0.5)
    assert 1 <= result.step < 10_000 and len(result.losses) == result.step
    from sdlearn.training.checkpoint import load_training_checkpoint

    assert load_training_checkpoint(str(tmp_path))[1]["step"] == result.step  # a resumable budget run


def test_latents_outside_minus_one_one_need_data_range_none(tiny_unet_config):
    latents = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    cfg = TrainConfig(steps=2, batch_size=4)
    with pytest.raises(ValueError, match="data_range=None"):
        train(fresh_unet(tiny_unet_config), DDPMScheduler(num_train_timesteps=50), latents, cfg, progress=False)
    result = train(fresh_unet(tiny_unet_config), DDPMScheduler(num_train_timesteps=50), latents, cfg, progress=False,
                   data_range=None)
    assert result.step == 2


def test_train_rejects_nan_images(tiny_unet):
    images = tiny_images()
    images[3, 0, 4, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN|finite"):
        train(tiny_unet, DDPMScheduler(), images, TrainConfig(steps=2, batch_size=16), progress=False)


class NaNAfter(nn.Module):
    """Wraps a model and returns NaN from its ``after``-th call on, as a diverging run would."""

    def __init__(self, inner, after):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x, t):
        self.calls += 1
        out = self.inner(x, t)
        return out * float("nan") if self.calls > self.after else out


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_unet_config):
    model = NaNAfter(fresh_unet(tiny_unet_config), after=6)  # steps 0..5 are fine, step 6 gives NaN
    cfg = TrainConfig(steps=20, batch_size=4, checkpoint_every=3, warmup_steps=2)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 6.*last good checkpoint is kept"):
        train(model, DDPMScheduler(num_train_timesteps=50), tiny_images(), cfg, run_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "latest.json").read_text()) == {"checkpoint": "step-0000006", "step": 6}
    tensors, state = load_training_checkpoint(str(tmp_path))
    assert state["step"] == 6 and len(state["losses"]) == 6 and all(math.isfinite(x) for x in state["losses"])
    for name, p in model.state_dict().items():  # the NaN step changed nothing: the checkpoint is the model now
        assert torch.isfinite(tensors[f"model.{name}"]).all()
        assert torch.equal(tensors[f"model.{name}"], p)


def test_run_dir_with_a_different_config_is_refused(tmp_path, tiny_unet_config):
    scheduler = DDPMScheduler(num_train_timesteps=50)
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1)
    first = train(fresh_unet(tiny_unet_config), scheduler, tiny_images(), cfg, run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different TrainConfig.*resume=False"):
        train(fresh_unet(tiny_unet_config), scheduler, tiny_images(), TrainConfig(steps=2, batch_size=4, lr=1e-4,
              warmup_steps=1), run_dir=tmp_path, progress=False)
    # a finished run resumes to itself without training further
    again = train(fresh_unet(tiny_unet_config), scheduler, tiny_images(), cfg, run_dir=tmp_path, progress=False)
    assert again.losses == first.losses and again.step == 2
    for p, q in zip(again.model.parameters(), first.model.parameters()):
        assert torch.equal(p, q)
    # more steps: continue the same run (with a warning about the cosine schedule), keeping the history
    with pytest.warns(UserWarning, match="resuming with steps=4 instead of 2"):
        longer = train(fresh_unet(tiny_unet_config), scheduler, tiny_images(), TrainConfig(steps=4, batch_size=4,
                       warmup_steps=1), run_dir=tmp_path, progress=False)
    assert len(longer.losses) == 4 and longer.losses[:2] == first.losses
    # resume=False starts over
    over = train(fresh_unet(tiny_unet_config), scheduler, tiny_images(), cfg, run_dir=tmp_path, resume=False,
                 progress=False)
    assert over.losses == first.losses


class InterruptingUNet(UNet2DModel):
    """A UNet whose forward pass raises KeyboardInterrupt (Ctrl-C, or a notebook's "interrupt kernel") once."""

    interrupt_at = None
    calls = 0

    def forward(self, sample, timestep):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().forward(sample, timestep)


@pytest.mark.parametrize("interrupt_at", [1, 5])
def test_ctrl_c_checkpoint_resumes_exactly(tmp_path, tiny_unet_config, interrupt_at):
    """Ctrl-C inside a step (after its t, eps and dropout draws) writes a checkpoint that continues exactly."""
    config = dataclasses.replace(tiny_unet_config, dropout=0.1)  # dropout draws from the global RNG
    cfg = TrainConfig(steps=8, batch_size=4, warmup_steps=2, checkpoint_every=3)
    scheduler = DDPMScheduler(num_train_timesteps=50)
    reference = train(fresh_unet(config), scheduler, tiny_images(), cfg, progress=False)
    torch.manual_seed(0)
    interrupted = InterruptingUNet(config)
    interrupted.interrupt_at = interrupt_at
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, scheduler, tiny_images(), cfg, run_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == interrupt_at - 1
    resumed = train(fresh_unet(config), scheduler, tiny_images(), cfg, run_dir=tmp_path, progress=False)
    assert resumed.losses == reference.losses
    for p, q in zip(resumed.model.parameters(), reference.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(resumed.ema_model.parameters(), reference.ema_model.parameters()):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------------- the SIGKILL test
WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from sdlearn.schedulers import DDPMScheduler
    from sdlearn.training.loop import TrainConfig, train
    from sdlearn.models.unet_2d import UNet2DModel, UNetConfig

    run_dir, out = sys.argv[1], sys.argv[2]
    unet_config = UNetConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
                             down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                             up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                             dropout=0.1)  # dropout: the global RNG must be restored too
    torch.manual_seed(0)
    model = UNet2DModel(unet_config)
    images = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    # 20 images / batch 8 = 2 batches per epoch: the run crosses many epochs (fresh shuffles)
    config = TrainConfig(steps=STEPS, batch_size=8, lr=3e-3, warmup_steps=5, checkpoint_every=3, ema_decay=0.9, seed=3)
    result = train(model, DDPMScheduler(num_train_timesteps=100), images, config, run_dir=run_dir, progress=False)
    tensors = {f"model.{k}": v for k, v in result.model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in result.ema_model.state_dict().items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, out + ".safetensors")
    with open(out + ".json", "w") as f:
        json.dump({"losses": result.losses, "step": result.step}, f)
    """
)
STEPS = 30


def start_worker(script: Path, run_dir: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(script), str(run_dir), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def checkpoint_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "latest.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def kill_after_checkpoint(proc: subprocess.Popen, run_dir: Path, beyond: int, delay: float) -> int:
    """SIGKILL ``proc`` ``delay`` seconds after latest.json first points past step ``beyond``; return that step."""
    deadline = time.monotonic() + 120
    while checkpoint_step(run_dir) <= beyond:
        if proc.poll() is not None:
            raise AssertionError(f"worker ended before it could be killed:\n{proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint appeared within 120 s")
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return checkpoint_step(run_dir)


def run_in_process(script: Path, run_dir: Path, out: Path) -> None:
    """Run the worker script in the test process, with the worker's thread count, leaving global state as it was."""
    threads, argv = torch.get_num_threads(), sys.argv
    try:
        with torch.random.fork_rng(devices=[]):
            sys.argv = [str(script), str(run_dir), str(out)]
            runpy.run_path(str(script), run_name="__main__")  # sets torch.set_num_threads(1) as the subprocesses do
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_sigkill_resume_is_bitwise_identical(tmp_path):
    """Kill a training run with SIGKILL at a random-ish moment; resuming must give exactly the uninterrupted run."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.replace("STEPS", str(STEPS)))
    rng = random.Random()
    target = rng.choice(range(3, STEPS - 9, 3))  # one of the early checkpoints (every 3 steps)...
    delay = rng.uniform(0.0, 0.03)  # ...then a moment later: sometimes mid-checkpoint-write, sometimes mid-step
    where = f"(killed {delay:.3f} s after checkpoint {target} appeared)"

    run_dir = tmp_path / "killed"
    killed = start_worker(script, run_dir, tmp_path / "out")
    at = kill_after_checkpoint(killed, run_dir, beyond=target - 1, delay=delay)
    assert killed.returncode == -signal.SIGKILL, where
    assert target <= at < STEPS and not (tmp_path / "out.json").exists(), f"the kill came too late {where}"
    # resume with the same script (here in the test process: a second Python start-up would cost seconds)
    run_in_process(script, run_dir, tmp_path / "out")
    run_in_process(script, tmp_path / "reference", tmp_path / "reference-out")  # never interrupted

    got, want = load_file(tmp_path / "out.safetensors"), load_file(tmp_path / "reference-out.safetensors")
    assert sorted(got) == sorted(want) and any(k.startswith("ema.") for k in got)
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"resumed run differs from the uninterrupted one in {different[:5]} {where}"
    got_log = json.loads((tmp_path / "out.json").read_text())
    want_log = json.loads((tmp_path / "reference-out.json").read_text())
    assert got_log["step"] == want_log["step"] == STEPS
    assert len(got_log["losses"]) == STEPS and got_log["losses"] == want_log["losses"], where
    # the final checkpoints agree in everything: optimizer moments and RNG states too
    ckpt_got, _ = load_training_checkpoint(str(run_dir))
    ckpt_want, _ = load_training_checkpoint(str(tmp_path / "reference"))
    assert sorted(ckpt_got) == sorted(ckpt_want)
    assert [k for k in ckpt_want if not torch.equal(ckpt_got[k], ckpt_want[k])] == [], where
    assert any(k.startswith("optim.") for k in ckpt_got) and "rng.generator" in ckpt_got
    # killed mid-write or not, nothing half-written is left behind
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".tmp-")]
    assert len([p for p in run_dir.iterdir() if p.name.startswith("step-")]) <= 2


KILL_WORKER = textwrap.dedent(
    """
    import pathlib, sys
    import torch
    torch.set_num_threads(1)
    from sdlearn.schedulers import DDPMScheduler
    from sdlearn.training.loop import TrainConfig, train
    from sdlearn.training.losses import diffusion_loss
    from sdlearn.models.unet_2d import UNet2DModel, UNetConfig

    run_dir, started = sys.argv[1], pathlib.Path(sys.argv[2])
    scheduler = DDPMScheduler(num_train_timesteps=100)

    def loss_fn(model, x0, generator):  # the diffusion loss, and a sign for the test that training runs
        started.touch()
        return diffusion_loss(model, scheduler, x0, generator)

    model = UNet2DModel(UNetConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
                            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                            up_block_types=("AttnUpBlock2D", "UpBlock2D")))
    images = torch.rand(20, 1, 8, 8) * 2 - 1
    config = TrainConfig(steps=10**6, batch_size=8, warmup_steps=5, checkpoint_every=10**6)
    train(model, scheduler, images, config, run_dir=run_dir, progress=False, loss_fn=loss_fn)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT-in-background"])
def test_kill_checkpoints_and_stops(tmp_path, sig):
    """`kill` (SIGTERM), and `kill -INT` of a background job (which starts with SIGINT ignored), stop training with a
    checkpoint at the step reached, as Ctrl-C does."""
    script, run_dir, started = tmp_path / "worker.py", tmp_path / "run", tmp_path / "started"
    script.write_text(KILL_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), str(started)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    while not started.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"training did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    time.sleep(0.5)  # a few steps
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0  # it stopped (with KeyboardInterrupt), it did not run on
    assert checkpoint_step(run_dir) >= 1, f"no checkpoint written on {sig!r}: {proc.stderr.read().decode()[-2000:]}"


# ---------------------------------------------------------------------------- conditional training (CFG)
class LabelSpy(nn.Module):
    """A class-conditional stand-in model that records the labels it is given."""

    def __init__(self, num_class_embeds):
        super().__init__()
        self.config = dataclasses.make_dataclass("Cfg", [("num_class_embeds", int)])(num_class_embeds)
        self.scale = nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, x, t, class_labels=None):
        self.seen.append(class_labels.clone())
        return x * self.scale


def test_condition_dropout_replaces_labels_by_the_null_class_at_the_configured_rate():
    from sdlearn.training.losses import drop_condition

    labels = torch.arange(10).repeat(1000)  # 10,000 labels, none is the null class 10
    dropped = drop_condition(labels, 0.1, 10, torch.Generator().manual_seed(0))
    is_null = dropped == 10
    assert 0.09 < is_null.float().mean() < 0.11  # p = 0.1
    assert torch.equal(dropped[~is_null], labels[~is_null])  # the others are untouched
    text = torch.randn(8, 3, 4)
    null_text = torch.zeros(3, 4)  # e.g. the empty prompt's encoding
    out = drop_condition(text, 1.0, null_text, torch.Generator().manual_seed(0))
    assert torch.equal(out, null_text.expand(8, 3, 4))  # p = 1: every condition dropped, the images never are


def test_train_passes_each_images_own_label_and_drops_some_to_null(tiny_unet_config):
    images = tiny_images(n=16)
    labels = torch.arange(16) % 4
    spy = LabelSpy(num_class_embeds=5)
    cfg = TrainConfig(steps=40, batch_size=8, warmup_steps=2, condition_dropout=0.25)
    train(spy, DDPMScheduler(num_train_timesteps=50), images, cfg, progress=False, conditions=labels)
    seen = torch.cat(spy.seen)
    assert len(seen) == 40 * 8 and set(seen.tolist()) <= {0, 1, 2, 3, 4}
    assert 0.15 < (seen == 4).float().mean() < 0.35  # the null class (num_class_embeds - 1) at about p = 0.25
    first = batch_indices(0, 16, 8, cfg.seed)
    kept = spy.seen[0] != 4
    assert torch.equal(spy.seen[0][kept], labels[first][kept])  # each image with its own label


def test_conditional_training_resumes_exactly(tmp_path, tiny_unet_config):
    """Stop after the step-4 checkpoint (as a killed run would), resume: the same weights as one unbroken run."""
    import shutil

    config = dataclasses.replace(tiny_unet_config, num_class_embeds=4)
    labels = torch.arange(16) % 3
    cfg = TrainConfig(steps=8, batch_size=4, warmup_steps=2, checkpoint_every=4)
    scheduler = DDPMScheduler(num_train_timesteps=50)
    whole = train(fresh_unet(config), scheduler, tiny_images(), cfg, run_dir=tmp_path, progress=False,
                  conditions=labels)
    shutil.rmtree(tmp_path / "step-0000008")  # back to the step-4 checkpoint
    (tmp_path / "latest.json").write_text(json.dumps({"checkpoint": "step-0000004", "step": 4}))
    resumed = train(fresh_unet(config), scheduler, tiny_images(), cfg, run_dir=tmp_path, progress=False,
                    conditions=labels)
    assert resumed.losses == whole.losses
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name  # the same process, the same kernels: bitwise


def test_conditional_training_errors(tiny_unet, tiny_unet_config):
    with pytest.raises(ValueError, match="num_class_embeds"):
        train(tiny_unet, DDPMScheduler(), tiny_images(), TrainConfig(steps=2, batch_size=4), progress=False,
              conditions=torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="one condition per image"):
        train(fresh_unet(dataclasses.replace(tiny_unet_config, num_class_embeds=3)), DDPMScheduler(), tiny_images(),
              TrainConfig(steps=2, batch_size=4), progress=False, conditions=torch.zeros(5, dtype=torch.long))
