"""The safety checker of Stable Diffusion's pipeline: a CLIP image embedding compared with concept embeddings.

    e = visual_projection(CLIP_vision(image).pooled)               # the image's CLIP embedding
    cos_k = <e / |e|, c_k / |c_k|>                                  # cosine to each concept embedding c_k
    special care first: if any cos_j - threshold_j > 0, every later threshold is lowered by 0.01 ("adjustment")
    flagged  <=>  some concept k has round(cos_k - threshold_k + adjustment, 3) > 0

The concepts are stored only as embeddings (the released ones: 17 concepts and 3 "special care" ones, with a
threshold each); the words behind them were never published. This module holds any number of concepts, loads
diffusers' ``safety_checker/`` folders (their weights and names: ``vision_model``, ``visual_projection``,
``concept_embeds``, ``concept_embeds_weights``, ``special_care_embeds``, ``special_care_embeds_weights``), and
is built here from a text prompt too: the course's stand-in concept ("a large purple triangle"), embedded by a CLIP's
text tower, with a threshold calibrated on data.

The images reach it through the ``feature_extractor`` (transformers' CLIPImageProcessor: resize, centre-crop and
normalise for CLIP's vision tower). That is what the feature extractor does in diffusers' pipeline: it prepares
the *generated* images for the safety checker; it does not pre-process an img2img input.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn


def cosine_similarity(image_embeds: torch.Tensor, concept_embeds: torch.Tensor) -> torch.Tensor:
    """(B, K): the cosine of every image embedding with every concept embedding."""
    return F.normalize(image_embeds, dim=-1) @ F.normalize(concept_embeds, dim=-1).T


def flag_images(cos: torch.Tensor, thresholds: torch.Tensor, special_cos: torch.Tensor | None = None,
                special_thresholds: torch.Tensor | None = None) -> list[bool]:
    """The rule above, image by image (scores rounded to 3 decimals, as the released checker does)."""
    flags = []
    for i in range(cos.shape[0]):
        adjustment = 0.0
        if special_cos is not None and special_cos.shape[1]:
            if any(round(float(special_cos[i, j] - special_thresholds[j]), 3) > 0 for j in range(special_cos.shape[1])):
                adjustment = 0.01  # a special-care concept present: be stricter about the others
        scores = [round(float(cos[i, k] - thresholds[k] + adjustment), 3) for k in range(cos.shape[1])]  # in float32
        flags.append(any(s > 0 for s in scores))
    return flags


def to_pil_images(images: torch.Tensor) -> list:
    """Decoded images (B, 3, H, W) in [-1, 1] -> PIL images, what a CLIPImageProcessor (the feature extractor) takes."""
    from PIL import Image

    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray(a) for a in arr]


class StableDiffusionSafetyChecker(nn.Module):
    """CLIP vision tower + projection + concept embeddings and thresholds: which images show a concept."""

    config_name = "config.json"
    weights_name = "model.safetensors"

    def __init__(self, clip_config, num_concepts: int = 17, num_special: int = 3):
        from transformers import CLIPVisionModel

        super().__init__()
        self.config = clip_config  # a transformers CLIPConfig (its vision_config builds the tower)
        vision = clip_config.vision_config
        self.vision_model = CLIPVisionModel(vision)
        self.visual_projection = nn.Linear(vision.hidden_size, clip_config.projection_dim, bias=False)
        d = clip_config.projection_dim
        self.concept_embeds = nn.Parameter(torch.ones(num_concepts, d), requires_grad=False)
        self.special_care_embeds = nn.Parameter(torch.ones(num_special, d), requires_grad=False)
        self.concept_embeds_weights = nn.Parameter(torch.ones(num_concepts), requires_grad=False)
        self.special_care_embeds_weights = nn.Parameter(torch.ones(num_special), requires_grad=False)
        self.black_out = True  # flagged images come back black, as diffusers does; False: flags only (chapter 7)

    @torch.no_grad()
    def image_embeds(self, clip_input: torch.Tensor) -> torch.Tensor:
        """(B, projection_dim) from pixel values prepared by the feature extractor."""
        pooled = self.vision_model(pixel_values=clip_input).pooler_output  # (B, hidden): the class token, normed
        return self.visual_projection(pooled)

    @torch.no_grad()
    def forward(self, clip_input: torch.Tensor) -> list[bool]:
        e = self.image_embeds(clip_input)
        return flag_images(cosine_similarity(e, self.concept_embeds).float().cpu(), self.concept_embeds_weights.cpu(),
                           cosine_similarity(e, self.special_care_embeds).float().cpu(),
                           self.special_care_embeds_weights.cpu())

    @torch.no_grad()
    def check(self, images: torch.Tensor, feature_extractor, black_out: bool | None = None):
        """(images, flags) for decoded images (B, 3, H, W) in [-1, 1]: flagged ones black when ``black_out``
        (default: the checker's ``black_out`` attribute)."""
        black_out = self.black_out if black_out is None else black_out
        pixels = feature_extractor(to_pil_images(images), return_tensors="pt").pixel_values
        flags = self(pixels.to(self.concept_embeds.device, self.visual_projection.weight.dtype))
        if black_out and any(flags):
            images = images.clone()
            images[torch.tensor(flags)] = -1.0  # black in [-1, 1]
        return images, flags

    # ------------------------------------------------------------------ save / load (diffusers' folders)
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        from ..utils.files import atomic_save_file

        os.makedirs(folder, exist_ok=True)
        config = self.config.to_dict()
        config.update(architectures=["StableDiffusionSafetyChecker"], _class_name="StableDiffusionSafetyChecker")
        with open(os.path.join(folder, self.config_name), "w") as f:
            json.dump(config, f, indent=2)
        atomic_save_file(self.state_dict(), os.path.join(folder, self.weights_name))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "StableDiffusionSafetyChecker":
        """A ``safety_checker/`` folder written by diffusers (or by save_pretrained), with strict key matching."""
        from safetensors.torch import load_file
        from transformers import CLIPConfig

        weights = os.path.join(folder, cls.weights_name)
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{folder!r} has no {cls.weights_name} (safetensors); a pickled "
                                    "pytorch_model.bin is not read.")
        state = load_file(weights)
        model = cls(CLIPConfig.from_pretrained(folder), state["concept_embeds"].shape[0],
                    state["special_care_embeds"].shape[0])
        expected = model.state_dict()
        # transformers 4 wrote CLIPVisionModel's weights as vision_model.vision_model.*; transformers 5 drops the inner
        # vision_model. Read either spelling.
        renamed = {}
        for k, v in state.items():
            if k not in expected and k.startswith("vision_model.vision_model."):
                k = "vision_model." + k[len("vision_model.vision_model."):]
            elif k not in expected and k.startswith("vision_model.") and "vision_model.vision_model." + k[13:] in expected:
                k = "vision_model.vision_model." + k[13:]
            renamed[k] = v
        renamed = {k: v for k, v in renamed.items() if not k.endswith("position_ids")}
        model.load_state_dict(renamed, strict=True)
        return model.eval()
