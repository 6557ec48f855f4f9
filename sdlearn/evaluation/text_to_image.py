"""Measuring a text-to-image model (shapes-t2i, issue 14): does the picture show what the caption asks for?

Captions come from the test split (``load_shapes("test")``, seed 1, never trained on) in three groups, drawn
without replacement by a seeded numpy generator (cycled through again only when a group asks for more captions
than the split has):
- one-shape: captions of one object, from test images without a held-out pair (``compositions="seen"``);
- two-shape: captions of two objects and their relation, from the same images;
- held-out: captions of test images in which an object is a held-out colour-shape pair (purple circle, yellow
  triangle, green square; ``compositions="held_out"``, one to three objects), which no training caption named.
``num_samples`` is split half, quarter, quarter (512 -> 256, 128, 128).

Every caption gets one image from the pipeline (seeded generator, in batches); the shapes checker reads it back
(``read_shapes``), and a caption counts as right when (bars: issue 14)
- one-shape: the image is well-formed, holds one object, and its colour, shape and size are the caption's (>= 90%);
- two-shape: well-formed, two objects, the caption's two (colour, shape, size) (>= 80%); among those, the relation
  is right (>= 80%), decided as the data decides it (``sdlearn.data.shapes.relation``: along the axis where the
  centres differ most), with the first object of the caption paired to the read object with its attributes;
- held-out: every held-out pair of the caption is read as an object (read without complaint) of that colour and
  shape, size aside (>= 70%).
The CLIP score is shapes-clip's cosine between an image and its caption, averaged; it is reported for the samples
and for the real test images of the same captions (the figure a perfect model would reach).

    python -m sdlearn evaluate shapes-t2i
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..data.shapes import HELD_OUT_PAIRS, load_shapes, parse_caption, relation
from .shapes_checker import ShapeReading, read_shapes_batch

T2I_BAR = {"one_shape": 0.90, "two_shape_objects": 0.80, "two_shape_relation": 0.80, "held_out": 0.70}
GROUPS = ("one_shape", "two_shape", "held_out")
PICTURE_ROWS = {"one_shape": 3, "two_shape": 3, "held_out": 2}  # rows of 8 samples in the picture, top to bottom


def group_sizes(num_samples: int) -> dict:
    """Half one-shape, a quarter two-shape, the rest held-out captions (512 -> 256, 128, 128)."""
    if num_samples < 3:
        raise ValueError(f"num_samples must be at least 3 (one caption per group), got {num_samples}.")
    one, two = num_samples // 2, num_samples // 4
    return {"one_shape": one, "two_shape": two, "held_out": num_samples - one - two}


def _pick(count: int, pool: int, rng: np.random.Generator) -> list[int]:
    """``count`` indices into a pool: a seeded permutation, repeated (each time reshuffled) if the pool is short."""
    if pool == 0:
        raise ValueError("the test split has no caption for this group; check load_shapes('test').")
    order = []
    while len(order) < count:
        order += rng.permutation(pool).tolist()
    return order[:count]


def draw_captions(num_samples: int = 512, seed: int = 0) -> dict:
    """group -> {"captions", "images" (the real test images of those captions, (n, 3, 64, 64) in [-1, 1])}."""
    seen, held = load_shapes("test", compositions="seen"), load_shapes("test", compositions="held_out")
    pools = {"one_shape": (seen, [i for i, s in enumerate(seen.specs) if len(s) == 1]),
             "two_shape": (seen, [i for i, s in enumerate(seen.specs) if len(s) == 2]),
             "held_out": (held, list(range(len(held))))}
    rng = np.random.default_rng(seed)
    out = {}
    for group, n in group_sizes(num_samples).items():
        data, pool = pools[group]
        chosen = [pool[j] for j in _pick(n, len(pool), rng)]
        out[group] = {"captions": [data.captions[i] for i in chosen], "images": data.images[chosen]}
    return out


# ---------------------------------------------------------------------------- is the caption's content there?
def _attributes(obj: dict) -> tuple:
    return obj["colour"], obj["shape"], obj["size"]


def one_shape_right(reading: ShapeReading, caption: str) -> bool:
    """Well-formed, one object, and its colour, shape and size are the caption's."""
    (asked,) = parse_caption(caption)
    return reading.well_formed and len(reading.objects) == 1 and _attributes(reading.objects[0]) == _attributes(asked)


def two_shape_right(reading: ShapeReading, caption: str) -> tuple[bool, bool]:
    """(both objects right, relation right): well-formed, the caption's two objects; then does the first object of
    the caption stand where the caption says relative to the second (``shapes.relation``, the data's own rule)?
    When the two objects look alike either pairing may stand for the first object."""
    first, second = parse_caption(caption)
    objects = reading.objects
    if not reading.well_formed or len(objects) != 2:
        return False, False
    pairings = [(a, b) for a, b in (objects, objects[::-1])
                if _attributes(a) == _attributes(first) and _attributes(b) == _attributes(second)]
    return bool(pairings), any(relation(a, b) == first["relation"] for a, b in pairings)


