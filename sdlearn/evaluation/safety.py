"""shapes-safety: Stable Diffusion's safety checker built from shapes-clip, with a harmless stand-in concept.

The released checker compares a CLIP image embedding with 17 secret concept embeddings, each with a threshold on the
cosine (``sdlearn.models.safety_checker``). The course builds the same mechanism in the open:

1. the concept embedding: what shapes-clip sees in the stand-in concept, "a large purple triangle": the mean image
   embedding of the training images that show one (a visual prototype). Its text embedding is measured beside it
   and separates far worse (this small CLIP binds colour, size and shape to objects poorly: see its card);
2. the vision tower and projection: shapes-clip's own, so image and concept embeddings live in one space;
3. the threshold, calibrated on the training split: the cosine that best separates training images showing a large
   purple triangle from those that do not (the largest true-positive minus false-positive rate, Youden's J);
4. measured on fresh images (seed 2, neither the training nor the test split): 500 with the concept, 500 without.
   Bar: >= 95% of the first flagged, <= 5% of the second.

    python -m sdlearn.evaluation.safety            # -> sdlearn/pretrained/shapes-safety (weights, card, quality.json)
"""

from __future__ import annotations

import json
import os
import time

import torch

from ..data.shapes import load_shapes, make_shapes
from ..models.safety_checker import StableDiffusionSafetyChecker
from ..utils.files import PRETRAINED_DIR, resolve_pretrained
from .clip_metrics import image_embeddings, load_clip, text_embeddings

CONCEPT = "a large purple triangle"
SAFETY_BAR = {"flagged_with": 0.95, "flagged_without": 0.05}
MEASURE_SEED = 2  # a fresh stream of shapes: not the training (0) nor the test (1) split


def shows_concept(specs) -> bool:
    """Whether an image's specification holds the stand-in concept: a large purple triangle."""
    return any(_get(s, "size") == "large" and _get(s, "colour") == "purple" and _get(s, "shape") == "triangle"
               for s in specs)


def _get(spec, key):
    return spec[key] if isinstance(spec, dict) else getattr(spec, key)


def build_checker(clip_name: str = "shapes-clip", concepts: tuple[str, ...] = (CONCEPT,)) -> StableDiffusionSafetyChecker:
    """A safety checker holding a CLIP's vision tower and projection, with ``concepts`` embedded by its text tower
    (thresholds 1.0 until calibrated: nothing is flagged)."""
    clip, tokenizer = load_clip(clip_name)
    checker = StableDiffusionSafetyChecker(clip.config, num_concepts=len(concepts), num_special=0)
    checker.vision_model.load_state_dict(clip.vision_model.state_dict())
    checker.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    with torch.no_grad():
        checker.concept_embeds.copy_(text_embeddings(clip, tokenizer, list(concepts)))
    return checker.eval()


def youden_threshold(cos_with: torch.Tensor, cos_without: torch.Tensor) -> float:
    """The cosine threshold that maximises TPR - FPR (flag when cos > threshold), halfway between neighbours."""
    values = torch.sort(torch.cat([cos_with, cos_without])).values
    candidates = (values[1:] + values[:-1]) / 2
    tpr = (cos_with[None, :] > candidates[:, None]).float().mean(1)
    fpr = (cos_without[None, :] > candidates[:, None]).float().mean(1)
    return float(candidates[torch.argmax(tpr - fpr)])


def concept_cosines(checker: StableDiffusionSafetyChecker, images: torch.Tensor) -> torch.Tensor:
    """cos(image embedding, concept 0) for images (N, 3, 64, 64) in [-1, 1] (shapes-clip's own input range)."""
    e = image_embeddings(_as_clip(checker), images)
    return (e @ torch.nn.functional.normalize(checker.concept_embeds, dim=-1).T)[:, 0]


class _as_clip:
    """The two parts of a CLIP that ``image_embeddings`` calls, taken from the checker."""

    def __init__(self, checker):
        self.vision_model, self.visual_projection = checker.vision_model, checker.visual_projection

    def get_image_features(self, pixel_values):
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


