"""Time to quality: train each arm for a wall-clock budget on this machine and measure it at marks.

Arms, run one after the other in one process (same machine, same threads):

- ``peer``: the diffusers-example recipe behind the project's peer figures, rebuilt with diffusers itself: UNet2DModel
  (blocks 32/64/128, attention at 8x8, GroupNorm 8; 2.73 M parameters), DDPMScheduler (linear, T = 1000, epsilon),
  batch 64, AdamW lr 1e-3 constant, clipping 1.0, EMA 0.999 with warm-up (diffusers' EMAModel), digits padded to
  32x32; sampled with diffusers' DDIMPipeline, 50 steps. diffusers comes with the test extra.
- ``mnist-ddpm``: the shipped recipe, trained by sdlearn and cut by the clock (its cosine runs over 7,500 steps);
  sampled with its folder's own DDPMScheduler on a 50-step chain.
- ``laptop``: ``python -m sdlearn train laptop-digits --max-minutes LAST_MARK``, i.e. its cosine runs over the
  last mark; earlier marks are snapshots of that run. Sampled as the interface promises:
  ``DiffusionPipeline.from_pretrained(exported)(batch_size=N, num_inference_steps=50, generator=g)``.

At each mark (minutes of training; sampling and measuring stop the clock) the EMA weights draw ``--num-samples``
digits with 50 steps, read by the project's classifier (sdlearn.evaluation.classifier): the share classified with
confidence >= 0.9, each digit's share of those, and the Frechet distance to the 500 held-out digits. Each arm is
also measured with the other kind of 50-step sampler (``other_sampler``: DDPM-type for the peer, DDIM eta 0 for the
recipes), so that a difference between arms can be told apart from a difference between samplers.

    python benchmarks/time_to_quality.py --arms peer,laptop --marks 5,10,20 --threads 2
    python benchmarks/time_to_quality.py --tiny      # seconds: tiny nets, marks of a few seconds (the test)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sdlearn.data.digits import load_digits  # noqa: E402
from sdlearn.evaluation.classifier import DigitClassifier, digit_report  # noqa: E402
from sdlearn.models.unet_2d import UNet2DModel  # noqa: E402
from sdlearn.pipelines import DiffusionPipeline  # noqa: E402
from sdlearn.schedulers import DDIMScheduler, DDPMScheduler  # noqa: E402
from sdlearn.training.loop import train  # noqa: E402
from sdlearn.training.recipes import get_recipe, training_images  # noqa: E402
from sdlearn.training.shipping import export_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLING_STEPS = 50
TINY_CHANNELS = (8, 16, 16)


class PeerArm:
    """The diffusers example's recipe (the peer figures): its own UNet, scheduler, EMA and DDIM pipeline."""

    name = "peer"

    def __init__(self, tiny: bool, device: torch.device, seed: int = 0):
        from diffusers import DDPMScheduler as DiffusersDDPM
        from diffusers import UNet2DModel as DiffusersUNet
        from diffusers.training_utils import EMAModel

        torch.manual_seed(seed)
        self.unet = DiffusersUNet(sample_size=32, in_channels=1, out_channels=1,
                                  block_out_channels=TINY_CHANNELS if tiny else (32, 64, 128),
                                  down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=1,
                                  attention_head_dim=8 if tiny else 32, norm_num_groups=8)
        self.unet.to(device)
        self.device = device
        self.scheduler = DiffusersDDPM(num_train_timesteps=1000, beta_schedule="linear")
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-3, betas=(0.95, 0.999), weight_decay=1e-6,
                                           eps=1e-8)
        self.ema = EMAModel(self.unet.parameters(), decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
        self.images = load_digits("train").images  # (4500, 1, 32, 32) in [-1, 1]
        self.batch_size = 8 if tiny else 64
        self.generator = torch.Generator().manual_seed(seed)
        self.steps, self.seconds = 0, 0.0

    def train_until(self, seconds: float) -> None:
        """Training steps until the training clock reads ``seconds``."""
        self.unet.train()
        while self.seconds < seconds:
            started = time.perf_counter()
            index = torch.randint(0, len(self.images), (self.batch_size,), generator=self.generator)
            x0 = self.images[index]
            eps = torch.randn(x0.shape, generator=self.generator)
            t = torch.randint(0, 1000, (self.batch_size,), generator=self.generator)
            x0, eps, t = x0.to(self.device), eps.to(self.device), t.to(self.device)
            loss = torch.nn.functional.mse_loss(self.unet(self.scheduler.add_noise(x0, eps, t), t).sample, eps)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
            self.optimizer.step()
            self.ema.step(self.unet.parameters())
            if self.device.type == "cuda":
                torch.cuda.synchronize()  # the clock reads finished work
            self.steps += 1
            self.seconds += time.perf_counter() - started

    def sample(self, num_samples: int, seed: int, steps: int, other: bool = False) -> torch.Tensor:
        """Its own sampler, 50 DDIM steps (as the peer figures were judged); ``other``: diffusers' DDPMPipeline on a 50-step chain."""
        from diffusers import DDIMPipeline, DDPMPipeline
        from diffusers import DDIMScheduler as DiffusersDDIM

        unet = type(self.unet).from_config(self.unet.config)
        self.ema.copy_to(unet.parameters())
        if other:
            pipe = DDPMPipeline(unet=unet.eval(), scheduler=type(self.scheduler).from_config(self.scheduler.config))
        else:
            pipe = DDIMPipeline(unet=unet.eval(), scheduler=DiffusersDDIM.from_config(self.scheduler.config))
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=num_samples, generator=torch.Generator().manual_seed(seed),
                      num_inference_steps=steps, output_type="np").images  # (N, H, W, 1) in [0, 1]
        return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1  # (N, 1, H, W) in [-1, 1]