def held_out_objects(caption: str) -> list[tuple[str, str]]:
    """The (colour, shape) held-out pairs a caption asks for."""
    return [(o["colour"], o["shape"]) for o in parse_caption(caption) if (o["colour"], o["shape"]) in HELD_OUT_PAIRS]


def held_out_right(reading: ShapeReading, caption: str) -> bool:
    """Every held-out pair of the caption is read as an object (one the checker read without complaint) of that
    colour and shape; its size and the rest of the image are not judged."""
    read = [(o["colour"], o["shape"]) for o in reading.objects if o["ok"]]
    wanted = held_out_objects(caption)
    if not wanted:
        raise ValueError(f"caption {caption!r} holds no held-out pair {HELD_OUT_PAIRS}; held-out captions must.")
    return all(read.count(pair) >= wanted.count(pair) for pair in set(wanted))


def group_figures(group: str, readings: list[ShapeReading], captions: list[str]) -> dict:
    """The share of captions shown right in one group (two-shape: objects, and relation among those)."""
    n = len(captions)
    if group == "one_shape":
        return {"n": n, "right": sum(map(one_shape_right, readings, captions)) / n}
    if group == "two_shape":
        both = [two_shape_right(r, c) for r, c in zip(readings, captions)]
        objects_right = sum(o for o, _ in both)
        return {"n": n, "objects_right": objects_right / n, "objects_right_count": objects_right,
                "relation_right_among_those": sum(r for _, r in both) / objects_right if objects_right else 0.0}
    return {"n": n, "right": sum(map(held_out_right, readings, captions)) / n}


def passes(groups: dict) -> dict:
    """Each bar of T2I_BAR: met or not."""
    return {"one_shape": groups["one_shape"]["right"] >= T2I_BAR["one_shape"],
            "two_shape_objects": groups["two_shape"]["objects_right"] >= T2I_BAR["two_shape_objects"],
            "two_shape_relation": groups["two_shape"]["relation_right_among_those"] >= T2I_BAR["two_shape_relation"],
            "held_out": groups["held_out"]["right"] >= T2I_BAR["held_out"]}


# ---------------------------------------------------------------------------- sampling and the CLIP score
@torch.no_grad()
def generate(pipeline, captions: list[str], guidance_scale: float, num_inference_steps: int,
             generator: torch.Generator, batch_size: int, progress: bool, label: str = "") -> torch.Tensor:
    """One image per caption, (N, 3, H, W) in [-1, 1], in batches from one seeded generator."""
    chunks = []
    for start in range(0, len(captions), batch_size):
        out = pipeline(prompt=captions[start:start + batch_size], num_inference_steps=num_inference_steps,
                       guidance_scale=guidance_scale, generator=generator, output_type="pt", progress=False).images
        chunks.append(out.float().cpu() * 2 - 1)  # [0, 1] -> the checker's [-1, 1]
        if progress:
            print(f"  {label}: {start + len(out)}/{len(captions)} images", flush=True)
    return torch.cat(chunks)


