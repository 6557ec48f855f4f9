"""Measured edits with a text-to-image shapes model (issue 15): img2img prompt edits and blended inpainting.

Both start from real one-object test images (``load_shapes("test", compositions="seen")``, never trained on) and
are read back by the shapes checker (``read_shapes``).

img2img colour edits (SDEdit, Meng et al. 2022): the image of "a small red circle" and the prompt with the colour
changed ("a small blue circle"; never a held-out colour-shape pair), at strength s. A case is right when the checker
reads one well-formed object in the new colour, of the original's shape, its centre within 4 pixels of the
original's (both centres read by the checker). Bar: >= 80% of 256 cases. The strength sweep reports, per s, the
share right, the share in the new colour and the median centre shift.

Blended inpainting (Avrahami et al. 2023, the 4-channel path: the known latents re-imposed at every step): a
24 x 24 pixel mask on the latent grid over an empty area of the image (no ink within 2 pixels), and a prompt that
asks for a new small object there: the two-object caption the data would write for the image with it (new object
first). A case is right when the checker reads an object of the asked colour, shape and size, without complaint,
centred inside the mask. Bars: >= 80% of 256 cases, and PSNR outside the masks >= 28 dB, where
    PSNR = 10 log10(1 / MSE)    (images in [0, 1]; the MSE over every pixel outside the masks, all cases together),
reported beside the autoencoder alone, D(mode of q(z | x)), on the same pixels: what the latents cost already.

The stated settings: the model's own scheduler with 50 steps; colour edits at strength 0.4 with guidance 10, inpainting
with guidance 5. Strength and guidance were chosen on shapes-t2i's step-5,000 export with 64 cases (at strengths
that keep the position, guidance 5 leaves the old colour more often), before the shipped model was measured.

    python scripts/evaluate_edits.py shapes-t2i     # -> benchmarks/results/shapes-t2i_edits.json and .png
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import torch

from ..data.shapes import COLOURS, HELD_OUT_PAIRS, SHAPES, caption, load_shapes, render_coverage
from .shapes_checker import ShapeReading, read_shapes_batch

EDIT_BAR = {"right_share": 0.80, "centre_shift_px": 4.0}  # img2img colour edits at the stated strength
INPAINT_BAR = {"found_share": 0.80, "psnr_outside_db": 28.0}  # blended inpainting
MASK_PX = 24  # side of the inpainting mask: room for a small shape (about 13 pixels wide) and a margin
GRID_PX = 4  # masks sit on this grid: the latent grid of an f = 4 autoencoder (shapes-vae), so no latent is half in
CLEAR_PX = 2  # no ink of the original within this many pixels of the mask
SWEEP_STRENGTHS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
PSNR_CAP_DB = 100.0  # identical pixels: an MSE of 0 is reported as this


def _one_object_images() -> tuple[torch.Tensor, list]:
    """The one-object test images without a held-out pair (images in [-1, 1], their one ShapeSpec each)."""
    data = load_shapes("test", compositions="seen")
    keep = [i for i, specs in enumerate(data.specs) if len(specs) == 1]
    return data.images[keep], [data.specs[i][0] for i in keep]


def _cycle(count: int, pool: int, rng: np.random.Generator) -> list[int]:
    """``count`` indices into a pool: seeded permutations, one after the other."""
    order = []
    while len(order) < count:
        order += rng.permutation(pool).tolist()
    return order[:count]


def _phrase(size: str, colour: str, shape: str) -> str:
    return f"a {size} {colour} {shape}"


def _allowed_colours(shape: str, avoid: str | None = None) -> list[str]:
    """Colours that make no held-out pair with ``shape`` (the model never saw those named), ``avoid`` left out."""
    return [c for c in COLOURS if c != avoid and (c, shape) not in HELD_OUT_PAIRS]


# ---------------------------------------------------------------------------- img2img colour edits
def colour_edit_cases(num_cases: int = 256, seed: int = 0) -> dict:
    """Cases: "images" (N, 3, 64, 64) in [-1, 1], "prompts" (the caption with the colour changed), "new_colours",
    "sources" (the original captions)."""
    images, specs = _one_object_images()
    rng = np.random.default_rng(seed)
    chosen = _cycle(num_cases, len(specs), rng)
    prompts, colours, sources = [], [], []
    for i in chosen:
        s = specs[i]
        options = _allowed_colours(s.shape, avoid=s.colour)
        colours.append(options[int(rng.random() * len(options))])
        prompts.append(_phrase(s.size, colours[-1], s.shape))
        sources.append(_phrase(s.size, s.colour, s.shape))
    return {"images": images[chosen], "prompts": prompts, "new_colours": colours, "sources": sources}


def colour_edit_verdict(edited: ShapeReading, original: dict, new_colour: str,
                        max_shift_px: float = EDIT_BAR["centre_shift_px"], size: int = 64) -> tuple[str, float]:
    """("" when right, else why not; the centre shift in pixels, NaN when no single object was read)."""
    if not edited.well_formed:
        return f"not well-formed: {edited.reason}", math.nan
    if len(edited.objects) != 1:
        return f"{len(edited.objects)} objects", math.nan
    o = edited.objects[0]
    shift = math.hypot(o["x"] - original["x"], o["y"] - original["y"]) * size
    if o["colour"] != new_colour:
        return ("colour unchanged" if o["colour"] == original["colour"] else "another colour"), shift
    if o["shape"] != original["shape"]:
        return "shape changed", shift
    if shift > max_shift_px:
        return "moved", shift
    return "", shift


def score_colour_edits(originals: list[ShapeReading], edited: torch.Tensor, new_colours: list[str]) -> dict:
    """Figures for one batch of edits: ``edited`` (N, 3, H, W) in [-1, 1], read against the originals' readings."""
    readings = read_shapes_batch(edited)
    verdicts = [colour_edit_verdict(r, o.objects[0], c, size=edited.shape[-1])
                for r, o, c in zip(readings, originals, new_colours)]
    shifts = np.array([s for _, s in verdicts])
    n = len(verdicts)
    singles = [(r.objects[0], o.objects[0]) for r, o in zip(readings, originals) if r.well_formed and len(r.objects) == 1]
    return {
        "n": n,
        "right_share": sum(not why for why, _ in verdicts) / n,
        "new_colour_share": sum(r.well_formed and len(r.objects) == 1 and r.objects[0]["colour"] == c
                                for r, c in zip(readings, new_colours)) / n,
        "shape_kept_share": sum(e["shape"] == o["shape"] for e, o in singles) / n,
        "size_kept_share": sum(e["size"] == o["size"] for e, o in singles) / n,
        "centre_within_bar_share": float((shifts <= EDIT_BAR["centre_shift_px"]).sum() / n),  # NaN compares False
        "centre_shift_px_median": float(np.nanmedian(shifts)) if np.isfinite(shifts).any() else None,
        "why_not": dict(Counter(why for why, _ in verdicts if why).most_common()),
    }


