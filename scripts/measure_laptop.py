"""Measure an exported laptop-digits folder exactly as issue 16's interface promises, and write the figures as JSON.

    python -m sdlearn train laptop-digits --run-dir R --max-minutes 20 --threads 2
    python -m sdlearn export laptop-digits --run-dir R --out F
    python scripts/measure_laptop.py F --threads 2 --out laptop-digits.json

The samples come from ``DiffusionPipeline.from_pretrained(F)(batch_size=256, num_inference_steps=50,
generator=torch.Generator().manual_seed(seed), output_type="np")`` with no other argument; the project's classifier
reads them (28x28 samples padded to 32x32 with background, as the training digits are): confident share (>= 0.9),
each digit's share of the confident ones (bar: every digit >= 5%), and the Frechet distance to the 500 held-out
digits.
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the folder `python -m sdlearn export laptop-digits --out F` wrote")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON to write (default: print only)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    pipe = DiffusionPipeline.from_pretrained(args.folder)
    started = time.perf_counter()
    images = pipe(batch_size=args.num_samples, num_inference_steps=50, generator=torch.Generator().manual_seed(args.seed),
                  output_type="np").images  # (N, 28, 28, 1) in [0, 1]
    seconds = time.perf_counter() - started
    samples = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1  # (N, 1, 28, 28) in [-1, 1]
    report = digit_report(samples, DigitClassifier.from_pretrained("mnist-classifier"), load_digits("test").images)
    with open(os.path.join(args.folder, "training.json")) as f:
        training = json.load(f)
    report.update(scheduler=type(pipe.scheduler).__name__, num_inference_steps=50, seed=args.seed,
                  sampling_seconds=round(seconds, 1), torch_threads=torch.get_num_threads(),
                  passes_target=report["confident_share"] >= 0.9 and report["min_class_share"] >= 0.05,
                  training=training, machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
                  command="python scripts/measure_laptop.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps({k: v for k, v in report.items() if k != "training"}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        from sdlearn.viz.images import show_images

        show_images(samples[:64], nrow=8, title=f"laptop-digits: 64 of {args.num_samples} samples, 50 steps").savefig(
            Path(args.out).with_suffix(".png"), dpi=80)
    return report


if __name__ == "__main__":
    main()
