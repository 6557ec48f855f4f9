"""Measure a text-to-image shapes model's edits (issue 15): img2img colour edits with a strength sweep, and blended
inpainting (sdlearn.evaluation.edits has the cases, the bars and the verdicts).

    python scripts/evaluate_edits.py shapes-t2i                  # 256 cases each -> benchmarks/results/shapes-t2i_edits.*
    python scripts/evaluate_edits.py FOLDER --num-cases 64 --out /tmp/edits.json

Writes the JSON report and a picture beside it (.png): originals, their colour edits, the inpainting masks, the
inpaintings (8 cases each), and the strength sweep.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sdlearn.evaluation.edits import EDIT_BAR, evaluate_edits  # noqa: E402
from sdlearn.viz.images import image_grid  # noqa: E402


def picture(report: dict, images: torch.Tensor, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.6))
    grid_ax, sweep_ax = fig.add_axes((0.0, 0.02, 0.58, 0.86)), fig.add_axes((0.65, 0.13, 0.32, 0.72))
    grid_ax.imshow(image_grid(images, nrow=8))
    grid_ax.set_axis_off()
    edit, inpaint = report["img2img_colour_edit"], report["blended_inpainting"]
    grid_ax.set_title(f"rows: originals | colour edits (strength {edit['strength']:g}: {edit['right_share']:.0%} "
                      f"right) | masks | inpainted ({inpaint['found_share']:.0%} found, "
                      f"{inpaint['psnr_outside_db']:.1f} dB outside)", fontsize=9)
    rows = edit["strength_sweep"]
    s = [r["strength"] for r in rows]
    sweep_ax.plot(s, [r["right_share"] for r in rows], "o-", label="right (new colour, same shape, within 4 px)")
    sweep_ax.plot(s, [r["new_colour_share"] for r in rows], "s--", label="new colour")
    sweep_ax.plot(s, [r["centre_within_bar_share"] for r in rows], "^:", label="centre within 4 px")
    sweep_ax.axhline(EDIT_BAR["right_share"], color="gray", lw=0.8)
    sweep_ax.set_xlabel("strength")
    sweep_ax.set_ylabel(f"share of {rows[0]['n']} cases" if rows else "share")
    sweep_ax.set_ylim(0, 1.02)
    sweep_ax.legend(fontsize=7, loc="lower left")
    sweep_ax.set_title("img2img strength sweep", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="shapes-t2i", help="shipped name or StableDiffusionPipeline folder")
    p.add_argument("--num-cases", type=int, default=256)
    p.add_argument("--sweep-cases", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (img2img runs the last strength x steps)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="default: benchmarks/results/<model name>_edits.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = os.path.basename(os.path.normpath(args.model))
    out = args.out or str(Path(__file__).resolve().parents[1] / "benchmarks" / "results" / f"{name}_edits.json")
    started = time.time()
    report, images = evaluate_edits(args.model, num_cases=args.num_cases, seed=args.seed, batch_size=args.batch_size,
                                    sweep_cases=args.sweep_cases, num_inference_steps=args.steps)
    report["command"] = "python scripts/evaluate_edits.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report["machine"] = f"{platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch thread(s)"
    report["seconds_total"] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    picture(report, images, f"{name}: measured edits").savefig(os.path.splitext(out)[0] + ".png", dpi=80)
    edit, inpaint = report["img2img_colour_edit"], report["blended_inpainting"]
    print(f"img2img colour edits: {edit['right_share']:.1%} right at strength {edit['strength']:g} "
          f"(bar {EDIT_BAR['right_share']:.0%}): {'met' if edit['bar_met'] else 'MISSED'}")
    print(f"blended inpainting: {inpaint['found_share']:.1%} found, {inpaint['psnr_outside_db']:.1f} dB outside the "
          f"mask (autoencoder alone {inpaint['autoencoder_psnr_outside_db']:.1f} dB): "
          f"{'met' if inpaint['bar_met'] else 'MISSED'}")
    print(f"wrote {out}")
    return 0 if report["passes_bar"] else 1


if __name__ == "__main__":
    sys.exit(main())