@torch.no_grad()
def run_edits(pipe, cases: dict, strength: float, guidance_scale: float, num_inference_steps: int,
              generator: torch.Generator, batch_size: int) -> torch.Tensor:
    """img2img over every case, in batches from one generator: (N, 3, H, W) in [-1, 1]."""
    out = []
    for start in range(0, len(cases["prompts"]), batch_size):
        part = slice(start, start + batch_size)
        images = pipe(prompt=cases["prompts"][part], image=cases["images"][part], strength=strength,
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
                      output_type="pt", progress=False).images
        out.append(images.float().cpu() * 2 - 1)  # [0, 1] -> the checker's [-1, 1]
    return torch.cat(out)


def evaluate_colour_edits(pipe, num_cases: int = 256, strength: float = 0.4, guidance_scale: float = 10.0,
                          num_inference_steps: int = 50, seed: int = 0, batch_size: int = 64,
                          sweep: tuple = SWEEP_STRENGTHS, sweep_cases: int = 64) -> tuple[dict, torch.Tensor]:
    """(report, edited images of the first cases) for the colour edits at ``strength``, and the strength sweep on
    the first ``sweep_cases`` cases (each strength from the same seed). ``pipe``: an img2img pipeline."""
    cases = colour_edit_cases(num_cases, seed)
    originals = read_shapes_batch(cases["images"])
    if not all(r.well_formed and len(r.objects) == 1 for r in originals):
        raise RuntimeError("the checker misread a real test image; check sdlearn.evaluation.shapes_checker.")
    started = time.time()
    edited = run_edits(pipe, cases, strength, guidance_scale, num_inference_steps,
                       torch.Generator().manual_seed(seed), batch_size)
    report = {"strength": strength, "guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps,
              "seed": seed, "bar": EDIT_BAR, **score_colour_edits(originals, edited, cases["new_colours"])}
    report["bar_met"] = report["right_share"] >= EDIT_BAR["right_share"]
    report["seconds"] = round(time.time() - started, 1)
    rows = []
    few = {k: v[:sweep_cases] for k, v in cases.items()}
    for s in sweep:
        out = run_edits(pipe, few, s, guidance_scale, num_inference_steps, torch.Generator().manual_seed(seed),
                        batch_size)
        figures = score_colour_edits(originals[:sweep_cases], out, few["new_colours"])
        rows.append({"strength": s, **{k: figures[k] for k in ("n", "right_share", "new_colour_share",
                                                                  "centre_within_bar_share", "centre_shift_px_median")}})
    report["strength_sweep"] = rows
    report["prompts_first"] = cases["prompts"][:8]
    return report, torch.cat([cases["images"][:8], edited[:8]])