def clip_scores(clip, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """(N,) cosines between each image and its caption in shapes-clip's joint space."""
    from .clip_metrics import image_embeddings, text_embeddings

    model, tokenizer = clip
    return (image_embeddings(model, images) * text_embeddings(model, tokenizer, captions)).sum(-1)


def is_text_to_image(recipe) -> bool:
    """Is this a ``TextToImageRecipe`` (shapes-t2i)?"""
    from ..training.recipes import TextToImageRecipe

    return isinstance(recipe, TextToImageRecipe)


def _load(pipeline_or_folder):
    if isinstance(pipeline_or_folder, (str, bytes)) or hasattr(pipeline_or_folder, "__fspath__"):
        from ..pipelines import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(pipeline_or_folder)
    if not callable(pipeline_or_folder):
        raise TypeError(f"evaluate_t2i takes a StableDiffusionPipeline or its folder (or shipped name), got "
                        f"{type(pipeline_or_folder).__name__}.")
    return pipeline_or_folder


def evaluate_t2i(pipeline_or_folder, num_samples: int = 512, guidance_scale: float = 5.0,
                 num_inference_steps: int = 50, seed: int = 0, batch_size: int = 64, progress: bool = True,
                 clip_model: str | None = "shapes-clip") -> tuple[dict, torch.Tensor]:
    """(report, 64 samples for a picture: 3 rows one-shape, 3 rows two-shape, 2 rows held-out, 8 per row).

    ``clip_model`` None leaves the CLIP score out (the tests do, to stay fast).
    """
    pipeline = _load(pipeline_or_folder)
    drawn = draw_captions(num_samples, seed)
    generator = torch.Generator().manual_seed(seed)
    clip = None
    if clip_model is not None:
        from .clip_metrics import load_clip

        clip = load_clip(clip_model)
    seconds = {"sampling": 0.0, "checking": 0.0, "clip": 0.0}
    groups, picture = {}, []
    for group in GROUPS:
        captions = drawn[group]["captions"]
        started = time.time()
        samples = generate(pipeline, captions, guidance_scale, num_inference_steps, generator, batch_size, progress,
                           group)
        seconds["sampling"] += time.time() - started
        started = time.time()
        groups[group] = group_figures(group, read_shapes_batch(samples), captions)
        seconds["checking"] += time.time() - started
        if clip is not None:
            started = time.time()
            groups[group]["clip_score_samples"] = clip_scores(clip, samples, captions).mean().item()
            groups[group]["clip_score_real"] = clip_scores(clip, drawn[group]["images"], captions).mean().item()
            seconds["clip"] += time.time() - started
        picture.append(samples[: 8 * PICTURE_ROWS[group]])
    bars = passes(groups)
    report = {
        "groups": groups, "bar": T2I_BAR, "bars_met": bars, "passes_bar": all(bars.values()),
        "num_samples": num_samples, "group_sizes": group_sizes(num_samples),
        "split": "half one-shape, a quarter two-shape, a quarter held-out-pair captions, from load_shapes('test')",
        "guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps, "seed": seed,
        "batch_size": batch_size, "scheduler": type(getattr(pipeline, "scheduler", None)).__name__,
        "clip_model": clip_model, "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "torch_threads": torch.get_num_threads(), "picture_rows": PICTURE_ROWS,
    }
    if clip is not None:
        n = {g: groups[g]["n"] for g in GROUPS}
        for which in ("samples", "real"):
            report[f"clip_score_{which}"] = sum(groups[g][f"clip_score_{which}"] * n[g] for g in GROUPS) / num_samples
    return report, torch.cat(picture)


CARD_GUIDANCE_SCALES = (3.0, 5.0, 7.5)  # the choice of scales; the card reports the one it picks


def _score(report: dict) -> tuple:
    """How a guidance scale ranks: the number of bars met, then the mean of the four figures."""
    g = report["groups"]
    figures = (g["one_shape"]["right"], g["two_shape"]["objects_right"], g["two_shape"]["relation_right_among_those"],
               g["held_out"]["right"])
    return sum(report["bars_met"].values()), sum(figures) / len(figures)


def evaluate_t2i_card(pipeline_or_folder, num_samples: int = 512, scales=CARD_GUIDANCE_SCALES,
                      num_attention_captions: int = 128, seed: int = 0, batch_size: int = 64,
                      progress: bool = True, clip_model: str | None = "shapes-clip") -> tuple[dict, torch.Tensor]:
    """The card's measurement: ``evaluate_t2i`` at every scale of ``scales`` (the same captions and seed), the scale
    that meets most bars (then the best mean figure) reported in full, the others under ``"sweep"``; plus the
    attention maps' share inside their objects on ``num_attention_captions`` two-shape captions at that scale."""
    from .attention_maps import attention_in_objects, cross_attention_maps

    pipeline = _load(pipeline_or_folder)
    runs = {}
    for s in scales:
        if progress:
            print(f"guidance scale {s:g}:", flush=True)
        runs[float(s)] = evaluate_t2i(pipeline, num_samples, s, seed=seed, batch_size=batch_size, progress=progress,
                                      clip_model=clip_model)
    best = max(runs, key=lambda s: _score(runs[s][0]))
    report, picture = runs[best]
    report["sweep"] = {f"{s:g}": {k: r[k] for k in ("groups", "bars_met", "passes_bar", "clip_score_samples")
                                  if k in r} for s, (r, _) in runs.items()}
    report["guidance_choice"] = "the scale of " + ", ".join(f"{s:g}" for s in scales) + \
        " that meets the most bars, then has the best mean of the four figures"
    if not num_attention_captions:
        return report, picture
    pool = draw_captions(8 * num_attention_captions, seed=seed + 1)["two_shape"]["captions"]
    captions = [c for c in pool if len({o["colour"] for o in parse_caption(c)})
                == 2][:num_attention_captions]  # two colours: the regions tell the objects apart
    started = time.time()
    attention = {"captions": len(captions), "steps": [10, 25, 40, 49]}
    per_batch = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start:start + batch_size]
        images, maps, tokens = cross_attention_maps(pipeline, chunk, num_inference_steps=50, guidance_scale=best,
                                                    generator=torch.Generator().manual_seed(seed + start),
                                                    steps=attention["steps"])
        per_batch.append((images, maps, tokens, chunk))
    images = torch.cat([b[0] for b in per_batch])
    maps = {s: torch.cat([b[1][s] for b in per_batch]) for s in attention["steps"]}
    tokens = [t for b in per_batch for t in b[2]]
    attention.update(attention_in_objects(images, maps, tokens, captions))
    attention["seconds"] = round(time.time() - started, 1)
    report["attention_in_objects"] = attention
    return report, picture