class RecipeArm:
    """An sdlearn recipe trained by ``sdlearn.training.train`` in a run folder, paused at each mark (a resumed run
    continues exactly where it stopped), exported as the CLI exports it, and sampled through its pipeline folder."""

    def __init__(self, name: str, recipe: str, budget_minutes: float, tiny: bool, work: str, device: torch.device):
        self.name, self.recipe = name, get_recipe(recipe)
        self.unet_config = self.recipe.unet
        if tiny:
            self.unet_config = dataclasses.replace(self.unet_config, block_out_channels=TINY_CHANNELS,
                                                   attention_head_dim=8)
        self.config = dataclasses.replace(self.recipe.train, budget_minutes=budget_minutes,
                                          batch_size=8 if tiny else self.recipe.train.batch_size,
                                          warmup_steps=2 if tiny else self.recipe.train.warmup_steps)
        self.images = training_images(self.recipe.data)
        self.run_dir, self.out = os.path.join(work, name, "run"), os.path.join(work, name, "export")
        self.device = device
        self.steps, self.seconds, self.ema_model = 0, 0.0, None

    def train_until(self, seconds: float) -> None:
        torch.manual_seed(self.config.seed)  # as train_recipe: the initial weights (then the checkpoint's)
        model = UNet2DModel(self.unet_config).to(self.device)
        result = train(model, DDPMScheduler(**self.recipe.scheduler), self.images, self.config, run_dir=self.run_dir,
                       progress=False, max_seconds=max(0.0, seconds - self.seconds))
        self.steps, self.seconds, self.ema_model = result.step, result.train_seconds, result.ema_model

    def sample(self, num_samples: int, seed: int, steps: int, other: bool = False) -> torch.Tensor:
        """The folder's own sampler at default arguments; ``other``: DDIM, eta 0, stepping with the clipped x_0."""
        export_model(self.recipe.name, self.ema_model, self.out)  # the folder `sdlearn export` writes
        pipe = DiffusionPipeline.from_pretrained(self.out).to(self.device)
        extra = {}
        if other:
            pipe.scheduler = DDIMScheduler.from_config({**dict(pipe.scheduler.config), "set_alpha_to_one": False,
                                                        "steps_offset": 1})
            extra = {"eta": 0.0, "use_clipped_model_output": True}
        images = pipe(batch_size=num_samples, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                      output_type="np", progress=False, **extra).images  # (N, H, W, 1) in [0, 1]
        return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1


