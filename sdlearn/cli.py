"""Command line: ``python -m sdlearn <command>`` (what the Makefile calls, and Windows users type).

Commands: course, test, lab, exercises, train, export, evaluate.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time


def cmd_train(args) -> int:
    import torch

    from .data import load_digits
    from .device import get_device
    from .pipelines import DDPMPipeline
    from .recipes import get_recipe
    from .schedulers import DDPMScheduler
    from .train import train
    from .unet import UNet

    recipe = get_recipe(args.name)
    config = recipe.train
    if args.steps is not None:
        config = dataclasses.replace(config, steps=args.steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    torch.manual_seed(config.seed)  # weight initialisation
    unet = UNet(recipe.unet).to(device)
    scheduler = DDPMScheduler(**recipe.scheduler)
    images = load_digits("train").images
    run_dir = args.run_dir or os.path.join("runs", recipe.name)
    started = time.time()
    result = train(unet, scheduler, images, config, run_dir=run_dir, progress=not args.no_progress)
    print(f"trained {recipe.name} to step {result.step} in {time.time() - started:.0f} s this session on {device}; "
          f"checkpoints in {run_dir}")
    if args.export:
        DDPMPipeline(result.ema_model.cpu(), scheduler).save_pretrained(args.export)
        print(f"EMA pipeline written to {args.export}")
    return 0


def cmd_train_classifier(args) -> int:
    import json

    import torch

    from .data import load_digits
    from .metrics import classifier_report, train_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    train_set = load_digits("train")
    model = train_classifier(train_set.images, train_set.labels, epochs=args.epochs, seed=args.seed,
                             progress=not args.no_progress)
    seconds = time.time() - started
    model.save_pretrained(args.out)
    report = classifier_report(model)
    report.update(train_seconds=round(seconds), epochs=args.epochs, seed=args.seed)
    print(json.dumps(report, indent=2))
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdlearn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a named recipe (resumable: run again to continue)")
    p.add_argument("name", help="recipe name, e.g. mnist-ddpm")
    p.add_argument("--run-dir", default=None, help="checkpoint folder (default runs/NAME)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    p.add_argument("--export", default=None, help="write the EMA pipeline to this folder at the end")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-classifier", help="train the evaluation classifier on the 4,500 training digits")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "pretrained", "mnist-classifier"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_classifier)

    args = parser.parse_args(argv)
    return args.func(args)
