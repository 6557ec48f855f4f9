"""Ablation: laptop-digits with another batch size, on the same 20-minute path as the time-to-quality benchmark.

    python scripts/laptop_batch_ablation.py --batch 64 --threads 2 --work W --out benchmarks/results/laptop-digits_20min_batch64.json

Trains ``laptop-digits`` with only ``batch_size`` changed (the benchmark's laptop arm: budget 20 minutes, paused at
10), and measures 256 samples with the folder's 50-step sampler at seed 0 at each mark, as the benchmark does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import time_to_quality as ttq  # noqa: E402
from sdlearn.data.digits import load_digits  # noqa: E402
from sdlearn.evaluation.classifier import DigitClassifier, digit_report  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--marks", default="10,20", help="training minutes at which to measure; the last is the budget")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", required=True, help="the run folder's parent")
    parser.add_argument("--out", required=True, help="JSON to write (after every mark)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    marks = [float(m) for m in args.marks.split(",")]
    arm = ttq.RecipeArm("laptop", "laptop-digits", marks[-1], False, args.work, torch.device("cpu"))
    arm.config = dataclasses.replace(arm.config, batch_size=args.batch)
    classifier, reference = DigitClassifier.from_pretrained("mnist-classifier"), load_digits("test").images
    result = {"batch_size": args.batch, "threads": args.threads, "num_samples": 256, "seed": 0, "marks": [],
              "command": "python scripts/laptop_batch_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for minutes in marks:
        arm.train_until(minutes * 60)
        report = digit_report(arm.sample(256, 0, 50), classifier, reference)
        result["marks"].append({"minutes": minutes, "steps": arm.steps, "train_seconds": round(arm.seconds, 1),
                                **{k: report[k] for k in ("confident_share", "min_class_share", "frechet_distance")}})
        print(result["marks"][-1], flush=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
