"""CLIP's symmetric contrastive loss (Radford et al. 2021, Figure 3) against a hand computation, transformers' own
loss, and three planted mistakes; the hard negatives; and a few steps of the training loop with it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sdlearn.training.contrastive import NO_NEGATIVE, ContrastiveLoss, clip_loss

IMAGES = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # normalised: (1, 0), (0, 1)
TEXTS = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # normalised: (1, 0), (0.7071, 0.7071)
SCALE = torch.tensor(2.0)


def _ce(logits: list[float], right: int) -> float:
    return -math.log(math.exp(logits[right]) / sum(math.exp(v) for v in logits))


def test_against_a_hand_computation():
    c = 2.0 / math.sqrt(2.0)  # scale * cos(45 degrees)
    # logits = 2 * [[cos(i0, t0), cos(i0, t1)], [cos(i1, t0), cos(i1, t1)]] = [[2, c], [0, c]]
    image_to_text = (_ce([2.0, c], 0) + _ce([0.0, c], 1)) / 2  # rows
    text_to_image = (_ce([2.0, 0.0], 0) + _ce([c, c], 1)) / 2  # columns
    expected = (image_to_text + text_to_image) / 2
    assert clip_loss(IMAGES, TEXTS, SCALE).item() == pytest.approx(expected, rel=1e-6)


def test_agrees_with_transformers():
    from transformers.models.clip import modeling_clip

    hf_clip_loss = modeling_clip.image_text_contrastive_loss  # transformers 5 (4.x named it clip_loss)

    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    logits_per_text = 7.0 * F.normalize(texts, dim=-1) @ F.normalize(images, dim=-1).T
    assert clip_loss(images, texts, torch.tensor(7.0)).item() == pytest.approx(hf_clip_loss(logits_per_text).item(),
                                                                               rel=1e-5)


def _one_direction(i, t, s):
    logits = s * F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T
    return F.cross_entropy(logits, torch.arange(len(i)))


def _no_temperature(i, t, s):
    return clip_loss(i, t, torch.tensor(1.0))


def _labels_not_the_diagonal(i, t, s):
    logits = s * F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T
    labels = torch.zeros(len(i), dtype=torch.long)  # every image "belongs" with caption 0
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@pytest.mark.parametrize("mistake", [_one_direction, _no_temperature, _labels_not_the_diagonal])
def test_planted_mistakes_give_other_values(mistake):
    g = torch.Generator().manual_seed(1)
    images, texts, scale = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.tensor(10.0)
    right = clip_loss(images, texts, scale).item()
    assert abs(mistake(images, texts, scale).item() - right) > 1e-3
    assert abs(mistake(IMAGES, TEXTS, SCALE).item() - clip_loss(IMAGES, TEXTS, SCALE).item()) > 1e-3


def test_hard_negatives_join_image_to_text_only():
    c = 2.0 / math.sqrt(2.0)
    negative = torch.tensor([[1.0, 0.1]])  # close to image 0: a hard negative
    n0, n1 = 2.0 * 1.0 / math.hypot(1, 0.1), 2.0 * 0.1 / math.hypot(1, 0.1)  # its logits against images 0 and 1
    image_to_text = (_ce([2.0, c, n0], 0) + _ce([0.0, c, n1], 1)) / 2
    text_to_image = (_ce([2.0, 0.0], 0) + _ce([c, c], 1)) / 2  # unchanged: a negative has no image
    got = clip_loss(IMAGES, TEXTS, SCALE, negative).item()
    assert got == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-6)
    assert got > clip_loss(IMAGES, TEXTS, SCALE).item()


def test_shape_error():
    with pytest.raises(ValueError, match="one caption per image"):
        clip_loss(torch.randn(3, 4), torch.randn(2, 4), SCALE)


def test_training_loop_with_the_loss(tmp_path):
    """A tiny CLIP takes a few steps of sdlearn's loop; held-out pairs never enter as hard negatives."""
    from sdlearn.data.shapes import load_shapes
    from sdlearn.training.loop import TrainConfig, train
    from sdlearn.training.recipes import get_recipe
    from sdlearn.training.shipping import build_clip, clip_conditions, clip_tokenizer
    import dataclasses

    torch.set_num_threads(1)
    data = load_shapes("train", 64, size=16, compositions="seen")
    recipe = dataclasses.replace(get_recipe("shapes-clip"), text=dict(get_recipe("shapes-clip").text, hidden_size=16,
                                 intermediate_size=32, num_hidden_layers=1),
                                 vision=dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=4), projection_dim=8)
    tokenizer = clip_tokenizer(recipe, str(tmp_path), data.captions)
    ids = clip_conditions(tokenizer, data.captions, hard_negatives=True)
    assert ids.shape == (len(data), 3, 32) and (ids[:, 1:, 0] == NO_NEGATIVE).any()
    held = clip_conditions(tokenizer, ["a small purple square above a large green circle"], hard_negatives=True)
    assert held[0, 1, 0] != NO_NEGATIVE and held[0, 2, 0] == NO_NEGATIVE  # the swap would name two held-out pairs
    torch.manual_seed(0)
    model = build_clip(recipe, tokenizer)
    result = train(model, None, data.images, TrainConfig(steps=3, batch_size=16, warmup_steps=1), progress=False,
                   loss_fn=ContrastiveLoss(hard_negatives=True), conditions=ids)
    assert len(result.losses) == 3 and all(math.isfinite(v) for v in result.losses)
    with pytest.raises(ValueError, match="needs conditions"):
        ContrastiveLoss(hard_negatives=True)(model, data.images[:4], None, ids[:4, 0])
