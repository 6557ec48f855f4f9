"""From a recipe name to a shipped model: train it (resumably), then export its EMA weights.

    python -m sdlearn train NAME [--run-dir runs/NAME]   # checkpoints in runs/NAME; run again to continue
    python -m sdlearn export NAME                        # -> sdlearn/pretrained/NAME (fp16 weights)

- a pixel DDPM (``Recipe``): the UNet on the training images; exported as a DDPMPipeline folder;
- an autoencoder (``VAERecipe``): the VAE with ``VAELoss``; at export the latent scale factor is measured on
  the training images (1 / std of their latents, ``sdlearn.models.autoencoder_kl.measure_scaling_factor``) and stored in its config;
- a latent DDPM (``LatentRecipe``): the UNet on z_0 = scaling_factor * E(x) of the training images, encoded
  once with the shipped VAE (the posterior's mode) and cached in the run folder; exported as a
  LatentDiffusionPipeline folder that includes the VAE.
"""

from __future__ import annotations

import json
import os

import torch

from .checkpoint import load_training_checkpoint
from .recipes import LatentRecipe, Recipe, VAERecipe, get_recipe, training_images, training_labels
from ..schedulers import DDPMScheduler
from .loop import TrainConfig, TrainResult, train
from ..models.unet_2d import UNet2DModel
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


def build_model(recipe) -> torch.nn.Module:
    if isinstance(recipe, VAERecipe):
        return AutoencoderKL(recipe.vae)
    return UNet2DModel(recipe.unet)


def train_recipe(name: str, run_dir: str | None = None, config: TrainConfig | None = None, device=None,
                 progress: bool = True) -> TrainResult:
    """Train the named recipe (``config`` overrides its TrainConfig, e.g. fewer steps)."""
    recipe = get_recipe(name)
    config = config or recipe.train
    device = device or torch.device("cpu")
    torch.manual_seed(config.seed)  # weight initialisation
    model = build_model(recipe).to(device)
    if isinstance(recipe, VAERecipe):
        return train(model, None, training_images(recipe.data), config, run_dir=run_dir, progress=progress,
                     loss_fn=recipe.loss)
    scheduler = DDPMScheduler(**recipe.scheduler)
    if isinstance(recipe, LatentRecipe):
        latents = latent_training_set(recipe, run_dir, progress, device)
        labels = training_labels(recipe.data) if recipe.class_conditional else None
        return train(model, scheduler, latents, config, run_dir=run_dir, progress=progress, data_range=None,
                     conditions=labels)
    return train(model, scheduler, training_images(recipe.data), config, run_dir=run_dir, progress=progress)


def export_model(name: str, model: torch.nn.Module, out: str, dtype: torch.dtype = torch.float16):
    """Write trained weights as the shipped folder of the named recipe (the object written is returned)."""
    from ..pipelines import DDPMPipeline, LatentDiffusionPipeline

    recipe = get_recipe(name)
    model = model.cpu().to(dtype).float()  # the stored precision, so what is measured is what ships
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
    model = build_model(get_recipe(name))
    model.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    export_model(name, model, out, dtype)
    info = {"step": state["step"], "train_config": state["config"], "loss": state.get("loss"),
            "train_seconds": round(state.get("train_seconds", 0.0), 1), "dtype": str(dtype).replace("torch.", "")}
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


__all__ = ["Recipe", "VAERecipe", "LatentRecipe", "train_recipe", "export_run", "export_model",
           "latent_training_set"]
