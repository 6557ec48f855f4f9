"""Quality against steps: the small-scale analogue of the DDIM paper's Table 1, on the shipped digits model.

For each sampler setting (a "cell": DDIM with S = 10, 20, 50, 100 and eta = 0, 0.5, 1; DDIM with S = 1000 and
eta = 0, 1; DDPM with 1000 steps; Euler and DPM-Solver++ with 10 and 20 steps) and each seed, draw N digits
(default 256) and measure them with the project's classifier: the Frechet distance to the 500 held-out digits
and the confident share (top class >= 0.9), with the time the sampling took. Seeds are shared by all cells,
so every sampler starts from the same noise. Then invert 64 held-out digits with DDIM and reconstruct them
with 10, 20, 50 and 100 steps (sdlearn.pipelines.ddim_inversion). Everything goes into one JSON file, written after every
run, and a run that is interrupted resumes where it stopped (cells already measured for the same model,
sample count and seed are skipped). Prints a Markdown table and whether the issue's targets pass:
DDIM (S = 50, eta = 0) and DPM-Solver++ (S = 20) reach a Frechet distance <= 1.25x that of DDPM with 1000
steps and a confident share within 5 points of it (means over seeds; read as "at most 5 points below"),
and the inversion error falls as S grows.

    python benchmarks/sampler_quality.py                 # the full table: hours on a CPU, minutes on a GPU
    python benchmarks/sampler_quality.py --quick         # 16 samples, 1 seed, 4 cells: checks that it works
    python benchmarks/sampler_quality.py --cells "DDIM S=50|DDPM"   # only the cells whose name matches
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sdlearn.utils.files import atomic_write_json, resolve_pretrained  # noqa: E402
from sdlearn.data.digits import load_digits  # noqa: E402
from sdlearn.device import get_device  # noqa: E402
from sdlearn.evaluation.evaluate import real_vs_real, sample_digits  # noqa: E402
from sdlearn.pipelines.ddim_inversion import inversion_table  # noqa: E402
from sdlearn.evaluation.classifier import DigitClassifier, digit_report  # noqa: E402
from sdlearn.pipelines import DDPMPipeline  # noqa: E402
from sdlearn.viz.samplers import (
    OWN_SPACING,
    QUALITY_CELLS,
    REFERENCE_CELL,
    TARGET,
    TARGET_CELLS,
    QualityCell,
    check_targets,
    make_sampler,
    quality_table_markdown,
    summarize_runs,
)  # noqa: E402

QUICK_CELLS = (QualityCell("DDIM", 10, 0.0), QualityCell("Euler", 10), QualityCell("DPM-Solver++", 10),
               QualityCell("DDPM", 50))  # --quick: a 50-step DDPM stands in for the 1000-step reference, and the
# 10-step DDIM and DPM-Solver++ for the targets' 50- and 20-step ones
FORMAT_VERSION = 1


def model_identity(name: str) -> dict:
    """What the measurements belong to: the model's folder, its training step and a hash of its UNet weights."""
    folder = Path(resolve_pretrained(name))
    weights = sorted((folder / "unet").glob("*.safetensors"))
    digest = hashlib.sha256()
    for path in weights:
        digest.update(path.read_bytes())
    training = folder / "training.json"
    step = json.loads(training.read_text()).get("step") if training.is_file() else None
    return {"name": name, "step": step, "unet_sha256": digest.hexdigest()[:16]}


def load_results(path: Path, identity: dict, num_samples: int, fresh: bool, settings: dict | None = None) -> dict:
    """The JSON of an earlier run if it measured this model with this many samples and the same settings
    (batch size, autocast); otherwise a new one."""
    settings = settings or {}
    new = {"format": FORMAT_VERSION, "model": identity, "num_samples": num_samples, "cells": {}, **settings}
    if fresh or not path.is_file():
        return new
    old = json.loads(path.read_text())
    if (old.get("model") != identity or old.get("num_samples") != num_samples or old.get("format") != FORMAT_VERSION
            or any(old.get(k) != v for k, v in settings.items())):
        stale = path.with_suffix(".stale.json")
        os.replace(path, stale)
        print(f"{path} measured another model, sample count or settings ({old.get('model')}, n={old.get('num_samples')}, "
              f"batch {old.get('batch_size')}, autocast {old.get('autocast')}); "
              f"moved it to {stale} and starting afresh.")
        return new
    return old