def make_arm(name: str, budget_minutes: float, tiny: bool, work: str, device: torch.device):
    if name == "peer":
        return PeerArm(tiny, device)
    if name == "mnist-ddpm":
        return RecipeArm(name, "mnist-ddpm", budget_minutes, tiny, work, device)
    if name == "laptop":
        return RecipeArm(name, "laptop-digits", budget_minutes, tiny, work, device)
    raise ValueError(f"unknown arm {name!r}; arms: peer, mnist-ddpm, laptop.")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, arm in results["arms"].items():
        marks = [m["minutes"] for m in arm["marks"]]
        ax.plot(marks, [100 * m["confident_share"] for m in arm["marks"]], "o-", label=f"{name} ({arm['label']})")
    ax.axhline(90, color="grey", ls="--", lw=1, label="target 90%")
    ax.set_xlabel(f"training minutes ({results['threads']} CPU threads; sampling not counted)")
    ax.set_ylabel("confident share, % (classifier >= 0.9)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Time to quality: {results['num_samples']} samples, {SAMPLING_STEPS} sampler steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


LABELS = {"peer": "diffusers example recipe, UNet2DModel 2.73 M, DDIM 50",
          "mnist-ddpm": "shipped mnist-ddpm recipe, DDPM 50",
          "laptop": "laptop-digits, DDPM 50"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="peer,mnist-ddpm,laptop", help="comma-separated: peer, mnist-ddpm, laptop")
    parser.add_argument("--marks", default="5,10,20,40", help="training minutes at which to measure, ascending")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (the benchmark's machine), or cuda for gpu-check")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--out", default=str(RESULTS / "time_to_quality.json"), help="JSON; the plot goes beside it")
    parser.add_argument("--work", default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny nets, marks of a few seconds, 8 samples of 2 steps: checks the script runs")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    marks = [float(m) for m in args.marks.split(",")]
    num_samples, steps = args.num_samples, SAMPLING_STEPS
    if args.tiny:
        marks, num_samples, steps = [0.02, 0.04], 8, 2
    if marks != sorted(marks) or marks[0] <= 0:
        parser.error(f"--marks must be positive and ascending, got {args.marks}")
    work = args.work or tempfile.mkdtemp(prefix="time-to-quality-")
    classifier = DigitClassifier.from_pretrained("mnist-classifier")
    reference = load_digits("test").images
    results = {"command": "python benchmarks/time_to_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "threads": torch.get_num_threads(), "num_samples": num_samples, "sampling_steps": steps,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "torch": torch.__version__,
               "device": str(device), "tiny": args.tiny, "marks_minutes": marks, "arms": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.arms.split(","):
        arm = make_arm(name, marks[-1], args.tiny, work, device)
        entry = {"label": LABELS[name], "marks": []}
        results["arms"][name] = entry
        for minutes in marks:
            arm.train_until(minutes * 60)
            started = time.perf_counter()
            samples = arm.sample(num_samples, args.seed, steps)
            report = digit_report(samples, classifier, reference)
            sampling_seconds = round(time.perf_counter() - started, 1)
            other = digit_report(arm.sample(num_samples, args.seed, steps, other=True), classifier, reference)
            entry["marks"].append({"minutes": minutes, "train_seconds": round(arm.seconds, 1), "steps": arm.steps,
                                   **report, "sampling_seconds": sampling_seconds,
                                   "other_sampler": {k: other[k] for k in ("confident_share", "min_class_share",
                                                                           "frechet_distance")}})
            print(f"{name:>10} {minutes:5g} min: step {arm.steps:6d}, confident {report['confident_share']:.1%}, "
                  f"smallest class {report['min_class_share']:.1%}, Frechet {report['frechet_distance']:.1f} "
                  f"(other sampler: {other['confident_share']:.1%})", flush=True)
            out.write_text(json.dumps(results, indent=2))  # after every mark: a cut run keeps what it measured
        if not args.tiny:
            from sdlearn.viz.images import show_images

            show_images(samples[:64], nrow=8, title=f"{name}, {marks[-1]:g} min").savefig(
                out.with_name(f"{out.stem}_{name}_samples.png"), dpi=80)
    plot(results, out.with_suffix(".png"))
    return results


if __name__ == "__main__":
    main()
