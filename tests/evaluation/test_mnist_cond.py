"""The shipped class-conditional digits model: it loads by name, draws the requested digits, and its card's figures
are the evaluation's (the full measurement is `python -m sdlearn evaluate mnist-cond`)."""

from __future__ import annotations

import json

import pytest
import torch

from sdlearn.evaluation.classifier import DigitClassifier, classify
from sdlearn.evaluation.evaluate import COND_BAR, class_report
from sdlearn.pipelines import DiffusionPipeline, LatentDiffusionPipeline
from sdlearn.utils.files import resolve_pretrained


def test_shipped_mnist_cond_draws_the_requested_digits():
    pipe = DiffusionPipeline.from_pretrained("mnist-cond")
    assert type(pipe) is LatentDiffusionPipeline and type(pipe.scheduler).__name__ == "DDIMScheduler"
    labels = torch.arange(10)  # one of each digit
    images = pipe(class_labels=labels, guidance_scale=3.0, num_inference_steps=25,
                  generator=torch.Generator().manual_seed(1), output_type="pt", progress=False).images
    assert images.shape == (10, 1, 32, 32)
    probs, _ = classify(DigitClassifier.from_pretrained("mnist-classifier"), images * 2 - 1)
    read = (probs.max(1).values >= 0.9) & (probs.argmax(1) == labels)
    assert read.float().mean() >= 0.9  # the card measures 100% of 1,000 at 50 steps; 10 at 25 leave room for chance


def test_class_report_counts_requested_and_confident(monkeypatch):
    """A stand-in classifier's verdicts: requested share, per-digit share, weakest digit."""
    labels = torch.arange(10).repeat_interleave(2)
    probs = torch.full((20, 10), 0.01)
    probs[torch.arange(20), labels] = 0.91  # every sample read as requested, confidently...
    probs[1] = 0.1  # ...but the second 0 is not confident

    class Stub(torch.nn.Module):
        def forward(self, x):
            return torch.log(probs), torch.randn(20, 128, generator=torch.Generator().manual_seed(0))

    import sys

    module = sys.modules["sdlearn.evaluation.evaluate"]  # (sdlearn.evaluation.evaluate the attribute is the function)
    monkeypatch.setattr(module, "classify", lambda model, x: (probs, model(x)[1]))
    report = class_report(torch.zeros(20, 1, 32, 32), labels, Stub(), torch.randn(50, 128))
    assert report["requested_share"] == pytest.approx(19 / 20) and report["per_digit_requested_share"][0] == 0.5
    assert report["min_digit_share"] == 0.5 and report["confident_share"] == pytest.approx(19 / 20)


def test_card_and_quality_json_agree_with_the_bar():
    folder = resolve_pretrained("mnist-cond")
    quality = json.load(open(f"{folder}/quality.json"))
    assert quality["guidance_scale"] == 3.0 and quality["num_inference_steps"] == 50 and quality["per_class"] == 100
    assert quality["passes_bar"] == (quality["requested_share"] >= COND_BAR["requested_share"]
                                     and quality["min_digit_share"] >= COND_BAR["min_digit_share"])
    assert set(quality["sweep"]) == {"1", "1.5", "2", "3", "5", "7.5"}
    card = open(f"{folder}/README.md").read()
    assert f"**{quality['requested_share']:.1%}**" in card