def sampler_options(kind: str) -> dict:
    """The sampler options a run of this kind is measured with, recorded with each run. DDIM steps with the noise
    that the clipped x0_pred implies (``use_clipped_model_output``; see ``make_sampler``): mnist-ddpm samples with
    clip_sample, and the model's own eps would move x_t by the whole clipping correction at every step."""
    return {"use_clipped_model_output": True} if kind == "DDIM" else {}


def drop_other_options(results: dict) -> list[str]:
    """Forget runs measured with other sampler options than ``sampler_options`` gives now (e.g. DDIM runs from before
    use_clipped_model_output was set); returns "cell, seed" for each run dropped."""
    dropped = []
    for name, cell in list(results["cells"].items()):
        want = sampler_options(cell["kind"])
        for seed, run in list(cell["runs"].items()):
            if run.get("options", {}) != want:
                dropped.append(f"{name}, seed {seed}")
                del cell["runs"][seed]
        if cell["runs"]:
            cell["summary"] = summarize_runs(cell["runs"])
        else:
            del results["cells"][name]
    return dropped


def measure_cell(pipe, cell: QualityCell, num_samples: int, seed: int, batch_size: int, classifier, reference,
                 progress: bool, autocast: str = "none") -> dict:
    """One run of one cell: sample, time it, and measure the digits.

    autocast="bf16" runs the UNet's convolutions and matmuls in bfloat16 (the scheduler's arithmetic stays in
    float32): about 2x faster on CPUs with bf16 instructions, at a cost in Frechet distance of a few percent
    that every cell shares."""
    options = sampler_options(cell.kind)
    sampler = make_sampler(cell.kind, pipe.scheduler.config, eta=cell.eta or 0.0, **options)
    pipeline = DDPMPipeline(pipe.unet, sampler)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.autocast(pipe.device.type, dtype=torch.bfloat16, enabled=autocast == "bf16"):
        samples = sample_digits(pipeline, num_samples, cell.steps, seed, batch_size=batch_size, progress=progress)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    report = digit_report(samples, classifier, reference)
    return {"frechet_distance": report["frechet_distance"], "confident_share": report["confident_share"],
            "min_class_share": report["min_class_share"], "seconds": round(seconds, 2), "options": options}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist-ddpm", help="a shipped pipeline name or a pipeline folder")
    parser.add_argument("--num-samples", type=int, default=None, help="digits per run (default 256; --quick 16)")
    parser.add_argument("--seeds", type=int, default=None, help="runs per cell, seeds 0..n-1 (default 3; --quick 1)")
    parser.add_argument("--batch-size", type=int, default=256, help="the samples depend on it: keep it across "
                                                                       "runs (64 is fastest per image on a CPU)")
    parser.add_argument("--autocast", choices=("none", "bf16"), default="none",
                        help="bf16: the UNet in bfloat16 (about 2x faster on a recent CPU); recorded in the JSON")
    parser.add_argument("--cells", default=None, help="a regular expression: only cells whose name matches")
    parser.add_argument("--inversion-images", type=int, default=None, help="held-out digits to invert (default 64)")
    parser.add_argument("--inversion-steps", type=int, nargs="+", default=None, help="default 10 20 50 100")
    parser.add_argument("--no-inversion", action="store_true")
    parser.add_argument("--out", default=None, help="the JSON file (default: sampler_quality.json in the model's "
                                                    "folder; --quick: a file in the temp folder)")
    parser.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier results in --out")
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the script works")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    quick = args.quick
    num_samples = args.num_samples or (16 if quick else 256)
    seeds = list(range(args.seeds or (1 if quick else 3)))
    cells = QUICK_CELLS if quick else QUALITY_CELLS
    if args.cells:
        cells = tuple(c for c in cells if re.search(args.cells, c.name))
        if not cells:
            parser.error(f"no cell matches {args.cells!r}; the cells are {[c.name for c in QUALITY_CELLS]}")
    inv_images = args.inversion_images or (8 if quick else 64)
    inv_steps = args.inversion_steps or ([5, 10] if quick else [10, 20, 50, 100])
    reference_cell = "DDPM S=50" if quick else REFERENCE_CELL
    progress = not args.no_progress
    if args.out:
        out = Path(args.out)
    elif quick:
        out = Path(tempfile.gettempdir()) / "sdlearn-sampler_quality-quick.json"
    else:
        out = Path(resolve_pretrained(args.model)) / "sampler_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    device = get_device(args.device)
    pipe = DDPMPipeline.from_pretrained(args.model).to(device)
    pipe.unet.eval()
    classifier = DigitClassifier.from_pretrained("mnist-classifier").to(device)
    held_out = load_digits("test").images  # (500, 1, 32, 32)
    settings = {"batch_size": args.batch_size, "autocast": args.autocast}
    results = load_results(out, model_identity(args.model), num_samples, args.fresh, settings)
    dropped = drop_other_options(results)
    if dropped:
        print(f"{len(dropped)} earlier runs used other sampler options and will be measured again: {'; '.join(dropped)}")
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor()
                                                                              or platform.machine())
    spacing = pipe.scheduler.config["timestep_spacing"]
    command = ["python", "benchmarks/sampler_quality.py", *(argv if argv is not None else sys.argv[1:])]
    results.update(seeds=sorted(set(results.get("seeds", [])) | set(seeds)), device=str(device), machine=machine,
                   torch_threads=torch.get_num_threads(), quick=quick,
                   spacing={"DDPM": spacing, "DDIM": spacing, **OWN_SPACING}, command=" ".join(command))
    if "real_vs_real_frechet" not in results:
        results["real_vs_real_frechet"] = real_vs_real(classifier)
    atomic_write_json(str(out), results)

    todo = [(c, s) for c in cells for s in seeds
            if str(s) not in results["cells"].get(c.name, {}).get("runs", {})]
    print(f"{len(cells)} cells x {len(seeds)} seeds, {num_samples} samples each on {device}; "
          f"{len(cells) * len(seeds) - len(todo)} runs already in {out}, {len(todo)} to do")
    for k, (cell, seed) in enumerate(todo):
        print(f"[{k + 1}/{len(todo)}] {cell.name}, seed {seed}", flush=True)
        run = measure_cell(pipe, cell, num_samples, seed, args.batch_size, classifier, held_out, progress,
                           args.autocast)
        entry = results["cells"].setdefault(cell.name, {"kind": cell.kind, "steps": cell.steps, "eta": cell.eta,
                                                        "spacing": results["spacing"][cell.kind], "runs": {}})
        entry["runs"][str(seed)] = run
        entry["summary"] = summarize_runs(entry["runs"])
        print(f"    Frechet {run['frechet_distance']:.2f}, confident {run['confident_share']:.1%}, "
              f"{run['seconds']:.1f} s", flush=True)
        atomic_write_json(str(out), results)

    if not args.no_inversion:
        stride = max(1, len(held_out) // inv_images)  # the held-out digits are sorted by class: take every k-th
        chosen = f"load_digits('test').images[::{stride}][:{inv_images}]"
        done = {r["steps"] for r in results.get("inversion", {}).get("rows", [])}
        if results.get("inversion", {}).get("images") != chosen or not set(inv_steps) <= done:
            print(f"DDIM inversion of {inv_images} held-out digits, S = {inv_steps}", flush=True)
            images = held_out[::stride][:inv_images].to(device)
            rows = inversion_table(pipe, images, steps=inv_steps, progress=progress)
            results["inversion"] = {"num_images": len(images), "images": chosen, "rows": rows,
                                    "model_timestep": "current"}
            atomic_write_json(str(out), results)

    # the targets
    target_cells = ("DDIM S=10 eta=0", "DPM-Solver++ S=10") if quick else TARGET_CELLS
    results["targets"] = check_targets(results["cells"], reference=reference_cell, targets=target_cells)
    inversion_rows = sorted(results.get("inversion", {}).get("rows", []), key=lambda r: r["steps"])
    mses = [r["mse"] for r in inversion_rows]
    results["inversion_error_falls"] = (all(a > b for a, b in zip(mses, mses[1:])) if len(mses) > 1 else None)
    atomic_write_json(str(out), results)

    table = quality_table_markdown(results)
    print("\n" + table + "\n")
    for t in results["targets"]:
        if t["passes"] is None:
            print(f"target {t['cell']} vs {t['reference']}: not measured yet")
        else:
            print(f"target {t['cell']}: Frechet ratio {t['frechet_ratio']:.2f} (<= {TARGET['frechet_ratio']}), "
                  f"confident share {t['confident_points']:+.1f} points (at most {TARGET['confident_points']:g} "
                  f"below): {'PASS' if t['passes'] else 'FAIL'}")
    if results["inversion_error_falls"] is not None:
        print(f"inversion error falls as S grows ({', '.join(f'{m:.4g}' for m in mses)}): "
              f"{'PASS' if results['inversion_error_falls'] else 'FAIL'}")
    if quick:
        print("(--quick: tiny sample counts and a 50-step DDPM reference; the numbers only show that the script works)")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    print(f"results in {out}")
    return results


if __name__ == "__main__":
    main()