# ---------------------------------------------------------------------------- blended inpainting
def empty_boxes(spec, size: int = 64, side: int = MASK_PX, grid: int = GRID_PX, clear: int = CLEAR_PX) -> list:
    """Top-left corners (y, x) on the grid of every side x side box, ``grid`` pixels or more from the border, with no
    ink of ``spec`` within ``clear`` pixels."""
    ink = render_coverage(spec, size) > 0
    ys, xs = np.nonzero(ink)
    y0, y1, x0, x1 = ys.min() - clear, ys.max() + clear, xs.min() - clear, xs.max() + clear  # ink box, grown
    corners = range(grid, size - side - grid + 1, grid)
    return [(y, x) for y in corners for x in corners if y + side <= y0 or y > y1 or x + side <= x0 or x > x1]


def inpaint_cases(num_cases: int = 256, seed: int = 0, size: int = 64) -> dict:
    """Cases: "images" (N, 3, H, W) in [-1, 1], "masks" (N, 1, H, W) of 0/1 (1 = repaint), "boxes" (y, x, side),
    "wanted" (the new object: size, colour, shape) and "prompts" (the two-object caption with the new object first)."""
    images, specs = _one_object_images()
    rng = np.random.default_rng(seed)
    room = [i for i, s in enumerate(specs) if empty_boxes(s, size)]  # images with space for a mask
    chosen = [room[j] for j in _cycle(num_cases, len(room), rng)]
    masks = torch.zeros(num_cases, 1, size, size)
    boxes, wanted, prompts = [], [], []
    for n, i in enumerate(chosen):
        options = empty_boxes(specs[i], size)
        y, x = options[int(rng.random() * len(options))]
        masks[n, 0, y:y + MASK_PX, x:x + MASK_PX] = 1
        shape = SHAPES[int(rng.random() * len(SHAPES))]
        colours = _allowed_colours(shape)
        new = dict(size="small", colour=colours[int(rng.random() * len(colours))], shape=shape,
                   x=(x + MASK_PX / 2) / size, y=(y + MASK_PX / 2) / size)
        boxes.append((y, x, MASK_PX))
        wanted.append(new)
        prompts.append(caption([new, specs[i]]))  # "a small green triangle to the left of a large red circle"
    return {"images": images[chosen], "masks": masks, "boxes": boxes, "wanted": wanted, "prompts": prompts}


def inpaint_verdict(reading: ShapeReading, wanted: dict, box: tuple, size: int = 64) -> str:
    """"" when an object of the wanted colour, shape and size is read without complaint, its centre inside the box;
    else why not (what the checker read in the box)."""
    y, x, side = box
    inside = [o for o in reading.objects if x <= o["x"] * size < x + side and y <= o["y"] * size < y + side]
    if not inside:
        return "nothing in the mask"
    for o in inside:
        if o["ok"] and (o["colour"], o["shape"], o["size"]) == (wanted["colour"], wanted["shape"], wanted["size"]):
            return ""
    o = inside[0]
    if not o["ok"]:
        return o["reason"]
    return next(f"wrong {k}" for k in ("colour", "shape", "size") if o[k] != wanted[k])


def psnr_outside(images: torch.Tensor, references: torch.Tensor, masks: torch.Tensor) -> float:
    """10 log10(1 / MSE) over the pixels where every mask is 0; images and references (N, 3, H, W) in [0, 1]."""
    keep = (masks < 0.5).expand_as(images)
    mse = float(((images - references) ** 2)[keep].mean())
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(1 / mse))


