"""The safety checker: the cosine rule, diffusers' folders, and the same flags and images as diffusers' pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdlearn.models.safety_checker import StableDiffusionSafetyChecker, cosine_similarity, flag_images

diffusers = pytest.importorskip("diffusers")


def test_the_cosine_rule_with_special_care_adjustment():
    cos = torch.tensor([[0.50, 0.20], [0.295, 0.10], [0.10, 0.10]])
    thresholds = torch.tensor([0.30, 0.30])
    assert flag_images(cos, thresholds) == [True, False, False]  # 0.2 > 0; -0.005 rounds to -0.005 (not > 0)
    special = torch.tensor([[0.0], [0.9], [0.0]])  # image 1 shows a special-care concept: thresholds drop by 0.01
    assert flag_images(cos, thresholds, special, torch.tensor([0.5])) == [True, True, False]
    e = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(cosine_similarity(e, torch.tensor([[4.0, 3.0], [-3.0, -4.0]])), torch.tensor([[0.96, -1.0]]))


def tiny_checker():
    from transformers import CLIPConfig

    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         num_hidden_layers=1, vocab_size=100),
                        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                           num_hidden_layers=2, image_size=32, patch_size=8),
                        projection_dim=16)
    return diffusers.pipelines.stable_diffusion.safety_checker.StableDiffusionSafetyChecker(config).eval()


def test_same_flags_and_images_as_diffusers_pipeline(tiny_sd_folder, tmp_path):
    version, folder = tiny_sd_folder
    if version != "sd1":
        pytest.skip("one SD version is enough here")
    from transformers import CLIPImageProcessor

    from sdlearn.pipelines.stable_diffusion import StableDiffusionPipeline, load_feature_extractor

    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    checker = tiny_checker()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    run = dict(prompt=["a red circle", "a blue square", "a red square"], num_inference_steps=3, output_type="np")
    plain = theirs(generator=torch.Generator().manual_seed(0), **run).images  # (3, 16, 16, 3), nothing checked
    from PIL import Image

    pixels = processor([Image.fromarray((a * 255).round().astype(np.uint8)) for a in plain],
                       return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(pixels)[1])
        checker.concept_embeds[0] = embeds[1]  # a "concept" that is image 1 itself: only image 1 should be flagged
        checker.concept_embeds_weights.fill_(0.999)
        checker.special_care_embeds_weights.fill_(2.0)  # never
    with_checker = diffusers.StableDiffusionPipeline(**{**theirs.components, "safety_checker": checker,
                                                        "feature_extractor": processor})
    with_checker.set_progress_bar_config(disable=True)
    with_checker.save_pretrained(tmp_path, safe_serialization=True)
    expected = with_checker(generator=torch.Generator().manual_seed(0), **run)
    ours = StableDiffusionPipeline.from_pretrained(tmp_path)  # loads diffusers' safety_checker/ and feature_extractor/
    assert isinstance(ours.safety_checker, StableDiffusionSafetyChecker)
    got = ours(generator=torch.Generator().manual_seed(0), progress=False, **run)
    assert got.nsfw_content_detected == expected.nsfw_content_detected == [False, True, False]
    assert np.abs(got.images - expected.images).max() <= 1e-3 and got.images[1].max() == 0  # flagged: black
    ours.safety_checker.black_out = False  # the chapter's way: flags, and the picture
    shown = ours(generator=torch.Generator().manual_seed(0), progress=False, **run)
    assert shown.nsfw_content_detected == [False, True, False] and shown.images[1].max() > 0
    ours.save_pretrained(tmp_path / "again")
    again = StableDiffusionPipeline.from_pretrained(tmp_path / "again")
    assert again(generator=torch.Generator().manual_seed(0), progress=False, **run).nsfw_content_detected == \
        [False, True, False]
    assert type(load_feature_extractor(tmp_path / "feature_extractor")).__name__.startswith("CLIPImageProcessor")
