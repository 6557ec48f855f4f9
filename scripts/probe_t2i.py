"""Probe a shapes-t2i training run before it is shipped: the issue's bars on a small sample, and the attention maps.

    python -m sdlearn export shapes-t2i --run-dir runs/shapes-t2i --out /tmp/t2i-probe
    python scripts/probe_t2i.py /tmp/t2i-probe 128       # -> probe.json and probe.png in that folder

Not the model card's measurement (`python -m sdlearn evaluate shapes-t2i` draws 512 samples): a quick look, with
the same code, at how far the run has come.
"""
import json
import sys

import torch

from sdlearn.evaluation.attention_maps import attention_in_objects, cross_attention_maps
from sdlearn.evaluation.text_to_image import draw_captions, evaluate_t2i
from sdlearn.pipelines import StableDiffusionPipeline
from sdlearn.viz.images import show_images


def main(folder: str, num_samples: int = 128) -> dict:
    report, picture = evaluate_t2i(folder, num_samples=num_samples, guidance_scale=5.0, num_inference_steps=50,
                                   progress=False)
    show_images(picture * 2 - 1 if picture.min() >= 0 else picture, nrow=8,
                title="shapes-t2i probe (rows 1-3 one shape, 4-6 two, 7-8 held-out pairs)").savefig(
        f"{folder}/probe.png", dpi=80)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    captions = draw_captions(64, seed=1)["two_shape"]["captions"][:16]
    images, maps, tokens = cross_attention_maps(pipe, captions, num_inference_steps=50, guidance_scale=5.0,
                                                generator=torch.Generator().manual_seed(0), steps=[10, 25, 40, 49])
    report["attention_in_objects"] = attention_in_objects(images, maps, tokens, captions)
    with open(f"{folder}/probe.json", "w") as f:
        json.dump(report, f, indent=2, default=str)
    return report


if __name__ == "__main__":
    torch.set_num_threads(2)
    out = main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 128)
    print(json.dumps({k: out[k] for k in ("groups", "attention_in_objects", "passes_bar")}, indent=1, default=str))
