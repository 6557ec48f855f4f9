"""``DiffusionPipeline``: load any pipeline folder by the class its ``model_index.json`` names, as diffusers does.

A pipeline folder holds one folder per component and ``model_index.json``::

    {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}

Each component entry is [library, class]. sdlearn writes diffusers' spelling (so diffusers can read sdlearn's
folders) and reads both that and the older ["sdlearn", ...]; an optional component written as [null, null]
loads as None. ``DiffusionPipeline.from_pretrained(name_or_folder)`` returns an instance of the named class.
"""

from __future__ import annotations

import json
import os

from ..utils.files import resolve_pretrained

# The library each component class comes from, as diffusers spells it in model_index.json.
LIBRARIES = {"UNet2DModel": "diffusers", "UNet2DConditionModel": "diffusers", "AutoencoderKL": "diffusers",
             "CLIPTextModel": "transformers", "CLIPTokenizer": "transformers",
             "StableDiffusionSafetyChecker": "stable_diffusion", "CLIPImageProcessor": "transformers"}
# model_index.json's "_diffusers_version": the diffusers release whose folder layout sdlearn writes. diffusers reads
# the key when it loads a folder (its inpainting loader fails without it), so sdlearn's folders carry it.
DIFFUSERS_LAYOUT_VERSION = "0.30.0"


def component_entry(obj) -> list:
    """model_index.json's [library, class] for a component (schedulers come from diffusers too); [null, null] for None."""
    if obj is None:
        return [None, None]
    name = type(obj).__name__
    name = {"CLIPImageProcessorPil": "CLIPImageProcessor", "CLIPTokenizerFast": "CLIPTokenizer"}.get(name, name)
    return [LIBRARIES.get(name, "diffusers"), name]


def read_model_index(folder_or_name) -> tuple[str, dict]:
    """(folder, model_index.json) of a pipeline folder or a shipped model's name."""
    folder = resolve_pretrained(folder_or_name)
    path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} has no model_index.json: it is not a pipeline folder (a single model's "
                                "folder holds config.json; load it with its model class, e.g. UNet2DModel).")
    with open(path) as f:
        return folder, json.load(f)


def component_class(index: dict, name: str) -> str | None:
    """The class name model_index.json gives component ``name`` (None for a [null, null] entry or a missing one)."""
    entry = index.get(name)
    if entry is None or entry == [None, None]:
        return None
    if not (isinstance(entry, list) and len(entry) == 2):
        raise ValueError(f"model_index.json: {name!r} should be [library, class], got {entry!r}.")
    return entry[1]


class DiffusionPipeline:
    """Base of sdlearn's pipelines; ``DiffusionPipeline.from_pretrained`` picks the class the folder names."""

    _registry: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        DiffusionPipeline._registry[cls.__name__] = cls

    @classmethod
    def from_pretrained(cls, folder_or_name: str | os.PathLike) -> "DiffusionPipeline":
        """The pipeline in a folder (or a shipped model by name), as the class its model_index.json names."""
        if cls is not DiffusionPipeline:  # e.g. DDPMPipeline.from_pretrained: that class's own loader
            raise NotImplementedError(f"{cls.__name__} must define from_pretrained")
        folder, index = read_model_index(folder_or_name)
        name = index.get("_class_name")
        if name not in cls._registry:
            raise ValueError(f"{folder!r} holds a {name!r}, which sdlearn does not have; sdlearn's pipelines: "
                             f"{sorted(cls._registry)}.")
        return cls._registry[name].from_pretrained(folder)
