"""Metrics: Frechet distance, confident share, blur, and the classifier's interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdlearn.evaluation.classifier import (
    ClassifierConfig,
    DigitClassifier,
    classify,
    confident_share,
    digit_report,
    gaussian_blur,
    not_digits,
)
from sdlearn.evaluation.frechet import frechet_distance


def features(n, d, seed, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5  # correlated features
    return (torch.randn(n, d, generator=g) @ mix) * scale + shift


def test_frechet_distance_zero_for_identical_sets():
    a = features(200, 8, 0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a.clone()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_closed_form_for_shifted_and_scaled_sets():
    """Same covariance, shifted mean: d^2 = ||delta||^2. Scaled by c: Tr(S) (1 - c)^2 more."""
    a = features(300, 6, 1)
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert frechet_distance(a, a + delta) == pytest.approx(float((delta**2).sum()), rel=1e-6)
    centred = a - a.mean(0)
    trace = np.trace(np.cov(centred.double().numpy(), rowvar=False))
    assert frechet_distance(centred, 2 * centred) == pytest.approx(trace * (1 - 2) ** 2, rel=1e-6)


def test_frechet_distance_is_symmetric_and_positive():
    a, b = features(150, 5, 2), features(120, 5, 3, shift=0.3, scale=1.5)
    d_ab, d_ba = frechet_distance(a, b), frechet_distance(b, a)
    assert d_ab > 0.1
    assert d_ab == pytest.approx(d_ba, rel=1e-8)


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    a, b = features(400, 10, 4), features(300, 10, 5, shift=0.2, scale=0.7)
    x, y = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = x.mean(0), y.mean(0)
    S_a, S_b = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(S_a @ S_b).real  # the textbook FID formula
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(S_a + S_b - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_confident_share():
    probs = torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.1, 0.9], [0.89, 0.11]])
    assert confident_share(probs) == pytest.approx(0.5)  # 0.95 and 0.9 reach the default threshold 0.9
    assert confident_share(probs, threshold=0.5) == pytest.approx(1.0)
    assert confident_share(probs, threshold=0.99) == 0.0


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_gaussian_blur_keeps_constants_and_the_mean(sigma):
    x = torch.full((2, 1, 16, 16), 0.3)
    blurred = gaussian_blur(x, sigma)
    assert blurred.shape == x.shape
    torch.testing.assert_close(blurred, x)  # a normalised kernel leaves a constant image unchanged
    # a point far from the border spreads out but keeps its mass
    point = torch.zeros(1, 1, 32, 32)
    point[0, 0, 16, 16] = 1.0
    spread = gaussian_blur(point, sigma)
    assert spread.sum().item() == pytest.approx(1.0, rel=1e-5)
    assert spread[0, 0, 16, 16] < 1.0 and spread[0, 0, 16, 17] > 0
    torch.testing.assert_close(spread, spread.flip(-1).roll(1, -1))  # symmetric about the centre


def test_not_digits_shapes_and_range():
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fakes = not_digits(x, torch.Generator().manual_seed(1))
    assert set(fakes) == {"noise", "blur", "shuffle"}
    for name, f in fakes.items():
        assert f.shape == x.shape, name
        assert f.min() >= -1 - 1e-6 and f.max() <= 1 + 1e-6, name
    # shuffling moves pixels around without changing them
    torch.testing.assert_close(fakes["shuffle"].flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    again = not_digits(x, torch.Generator().manual_seed(1))
    assert all(torch.equal(fakes[k], again[k]) for k in fakes)


def test_classifier_interface_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DigitClassifier(ClassifierConfig(channels=(4, 8, 8), feature_dim=16)).eval()
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    probs, feats = classify(model, x, batch_size=2)
    assert probs.shape == (5, 10) and feats.shape == (5, 16)
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        model(torch.zeros(2, 1, 28, 28))
    model.save_pretrained(tmp_path)
    loaded = DigitClassifier.from_pretrained(tmp_path)
    assert loaded.config == model.config
    # Equal within float32 rounding, not bitwise: the same weights can give different last bits on another CPU
    # (kernels picked by alignment and instruction set). The tolerance is far below what one wrong weight does:
    torch.testing.assert_close(classify(loaded, x)[0], probs, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        loaded.head.bias[3] += 1e-3  # one weight off by 0.001
    with pytest.raises(AssertionError):
        torch.testing.assert_close(classify(loaded, x)[0], probs, rtol=1e-5, atol=1e-6)
    report = digit_report(x, model, x)
    assert report["n"] == 5 and report["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert 0 <= report["confident_share"] <= 1 and len(report["class_shares_among_confident"]) == 10


def test_quality_table_shows_no_misleading_figures_for_few_samples():
    """Issue 17: in FAST mode chapter 2 printed Frechet 2440.57 for 16 real digits against 385.58 for 16 generated
    ones, and a smallest class share of 0% for both: figures that read as 'generated beats real'. Below the
    feature dimension the table prints neither, and shows the shipped model's measured figures, labelled."""
    import json
    from pathlib import Path

    from sdlearn.evaluation.classifier import quality_table
    from sdlearn.utils.files import resolve_pretrained

    measured = json.loads((Path(resolve_pretrained("mnist-ddpm")) / "quality.json").read_text())
    few = {"n": 16, "confident_share": 0.75, "min_class_share": 0.0, "frechet_distance": 385.58}
    real = {"n": 16, "confident_share": 1.0, "min_class_share": 0.0, "frechet_distance": 2440.57}
    table = quality_table(few, real, measured, min_samples=128)
    assert "385.58" not in table and "2440.57" not in table and "0.0%" not in table
    assert f"{measured['frechet_distance']:.2f}" in table and f"{measured['real_vs_real_frechet']:.2f}" in table
    assert "shipped model, measured" in table and "not these 16 samples" in table
    assert "75% (51%-90%)" in table  # the share with its 95% interval
    many = quality_table({**few, "n": 256}, {**real, "n": 256}, measured, min_samples=128)
    assert "385.58" in many and "measured" not in many