def split_by_concept(shapes, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images showing the concept, images not showing it), at most ``limit`` of each."""
    has = torch.tensor([shows_concept(s) for s in shapes.specs])
    with_, without = shapes.images[has], shapes.images[~has]
    return (with_[:limit], without[:limit]) if limit else (with_, without)


def calibrate_and_measure(checker, train_with, train_without, test_with, test_without) -> dict:
    """Set the concept's threshold from the training images (Youden's J); the flag rates on the fresh ones."""
    cos_with, cos_without = concept_cosines(checker, train_with), concept_cosines(checker, train_without)
    threshold = youden_threshold(cos_with, cos_without)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
    flagged_with = (concept_cosines(checker, test_with) > threshold).float().mean().item()
    flagged_without = (concept_cosines(checker, test_without) > threshold).float().mean().item()
    return {"threshold": round(threshold, 4),
            "calibration": {"split": "train", "with": len(train_with), "without": len(train_without),
                            "true_positive_rate": float((cos_with > threshold).float().mean()),
                            "false_positive_rate": float((cos_without > threshold).float().mean())},
            "flagged_with": round(flagged_with, 4), "flagged_without": round(flagged_without, 4)}


def make_shapes_safety(out: str | None = None, num_measure: int = 500, clip_name: str = "shapes-clip") -> dict:
    """Build, calibrate on the training split, measure on fresh images, save the checker and its card."""
    started = time.time()
    train_with, train_without = split_by_concept(load_shapes("train"))
    train_without = train_without[:4 * len(train_with)]
    fresh = make_shapes(num_measure * 30, seed=MEASURE_SEED)  # about 4% of images show the concept
    test_with, test_without = split_by_concept(fresh, num_measure)
    if len(test_with) < num_measure:
        raise RuntimeError(f"only {len(test_with)} fresh images show the concept; draw more.")
    data = (train_with, train_without, test_with, test_without)
    text_checker = build_checker(clip_name)  # the concept's text embedding
    from_text = calibrate_and_measure(text_checker, *data)
    checker = build_checker(clip_name)
    with torch.no_grad():  # the visual prototype: the mean embedding of training images showing the concept
        checker.concept_embeds[0] = image_embeddings(_as_clip(checker), train_with).mean(0)
    report = calibrate_and_measure(checker, *data)
    flagged_with, flagged_without = report["flagged_with"], report["flagged_without"]
    report.update(
        concept=CONCEPT, clip=clip_name, concept_embedding="mean image embedding of training images with the concept",
        text_embedding_instead=from_text,
        measured_on={"seed": MEASURE_SEED, "with": len(test_with), "without": len(test_without)},
        bar=SAFETY_BAR, seconds=round(time.time() - started, 1),
        passes_bar=flagged_with >= SAFETY_BAR["flagged_with"] and flagged_without <= SAFETY_BAR["flagged_without"])
    out = out or os.path.join(PRETRAINED_DIR, "shapes-safety")
    checker.save_pretrained(out)
    import shutil

    shutil.copyfile(os.path.join(resolve_pretrained(clip_name), "preprocessor_config.json"),
                    os.path.join(out, "preprocessor_config.json"))  # its feature extractor: shapes-clip's
    with open(os.path.join(out, "quality.json"), "w") as f:
        json.dump(report, f, indent=2)
    write_safety_card(out, report)
    return report


def write_safety_card(folder: str, r: dict) -> str:
    c = r["calibration"]
    text = f"""# shapes-safety

Stable Diffusion's safety-checker mechanism (``sdlearn.models.StableDiffusionSafetyChecker``) built in the open from
`{r['clip']}`: its vision tower and projection, and one stand-in concept, **"{r['concept']}"**, whose embedding is
the {r['concept_embedding']}. An image is flagged when the cosine of its CLIP embedding with the concept's exceeds
the threshold.
Load it with `StableDiffusionSafetyChecker.from_pretrained(folder)`; its feature extractor is shapes-clip's
(`preprocessor_config.json` here: 64x64 RGB to [-1, 1]).

## How it was made (`python -m sdlearn.evaluation.safety`, {r['seconds']:.0f} s on a 2-core CPU)
- Threshold **{r['threshold']}**, calibrated on the training split: {c['with']} images showing the concept and
  {c['without']} not showing it; the cosine that maximises TPR - FPR (Youden's J): TPR {c['true_positive_rate']:.1%},
  FPR {c['false_positive_rate']:.1%} there.
- Measured on fresh shapes (seed {r['measured_on']['seed']}, neither training nor test split):
  {r['measured_on']['with']} images with the concept, {r['measured_on']['without']} without.

## Measured
- flagged with the concept: **{r['flagged_with']:.1%}** (bar: >= {r['bar']['flagged_with']:.0%})
- flagged without it: **{r['flagged_without']:.1%}** (bar: <= {r['bar']['flagged_without']:.0%})
- passes the bar: **{r['passes_bar']}**
- with the concept's *text* embedding instead (shapes-clip's text tower, "{r['concept']}"), calibrated the same way:
  flagged with {r['text_embedding_instead']['flagged_with']:.1%}, without {r['text_embedding_instead']['flagged_without']:.1%}.

Why it misses: shapes-clip binds colour, size and shape to objects poorly (its card: attribute binding about 87%,
relation sensitivity at chance), so images of a large purple square or a small purple triangle sit close to the
concept. A CLIP that binds attributes is the fix; the mechanism and its loading are tested against diffusers'
(``tests/models/test_safety_checker.py``).
"""
    path = os.path.join(folder, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(make_shapes_safety(), indent=2))
