"""`python -m sdlearn generate`: text to image, img2img and inpainting from a folder or a single file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdlearn.cli import main


@pytest.fixture(scope="module")
def folder(tiny_sd_folder):
    version, path = tiny_sd_folder
    if version != "sd1":
        pytest.skip("one SD version is enough here")
    return path


def test_text_to_image_then_img2img_then_inpainting(folder, tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["generate", "a red circle", "--model", str(folder), "--steps", "2", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "safety checker: none" in said and Image.open(out).size == (16, 16)
    edited = tmp_path / "b.png"
    assert main(["generate", "a blue circle", "--model", str(folder), "--steps", "4", "--image", str(out),
                 "--strength", "0.5", "--scheduler", "euler", "--out", str(edited)]) == 0
    assert "EulerDiscreteScheduler" in capsys.readouterr().out
    mask = tmp_path / "mask.png"
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(mask)
    filled = tmp_path / "c.png"
    assert main(["generate", "a red square", "--model", str(folder), "--steps", "2", "--image", str(out),
                 "--mask", str(mask), "--negative", "blue", "--out", str(filled)]) == 0
    a, c = np.asarray(Image.open(out)), np.asarray(Image.open(filled))
    assert a.shape == c.shape and not np.array_equal(a, c)


def test_single_file_needs_a_tokenizer_folder(folder, tmp_path, capsys):
    from sdlearn.pipelines import StableDiffusionPipeline

    single = tmp_path / "model.safetensors"
    StableDiffusionPipeline.from_pretrained(folder).to_single_file(single)
    assert main(["generate", "a red circle", "--model", str(single), "--steps", "1", "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "no tokenizer" in capsys.readouterr().err


def test_unknown_model_and_mask_without_image(tmp_path, capsys):
    assert main(["generate", "a red circle", "--model", "no-such-model", "--out", str(tmp_path / "x.png")]) == 2
    assert "shipped models" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--mask", "m.png"]) == 2
    assert "--mask needs --image" in capsys.readouterr().err
