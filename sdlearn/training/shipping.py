"""From a recipe name to a shipped model: train it (resumably), then export its EMA weights.

    python -m sdlearn train NAME [--run-dir runs/NAME]   # checkpoints in runs/NAME; run again to continue
    python -m sdlearn export NAME                        # -> sdlearn/pretrained/NAME (fp16 weights)

- a pixel DDPM (``Recipe``): the UNet on the training images; exported as a DDPMPipeline folder;
- an autoencoder (``VAERecipe``): the VAE with ``VAELoss``; at export the latent scale factor is measured on
  the training images (1 / std of their latents, ``sdlearn.models.autoencoder_kl.measure_scaling_factor``) and stored in its config;
- a latent DDPM (``LatentRecipe``): the UNet on z_0 = scaling_factor * E(x) of the training images, encoded
  once with the shipped VAE (the posterior's mode) and cached in the run folder; exported as a
  LatentDiffusionPipeline folder that includes the VAE;
- a CLIP (``ClipRecipe``): a tokenizer is built from the training captions (byte-pair merges learned from them,
  ``sdlearn.data.text``) into ``run_dir/tokenizer``; the CLIPModel learns from (image, token ids) pairs with
  ``ContrastiveLoss`` (with hard negatives: ids (N, 3, L) = caption, relation flipped, colours swapped); exported in
  float32 as transformers' save_pretrained folder with the tokenizer files beside it.
"""

from __future__ import annotations

import json
import os

import torch

from .checkpoint import load_training_checkpoint
from .recipes import (ClipRecipe, LatentRecipe, Recipe, TextToImageRecipe, VAERecipe, get_recipe, training_images,
                      training_labels)
from ..schedulers import DDPMScheduler
from .loop import TrainConfig, TrainResult, train
from ..models.unet_2d import UNet2DModel
from ..models.unet_2d_condition import UNet2DConditionModel
from ..models.autoencoder_kl import AutoencoderKL, encode_dataset, measure_scaling_factor


