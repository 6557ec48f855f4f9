"""Which 50-step sampler should an exported laptop-digits folder carry? Every variant on the same weights and seed.

    python scripts/laptop_sampler_ablation.py F --threads 2 --seed 1 --out benchmarks/results/laptop-digits_20min_samplers_seed1.json

``F`` is a folder ``python -m sdlearn export laptop-digits`` wrote. Each variant draws ``--num-samples`` digits with
50 steps from the same starting noise (seed), read by the project's classifier as in ``scripts/measure_laptop.py``:
confident share (>= 0.9), the smallest digit's share of the confident ones, Frechet distance to the held-out digits.
Variants (the scheduler's config only, so that the winner can be the folder's default; DDIM's eta is a call argument
and is listed for comparison):

- ``ddpm`` the folder's own DDPMScheduler (variance fixed_small, sigma_t^2 = beta~_t, leading spacing: 980, 960, ..., 0)
- ``ddpm-trailing``: the same from t = 999 (999, 979, ..., 19; Lin et al. 2024, "Common diffusion noise schedules and
  sample steps are flawed", table 2: the first step should start at the last training timestep)
- ``ddpm-fixed_large``: sigma_t^2 = beta_t (DDPM paper sec. 3.2: both choices gave similar results at T = 1000)
- ``ddpm-trailing-fixed_large``
- ``ddim-eta0``, ``ddim-eta0.5``, ``ddim-eta1``: DDIMScheduler on the same config, leading spacing, steps_offset 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sdlearn.data.digits import load_digits  # noqa: E402
from sdlearn.evaluation.classifier import DigitClassifier, digit_report  # noqa: E402
from sdlearn.pipelines import DiffusionPipeline  # noqa: E402
from sdlearn.schedulers import DDIMScheduler, DDPMScheduler  # noqa: E402

VARIANTS = {
    "ddpm": ("ddpm", {}, {}),
    "ddpm-trailing": ("ddpm", {"timestep_spacing": "trailing"}, {}),
    "ddpm-fixed_large": ("ddpm", {"variance_type": "fixed_large"}, {}),
    "ddpm-trailing-fixed_large": ("ddpm", {"timestep_spacing": "trailing", "variance_type": "fixed_large"}, {}),
    "ddim-eta0": ("ddim", {"steps_offset": 1, "set_alpha_to_one": False}, {"eta": 0.0}),
    "ddim-eta0.5": ("ddim", {"steps_offset": 1, "set_alpha_to_one": False}, {"eta": 0.5}),
    "ddim-eta1": ("ddim", {"steps_offset": 1, "set_alpha_to_one": False}, {"eta": 1.0}),
}


def scheduler_for(kind: str, base: dict, changes: dict):
    config = {k: v for k, v in base.items() if not k.startswith("_")}
    if kind == "ddpm":
        return DDPMScheduler.from_config({**config, **changes})
    config.pop("variance_type", None)
    return DDIMScheduler.from_config({**config, **changes})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the folder `python -m sdlearn export laptop-digits --out F` wrote")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON to write (default: print only)")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    torch.set_num_threads(args.threads)
    pipe = DiffusionPipeline.from_pretrained(args.folder)
    base = dict(pipe.scheduler.config)
    classifier = DigitClassifier.from_pretrained("mnist-classifier")
    held_out = load_digits("test").images
    results = {}
    for name in names:
        kind, changes, call = VARIANTS[name]
        pipe.scheduler = scheduler_for(kind, base, changes)
        started = time.perf_counter()
        images = pipe(batch_size=args.num_samples, num_inference_steps=50,
                      generator=torch.Generator().manual_seed(args.seed), output_type="np", progress=False,
                      **call).images  # (N, 28, 28, 1) in [0, 1]
        samples = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
        report = digit_report(samples, classifier, held_out)
        results[name] = {"scheduler": type(pipe.scheduler).__name__, "config_changes": changes, "call": call,
                         "confident_share": report["confident_share"], "min_class_share": report["min_class_share"],
                         "frechet_distance": report["frechet_distance"],
                         "sampling_seconds": round(time.perf_counter() - started, 1)}
        print(f"{name:28s} confident {100 * report['confident_share']:5.1f}%  smallest digit "
              f"{100 * report['min_class_share']:4.1f}%  Frechet {report['frechet_distance']:6.1f}", flush=True)
    training = {}  # written by `sdlearn export` beside the weights (absent in a folder saved otherwise)
    if os.path.isfile(os.path.join(args.folder, "training.json")):
        with open(os.path.join(args.folder, "training.json")) as f:
            training = json.load(f)
    out = {"folder": os.path.abspath(args.folder), "num_samples": args.num_samples, "num_inference_steps": 50,
           "seed": args.seed, "torch_threads": torch.get_num_threads(), "variants": results,
           "training_steps": training.get("step"), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "command": "python scripts/laptop_sampler_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
