"""The recipes behind the shipped checkpoints: model, noise schedule and training settings, by name.

Each shipped model's card quotes the exact command that made it, e.g.
``python -m sdlearn train mnist-ddpm --run-dir runs/mnist-ddpm`` (resumable: run it again to continue).
Four kinds: ``Recipe`` (a pixel-space DDPM), ``VAERecipe`` (an autoencoder, chapter 3),
``LatentRecipe`` (a DDPM on the latents of a shipped VAE, chapter 4) and ``ClipRecipe`` (a small CLIP trained
contrastively on shapes images and captions, chapter 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .loop import TrainConfig
from ..models.unet_2d import UNetConfig
from ..models.unet_2d_condition import UNet2DConditionConfig
from ..models.autoencoder_kl import AutoencoderKLConfig
from .losses import VAELoss
from .contrastive import ContrastiveLoss


@dataclass(frozen=True)
class Recipe:
    name: str
    unet: UNetConfig
    scheduler: dict  # DDPMScheduler keyword arguments
    train: TrainConfig
    data: str = "digits"  # which training set (sdlearn.data.digits)
    notes: str = ""
    fast_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=30, batch_size=32, warmup_steps=5))
    # The shipped model was trained further than ``train.steps``: after the recipe's run, ``train --steps N`` for
    # each N in turn, on the same run folder. Each resumes from the last checkpoint with a longer cosine schedule,
    # so the learning rate jumps up to that schedule's value at the current step and decays to its minimum at N
    # (a warm restart). The model card lists the commands.
    continued_to: tuple[int, ...] = ()
    # The scheduler the exported folder carries, when sampling should not use the training DDPMScheduler:
    # (class name, keyword arguments); its figures are measured with it at default call arguments.
    sampling_scheduler: tuple[str, dict] | None = None


# The digits DDPMs share these; laptop-digits changes a few fields of each (dataclasses.replace).
_DIGITS_UNET = UNetConfig(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(32, 64, 128),
                          down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=1,
                          attention_head_dim=32, norm_num_groups=8)
_DIGITS_DDPM = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                    prediction_type="epsilon", variance_type="fixed_small", clip_sample=True)
_DIGITS_TRAIN = TrainConfig(steps=7500, batch_size=64, lr=1e-3, warmup_steps=200, lr_schedule="cosine",
                            min_lr_ratio=0.05, grad_clip=1.0, ema_decay=0.999, loss_weighting="min_snr",
                            min_snr_gamma=5.0, seed=0, checkpoint_every=250)

RECIPES = {
    "mnist-ddpm": Recipe(
        name="mnist-ddpm",
        # 2.73 M parameters: the same blocks as the diffusers-example baseline (32/64/128, attention at 8x8).
        unet=_DIGITS_UNET,
        scheduler=dict(_DIGITS_DDPM),
        # Changes from the baseline (diffusers' train_unconditional example), each measured to move the curve: warm-up and cosine
        # decay, min-SNR-5 weighting (Hang et al. 2023), a shorter EMA.
        train=_DIGITS_TRAIN,
        # Shipped at 20,000 steps: two warm restarts after the 7,500-step recipe. The deterministic samplers of
        # chapter 6 gained the most (DDIM with 50 steps: Frechet 55.9 -> 41.3, 3 seeds; sampler_quality.json).
        continued_to=(14000, 20000),
    ),
    "laptop-digits": Recipe(
        name="laptop-digits",
        # Train-it-yourself on a CPU in 20 minutes (issue 16; step times: scripts/laptop_step_speed.py and the
        # README; samplers: benchmarks/results/laptop-digits_20min_samplers_seed1.json). What
        # buys quality in a fixed time is steps per second, so: MNIST's own 28x28 (28 -> 14 -> 7, no padding to
        # 32: 1.4x faster per step), bf16 autocast (1.7x faster on an AVX512-BF16 CPU; channels_last measured
        # slower with it), 1.1 M parameters (mnist-ddpm's blocks with 64 channels at the lowest level), attention
        # only at 7x7 and in the middle.
        unet=replace(_DIGITS_UNET, sample_size=28, block_out_channels=(32, 64, 64)),
        scheduler=dict(_DIGITS_DDPM),
        # The budget is the run's: `--max-minutes 20`. Warm-up for 100 steps, then cosine decay over the elapsed
        # fraction of the budget (the number of steps it buys depends on the machine); min-SNR-5 (Hang et al.
        # 2023), a short EMA for a short run.
        train=replace(_DIGITS_TRAIN, steps=10_000_000, batch_size=128, lr=2e-3, warmup_steps=100, ema_decay=0.995,
                      checkpoint_every=500, schedule_clock="time", autocast="bf16"),
        data="digits-28",
        # Sampled by the training DDPMScheduler itself on a 50-step strided chain (ancestral, x_0 clipped): on
        # mnist-ddpm, 50 stochastic steps score a higher confident share than 50 deterministic DDIM steps
        # (sampler_quality.json: DDIM eta 1 / 0.5 / 0 at 50 steps 94.9% / 95.3% / 90.6%). The folder's scheduler is
        # that one, so pipe(batch_size=N, num_inference_steps=50) with no other argument is what was measured.
        fast_train=TrainConfig(steps=30, batch_size=32, warmup_steps=5, autocast="bf16"),
    ),
}


@dataclass(frozen=True)
class VAERecipe:
    name: str
    vae: AutoencoderKLConfig
    loss: VAELoss
    train: TrainConfig
    data: str = "digits"  # "digits" or "shapes"
    notes: str = ""
    fast_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=30, batch_size=16, warmup_steps=5))


@dataclass(frozen=True)
class LatentRecipe:
    name: str
    vae: str  # the shipped VAE whose latents the UNet learns (its scaling_factor scales them)
    unet: UNetConfig
    scheduler: dict
    train: TrainConfig
    data: str = "shapes"
    notes: str = ""
    fast_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=30, batch_size=32, warmup_steps=5))
    class_conditional: bool = False  # trained on (latent, label) pairs, labels dropped for CFG (unet.num_class_embeds)
    # The scheduler the shipped folder carries, when sampling should not use the training DDPMScheduler:
    # (class name, keyword arguments). The card's figures are measured with it at default call arguments.
    sampling_scheduler: tuple[str, dict] | None = None


RECIPES.update({
    "mnist-vae": VAERecipe(
        name="mnist-vae",
        # f = 4: 32x32x1 digits -> 8x8x4 latents (4x fewer numbers); 0.95 M parameters.
        vae=AutoencoderKLConfig.with_factor(4, (32, 64, 64), in_channels=1, out_channels=1, latent_channels=4,
                                            layers_per_block=1, norm_num_groups=8, sample_size=32),
        loss=VAELoss(kl_weight=1e-3, reconstruction="l1"),
        train=TrainConfig(steps=1500, batch_size=64, lr=1e-3, warmup_steps=100, lr_schedule="cosine",
                          min_lr_ratio=0.05, grad_clip=1.0, ema_decay=0.999, seed=0, checkpoint_every=250),
        data="digits",
        notes="The shipped run's step budget was lowered from 3,000 to 1,500 at step 760 to fit the session "
              "(resumed from the step-760 checkpoint; the cosine schedule followed the 3,000-step curve until then).",
    ),
    "shapes-vae": VAERecipe(
        name="shapes-vae",
        # f = 4: 64x64x3 shapes -> 16x16x4 latents (12x fewer numbers); 0.68 M parameters.
        vae=AutoencoderKLConfig.with_factor(4, (16, 32, 64), in_channels=3, out_channels=3, latent_channels=4,
                                            layers_per_block=1, norm_num_groups=8, sample_size=64),
        loss=VAELoss(kl_weight=1e-3, reconstruction="l1"),
        train=TrainConfig(steps=1500, batch_size=32, lr=1e-3, warmup_steps=100, lr_schedule="cosine",
                          min_lr_ratio=0.05, grad_clip=1.0, ema_decay=0.999, seed=0, checkpoint_every=250),
        data="shapes",
        notes="The shipped run's step budget was lowered twice to fit the session (4,000 -> 2,500 -> 1,500 steps). "
              "Two earlier processes of the run, which a Ctrl-C had not stopped (SIGINT is ignored by background "
              "jobs), kept writing checkpoints into the same folder, so the run resumed at step 750 from one of "
              "them: steps 0-250 followed the 4,000-step cosine schedule, steps 250-750 the 4,000- or the 2,500-step "
              "one, and steps 750-1,500 the 1,500-step one. A probe of the step-750 weights measured 30.5 dB on "
              "300 held-out images."),
    "shapes-vae-f8": VAERecipe(
        name="shapes-vae-f8",
        # f = 8 (not shipped; the pixel-vs-latent benchmark's third arm): 64x64x3 -> 8x8x4 latents (48x fewer).
        vae=AutoencoderKLConfig.with_factor(8, (16, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
                                            layers_per_block=1, norm_num_groups=8, sample_size=64),
        loss=VAELoss(kl_weight=1e-3, reconstruction="l1"),
        train=TrainConfig(steps=1000, batch_size=32, lr=1e-3, warmup_steps=100, lr_schedule="cosine",
                          min_lr_ratio=0.05, grad_clip=1.0, ema_decay=0.999, seed=0, checkpoint_every=250),
        data="shapes",
        notes="The benchmark's run was cut from 2,500 to 1,000 steps at step 773 to fit the session.",
    ),
    "shapes-ldm": LatentRecipe(
        name="shapes-ldm",
        vae="shapes-vae",
        # the DDPM of chapter 2 (same schedule, the same UNet widths as mnist-ddpm) on 4x16x16 latents
        unet=UNetConfig(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128),
                        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                        attention_head_dim=32, norm_num_groups=8),
        scheduler=dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                       prediction_type="epsilon", variance_type="fixed_small", clip_sample=False),
        train=TrainConfig(steps=6000, batch_size=64, lr=1e-3, warmup_steps=200, lr_schedule="cosine",
                          min_lr_ratio=0.05, grad_clip=1.0, ema_decay=0.999, loss_weighting="min_snr",
                          min_snr_gamma=5.0, seed=0, checkpoint_every=250),
        data="shapes",
    ),
    "mnist-cond": LatentRecipe(
        name="mnist-cond",
        # Class-conditional digits on mnist-vae's 4x8x8 latents (4x fewer numbers than 32x32 pixels, and 16x fewer
        # positions for the convolutions: the LDM paper's point, made on digits). 10 digits + 1 null class for CFG.
        vae="mnist-vae",
        unet=UNetConfig(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 96),
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                        layers_per_block=1, attention_head_dim=32, norm_num_groups=16, num_class_embeds=11),
        scheduler=dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                       prediction_type="epsilon", variance_type="fixed_small", clip_sample=False),
        train=TrainConfig(steps=2500, batch_size=128, lr=2e-3, warmup_steps=100, lr_schedule="cosine",
                          min_lr_ratio=0.05, grad_clip=1.0, ema_decay=0.999, loss_weighting="min_snr",
                          min_snr_gamma=5.0, seed=0, checkpoint_every=250, condition_dropout=0.1),
        data="digits",
        notes="The shipped run: `python -m sdlearn train mnist-cond --run-dir R --threads 1`, 1,900 s on one thread "
              "while other jobs shared the 2-core CPU.",
        class_conditional=True,
        # sampled with 50 DDIM steps (eta 0) by default: the bar is measured at 50 steps with the folder's scheduler
        sampling_scheduler=("DDIMScheduler", dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                                  beta_end=0.02, prediction_type="epsilon", clip_sample=False,
                                                  set_alpha_to_one=False, steps_offset=1,
                                                  timestep_spacing="leading")),
    ),
})


@dataclass(frozen=True)
class ClipRecipe:
    """A ``transformers.CLIPModel``: text transformer ``text`` and ViT ``vision`` (CLIPTextConfig / CLIPVisionConfig
    keyword arguments; the text vocabulary and special token ids come from the tokenizer built from the training
    captions), trained with ``loss`` on the shapes split chosen by ``compositions`` (see ``load_shapes``)."""

    name: str
    text: dict
    vision: dict
    projection_dim: int
    loss: ContrastiveLoss
    train: TrainConfig
    data: str = "shapes"
    compositions: str = "seen"  # the held-out colour-shape pairs never appear in training captions
    notes: str = ""
    fast_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=30, batch_size=32, warmup_steps=5))


# 64x64 images in 8x8 patches (64 tokens + CLS); 3 layers of width 64 in each tower: 0.37 M parameters. Sized for
# about 25 minutes on one CPU thread: a 30-step run of shapes-clip took 18 s (0.6 s/step) on the 2-core development
# CPU; the shipped runs, side by side on that CPU shared with other jobs, took 39 and 40 minutes (their cards).
# The two recipes differ only in the hard negatives.
_CLIP_TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=32)
_CLIP_VISION = dict(image_size=64, patch_size=8, num_channels=3, hidden_size=64, intermediate_size=256,
                    num_hidden_layers=3, num_attention_heads=4)
_CLIP_TRAIN = TrainConfig(steps=2500, batch_size=128, lr=1e-3, warmup_steps=200, lr_schedule="cosine",
                          min_lr_ratio=0.05, grad_clip=1.0, ema_decay=0.999, seed=0, checkpoint_every=250)
RECIPES.update({
    # the plain CLIP loss: the "before" of the bag-of-words finding (not shipped; its figures are in the card)
    "shapes-clip-plain": ClipRecipe(name="shapes-clip-plain", text=_CLIP_TEXT, vision=_CLIP_VISION, projection_dim=64,
                                    loss=ContrastiveLoss(hard_negatives=False), train=_CLIP_TRAIN),
    # shipped: with NegCLIP's hard negatives (relation flipped, colours swapped) in every batch
    "shapes-clip": ClipRecipe(name="shapes-clip", text=_CLIP_TEXT, vision=_CLIP_VISION, projection_dim=64,
                              loss=ContrastiveLoss(hard_negatives=True), train=_CLIP_TRAIN),
})


@dataclass(frozen=True)
class TextToImageRecipe:
    """Latent diffusion conditioned on text, Stable Diffusion's way: a UNet2DConditionModel on a shipped VAE's latents,
    cross-attending to a shipped CLIP's frozen text tower (its last hidden states), captions dropped to the empty
    prompt's encoding for classifier-free guidance. Exported as a StableDiffusionPipeline folder."""

    name: str
    vae: str  # the shipped autoencoder whose latents the UNet learns
    text_encoder: str  # the shipped CLIP whose text tower (and tokenizer) encodes the captions, frozen
    unet: UNet2DConditionConfig
    scheduler: dict  # the training DDPMScheduler
    sampling_scheduler: tuple[str, dict]  # the folder's scheduler: the card's figures at default call arguments
    train: TrainConfig
    data: str = "shapes"
    compositions: str = "seen"  # the held-out colour-shape pairs never appear in training captions
    notes: str = ""
    fast_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=30, batch_size=32, warmup_steps=5))