def latent_training_set(recipe: LatentRecipe, run_dir: str | None, progress: bool = True,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Scaled latents of the training images under the recipe's shipped VAE (encoded on ``device``), cached in
    ``run_dir``; returned on the CPU."""
    from safetensors.torch import load_file

    from ..utils.files import atomic_save_file

    vae = AutoencoderKL.from_pretrained(recipe.vae).to(device or "cpu")
    cache = os.path.join(run_dir, "latents.safetensors") if run_dir else None
    stamp = {"vae": recipe.vae, "scaling_factor": repr(vae.config.scaling_factor), "data": recipe.data}
    if cache and os.path.isfile(cache):
        from safetensors import safe_open

        with safe_open(cache, "pt") as f:
            if f.metadata() == stamp:
                return load_file(cache)["latents"]
    latents = encode_dataset(vae, training_images(recipe.data), progress=progress) * vae.config.scaling_factor
    if cache:
        os.makedirs(run_dir, exist_ok=True)
        atomic_save_file({"latents": latents}, cache, metadata=stamp)
    return latents


def clip_tokenizer(recipe: ClipRecipe, run_dir: str | None, captions: list[str] | None = None):
    """The recipe's tokenizer: merges learned from its training captions, files written to run_dir/tokenizer
    (or a temporary folder), loaded as ``transformers.CLIPTokenizer``."""
    import tempfile

    from ..data.text import build_tokenizer_files, load_tokenizer

    folder = os.path.join(run_dir, "tokenizer") if run_dir else tempfile.mkdtemp(prefix="sdlearn-tokenizer-")
    if not os.path.isfile(os.path.join(folder, "vocab.json")):
        if captions is None:
            from ..data import load_shapes

            captions = load_shapes("train", compositions=recipe.compositions).captions
        build_tokenizer_files(folder, captions, model_max_length=recipe.text["max_position_embeddings"])
    return load_tokenizer(folder)


def clip_conditions(tokenizer, captions: list[str], hard_negatives: bool = False, compositions: str = "seen"):
    """Token ids of the captions, (N, L); with ``hard_negatives`` (N, 3, L): [caption, relation flipped, colours
    swapped], a row of NO_NEGATIVE where a caption has no such negative, or (for ``compositions="seen"``) where the
    negative would name a held-out colour-shape pair: training text never contains one."""
    from ..data.shapes import flip_relation, has_held_out_pair, parse_caption, swap_colours
    from ..data.text import tokenize
    from .contrastive import NO_NEGATIVE

    ids = tokenize(tokenizer, captions)  # (N, L)
    if not hard_negatives:
        return ids
    out = torch.full((len(captions), 3, ids.shape[1]), NO_NEGATIVE, dtype=ids.dtype)  # (N, 3, L)
    out[:, 0] = ids
    for k, make in ((1, flip_relation), (2, swap_colours)):
        negatives = [make(c) for c in captions]
        rows = [i for i, n in enumerate(negatives)
                if n is not None and not (compositions == "seen" and has_held_out_pair(parse_caption(n)))]
        if rows:
            out[rows, k] = tokenize(tokenizer, [negatives[i] for i in rows])
    return out


def build_clip(recipe: ClipRecipe, tokenizer) -> torch.nn.Module:
    """A transformers CLIPModel of the recipe's size, its text vocabulary and special ids from the tokenizer (the
    pooled text output is read at the first <|endoftext|>, which is why eos_token_id must be right)."""
    from transformers import CLIPConfig, CLIPModel

    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), **special, **recipe.text),
                        vision_config=dict(recipe.vision), projection_dim=recipe.projection_dim)
    return CLIPModel(config)


def build_model(recipe, tokenizer=None) -> torch.nn.Module:
    if isinstance(recipe, ClipRecipe):
        return build_clip(recipe, tokenizer)
    if isinstance(recipe, VAERecipe):
        return AutoencoderKL(recipe.vae)
    if isinstance(recipe, TextToImageRecipe):
        return UNet2DConditionModel(recipe.unet)
    return UNet2DModel(recipe.unet)


def train_recipe(name: str, run_dir: str | None = None, config: TrainConfig | None = None, device=None,
                 progress: bool = True) -> TrainResult:
    """Train the named recipe (``config`` overrides its TrainConfig, e.g. fewer steps)."""
    recipe = get_recipe(name)
    config = config or recipe.train
    device = device or torch.device("cpu")
    if isinstance(recipe, ClipRecipe):
        return _train_clip(recipe, run_dir, config, device, progress)
    torch.manual_seed(config.seed)  # weight initialisation
    model = build_model(recipe).to(device)
    if isinstance(recipe, VAERecipe):
        return train(model, None, training_images(recipe.data), config, run_dir=run_dir, progress=progress,
                     loss_fn=recipe.loss)
    scheduler = DDPMScheduler(**recipe.scheduler)
    if isinstance(recipe, TextToImageRecipe):
        from .text_to_image import text_to_image_training_set

        latents, embeddings, null = text_to_image_training_set(recipe, run_dir, progress)
        return train(model, scheduler, latents, config, run_dir=run_dir, progress=progress, data_range=None,
                     conditions=embeddings, null_condition=null)
    if isinstance(recipe, LatentRecipe):
        latents = latent_training_set(recipe, run_dir, progress, device)
        labels = training_labels(recipe.data) if recipe.class_conditional else None
        return train(model, scheduler, latents, config, run_dir=run_dir, progress=progress, data_range=None,
                     conditions=labels)
    return train(model, scheduler, training_images(recipe.data), config, run_dir=run_dir, progress=progress)


def _train_clip(recipe: ClipRecipe, run_dir, config: TrainConfig, device, progress: bool) -> TrainResult:
    from ..data import load_shapes

    data = load_shapes("train", compositions=recipe.compositions)
    tokenizer = clip_tokenizer(recipe, run_dir, data.captions)
    conditions = clip_conditions(tokenizer, data.captions, recipe.loss.hard_negatives, recipe.compositions)
    torch.manual_seed(config.seed)  # weight initialisation
    model = build_clip(recipe, tokenizer).to(device)
    return train(model, None, data.images, config, run_dir=run_dir, progress=progress, loss_fn=recipe.loss,
                 conditions=conditions)


def export_clip(recipe: ClipRecipe, model: torch.nn.Module, out: str, run_dir: str | None = None):
    """CLIPModel.save_pretrained (float32 safetensors), the tokenizer files, and an image processor config that maps
    0..255 RGB to the [-1, 1] the model was trained on (64x64, no resize or crop)."""
    import shutil

    from transformers import CLIPImageProcessor

    tokenizer = clip_tokenizer(recipe, run_dir)
    model.cpu().float().save_pretrained(out)
    for file in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(os.path.join(tokenizer.name_or_path, file), os.path.join(out, file))
    CLIPImageProcessor(do_resize=False, do_center_crop=False, size={"shortest_edge": 64}, crop_size=64,
                       do_rescale=True, rescale_factor=1 / 255,
                       do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(out)
    return model


def export_model(name: str, model: torch.nn.Module, out: str, dtype: torch.dtype = torch.float16,
                 run_dir: str | None = None):
    """Write trained weights as the shipped folder of the named recipe (the object written is returned)."""
    from ..pipelines import DDPMPipeline, LatentDiffusionPipeline

    recipe = get_recipe(name)
    if isinstance(recipe, ClipRecipe):
        return export_clip(recipe, model, out, run_dir)
    model = model.cpu().to(dtype).float()  # the stored precision, so what is measured is what ships
    if isinstance(recipe, TextToImageRecipe):
        from .text_to_image import export_text_to_image

        return export_text_to_image(recipe, model, out, dtype)
    if isinstance(recipe, VAERecipe):
        latents = encode_dataset(model, training_images(recipe.data))
        model.config = type(model.config)(**{**model.config.to_dict(),
                                              "scaling_factor": round(measure_scaling_factor(latents), 5)})
        model.to(dtype).save_pretrained(out)
        return model.float()
    scheduler = DDPMScheduler(**recipe.scheduler)
    if getattr(recipe, "sampling_scheduler", None) is not None:
        from ..pipelines.ddpm import SCHEDULER_CLASSES

        class_name, kwargs = recipe.sampling_scheduler
        scheduler = SCHEDULER_CLASSES[class_name](**kwargs)
    if isinstance(recipe, LatentRecipe):
        pipe = LatentDiffusionPipeline(AutoencoderKL.from_pretrained(recipe.vae).to(dtype), model.to(dtype), scheduler)
    else:
        pipe = DDPMPipeline(model.to(dtype), scheduler)
    pipe.save_pretrained(out)
    return pipe


def export_run(name: str, run_dir: str, out: str, dtype: torch.dtype = torch.float16) -> dict:
    """Export the EMA weights of the last checkpoint in ``run_dir``; writes training.json next to them."""
    found = load_training_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"{run_dir!r} holds no checkpoint; train first: python -m sdlearn train {name}")
    tensors, state = found
    recipe = get_recipe(name)
    if isinstance(recipe, ClipRecipe):
        dtype = torch.float32  # 1.5 MB; transformers would load float16 weights as float16
    model = build_model(recipe, clip_tokenizer(recipe, run_dir) if isinstance(recipe, ClipRecipe) else None)
    model.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    export_model(name, model, out, dtype, run_dir=run_dir)
    info = {"step": state["step"], "train_config": state["config"], "loss": state.get("loss"),
            "train_seconds": round(state.get("train_seconds", 0.0), 1), "dtype": str(dtype).replace("torch.", "")}
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


__all__ = ["Recipe", "VAERecipe", "LatentRecipe", "ClipRecipe", "build_clip", "clip_conditions", "clip_tokenizer", "train_recipe", "export_run", "export_model",
           "latent_training_set"]
