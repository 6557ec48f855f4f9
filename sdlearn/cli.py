"""Command line: ``python -m sdlearn <command>`` (what the Makefile calls, and Windows users type).

Commands: course, test, lab, exercises, release, grade, gpu-check, train, train-classifier.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time


def cmd_train(args) -> int:
    import torch

    from .device import get_device
    from .training.recipes import get_recipe
    from .training.shipping import export_model, train_recipe

    recipe = get_recipe(args.name)
    config = recipe.train
    if args.steps is not None:
        config = dataclasses.replace(config, steps=args.steps)
    if args.max_minutes is not None:
        if not args.max_minutes > 0:
            print(f"--max-minutes must be a positive number of minutes, got {args.max_minutes:g}; e.g. "
                  f"--max-minutes 20.", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, budget_minutes=args.max_minutes)
    elif config.schedule_clock == "time":
        print(f"{recipe.name} trains for a wall-clock budget (its learning rate decays over it): give one, e.g. "
              f"python -m sdlearn train {recipe.name} --max-minutes 20. A resumed run trains for what is left.",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    run_dir = args.run_dir or os.path.join("runs", recipe.name)
    started = time.time()
    result = train_recipe(recipe.name, run_dir, config, device, progress=not args.no_progress)
    if result.ema_model is None:  # a process other than the main one under accelerate launch: it has said nothing
        return 0
    print(f"trained {recipe.name} to step {result.step} in {time.time() - started:.0f} s this session on {device}; "
          f"checkpoints in {run_dir}")
    if args.export:
        export_model(recipe.name, result.ema_model, args.export, run_dir=run_dir)
        print(f"EMA weights written to {args.export}")
    return 0


def cmd_train_classifier(args) -> int:
    import json

    import torch

    from .data.digits import load_digits
    from .evaluation.classifier import classifier_report, train_classifier

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


# --- the course: run, test, study (what the Makefile's targets call) ---------------------------

def _fast_choice(args) -> bool | None:
    """--fast -> True, --full -> False, neither -> None (the notebooks decide: FAST without a GPU)."""
    return True if args.fast else False if args.full else None


def cmd_course(args) -> int:
    from .course.notebooks import run_course

    try:
        return run_course(args.chapters, args.out, fast=_fast_choice(args), timeout=args.timeout,
                          notebooks=args.notebooks or None)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_test(args) -> int:
    import subprocess

    if not os.path.isdir("tests"):
        print("No tests/ folder here: run this from the sdlearn repository root.", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "pytest", *args.extra])


def cmd_lab(args) -> int:
    """JupyterLab in chapters/, or in the folder given first (``lab build/student``)."""
    import subprocess

    extra = list(args.extra)
    folder = extra.pop(0) if extra and not extra[0].startswith("-") else "chapters"
    if not os.path.isdir(folder):
        print(f"No folder {os.path.abspath(folder)}: run this from the sdlearn repository root "
              "(`make exercises` writes build/student/).", file=sys.stderr)
        return 2
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in extra:
        extra.append("--allow-root")  # containers often run as root; JupyterLab refuses without this
    print(f"Starting JupyterLab in {os.path.abspath(folder)} (Ctrl+C to stop)")
    return subprocess.call([sys.executable, "-m", "jupyterlab", *extra], cwd=folder)


def cmd_exercises(args) -> int:
    from .course.notebooks import release

    try:
        written = release([args.chapters], args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"student copy: {path}")
    print(f"{len(written)} student notebook(s) in {os.path.abspath(args.out)}: solutions replaced by "
          "'raise NotImplementedError()'; the check cell after each exercise tells you when yours is right.\n"
          f"Work in them with: python -m sdlearn lab {args.out}   (or: make lab ARGS={args.out})")
    return 0


def cmd_release(args) -> int:
    from .course.notebooks import release

    try:
        written = release(args.paths, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"student copy: {path}")
    return 0


def cmd_grade(args) -> int:
    """Grade completed student notebooks: each exercise in its own process; table, and JSON/CSV for gradebooks."""
    from .course.grader import run_grade_command

    return run_grade_command(args.notebooks, json_path=args.json, csv_path=args.csv, timeout=args.timeout,
                             jobs=args.jobs)


def cmd_gpu_check(args) -> int:
    """Benchmarks, then every chapter in full mode (SDLEARN_FAST=0), with times.

    A stub to grow: it runs each ``benchmarks/*.py`` script and the chapters, and prints what it
    ran and how long each took; the scripts and notebooks print their own quality figures.
    """
    import glob
    import subprocess

    import torch

    from .course.notebooks import run_course

    if not torch.cuda.is_available():
        print("warning: torch sees no CUDA GPU; full mode on this machine will be slow.", file=sys.stderr)
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    started = time.time()
    timings: list[tuple[str, float, int]] = []
    out = os.path.join(args.out, "benchmarks")
    os.makedirs(out, exist_ok=True)
    # results go to the gpu-check folder, never over the shipped ones; budgets sized for a few minutes in all
    script_args = {
        "sampler_quality.py": ["--out", os.path.join(out, "sampler_quality.json"), "--seeds", "1", "--no-progress"],
        "pixel_vs_latent.py": ["--out", os.path.join(out, "pixel_vs_latent.json"), "--arms", "pixel,latent f=4",
                               "--budget", "60"],
        # the three arms at GPU budgets (15, 30, 60 s of training each; the CPU figures are 5, 10, 20 minutes)
        "time_to_quality.py": ["--out", os.path.join(out, "time_to_quality.json"), "--marks", "0.25,0.5,1",
                               "--device", "cuda" if torch.cuda.is_available() else "cpu", "--threads", "4"],
    }
    for script in sorted(glob.glob(os.path.join(args.benchmarks, "*.py"))):
        extra = script_args.get(os.path.basename(script), [])
        print(f"\n== {script} {' '.join(extra)}", flush=True)
        t0 = time.time()
        status = subprocess.call([sys.executable, script, *extra])
        timings.append((script, time.time() - t0, status))
    print("\n== chapters in full mode (SDLEARN_FAST=0)", flush=True)
    t0 = time.time()
    status = 0 if args.skip_chapters else run_course(args.chapters, args.out, fast=False, timeout=args.timeout)
    timings.append((f"{args.chapters}/*.ipynb -> {args.out}", time.time() - t0, status))
    total = time.time() - started
    print("\ngpu-check summary")
    for what, seconds, code in timings:
        print(f"  {seconds:7.1f} s  {'ok    ' if code == 0 else f'FAILED ({code})'}  {what}")
    print(f"  {total:7.1f} s  total (target: under 8 minutes)")
    return 0 if all(code == 0 for _, _, code in timings) else 1


def cmd_export(args) -> int:
    from .training.shipping import export_run

    out = args.out or os.path.join(os.path.dirname(__file__), "pretrained", args.name)
    info = export_run(args.name, args.run_dir or os.path.join("runs", args.name), out)
    print(f"exported the EMA weights of step {info['step']} ({info['dtype']}) to {out}")
    return 0


def cmd_evaluate(args) -> int:
    """python -m sdlearn evaluate NAME: measure any shipped model against its bar; --write updates its folder."""
    import json

    import torch

    from .evaluation.evaluate import evaluate
    from .evaluation.model_cards import write_card
    from .utils.files import resolve_pretrained
    from .viz.images import show_images

    if args.threads:
        torch.set_num_threads(args.threads)
    name = os.path.basename(os.path.normpath(args.name))
    report, picture, images = evaluate(args.name, num_samples=args.num_samples, num_inference_steps=args.steps,
                                       seed=args.seed, progress=not args.no_progress, batch_size=args.batch_size)
    print(json.dumps(report, indent=2))
    if args.write:
        folder = resolve_pretrained(args.name)
        with open(os.path.join(folder, "quality.json"), "w") as f:
            json.dump(report, f, indent=2)
        if picture == "reconstructions.png":
            title = f"{name}: 16 held-out images (top) and their reconstructions (bottom)"
        elif "per_class" in report:
            title = (f"{name}: 8 of each digit, guidance {report['guidance_scale']:g}, "
                     f"{report['num_inference_steps']} steps")
        elif "picture_rows" in report:  # text to image: rows from each group of captions, top to bottom
            rows = ", ".join(f"{8 * n} {group.replace('_', '-')}" for group, n in report["picture_rows"].items())
            title = (f"{name}: samples of test captions ({rows}), guidance {report['guidance_scale']:g}, "
                     f"{report['num_inference_steps']} steps")
        else:
            title = f"{name}: 64 of {args.num_samples} samples"
        if picture is not None:  # shapes-clip has figures only
            show_images(images, nrow=16 if picture == "reconstructions.png" else 8, title=title).savefig(
                os.path.join(folder, picture), dpi=80)
        card = write_card(folder, name, report, args.machine)
        if card:
            print(f"model card: {card}")
    print("PASSES the quality bar" if report["passes_bar"] else "does NOT pass the quality bar")
    return 0


SCHEDULERS = {"ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
              "ddpm": "DDPMScheduler", "pndm": "PNDMScheduler"}


def load_generation_pipeline(model: str, image: bool, mask: bool, tokenizer: str | None = None):
    """The text-to-image, img2img or inpainting pipeline (by the inputs given) for a shipped name, a folder, or an
    original single ``.safetensors`` file (whose tokenizer comes from ``tokenizer``, a folder)."""
    from .pipelines import (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                            StableDiffusionPipeline)
    from .utils.files import resolve_pretrained

    cls = StableDiffusionInpaintPipeline if mask else StableDiffusionImg2ImgPipeline if image else \
        StableDiffusionPipeline
    if os.path.isfile(model):
        return cls.from_single_file(model, tokenizer=tokenizer)
    folder = resolve_pretrained(model)
    return cls.from_pretrained(folder)


def cmd_generate(args) -> int:
    """python -m sdlearn generate "a small red circle above a large blue square" [options]: one image, saved."""
    import torch
    from PIL import Image

    from .device import get_device
    from .pipelines.ddpm import SCHEDULER_CLASSES

    if args.mask and not args.image:
        print("--mask needs --image (the picture whose masked region is repainted).", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        pipe = load_generation_pipeline(args.model, bool(args.image), bool(args.mask), args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        print(f"cannot load {args.model!r}: {e}", file=sys.stderr)
        return 2
    if args.scheduler:
        pipe.scheduler = SCHEDULER_CLASSES[SCHEDULERS[args.scheduler]].from_config(dict(pipe.scheduler.config))
    pipe.to(get_device())
    kwargs = dict(prompt=args.prompt, negative_prompt=args.negative, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, generator=torch.Generator().manual_seed(args.seed), output_type="pil")
    if args.image:
        kwargs["image"] = Image.open(args.image).convert("RGB")
        if args.strength is not None:
            kwargs["strength"] = args.strength
    if args.mask:
        kwargs["mask_image"] = Image.open(args.mask).convert("L")
    try:
        out = pipe(**kwargs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.images[0].save(args.out)
    print(f"wrote {args.out} ({out.images[0].size[0]}x{out.images[0].size[1]}, {args.steps} steps of "
          f"{type(pipe.scheduler).__name__}, guidance {args.guidance:g}, seed {args.seed})")
    flags = out.nsfw_content_detected
    print("safety checker: none in this model" if flags is None else
          f"safety checker: {'FLAGGED (the image is black)' if flags[0] else 'nothing flagged'}")
    return 0


# Commands whose extra arguments go through untouched (to pytest, to jupyter lab).
PASS_THROUGH = ("test", "lab")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdlearn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("course", help="execute every chapter notebook -> build/course/ (.ipynb + HTML)")
    p.add_argument("notebooks", nargs="*", help="run only these notebooks (default: every chapters/*.ipynb)")
    p.add_argument("--chapters", default="chapters", help="folder of chapter notebooks")
    p.add_argument("--out", default=os.path.join("build", "course"), help="where executed notebooks go")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--fast", action="store_true", help="force FAST mode (SDLEARN_FAST=1)")
    speed.add_argument("--full", action="store_true", help="force full mode (SDLEARN_FAST=0)")
    p.add_argument("--timeout", type=int, default=1200, help="most seconds one cell may take")
    p.set_defaults(func=cmd_course)

    p = sub.add_parser("generate", help="text to image (img2img with --image, inpainting with --mask) -> a PNG")
    p.add_argument("prompt")
    p.add_argument("--model", default="shapes-t2i", help="shipped name, pipeline folder, or original .safetensors file")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder, for a single .safetensors file")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None, help="default: the model's own")
    p.add_argument("--image", default=None, help="img2img: the picture to edit")
    p.add_argument("--strength", type=float, default=None,
                   help="img2img / inpainting: share of the steps that denoise, in (0, 1] (default 0.8 / 1.0)")
    p.add_argument("--mask", default=None, help="inpainting: white = repaint, black = keep (with --image)")
    p.add_argument("--out", default="out.png")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("test", help="run the test suite (any further arguments go to pytest)")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("lab", help="start JupyterLab in chapters/ or in a given folder: lab [FOLDER] [jupyter lab options]")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("exercises", help="student copies of every chapter -> build/student/")
    p.add_argument("--chapters", default="chapters")
    p.add_argument("--out", default=os.path.join("build", "student"))
    p.set_defaults(func=cmd_exercises)

    p = sub.add_parser("release", help="student copies of the given notebooks or folders of notebooks")
    p.add_argument("paths", nargs="+", metavar="NOTEBOOK_OR_FOLDER")
    p.add_argument("--out", required=True, help="folder for the student copies")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("grade", help="grade completed student notebooks (each exercise in its own process, with a "
                                     "time limit) -> table; --json/--csv for gradebooks")
    p.add_argument("notebooks", nargs="+", metavar="NOTEBOOK_OR_FOLDER",
                   help="completed notebooks, or folders of them (searched recursively)")
    p.add_argument("--json", default=None, metavar="FILE", help="write per notebook, per exercise score and max_score")
    p.add_argument("--csv", default=None, metavar="FILE", help="write one row per notebook, one column per exercise")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="time limit of one exercise")
    p.add_argument("--jobs", type=int, default=1, help="exercises graded at the same time")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("gpu-check", help="on a CUDA machine: benchmarks and every chapter in full mode, timed")
    p.add_argument("--benchmarks", default="benchmarks", help="folder of benchmark scripts (each *.py is run)")
    p.add_argument("--chapters", default="chapters")
    p.add_argument("--out", default=os.path.join("build", "gpu-check"))
    p.add_argument("--timeout", type=int, default=1200, help="most seconds one cell may take")
    p.add_argument("--skip-chapters", action="store_true", help="run the benchmarks only")
    p.set_defaults(func=cmd_gpu_check)

    p = sub.add_parser("train", help="train a named recipe (resumable: run again to continue)")
    p.add_argument("name", help="recipe name, e.g. mnist-ddpm")
    p.add_argument("--run-dir", default=None, help="checkpoint folder (default runs/NAME)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget of the whole run's training, resumed runs included (laptop-digits "
                        "needs one: its learning rate decays over it)")
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

    p = sub.add_parser("export", help="write the EMA weights of a training run as a shipped pipeline folder")
    p.add_argument("name", help="recipe name, e.g. mnist-ddpm")
    p.add_argument("--run-dir", default=None, help="checkpoint folder (default runs/NAME)")
    p.add_argument("--out", default=None, help="default: sdlearn/pretrained/NAME")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="measure a shipped model against its quality bar (mnist-ddpm: 256 samples, "
                                        "1000 steps; mnist-vae / shapes-vae: held-out reconstructions; shapes-ldm; "
                                        "mnist-cond: 100 per digit at guidance 3 and a guidance sweep; "
                                        "shapes-clip: retrieval and word order on the test split)")
    p.add_argument("name", nargs="?", default="mnist-ddpm", help="shipped model name or pipeline folder")
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--steps", type=int, default=1000, help="DDPM inference steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch (the samples depend on it)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--machine", default="a 2-core CPU (no GPU)", help="described in the model card")
    p.add_argument("--no-write", dest="write", action="store_false",
                   help="only print; do not write quality.json, samples.png and the model card")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if argv and argv[0] in PASS_THROUGH:
        argv, extra = argv[:1], argv[1:]
    args = parser.parse_args(argv)
    args.extra = extra
    return args.func(args)