RECIPES.update({
    "shapes-t2i": TextToImageRecipe(
        name="shapes-t2i",
        vae="shapes-vae",
        text_encoder="shapes-clip",
        # shapes-ldm's widths on the 4x16x16 latents; cross-attention (4 heads) at 8x8, 4x4 and in the middle, where
        # it is cheap on a CPU; the tokens are shapes-clip's 64-wide hidden states (32 per caption). 0.6 s per step of
        # batch 64 on 2 threads (probe); planned over several sessions (the run resumes from its checkpoints).
        unet=UNet2DConditionConfig(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128),
                                   layers_per_block=1,
                                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                   cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8),
        scheduler=dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                       prediction_type="epsilon", variance_type="fixed_small", clip_sample=False),
        sampling_scheduler=("DDIMScheduler", dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                                  beta_end=0.02, prediction_type="epsilon", clip_sample=False,
                                                  set_alpha_to_one=False, steps_offset=1,
                                                  timestep_spacing="leading")),
        train=TrainConfig(steps=8000, batch_size=64, lr=1e-3, warmup_steps=200, lr_schedule="cosine",
                          min_lr_ratio=0.05, grad_clip=1.0, ema_decay=0.999, loss_weighting="min_snr",
                          min_snr_gamma=5.0, seed=0, checkpoint_every=250, condition_dropout=0.1),
        notes=("the shipped run was planned for 12,000 steps and shortened while it ran, to fit two sessions on a "
               "shared 2-core CPU: the cosine schedule ran over 12,000 steps up to step 5,425, over 10,000 up to "
               "5,985 and over 8,000 to the end (the learning rate stepped down at each change; each restart resumed "
               "from the checkpoint written when the run was stopped). `--steps 8000` from scratch gives a smooth "
               "schedule, not these exact weights."),
    ),
})


def training_labels(data: str):
    """The class labels (N,) of a labelled training split (digits: 0-9)."""
    from ..data.digits import load_digits

    if data == "digits":
        return load_digits("train").labels
    raise ValueError(f"{data!r} has no class labels; class-conditional recipes train on 'digits'.")


def training_images(data: str):
    """The training split of a data set by name: (N, C, H, W) in [-1, 1]."""
    from ..data.digits import load_digits

    if data == "digits":
        return load_digits("train").images
    if data == "digits-28":  # MNIST's own 28x28, unpadded: 23% fewer pixels than 32x32
        return load_digits("train", size=28).images
    if data == "shapes":
        from ..data import load_shapes

        return load_shapes("train").images
    raise ValueError(f"unknown data set {data!r}; sdlearn has 'digits', 'digits-28' and 'shapes'.")


def get_recipe(name: str) -> Recipe | VAERecipe | LatentRecipe | ClipRecipe:
    if name not in RECIPES:
        raise KeyError(f"No recipe named {name!r}; recipes: {sorted(RECIPES)}.")
    return RECIPES[name]
