"""shapes-clip's measures: retrieval with repeated captions, the paired preferences, and the shipped model's
figures recomputed (the first 200 test images here; all 1,000 in the slow test)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sdlearn.evaluation.clip_metrics import retrieval


def test_retrieval_counts_repeated_captions_as_right():
    captions = ["a small red circle", "a small red circle", "a large blue square"]
    image_e = torch.eye(3)
    text_e = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # captions 0 and 1 swapped: same text
    r = retrieval(image_e, text_e, captions)
    assert r["image_to_caption_top1"] == 1.0 and r["caption_to_image_top1"] == 1.0 and r["distinct_captions"] == 2
    wrong = retrieval(image_e, text_e[[2, 1, 0]], captions)  # caption 2 now sits where image 0's should
    assert wrong["image_to_caption_top1"] == pytest.approx(1 / 3)


def _shipped():
    from sdlearn.utils.files import resolve_pretrained

    try:
        folder = resolve_pretrained("shapes-clip")
    except FileNotFoundError:
        pytest.skip("shapes-clip is not shipped yet")
    with open(os.path.join(folder, "quality.json")) as f:
        return folder, json.load(f)


def _same(got: dict, recorded: dict):
    for key, value in recorded.items():
        if isinstance(value, dict):
            _same(got[key], value)
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert got[key] == value, key


def test_shipped_figures_recomputed_on_200_test_images():
    from sdlearn.data.shapes import load_shapes
    from sdlearn.evaluation.clip_metrics import clip_report, load_clip

    torch.set_num_threads(1)
    folder, quality = _shipped()
    model, tokenizer = load_clip(folder)
    test = load_shapes("test", 200)
    _same(clip_report(model, tokenizer, test.images, test.captions, test.specs), quality["first_200"])


@pytest.mark.slow
def test_shipped_figures_recomputed_on_the_test_split():
    from sdlearn.evaluation.clip_metrics import evaluate_clip

    folder, quality = _shipped()
    got = evaluate_clip(folder)
    _same(got, {k: v for k, v in quality.items() if k not in ("seconds", "torch_threads")})  # passes_bar included
