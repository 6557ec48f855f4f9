"""Where each word looks: cross-attention maps per token, and how often a word's map lands on its object.

In every cross-attention layer each latent pixel (a query) spreads a probability over the prompt's tokens (the keys):
softmax(Q K^T / sqrt(d)), Rombach et al. 2022 eq. 3. Read the other way, a token's column of that matrix is a map over
the pixels: where the picture "listens" to that word. ``cross_attention_maps`` records them with an ``AttentionStore``
during sampling and averages, per token: over heads, then over layers (each upsampled to the latent grid), keeping
the conditional half of the guidance batch.

``attention_in_objects`` quantifies it on two-object captions: for each colour word and shape word, does most of its
map's mass (> 50%) fall inside its own object's region (the pixels the generated image paints in that object's
colour, read with the shapes checker's palette)? Captions whose two objects share a colour are skipped.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.shapes import COLOURS, PALETTE, parse_caption
from ..models.attention import AttentionStore


@torch.no_grad()
def cross_attention_maps(pipe, prompts: list[str], num_inference_steps: int = 50, guidance_scale: float = 5.0,
                         generator: torch.Generator | None = None, steps: list[int] | None = None):
    """(images (B, 3, H, W) in [0, 1], {step index: maps (B, T, h, w)}, tokens per prompt).

    ``steps``: the step indices to keep (default: all). Maps are at the latent grid (h, w); every token's map is
    there, ``<|startoftext|>`` and the padding included, and a pixel's maps over the T tokens sum to 1.
    """
    store = AttentionStore(cross_only=True)
    before = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(store)
    store.step = 0

    def next_step(p, i, t, info):
        store.step = i + 1

    try:
        images = pipe(prompts, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                      generator=generator, output_type="pt", callback_on_step_end=next_step, progress=False).images
    finally:
        for name, module in pipe.unet.named_modules():  # give every layer its own processor back
            if name in before:
                module.processor = before[name]
    B = len(prompts)
    h = w = pipe.unet.config.sample_size or images.shape[-1] // pipe.vae_scale_factor
    grouped: dict[int, list[torch.Tensor]] = {}
    for record in store.records:
        if steps is not None and record["step"] not in steps:
            continue
        probs = record["probs"][-B:].mean(1)  # the conditional half; mean over heads: (B, HW, T)
        side = int(round(probs.shape[1] ** 0.5))
        maps = probs.transpose(1, 2).reshape(B, -1, side, side)  # (B, T, side, side)
        grouped.setdefault(record["step"], []).append(F.interpolate(maps, size=(h, w), mode="bilinear",
                                                                    align_corners=False))
    maps = {step: torch.stack(layers).mean(0) for step, layers in grouped.items()}  # mean over layers
    ids = pipe.tokenize(prompts)
    tokens = [pipe.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
    return images, maps, tokens


def colour_regions(image: torch.Tensor) -> dict[str, np.ndarray]:
    """{colour: boolean (H, W) mask of the pixels painted in that palette colour} for one image (3, H, W) in [0, 1]."""
    pixels = image.permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    palette = np.array([PALETTE[c] for c in COLOURS])  # (K, 3)
    distance = np.linalg.norm(pixels[:, :, None, :] - palette[None, None], axis=-1)  # (H, W, K)
    nearest = distance.argmin(-1)
    painted = np.linalg.norm(pixels, axis=-1) > 0.25  # not the black background
    return {c: (nearest == k) & painted for k, c in enumerate(COLOURS)}


def word_token_index(tokens: list[str], caption: str) -> dict[int, int]:
    """{word position in the caption: token position}, where the caption's words are single tokens (shapes-clip's
    tokenizer learned one merge per caption word); words split into several tokens are left out."""
    out, t = {}, 1  # token 0 is <|startoftext|>
    for i, word in enumerate(caption.split()):
        if t < len(tokens) and tokens[t] == word + "</w>":
            out[i] = t
            t += 1
        else:
            return out  # the alignment is lost after a split word: stop there
    return out


def peak_inside(token_map: torch.Tensor, region: np.ndarray) -> bool:
    """Whether the brightest point of a token's map (upsampled to the region's size) lies inside the region."""
    up = F.interpolate(token_map[None, None], size=region.shape, mode="bilinear", align_corners=False)[0, 0]
    y, x = divmod(int(up.argmax()), region.shape[1])
    return bool(region[y, x])


def mass_inside(token_map: torch.Tensor, region: np.ndarray) -> float:
    """The share of a token's map (h, w) that falls inside a region (H, W), the map upsampled to the region's size."""
    up = F.interpolate(token_map[None, None], size=region.shape, mode="bilinear", align_corners=False)[0, 0]
    up = up.clamp(min=0)
    return float((up * torch.from_numpy(region).float()).sum() / up.sum().clamp(min=1e-12))


def attention_in_objects(images: torch.Tensor, maps: dict[int, torch.Tensor], tokens: list[list[str]],
                         captions: list[str]) -> dict:
    """How often a colour or shape word's map puts most of its mass (> 50%) inside its object (the bar's measure),
    per word type and per step; two-object captions of two different colours only. ``peak_share`` beside it: how
    often the map's brightest point is inside the object (a diffuse map can peak on its object with little mass there);
    ``own_object_share``: how often the map is denser (mass per pixel) on its own object than on the other object,
    i.e. "red" lights up the red object rather than the blue one, whatever it spends on the background."""
    hits = {"colour": {}, "shape": {}}
    peaks = {"colour": [], "shape": []}
    own = {"colour": [], "shape": []}
    for b, caption in enumerate(captions):
        objects = parse_caption(caption)
        if len(objects) != 2 or objects[0]["colour"] == objects[1]["colour"]:
            continue
        regions = colour_regions(images[b])
        positions = word_token_index(tokens[b], caption)
        words = caption.split()
        for obj in objects:
            region = regions[obj["colour"]]
            other = next(o for o in objects if o is not obj)
            other_region = regions[other["colour"]]
            if not region.any():
                continue  # the model drew no object of that colour: nothing to attend to
            for kind, word in (("colour", obj["colour"]), ("shape", obj["shape"])):
                where = [i for i, w in enumerate(words) if w == word and i in positions]
                for step, step_maps in maps.items():
                    for i in where[:1]:
                        inside = mass_inside(step_maps[b, positions[i]], region) > 0.5
                        hits[kind].setdefault(step, []).append(inside)
                        peaks[kind].append(peak_inside(step_maps[b, positions[i]], region))
                        if other_region.any():  # more of the map on its own object than on the other one?
                            own[kind].append(mass_inside(step_maps[b, positions[i]], region) / region.sum()
                                             > mass_inside(step_maps[b, positions[i]], other_region) / other_region.sum())
    report = {}
    for kind, by_step in hits.items():
        per_step = {int(s): float(np.mean(v)) for s, v in sorted(by_step.items())}
        every = [x for v in by_step.values() for x in v]
        report[kind] = {"share": float(np.mean(every)) if every else float("nan"), "per_step": per_step,
                        "peak_share": float(np.mean(peaks[kind])) if peaks[kind] else float("nan"),
                        "own_object_share": float(np.mean(own[kind])) if own[kind] else float("nan"),
                        "words": len(every) // max(1, len(by_step))}
    return report

