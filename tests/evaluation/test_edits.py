"""The edit measurements on stand-in pipelines: one that does the edit the prompt asks (reads ~100%), ones that do
not (~0%). No model is sampled here; the cases, the verdicts and the PSNR are checked against what they must be."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdlearn.data.shapes import HELD_OUT_PAIRS, ShapeSpec, parse_caption, relation, render, render_coverage
from sdlearn.evaluation.edits import (EDIT_BAR, GRID_PX, INPAINT_BAR, MASK_PX, PSNR_CAP_DB, SWEEP_STRENGTHS,
                                      colour_edit_cases, colour_edit_verdict, empty_boxes, evaluate_blended_inpainting,
                                      evaluate_colour_edits, inpaint_cases, psnr_outside)
from sdlearn.evaluation.shapes_checker import read_shapes


def redraw(image: torch.Tensor, phrase: str, dx_px: float = 0.0) -> torch.Tensor:
    """The image's one object read back and drawn again as ``phrase`` says (colour, shape, size), moved by dx_px
    towards the middle."""
    o = read_shapes(image).objects[0]
    want = parse_caption(phrase)[0]
    x = o["x"] + (dx_px if o["x"] < 0.5 else -dx_px) / 64
    return render([ShapeSpec(want["shape"], want["colour"], o["size"], x, o["y"], o["radius_px"])])


class EditStandIn:
    """Called like StableDiffusionImg2ImgPipeline. ``mode``: "edit" (what the prompt asks), "keep" (the image
    unchanged), "move" (the edit, 8 pixels towards the middle)."""

    def __init__(self, mode: str = "edit"):
        self.mode, self.strengths = mode, []

    def __call__(self, prompt, image, strength, num_inference_steps, guidance_scale, generator, output_type, **kw):
        assert output_type == "pt" and isinstance(generator, torch.Generator) and len(prompt) == len(image)
        self.strengths.append(strength)
        if self.mode == "keep":
            out = image
        else:
            out = torch.stack([redraw(x, p, 8.0 if self.mode == "move" else 0.0) for x, p in zip(image, prompt)])
        return SimpleNamespace(images=(out + 1) / 2)  # [0, 1], as the pipeline's "pt" output


class IdentityVAE:
    """An autoencoder that gives every image back exactly (encode: the image itself; decode: the latent)."""

    device, dtype = torch.device("cpu"), torch.float32
    config = SimpleNamespace(latent_channels=4)

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

    def decode(self, z):
        return SimpleNamespace(sample=z)


class InpaintStandIn:
    """Called like StableDiffusionInpaintPipeline. ``mode``: "fill" (the prompt's first object drawn in the middle of
    the mask, the rest kept), "keep" (the image unchanged), "smear" (the fill, with the whole image dimmed)."""

    unet = SimpleNamespace(config=SimpleNamespace(in_channels=4))
    vae = IdentityVAE()

    def __init__(self, mode: str = "fill"):
        self.mode = mode

    def __call__(self, prompt, image, mask_image, num_inference_steps, guidance_scale, generator, output_type, **kw):
        out = image.clone()
        if self.mode != "keep":
            for n, (p, m) in enumerate(zip(prompt, mask_image)):
                ys, xs = torch.nonzero(m[0], as_tuple=True)
                new = parse_caption(p)[0]
                spec = ShapeSpec(new["shape"], new["colour"], new["size"], (xs.float().mean().item() + 0.5) / 64,
                                 (ys.float().mean().item() + 0.5) / 64, 0.10 * 64)
                out[n] = torch.maximum(out[n], render([spec]))  # black background: the shape on top
        if self.mode == "smear":
            out = out * 0.6 - 0.4
        return SimpleNamespace(images=(out + 1) / 2)


def test_colour_edit_cases_change_the_colour_and_never_ask_for_a_held_out_pair():
    cases = colour_edit_cases(40, seed=0)
    assert cases["images"].shape == (40, 3, 64, 64) and len(cases["prompts"]) == 40
    for prompt, source, colour in zip(cases["prompts"], cases["sources"], cases["new_colours"]):
        new, old = parse_caption(prompt)[0], parse_caption(source)[0]
        assert new["colour"] == colour != old["colour"]
        assert (new["shape"], new["size"]) == (old["shape"], old["size"])
        assert (new["colour"], new["shape"]) not in HELD_OUT_PAIRS
    assert colour_edit_cases(40, seed=0)["prompts"] == cases["prompts"] != colour_edit_cases(40, seed=1)["prompts"]


def test_the_verdict_names_what_went_wrong():
    original = dict(shape="circle", colour="red", size="small", x=0.5, y=0.5)
    spec = ShapeSpec("circle", "blue", "small", 0.5, 0.5, 6.4)
    assert colour_edit_verdict(read_shapes(render([spec])), original, "blue")[0] == ""
    assert colour_edit_verdict(read_shapes(render([spec])), original, "green")[0] == "another colour"
    moved = ShapeSpec("circle", "blue", "small", 0.5 + 5 / 64, 0.5, 6.4)
    why, shift = colour_edit_verdict(read_shapes(render([moved])), original, "blue")
    assert why == "moved" and abs(shift - 5) < 0.3
    square = ShapeSpec("square", "blue", "small", 0.5, 0.5, 6.4)
    assert colour_edit_verdict(read_shapes(render([square])), original, "blue")[0] == "shape changed"
    assert colour_edit_verdict(read_shapes(torch.full((3, 64, 64), -1.0)), original, "blue")[0].startswith(
        "not well-formed")


def test_an_edit_that_does_what_the_prompt_asks_reads_100_percent():
    pipe = EditStandIn()
    report, picture = evaluate_colour_edits(pipe, num_cases=12, strength=0.4, batch_size=5, sweep=(0.3, 1.0),
                                            sweep_cases=6)
    assert report["right_share"] == 1.0 and report["bar_met"] and report["bar"] == EDIT_BAR
    assert report["new_colour_share"] == report["shape_kept_share"] == report["size_kept_share"] == 1.0
    assert report["centre_shift_px_median"] < 0.5 and report["why_not"] == {}
    assert pipe.strengths == [0.4] * 3 + [0.3] * 2 + [1.0] * 2  # batches of 5: 12 cases, then 6 per sweep strength
    assert [row["strength"] for row in report["strength_sweep"]] == [0.3, 1.0]
    assert all(row["right_share"] == 1.0 and row["n"] == 6 for row in report["strength_sweep"])
    assert picture.shape == (16, 3, 64, 64)


@pytest.mark.parametrize("mode, why", [("keep", "colour unchanged"), ("move", "moved")])
def test_an_edit_that_keeps_the_colour_or_moves_the_object_reads_0_percent(mode, why):
    report, _ = evaluate_colour_edits(EditStandIn(mode), num_cases=8, sweep=())
    assert report["right_share"] == 0.0 and not report["bar_met"] and report["why_not"] == {why: 8}
    assert report["new_colour_share"] == (0.0 if mode == "keep" else 1.0)


def test_empty_boxes_are_on_the_grid_inside_the_image_and_clear_of_the_object():
    spec = ShapeSpec("square", "red", "large", 0.3, 0.35, 0.17 * 64)
    ink = render_coverage(spec) > 0
    boxes = empty_boxes(spec)
    assert boxes
    for y, x in boxes:
        assert y % GRID_PX == 0 and x % GRID_PX == 0 and GRID_PX <= y and y + MASK_PX <= 64 - GRID_PX
        assert not ink[max(y - 2, 0):y + MASK_PX + 2, max(x - 2, 0):x + MASK_PX + 2].any()
    assert empty_boxes(ShapeSpec("square", "red", "large", 0.5, 0.5, 0.17 * 64)) == []  # no room beside it


def test_inpaint_cases_ask_for_a_small_object_in_an_empty_mask_with_the_datas_caption():
    cases = inpaint_cases(20, seed=0)
    assert cases["masks"].shape == (20, 1, 64, 64) and set(cases["masks"].unique().tolist()) == {0.0, 1.0}
    for image, mask, box, wanted, prompt in zip(cases["images"], cases["masks"], cases["boxes"], cases["wanted"],
                                                cases["prompts"]):
        y, x, side = box
        assert mask.sum() == side * side == MASK_PX**2 and mask[0, y:y + side, x:x + side].all()
        assert (image[:, mask[0] > 0] == -1).all()  # the masked area is empty background
        objects = parse_caption(prompt)
        assert len(objects) == 2 and objects[0]["size"] == "small" and (wanted["colour"], wanted["shape"]) == (
            objects[0]["colour"], objects[0]["shape"])
        assert (wanted["colour"], wanted["shape"]) not in HELD_OUT_PAIRS
        original = read_shapes(image).objects[0]
        assert objects[0]["relation"] == relation(wanted, original)


def test_psnr_outside_is_the_closed_form_and_ignores_the_masked_pixels():
    a = torch.zeros(2, 3, 8, 8)
    b = torch.full_like(a, 0.1)  # MSE 0.01 -> 20 dB
    masks = torch.zeros(2, 1, 8, 8)
    assert psnr_outside(a, b, masks) == pytest.approx(20.0)
    b[:, :, :4] = 1.0  # a large error, but only where the masks are 1
    masks[:, :, :4] = 1
    assert psnr_outside(a, b, masks) == pytest.approx(20.0)
    assert psnr_outside(a, a, masks) == PSNR_CAP_DB


def test_blended_inpainting_that_fills_the_mask_reads_100_percent_and_keeps_the_rest():
    report, picture = evaluate_blended_inpainting(InpaintStandIn(), num_cases=10, batch_size=4)
    assert report["found_share"] == 1.0 and report["bar_met"] and report["bar"] == INPAINT_BAR
    assert report["psnr_outside_db"] == PSNR_CAP_DB and report["autoencoder_psnr_outside_db"] == PSNR_CAP_DB
    assert picture.shape == (16, 3, 64, 64)


def test_blended_inpainting_that_leaves_the_hole_or_spoils_the_rest_misses_its_bars():
    kept, _ = evaluate_blended_inpainting(InpaintStandIn("keep"), num_cases=6)
    assert kept["found_share"] == 0.0 and kept["why_not"] == {"nothing in the mask": 6} and not kept["bar_met"]
    smeared, _ = evaluate_blended_inpainting(InpaintStandIn("smear"), num_cases=6)
    assert smeared["psnr_outside_db"] < INPAINT_BAR["psnr_outside_db"] and not smeared["bar_met"]
    assert np.isfinite(smeared["psnr_outside_db"])
    nine = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(in_channels=9)), vae=IdentityVAE())
    with pytest.raises(ValueError, match="4-channel"):
        evaluate_blended_inpainting(nine, num_cases=2)


@pytest.mark.slow
def test_the_script_measures_a_saved_pipeline_folder_end_to_end(tmp_path, make_tiny_sd):
    """scripts/evaluate_edits.py on a tiny random pipeline of shapes-t2i's layout (64x64 images, f = 4): the plumbing,
    not the figures (random weights draw no shapes)."""
    import importlib.util
    import json
    from pathlib import Path

    from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
    from sdlearn.models.unet_2d_condition import UNet2DConditionConfig, UNet2DConditionModel
    from sdlearn.pipelines import StableDiffusionPipeline
    from sdlearn.schedulers import DDIMScheduler

    text = make_tiny_sd("sd1")
    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderKLConfig.with_factor(4, (8, 8, 8), norm_num_groups=4, sample_size=64))
    unet = UNet2DConditionModel(UNet2DConditionConfig(
        sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
        cross_attention_dim=32, attention_head_dim=2))
    StableDiffusionPipeline(vae, text["text_encoder"], text["tokenizer"], unet, DDIMScheduler(steps_offset=1)
                            ).save_pretrained(tmp_path / "tiny")
    path = Path(__file__).resolve().parents[2] / "scripts" / "evaluate_edits.py"
    spec = importlib.util.spec_from_file_location("evaluate_edits", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "edits.json"
    code = script.main([str(tmp_path / "tiny"), "--num-cases", "3", "--sweep-cases", "2", "--batch-size", "2",
                        "--steps", "5", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == (0 if report["passes_bar"] else 1) and (tmp_path / "edits.png").is_file()
    edit, inpaint = report["img2img_colour_edit"], report["blended_inpainting"]
    assert edit["n"] == inpaint["n"] == 3 and edit["num_inference_steps"] == 5
    assert [r["strength"] for r in edit["strength_sweep"]] == list(SWEEP_STRENGTHS)
    assert 0 <= edit["right_share"] <= 1 and 0 <= inpaint["found_share"] <= 1 and inpaint["psnr_outside_db"] > 0
    assert report["command"].startswith("python scripts/evaluate_edits.py")