@torch.no_grad()
def autoencoder_alone(vae, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """D(mode of q(z | x)) for images (N, 3, H, W) in [-1, 1]; returned in [0, 1]."""
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(vae.device, vae.dtype)
        out.append(((vae.decode(vae.encode(x).latent_dist.mode()).sample.float().cpu() + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def evaluate_blended_inpainting(pipe, num_cases: int = 256, guidance_scale: float = 5.0,
                                num_inference_steps: int = 50, seed: int = 0,
                                batch_size: int = 64) -> tuple[dict, torch.Tensor]:
    """(report, originals with the masks shown, and results, of the first 8 cases). ``pipe``: an inpainting
    pipeline whose UNet takes 4 channels (blending)."""
    if pipe.unet.config.in_channels != pipe.vae.config.latent_channels:
        raise ValueError("blended inpainting is measured with a text-to-image (4-channel) UNet; this one takes "
                         f"{pipe.unet.config.in_channels} channels.")
    cases = inpaint_cases(num_cases, seed)
    generator = torch.Generator().manual_seed(seed)
    started, out = time.time(), []
    for start in range(0, num_cases, batch_size):
        part = slice(start, start + batch_size)
        images = pipe(prompt=cases["prompts"][part], image=cases["images"][part], mask_image=cases["masks"][part],
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
                      output_type="pt", progress=False).images
        out.append(images.float().cpu())
    results = torch.cat(out)  # (N, 3, H, W) in [0, 1]
    seconds = time.time() - started
    originals = (cases["images"] + 1) / 2
    verdicts = [inpaint_verdict(r, w, b) for r, w, b in zip(read_shapes_batch(results * 2 - 1), cases["wanted"],
                                                           cases["boxes"])]
    reconstructed = autoencoder_alone(pipe.vae, cases["images"])
    report = {"guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps, "seed": seed,
              "n": num_cases, "mask_px": MASK_PX, "bar": INPAINT_BAR, "found_share": verdicts.count("") / num_cases,
              "why_not": dict(Counter(v for v in verdicts if v).most_common()),
              "psnr_outside_db": psnr_outside(results, originals, cases["masks"]),
              "autoencoder_psnr_outside_db": psnr_outside(reconstructed, originals, cases["masks"]),
              "autoencoder_psnr_db": psnr_outside(reconstructed, originals, torch.zeros_like(cases["masks"])),
              "seconds": round(seconds, 1), "prompts_first": cases["prompts"][:8]}
    report["bar_met"] = (report["found_share"] >= INPAINT_BAR["found_share"]
                         and report["psnr_outside_db"] >= INPAINT_BAR["psnr_outside_db"])
    shown = cases["images"][:8]
    shown = torch.where(cases["masks"][:8] > 0, 0.5 * shown - 0.3, shown)  # the mask drawn as a grey square
    return report, torch.cat([shown, results[:8] * 2 - 1])


# ---------------------------------------------------------------------------- both, from one model
def evaluate_edits(model, num_cases: int = 256, seed: int = 0, batch_size: int = 64, sweep_cases: int = 64,
                   edit_strength: float = 0.4, edit_guidance: float = 10.0, inpaint_guidance: float = 5.0,
                   num_inference_steps: int = 50) -> tuple[dict, torch.Tensor]:
    """Both measurements on one text-to-image model (a StableDiffusionPipeline, its folder, or a shipped name):
    (report with "passes_bar", a picture (32, 3, H, W) in [-1, 1]: originals, edits, masked originals, inpaintings)."""
    from ..pipelines import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model) if isinstance(model, str) else model
    parts = pipe.components
    edits, edit_picture = evaluate_colour_edits(StableDiffusionImg2ImgPipeline(**parts), num_cases, edit_strength,
                                                edit_guidance, num_inference_steps, seed, batch_size,
                                                sweep_cases=sweep_cases)
    inpaint, inpaint_picture = evaluate_blended_inpainting(StableDiffusionInpaintPipeline(**parts), num_cases,
                                                           inpaint_guidance, num_inference_steps, seed, batch_size)
    report = {"model": model if isinstance(model, str) else type(model).__name__,
              "scheduler": type(pipe.scheduler).__name__, "torch_threads": torch.get_num_threads(),
              "img2img_colour_edit": edits, "blended_inpainting": inpaint,
              "passes_bar": edits["bar_met"] and inpaint["bar_met"]}
    return report, torch.cat([edit_picture, inpaint_picture])
