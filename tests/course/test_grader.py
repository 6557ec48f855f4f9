"""sdlearn.course.grader: solutions score 100%, student copies 0, planted mistakes lose exactly their points,
sdlearn's own answers earn nothing, and nothing a student hands in stops the class from being graded.

Each test edits copies of the chapter notebooks: an exercise cell is found with ``grader.exercises_of``
and its source replaced, so the tests follow the chapters as they change. One warm grading process
serves the whole module (on Linux); each exercise still runs in its own forked process.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import torch

from sdlearn import cli
from sdlearn.course import grader, notebooks
from sdlearn.course.grader import sandbox
from sdlearn.course.checks import EXERCISES, LABELS, run_check

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = [p for p in sorted((ROOT / "chapters").glob("*.ipynb")) if grader.exercises_of(p)]
CH01, CH02 = ROOT / "chapters" / "01_forward_diffusion.ipynb", ROOT / "chapters" / "02_ddpm.ipynb"

# One planted mistake per exercise: (the wrong answer, the LABELS key its feedback must name).
# The four the issue lists: an off-by-one index, a missing sqrt on alpha_bar, the variance where
# the standard deviation belongs, noise added on the last sampling step.
WRONG = {
    "ch01.forward_step": ("""
def forward_step(x_prev, beta_t, eps):
    return (1 - beta_t).sqrt() * x_prev + beta_t * eps  # planted: the variance beta_t where sqrt(beta_t) belongs
""", "variance_for_std"),
    "ch01.q_sample": ("""
def q_sample(x0, t, eps, alphas_cumprod):
    alpha_bar = alphas_cumprod[t - 1].reshape(-1, 1, 1, 1)  # planted: step t - 1's alpha_bar
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
""", "off_by_one"),
    "ch01.cosine_betas": ("""
def cosine_betas(num_train_timesteps, s=0.008, max_beta=0.999):
    u = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = torch.cos((u + s) / (1 + s) * torch.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).to(torch.float32)  # planted: not clipped at max_beta
""", "no_clip"),
    "ch02.predict_x0": ("""
def predict_x0(x_t, t, eps_pred, alphas_cumprod):
    alpha_bar = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return (x_t - (1 - alpha_bar).sqrt() * eps_pred) / alpha_bar  # planted: alpha_bar where sqrt(alpha_bar) belongs
""", "missing_sqrt"),
    "ch02.posterior_mean_variance": ("""
def posterior_mean_variance(x0, x_t, t, betas, alphas_cumprod):
    beta_t, alpha_bar_t, alpha_bar_prev = betas[t], alphas_cumprod[t], alphas_cumprod[t - 1]
    mean = (alpha_bar_prev.sqrt() * beta_t / (1 - alpha_bar_t) * x0
            + (1 - beta_t).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar_t) * x_t)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t
    return mean, variance.sqrt()  # planted: the standard deviation where the variance belongs
""", "std_for_variance"),
    "ch02.simple_loss": ("""
def simple_loss(model, x0, t, eps, alphas_cumprod):
    alpha_bar = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    return ((eps - model(x_t, t)) ** 2).sum()  # planted: the sum where L_simple takes the mean
""", "sum_for_mean"),
    "ch02.ddpm_step": ("""
def ddpm_step(eps_pred, t, x_t, betas, alphas_cumprod, z):
    beta_t, alpha_bar_t = betas[t], alphas_cumprod[t]
    mean = (x_t - beta_t / (1 - alpha_bar_t).sqrt() * eps_pred) / (1 - beta_t).sqrt()
    return mean + beta_t.sqrt() * z  # planted: noise on the last step (t = 0) too
""", "noise_at_t0"),
}

# Answers that only call sdlearn's (or diffusers') implementation. would_pass: it is right when the
# reference is available (checked in this process), so only the grader's guard makes it fail.
REFERENCE_ANSWERS = {
    "ch01.forward_step": ("""
from sdlearn.schedulers.ddpm import add_noise
def forward_step(x_prev, beta_t, eps):  # eq. 4 with a one-step table is eq. 2
    return add_noise((1 - beta_t).reshape(1), x_prev, eps, torch.zeros(len(x_prev), dtype=torch.long))
""", True),
    "ch01.q_sample": ("""
from sdlearn.schedulers.ddpm import add_noise
def q_sample(x0, t, eps, alphas_cumprod):
    return add_noise(alphas_cumprod, x0, eps, t)
""", True),
    "ch01.cosine_betas": ("""
from sdlearn.course import checks as grading
def cosine_betas(num_train_timesteps, s=0.008, max_beta=0.999):
    return grading._cosine_reference(num_train_timesteps, s, max_beta)  # the check's own reference
""", True),
    "ch02.predict_x0": ("""
def predict_x0(x_t, t, eps_pred, alphas_cumprod):
    return predicted_original(eps_pred, x_t, alphas_cumprod[t].reshape(-1, 1, 1, 1), "epsilon")
""", True),
    "ch02.posterior_mean_variance": ("""
def posterior_mean_variance(x0, x_t, t, betas, alphas_cumprod):
    scheduler = DDPMScheduler(num_train_timesteps=len(betas))
    return x_t, scheduler.posterior_variance(t)
""", False),
    "ch02.simple_loss": ("""
def simple_loss(model, x0, t, eps, alphas_cumprod):
    return diffusion_loss(model, DDPMScheduler(), x0, torch.Generator().manual_seed(0))
""", False),
    "ch02.ddpm_step": ("""
def ddpm_step(eps_pred, t, x_t, betas, alphas_cumprod, z):
    from diffusers import DDPMScheduler as DiffusersDDPM
    return DiffusersDDPM().step(eps_pred, t, x_t).prev_sample
""", False),
}

# Chapter 6 (DDIM and the samplers).
WRONG_CH06 = {
    "ch06.ddim_step": ("""
def ddim_step(eps_pred, x_t, alpha_bar_t, alpha_bar_prev, eta, noise):
    alpha_t = alpha_bar_t / alpha_bar_prev  # planted: DDPM's one-step alpha where the DDIM paper's alpha (= alpha_bar) belongs
    x0_pred = (x_t - (1 - alpha_t).sqrt() * eps_pred) / alpha_t.sqrt()
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()
    return alpha_bar_prev.sqrt() * x0_pred + (1 - alpha_bar_prev - sigma**2).sqrt() * eps_pred + sigma * noise
""", "alpha_vs_alpha_bar"),
    "ch06.timestep_grid": ("""
def timestep_grid(num_inference_steps, num_train_timesteps, spacing):
    S, T = num_inference_steps, num_train_timesteps
    k = torch.arange(S, dtype=torch.float64)
    if spacing == "leading":
        grid = k * (T // S)
    elif spacing == "trailing":
        grid = torch.round(T - k * T / S)  # planted: the - 1 is missing
    else:
        grid = torch.round(k * (T - 1) / max(S - 1, 1))
    return grid.long().sort(descending=True).values
""", "off_by_one"),
    "ch06.euler_step": ("""
def euler_step(x, sigma, sigma_next, eps_pred):
    return x + (sigma_next**2 - sigma**2) * eps_pred  # planted: sigma^2 where sigma belongs
""", "variance_for_std"),
}
REFERENCE_ANSWERS_CH06 = {
    "ch06.ddim_step": ("""
from sdlearn.schedulers.ddim import ddim_sigma, ddim_update
def ddim_step(eps_pred, x_t, alpha_bar_t, alpha_bar_prev, eta, noise):
    x0_pred = (x_t - (1 - alpha_bar_t).sqrt() * eps_pred) / alpha_bar_t.sqrt()
    return ddim_update(x0_pred, eps_pred, alpha_bar_prev, ddim_sigma(alpha_bar_t, alpha_bar_prev, eta), noise)
""", True),
    "ch06.timestep_grid": ("""
from sdlearn.schedulers.base import spaced_timesteps
def timestep_grid(num_inference_steps, num_train_timesteps, spacing):
    return spaced_timesteps(num_inference_steps, num_train_timesteps, spacing)
""", True),
    "ch06.euler_step": ("""
from sdlearn.schedulers import EulerDiscreteScheduler
def euler_step(x, sigma, sigma_next, eps_pred):
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(1)
    scheduler.sigmas = torch.stack([sigma, sigma_next]).float()
    scheduler.scale_model_input(x, scheduler.timesteps[0])
    return scheduler.step(eps_pred, scheduler.timesteps[0], x).prev_sample.to(x.dtype)
""", False),
}
WRONG.update(WRONG_CH06)
REFERENCE_ANSWERS.update(REFERENCE_ANSWERS_CH06)

# Chapters 3-4 (the VAE, latent diffusion). Until their chapters exist these run in small notebooks built here
# (LATENT_NOTEBOOKS), graded like chapters: a set-up cell of imports, then exercise and check cells.
SOLUTIONS_LATENT = {
    "ch03.reparameterize": """
def reparameterize(mean, logvar, eps):
    return mean + torch.exp(0.5 * logvar) * eps  # Kingma & Welling 2014, eq. 10
""",
    "ch03.kl_diagonal_gaussian": """
def kl_diagonal_gaussian(mean, logvar):
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
""",
    "ch03.scaling_factor": """
def scaling_factor(latents):
    return float(1 / latents.flatten().std())
""",
    "ch04.latent_diffusion_loss": """
def latent_diffusion_loss(unet, vae, x0, t, eps, alphas_cumprod, scaling_factor):
    with torch.no_grad():
        z0 = scaling_factor * vae.encode(x0).latent_dist.mode()
    alpha_bar = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    z_t = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * eps
    return ((eps - unet(z_t, t)) ** 2).mean()
""",
    "ch04.sample_latents": """
@torch.no_grad()
def sample_latents(unet, vae, scheduler, z_T, num_inference_steps):
    scheduler.set_timesteps(num_inference_steps)
    z = z_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        z = scheduler.step(unet(scheduler.scale_model_input(z, t), t), t, z).prev_sample
    return vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
""",
    "ch04.encode_diffuse_decode": """
@torch.no_grad()
def encode_diffuse_decode(unet, vae, scheduler, x0, strength, eps, num_inference_steps):
    s = vae.config.scaling_factor
    z = s * vae.encode(x0).latent_dist.mode()
    scheduler.set_timesteps(num_inference_steps)
    n = min(int(num_inference_steps * strength), num_inference_steps)
    timesteps = scheduler.timesteps[num_inference_steps - n:]
    if n > 0:
        z = scheduler.add_noise(z, eps, timesteps[:1])
    for t in timesteps:
        z = scheduler.step(unet(scheduler.scale_model_input(z, t), t), t, z).prev_sample
    return vae.decode(z / s).sample.clamp(-1, 1)
""",
}
WRONG_LATENT = {
    "ch03.reparameterize": ("""
import torch
def reparameterize(mean, logvar, eps):
    return mean + torch.exp(logvar) * eps  # planted: the variance exp(logvar) where the std exp(0.5 logvar) belongs
""", "variance_for_std"),
    "ch03.kl_diagonal_gaussian": ("""
def kl_diagonal_gaussian(mean, logvar):
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean(dim=(1, 2, 3))  # planted: mean where the sum belongs
""", "mean_for_sum"),
    "ch03.scaling_factor": ("""
def scaling_factor(latents):
    return float(latents.flatten().std())  # planted: std where 1 / std belongs
""", "not_inverted"),
    "ch04.latent_diffusion_loss": ("""
def latent_diffusion_loss(unet, vae, x0, t, eps, alphas_cumprod, scaling_factor):
    z0 = vae.encode(x0).latent_dist.mode()  # planted: the scaling factor is missing
    alpha_bar = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    z_t = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * eps
    return ((eps - unet(z_t, t)) ** 2).mean()
""", "missing_scaling"),
    "ch04.sample_latents": ("""
import torch
@torch.no_grad()
def sample_latents(unet, vae, scheduler, z_T, num_inference_steps):
    scheduler.set_timesteps(num_inference_steps)
    z = z_T  # planted: init_noise_sigma is missing
    for t in scheduler.timesteps:
        z = scheduler.step(unet(scheduler.scale_model_input(z, t), t), t, z).prev_sample
    return vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
""", "missing_init_noise_sigma"),
    "ch04.encode_diffuse_decode": ("""
import torch
@torch.no_grad()
def encode_diffuse_decode(unet, vae, scheduler, x0, strength, eps, num_inference_steps):
    s = vae.config.scaling_factor
    z = s * vae.encode(x0).latent_dist.mode()
    scheduler.set_timesteps(num_inference_steps)
    n = min(int(num_inference_steps * strength), num_inference_steps)
    timesteps = scheduler.timesteps[num_inference_steps - n:]
    if n > 0:
        z = scheduler.add_noise(z, eps, scheduler.timesteps[:1])  # planted: noised to the first timestep of the grid
    for t in timesteps:
        z = scheduler.step(unet(scheduler.scale_model_input(z, t), t), t, z).prev_sample
    return vae.decode(z / s).sample.clamp(-1, 1)
""", "wrong_start"),
}
REFERENCE_ANSWERS_LATENT = {
    "ch03.reparameterize": ("""
import torch
from sdlearn.models.autoencoder_kl import DiagonalGaussianDistribution
def reparameterize(mean, logvar, eps):
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    return posterior.mean + posterior.std * eps
""", True),
    "ch03.kl_diagonal_gaussian": ("""
import torch
def kl_diagonal_gaussian(mean, logvar):  # diffusers' posterior (it would pass; diffusers is slow to import here)
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    return DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).kl()
""", False),
    "ch03.scaling_factor": ("""
from sdlearn.models.autoencoder_kl import measure_scaling_factor
def scaling_factor(latents):
    return measure_scaling_factor(latents)
""", True),
    "ch04.latent_diffusion_loss": ("""
import torch
from sdlearn.schedulers import DDPMScheduler
from sdlearn.training.losses import diffusion_loss
def latent_diffusion_loss(unet, vae, x0, t, eps, alphas_cumprod, scaling_factor):
    z0 = scaling_factor * vae.encode(x0).latent_dist.mode()
    return diffusion_loss(unet, DDPMScheduler(num_train_timesteps=len(alphas_cumprod)), z0, torch.Generator().manual_seed(0))
""", False),
    "ch04.sample_latents": ("""
from sdlearn.pipelines import LatentDiffusionPipeline
def sample_latents(unet, vae, scheduler, z_T, num_inference_steps):
    pipe = LatentDiffusionPipeline(vae, unet, scheduler)
    z0 = pipe.denoise(tuple(z_T.shape), num_inference_steps, latents=z_T, progress=False)
    return pipe.decode_latents(z0).to(z_T.dtype)
""", True),
    "ch04.encode_diffuse_decode": ("""
from sdlearn.pipelines import LatentDiffusionPipeline
def encode_diffuse_decode(unet, vae, scheduler, x0, strength, eps, num_inference_steps):
    pipe = LatentDiffusionPipeline(vae, unet, scheduler)
    z = pipe.encode_images(x0)
    scheduler.set_timesteps(num_inference_steps)
    n = min(int(num_inference_steps * strength), num_inference_steps)
    timesteps = scheduler.timesteps[num_inference_steps - n:]
    if n > 0:
        z = scheduler.add_noise(z, eps, timesteps[:1])
    for t in timesteps:
        z = scheduler.step(unet(scheduler.scale_model_input(z, t), t), t, z).prev_sample
    return pipe.decode_latents(z).to(x0.dtype)
""", True),
}
WRONG.update(WRONG_LATENT)
REFERENCE_ANSWERS.update(REFERENCE_ANSWERS_LATENT)


# Chapters 5 and 7 (conditioning; the Stable Diffusion pipeline): also graded in notebooks built here until their
# chapters hold the exercises. These sources are the solution cells the chapters take (markers included).
SOLUTIONS_CONDITIONING_PIPELINE = {
    "ch05.cross_attention": '''
def cross_attention(hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, to_q: torch.nn.Linear,
                    to_k: torch.nn.Linear, to_v: torch.nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    # LDM eq. 3: Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V, Q from the image tokens, K and V from the text's.
    # hidden_states (B, N, C): image tokens; encoder_hidden_states (B, M, D): text tokens; to_q, to_k, to_v: nn.Linear
    # Returns out (B, N, inner), the heads merged back (no output projection), and probs (B, heads, N, M).
    ### BEGIN SOLUTION
    B, N, _ = hidden_states.shape
    q = to_q(hidden_states)  # (B, N, inner): Q = W_Q phi(z_t)
    k = to_k(encoder_hidden_states)  # (B, M, inner): K = W_K tau(y)
    v = to_v(encoder_hidden_states)  # (B, M, inner): V = W_V tau(y)
    d = q.shape[-1] // heads  # the width of one head
    q, k, v = (x.view(B, -1, heads, d).transpose(1, 2) for x in (q, k, v))  # (B, heads, T, d)
    scores = q @ k.transpose(-1, -2) / d**0.5  # (B, heads, N, M): Q K^T / sqrt(d)
    probs = scores.softmax(dim=-1)  # over the keys: each image token's weights over the words sum to 1
    out = probs @ v  # (B, heads, N, d)
    return out.transpose(1, 2).reshape(B, N, heads * d), probs  # out (B, N, inner)
    ### END SOLUTION
''',
    "ch05.guidance": '''
def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    # Classifier-free guidance (Ho & Salimans 2022, eq. 6) in diffusers' convention: guidance_scale s = 1 + w.
    # eps_uncond, eps_cond: (B, C, H, W), the model's noise predictions without and with the condition
    ### BEGIN SOLUTION
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)  # = (1 + w) eps_cond - w eps_uncond
    ### END SOLUTION
''',
    "ch05.clip_loss": '''
def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # CLIP's symmetric contrastive loss (Radford et al. 2021, Figure 3).
    # image_embeds, text_embeds: (B, d), row i of each a pair; t: the learned log-temperature (a 0-dim tensor)
    ### BEGIN SOLUTION
    image_e = image_embeds / image_embeds.norm(dim=-1, keepdim=True)  # I_e (B, d): L2-normalised rows
    text_e = text_embeds / text_embeds.norm(dim=-1, keepdim=True)  # T_e (B, d)
    logits = t.exp() * image_e @ text_e.T  # (B, B): exp(t) times the cosine similarities
    labels = torch.arange(len(logits), device=logits.device)  # the diagonal: image i belongs with caption i
    loss_image = torch.nn.functional.cross_entropy(logits, labels)  # image -> text: each row picks its caption
    loss_text = torch.nn.functional.cross_entropy(logits.T, labels)  # text -> image: each column picks its image
    return (loss_image + loss_text) / 2
    ### END SOLUTION
''',
    "ch05.condition_dropout": '''
def condition_dropout(conditions: torch.Tensor, null_condition: torch.Tensor, p_uncond: float,
                      generator: torch.Generator) -> torch.Tensor:
    # Ho & Salimans 2022, Algorithm 1, line 3: c <- null with probability p_uncond, sample by sample.
    # conditions: (B,) class labels or (B, M, D) text embeddings; null_condition: one row, shaped like conditions[0]
    ### BEGIN SOLUTION
    u = torch.rand(conditions.shape[0], generator=generator, device=generator.device)  # (B,): one draw per sample
    drop = (u < p_uncond).to(conditions.device)  # (B,): True with probability p_uncond
    drop = drop.view(-1, *[1] * (conditions.ndim - 1))  # (B, 1, ..., 1): broadcasts over a row
    null = null_condition.to(conditions.dtype).expand_as(conditions)  # (B, ...)
    return torch.where(drop, null, conditions)  # every sample stays; only its condition is replaced
    ### END SOLUTION
''',
    "ch07.img2img_start": '''
def img2img_timesteps(scheduler, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
    # SDEdit's start (Meng et al. 2022) in diffusers' img2img: of the S steps, the last int(S * strength) run.
    # scheduler: already set to num_inference_steps (its timesteps and order); strength in (0, 1]
    ### BEGIN SOLUTION
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)  # how many steps run
    t_start = max(num_inference_steps - init_timestep, 0)  # where in the grid of S steps they start
    timesteps = scheduler.timesteps[t_start * scheduler.order:]  # a second-order grid lists each step twice
    return timesteps, t_start
    ### END SOLUTION
''',
    "ch07.blended_inpaint_step": '''
def blended_inpaint_step(scheduler, eps: torch.Tensor, t: int, latents: torch.Tensor, known_latents: torch.Tensor,
                         noise: torch.Tensor, mask: torch.Tensor, t_prev: int | None) -> torch.Tensor:
    # One step of blended inpainting (Avrahami et al. 2023, Blended Latent Diffusion); mask = 1 where we repaint.
    # eps, latents (z_t), known_latents (the image's latents), noise: (B, 4, h, w); mask: (B or 1, 1, h, w)
    ### BEGIN SOLUTION
    z_prev = scheduler.step(eps, t, latents).prev_sample  # the model's step: z_t -> the level of t_prev
    if t_prev is None:  # the last step: no noise level below it, so the known region is the clean latents
        known = known_latents
    else:  # the known latents noised to the same level as z_prev (DDPM eq. 4, through the scheduler)
        known = scheduler.add_noise(known_latents, noise, torch.tensor([t_prev]))
    return mask * z_prev + (1 - mask) * known  # repaint where mask = 1, keep the image where mask = 0
    ### END SOLUTION
''',
    "ch07.safety_cosine": '''
def safety_check(image_embeds: torch.Tensor, concept_embeds: torch.Tensor, concept_thresholds: torch.Tensor,
                 special_care_embeds: torch.Tensor, special_care_thresholds: torch.Tensor):
    # The released safety checker's rule: the cosine to each concept embedding against that concept's threshold.
    # image_embeds (B, d); concept_embeds (K, d), concept_thresholds (K,); special_care_embeds (S, d), thresholds (S,)
    ### BEGIN SOLUTION
    image_e = image_embeds / image_embeds.norm(dim=-1, keepdim=True)  # (B, d)
    concept_e = concept_embeds / concept_embeds.norm(dim=-1, keepdim=True)  # (K, d)
    special_e = special_care_embeds / special_care_embeds.norm(dim=-1, keepdim=True)  # (S, d)
    special = (image_e @ special_e.T - special_care_thresholds > 0).any(dim=1)  # (B,): a special-care concept fired
    adjustment = 0.01 * special.to(image_e.dtype)[:, None]  # (B, 1): then be stricter about every concept
    scores = image_e @ concept_e.T - concept_thresholds + adjustment  # (B, K): cos - threshold + adjustment
    return scores, (scores > 0).any(dim=1)  # flagged when any concept's score is above 0
    ### END SOLUTION
''',
}
WRONG_CH05_CH07 = {
    "ch05.cross_attention": ("""
def cross_attention(hidden_states, encoder_hidden_states, to_q, to_k, to_v, heads):
    B, N, _ = hidden_states.shape
    q, k, v = to_q(hidden_states), to_k(encoder_hidden_states), to_v(encoder_hidden_states)
    d = q.shape[-1] // heads
    q, k, v = (x.view(B, -1, heads, d).transpose(1, 2) for x in (q, k, v))
    probs = (q @ k.transpose(-1, -2)).softmax(dim=-1)  # planted: 1 / sqrt(d) is missing
    return (probs @ v).transpose(1, 2).reshape(B, N, heads * d), probs
""", "missing_scale"),
    "ch05.guidance": ("""
def classifier_free_guidance(eps_uncond, eps_cond, guidance_scale):
    w = guidance_scale
    return (1 + w) * eps_cond - w * eps_uncond  # planted: the paper's w where diffusers' s = 1 + w belongs
""", "paper_convention"),
    "ch05.clip_loss": ("""
def clip_loss(image_embeds, text_embeds, t):
    i = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    x = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    logits = t.exp() * i @ x.T
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(logits)))  # planted: image -> text only
""", "one_direction"),
    "ch05.condition_dropout": ("""
def condition_dropout(conditions, null_condition, p_uncond, generator):
    drop = torch.rand(conditions.shape[0], generator=generator) < 1 - p_uncond  # planted: the keep probability
    drop = drop.view(-1, *[1] * (conditions.ndim - 1))
    return torch.where(drop, null_condition.expand_as(conditions), conditions)
""", "keep_for_drop"),
    "ch07.img2img_start": ("""
def img2img_timesteps(scheduler, num_inference_steps, strength):
    init_timestep = min(int(num_inference_steps * (1 - strength)), num_inference_steps)  # planted: 1 - strength
    t_start = max(num_inference_steps - init_timestep, 0)
    return scheduler.timesteps[t_start * scheduler.order:], t_start
""", "strength_inverted"),
    "ch07.blended_inpaint_step": ("""
def blended_inpaint_step(scheduler, eps, t, latents, known_latents, noise, mask, t_prev):
    z_prev = scheduler.step(eps, t, latents).prev_sample
    known = known_latents if t_prev is None else scheduler.add_noise(known_latents, noise, torch.tensor([t_prev]))
    return (1 - mask) * z_prev + mask * known  # planted: the mask inverted
""", "mask_inverted"),
    "ch07.safety_cosine": ("""
def safety_check(image_embeds, concept_embeds, concept_thresholds, special_care_embeds, special_care_thresholds):
    special = (image_embeds @ special_care_embeds.T - special_care_thresholds > 0).any(dim=1)
    scores = image_embeds @ concept_embeds.T - concept_thresholds + 0.01 * special.to(image_embeds.dtype)[:, None]
    return scores, (scores > 0).any(dim=1)  # planted: dot products where cosines belong
""", "no_normalisation"),
}
# torch's fused attention and transformers' CLIP loss (BLOCKED_CALLABLES) and sdlearn's own answers. would_pass is
# False for the library shortcuts: the check cell refuses them with its own words ("by hand"), not "scores nothing".
REFERENCE_ANSWERS_CH05_CH07 = {
    "ch05.cross_attention": ("""
import torch.nn.functional as F
def cross_attention(hidden_states, encoder_hidden_states, to_q, to_k, to_v, heads):
    B, N, _ = hidden_states.shape
    q, k, v = (x.unflatten(-1, (heads, -1)).transpose(1, 2) for x in
               (to_q(hidden_states), to_k(encoder_hidden_states), to_v(encoder_hidden_states)))
    probs = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, -1), probs
""", False),
    "ch05.guidance": ("""
from sdlearn.pipelines.ddpm import guided
def classifier_free_guidance(eps_uncond, eps_cond, guidance_scale):
    return guided(eps_uncond, eps_cond, guidance_scale)
""", True),
    "ch05.clip_loss": ("""
import torch.nn.functional as F
from transformers.models.clip.modeling_clip import image_text_contrastive_loss
def clip_loss(image_embeds, text_embeds, t):
    i, x = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
    return image_text_contrastive_loss(t.exp() * x @ i.T)
""", False),
    "ch05.condition_dropout": ("""
from sdlearn.training.losses import drop_condition
def condition_dropout(conditions, null_condition, p_uncond, generator):
    return drop_condition(conditions, p_uncond, null_condition, generator)
""", True),
    "ch07.img2img_start": ("""
from sdlearn.pipelines.stable_diffusion_img2img import img2img_timesteps as library
def img2img_timesteps(scheduler, num_inference_steps, strength):
    return library(scheduler, num_inference_steps, strength)
""", True),
    "ch07.blended_inpaint_step": ("""
from sdlearn.pipelines.stable_diffusion_inpaint import blend_known
def blended_inpaint_step(scheduler, eps, t, latents, known_latents, noise, mask, t_prev):
    z_prev = scheduler.step(eps, t, latents).prev_sample
    known = known_latents if t_prev is None else scheduler.add_noise(known_latents, noise, torch.tensor([t_prev]))
    return blend_known(z_prev, known, mask)
""", True),
    "ch07.safety_cosine": ("""
from sdlearn.models.safety_checker import cosine_similarity
def safety_check(image_embeds, concept_embeds, concept_thresholds, special_care_embeds, special_care_thresholds):
    fired = (cosine_similarity(image_embeds, special_care_embeds) - special_care_thresholds > 0).any(dim=1)
    scores = cosine_similarity(image_embeds, concept_embeds) - concept_thresholds + 0.01 * fired.to(image_embeds.dtype)[:, None]
    return scores, (scores > 0).any(dim=1)
""", True),
}
SOLUTIONS_LATENT.update(SOLUTIONS_CONDITIONING_PIPELINE)  # graded in notebooks built here, as chapters 3-4
WRONG.update(WRONG_CH05_CH07)
REFERENCE_ANSWERS.update(REFERENCE_ANSWERS_CH05_CH07)


def latent_notebook(folder: Path, chapter: int) -> Path:
    """A small notebook of chapter 3, 4, 5 or 7's exercises, in the chapters' nbgrader markup, holding SOLUTIONS_LATENT."""
    new = nbformat.v4
    cells = [new.new_markdown_cell(f"# Chapter {chapter} (a test notebook)"),
             new.new_code_cell("import torch\nfrom torch import nn\nfrom sdlearn.course.checks import check")]
    for exercise_id, source in SOLUTIONS_LATENT.items():
        ex = EXERCISES[exercise_id]
        if ex.chapter != chapter:
            continue
        grade_id = exercise_id.replace(".", "-").replace("_", "-")
        marked = source.strip() if "### BEGIN SOLUTION" in source else f"### BEGIN SOLUTION\n{source.strip()}\n### END SOLUTION"
        cells.append(new.new_code_cell(marked, metadata={"nbgrader": {
            "grade_id": grade_id, "solution": True, "grade": False, "locked": False, "schema_version": 3}}))
        cells.append(new.new_code_cell(f'check("{exercise_id}", {ex.signature.split("(")[0]})', metadata={"nbgrader": {
            "grade_id": f"{grade_id}-check", "solution": False, "grade": True, "locked": True, "points": ex.points,
            "schema_version": 3}}))
    path = folder / f"0{chapter}_test_latent.ipynb"
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(new.new_notebook(cells=cells), path)
    return path


@pytest.fixture(scope="module")
def pool():
    with grader.Grader(timeout=60) as g:
        yield g


def exercise_cells(path) -> dict[str, int]:
    """exercise id -> index of its exercise cell."""
    return {s.exercise_id: s.cell for s in grader.exercises_of(path)}


def with_answers(src: Path, dst: Path, answers: dict[str, str]) -> Path:
    """A copy of notebook ``src`` whose exercise cells for ``answers`` hold the given sources."""
    nb = nbformat.read(src, as_version=4)
    cells = exercise_cells(src)
    for exercise_id, source in answers.items():
        nb.cells[cells[exercise_id]].source = source.strip() + "\n"
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return dst


def by_id(result: grader.NotebookResult) -> dict[str, grader.ExerciseResult]:
    return {e.exercise_id: e for e in result.exercises}


# ------------------------------------------------------------------------------------ discovery (no processes)
def test_every_exercise_has_a_planted_mistake_and_a_reference_list():
    assert set(EXERCISES) <= set(WRONG), f"add a planted mistake to WRONG for {sorted(set(EXERCISES) - set(WRONG))}"
    missing = sorted(set(EXERCISES) - set(grader.REFERENCES))
    assert not missing, f"list sdlearn's implementations of {missing} in sdlearn.course.grader.REFERENCES (or () if none)"


def test_exercises_found_in_the_chapters_match_the_registry():
    for path in CHAPTERS:
        specs = grader.exercises_of(path)
        chapter = EXERCISES[specs[0].exercise_id].chapter
        assert sorted(s.exercise_id for s in specs) == sorted(e for e, ex in EXERCISES.items() if ex.chapter == chapter)
        for s in specs:
            assert s.cell is not None and s.grade_id and not s.note, (path.name, s)
            assert s.points == EXERCISES[s.exercise_id].points


def test_grader_watches_and_guards_every_module_of_the_checks():
    """The checks live in sdlearn.course.checks's modules; the grader watches (and guards) the helpers of each of them."""
    modules = {m.__name__ for m in sandbox._grading_modules()}
    assert {"sdlearn.course.checks", "sdlearn.course.checks.core", "sdlearn.course.checks.diffusion", "sdlearn.course.checks.vae",
            "sdlearn.course.checks.latent", "sdlearn.course.checks.samplers"} <= modules
    watched = sandbox._watched()
    for name in ("sdlearn.course.checks.core._close", "sdlearn.course.checks.latent._reverse", "sdlearn.course.checks.vae._check_kl",
                 "sdlearn.course.checks.CHECKS['ch04.sample_latents']", "sdlearn.course.checks.EXERCISES"):
        assert name in watched, name


def test_setup_rule():
    new = nbformat.v4
    nb = new.new_notebook(cells=[new.new_markdown_cell("# title"), new.new_code_cell("import torch"),
                                 new.new_code_cell("x = 1"), new.new_code_cell("FAST = True"),
                                 new.new_code_cell("def f(): pass"), new.new_code_cell("check('ch01.q_sample', f)")])
    assert grader.notebook.setup_cells(nb, exclude={4, 5}) == [1]  # no tags: the import-only cells above the first exercise
    nb.cells[3].metadata["tags"] = ["parameters"]
    assert grader.notebook.setup_cells(nb, exclude={4, 5}) == [1, 2, 3]  # everything up to the parameters cell
    nb.cells[2].metadata["tags"] = ["setup"]
    assert grader.notebook.setup_cells(nb, exclude={4, 5}) == [2]  # tagged cells win


def test_unreadable_files_get_a_message_for_the_student(tmp_path):
    cases = {"01_cut.ipynb": '{"cells": [', "02_empty.ipynb": "", "03_list.ipynb": "[1, 2]"}
    words = {"01_cut.ipynb": "not valid JSON", "02_empty.ipynb": "empty", "03_list.ipynb": "not a Jupyter notebook"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(grader.NotebookReadError, match=words[name]):
            grader.read_notebook(tmp_path / name)
    (tmp_path / "binary.ipynb").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(grader.NotebookReadError, match="not a text file"):
        grader.read_notebook(tmp_path / "binary.ipynb")


# ------------------------------------------------------------------------------------ grading
def test_solution_notebooks_score_full_marks(pool):
    results = pool.grade(CHAPTERS)
    for path, result in zip(CHAPTERS, results):
        assert result.error is None
        assert [e.status for e in result.exercises] == ["passed"] * len(result.exercises), grader.format_table([result])
        assert result.score == result.max_score == sum(EXERCISES[e.exercise_id].points for e in result.exercises) > 0


def test_release_then_grade_every_chapter(pool, tmp_path):
    """Student copies score 0 without breaking the grader; filled in with the solutions they score 100%."""
    students = [notebooks.release_notebook(p, tmp_path / "student") for p in CHAPTERS]
    for result in pool.grade(students):
        assert result.score == 0 and result.max_score > 0
        for e in result.exercises:
            assert e.status == "failed" and "not written this exercise yet" in e.feedback, e.feedback
    completed = []
    (tmp_path / "completed").mkdir()
    for src, student in zip(CHAPTERS, students):  # a learner's work: the solution regions, back in their cells
        solutions = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nbformat.read(src, as_version=4).cells
                     if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
        nb = nbformat.read(student, as_version=4)
        for cell in nb.cells:
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if grade_id in solutions:
                cell.source = solutions[grade_id]
        completed.append(tmp_path / "completed" / src.name)
        nbformat.write(nb, completed[-1])
    for result in pool.grade(completed):
        assert result.score == result.max_score > 0, grader.format_table([result])


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_planted_mistakes_lose_exactly_their_points(pool, tmp_path, path):
    """Two copies per chapter, mistakes in alternate exercises: each planted exercise scores 0 and its
    feedback names the mistake; every other exercise keeps its points."""
    assert_planted_mistakes_lose_their_points(pool, tmp_path, path)


def assert_planted_mistakes_lose_their_points(pool, tmp_path, path):
    ids = [s.exercise_id for s in grader.exercises_of(path)]
    for parity in (0, 1):
        planted = {e: WRONG[e][0] for k, e in enumerate(ids) if k % 2 == parity}
        result = pool.grade_notebook(with_answers(path, tmp_path / f"planted{parity}" / path.name, planted))
        for e in result.exercises:
            if e.exercise_id in planted:
                label = LABELS[WRONG[e.exercise_id][1]]
                assert e.score == 0 and f"likely mistake ({label})" in e.feedback, e.feedback
            else:
                assert e.passed and e.score == e.max_score, e.feedback
        assert result.score == sum(EXERCISES[e].points for e in ids if e not in planted)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_answers_that_call_sdlearn_earn_nothing(pool, tmp_path, path):
    assert_answers_that_call_sdlearn_earn_nothing(pool, tmp_path, path)


def assert_answers_that_call_sdlearn_earn_nothing(pool, tmp_path, path):
    ids = [s.exercise_id for s in grader.exercises_of(path) if s.exercise_id in REFERENCE_ANSWERS]
    for exercise_id in ids:  # where the reference gives the right answer, only the guard stops it
        source, would_pass = REFERENCE_ANSWERS[exercise_id]
        if would_pass:
            from sdlearn.schedulers.ddpm import predicted_original

            namespace = {"torch": torch, "predicted_original": predicted_original}
            exec(source, namespace)
            fn = namespace[EXERCISES[exercise_id].signature.split("(")[0]]
            from sdlearn.course.checks import CHECKS

            CHECKS[exercise_id](fn)  # right without any guard: only the guard stops it
            passed, feedback = run_check(exercise_id, fn)  # the check cell agrees with the grader (issue 17)
            assert not passed and "scores nothing" in feedback, f"{exercise_id}: the check cell passed it: {feedback}"
    result = pool.grade_notebook(with_answers(path, tmp_path / path.name,
                                              {e: REFERENCE_ANSWERS[e][0] for e in ids}))
    for e in result.exercises:
        if e.exercise_id in ids:
            assert e.score == 0 and "unavailable during grading" in e.feedback, e.feedback
            assert "earns no points" in e.feedback
            assert "of guarded" not in e.feedback and "of find_spec" not in e.feedback  # not the guard's line


@pytest.mark.parametrize("chapter", [3, 4, 5, 7])
def test_latent_exercises_are_graded(pool, tmp_path, chapter):
    """Chapters 3-4's (and 5 and 7's) exercises in a notebook built here: the solutions score full marks, planted
    mistakes lose exactly their points with the mistake named, and answers that call sdlearn's (or diffusers') code,
    or a library shortcut of BLOCKED_CALLABLES (torch's fused attention, transformers' CLIP loss), earn nothing."""
    path = latent_notebook(tmp_path / "given", chapter)
    specs = grader.exercises_of(path)
    assert sorted(s.exercise_id for s in specs) == sorted(e for e, ex in EXERCISES.items() if ex.chapter == chapter)
    result = pool.grade_notebook(path)
    assert [e.status for e in result.exercises] == ["passed"] * len(specs), grader.format_table([result])
    assert result.score == result.max_score == sum(EXERCISES[s.exercise_id].points for s in specs)
    assert_planted_mistakes_lose_their_points(pool, tmp_path / "planted", path)
    assert_answers_that_call_sdlearn_earn_nothing(pool, tmp_path / "references", path)


def test_one_broken_exercise_fails_alone(pool, tmp_path):
    """Chapter 2 with an infinite loop, a syntax error, a cell that writes to stderr and warns, an
    exercise cell moved below its check cell, and an extra cell that fails: only the first two lose points."""
    ids = exercise_cells(CH02)
    nb = nbformat.read(CH02, as_version=4)
    nb.cells[ids["ch02.posterior_mean_variance"]].source = (
        "def posterior_mean_variance(x0, x_t, t, betas, alphas_cumprod):\n    while True:\n        pass\n")
    nb.cells[ids["ch02.predict_x0"]].source = "def predict_x0(x_t, t, eps_pred, alphas_cumprod):\n    return (x_t -\n"
    loss_cell = nb.cells[ids["ch02.simple_loss"]]
    loss_cell.source = ("import sys, warnings\nprint('debugging output ' * 1000)\nprint('a message on stderr', "
                        "file=sys.stderr)\nwarnings.warn('a warning')\n" + loss_cell.source)
    moved = nb.cells.pop(ids["ch02.ddpm_step"])
    nb.cells.append(moved)  # the exercise cell now sits below its check cell, at the very end
    nb.cells.insert(1, nbformat.v4.new_code_cell("scratch = name_that_does_not_exist + 1"))  # an extra, broken cell
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("my notes"))
    path = tmp_path / "02_ddpm.ipynb"
    nbformat.write(nb, path)

    result = by_id(pool.grade_notebook(path, timeout=3))
    assert result["ch02.posterior_mean_variance"].status == "timeout"
    assert "stopped after 3 s" in result["ch02.posterior_mean_variance"].feedback
    assert result["ch02.predict_x0"].status == "failed" and "syntax error" in result["ch02.predict_x0"].feedback
    assert "line 2" in result["ch02.predict_x0"].feedback
    assert result["ch02.simple_loss"].passed and result["ch02.ddpm_step"].passed
    kept = EXERCISES["ch02.simple_loss"].points + EXERCISES["ch02.ddpm_step"].points
    assert sum(e.score for e in result.values()) == kept


def test_renamed_function_and_copied_results(pool, tmp_path):
    ids = exercise_cells(CH01)
    nb = nbformat.read(CH01, as_version=4)
    cell = nb.cells[ids["ch01.forward_step"]]
    cell.source = cell.source.replace("def forward_step(", "def forward_step_v2(")
    nb.cells[ids["ch01.q_sample"]].source = ("def q_sample(x0, t, eps, alphas_cumprod):\n"
                                             "    return x_t_from_section_3  # computed in another cell\n")
    cell = nb.cells[ids["ch01.cosine_betas"]]
    cell.source = "print(x0.shape)  # from another cell: fails here, but the function is still defined\n" + cell.source
    nb.cells.insert(ids["ch01.q_sample"], nbformat.v4.new_code_cell("x_t_from_section_3 = torch.zeros(1)"))
    path = tmp_path / "01_forward_diffusion.ipynb"
    nbformat.write(nb, path)

    result = by_id(pool.grade_notebook(path))
    renamed = result["ch01.forward_step"]
    assert renamed.score == 0 and "does not define" in renamed.feedback and "forward_step_v2" in renamed.feedback
    copied = result["ch01.q_sample"]
    assert copied.score == 0 and "NameError" in copied.feedback and "on its own" in copied.feedback
    assert result["ch01.cosine_betas"].passed


def test_answers_that_patch_torch_or_the_checks_are_not_graded(pool, tmp_path):
    path = with_answers(CH01, tmp_path / "01_forward_diffusion.ipynb", {
        "ch01.forward_step": "torch.allclose = lambda *args, **kwargs: True\n"
                             "def forward_step(x_prev, beta_t, eps):\n    return x_prev\n",
        "ch01.q_sample": "from sdlearn import grading\ngrading.CHECKS['ch01.q_sample'] = lambda fn: None\n"
                         "def q_sample(x0, t, eps, alphas_cumprod):\n    return x0\n",
        "ch01.cosine_betas": "from sdlearn.course.checks import core\ncore._close = lambda *args, **kwargs: True\n"
                             "def cosine_betas(num_train_timesteps, s=0.008, max_beta=0.999):\n"
                             "    return torch.zeros(num_train_timesteps)\n"})
    result = by_id(pool.grade_notebook(path, only={"ch01.forward_step", "ch01.q_sample", "ch01.cosine_betas"}))
    assert result["ch01.forward_step"].score == 0 and "torch.allclose" in result["ch01.forward_step"].feedback
    assert result["ch01.q_sample"].score == 0 and "CHECKS['ch01.q_sample']" in result["ch01.q_sample"].feedback
    patched = result["ch01.cosine_betas"]  # a helper in one of sdlearn.course.checks's modules
    assert patched.score == 0 and "sdlearn.course.checks.core._close" in patched.feedback, patched.feedback


def test_command_line_json_csv_and_unreadable_notebooks(tmp_path, capsys):
    (tmp_path / "01_cut_off.ipynb").write_text('{"cells": [{"cell_type": "code", "sou')
    (tmp_path / "notes.ipynb").write_text("")
    good = with_answers(CH01, tmp_path / "alice" / "01_forward_diffusion.ipynb",
                        {"ch01.q_sample": WRONG["ch01.q_sample"][0]})
    out_json, out_csv = tmp_path / "grades.json", tmp_path / "grades.csv"
    code = cli.main(["grade", str(tmp_path), "--json", str(out_json), "--csv", str(out_csv), "--timeout", "60"])
    assert code == 0  # low scores and unreadable files are not a crash
    table = capsys.readouterr().out
    assert "not valid JSON" in table and "FAILED   ch01.q_sample" in table and "summary: 3 notebooks" in table

    report = json.loads(out_json.read_text())
    books = {Path(n["notebook"]).name: n for n in report["notebooks"]}
    alice = books["01_forward_diffusion.ipynb"]
    assert (alice["score"], alice["max_score"]) == (4, 6) and alice["error"] is None
    assert {e["exercise"]: (e["score"], e["max_score"]) for e in alice["exercises"]} == {
        "ch01.forward_step": (2, 2), "ch01.q_sample": (0, 2), "ch01.cosine_betas": (2, 2)}
    cut = books["01_cut_off.ipynb"]  # unreadable: chapter 1's exercises (from the file name) at 0 points
    assert "not valid JSON" in cut["error"] and (cut["score"], cut["max_score"]) == (0, 6)
    assert books["notes.ipynb"]["max_score"] == 0 and "empty" in books["notes.ipynb"]["error"]
    assert (report["score"], report["max_score"]) == (4, 12)
    rows = out_csv.read_text().splitlines()
    assert rows[0].startswith("notebook,score,max_score,ch01.") and len(rows) == 4
    assert good.exists()


def test_command_line_usage_errors(capsys):
    assert cli.main(["grade", "no/such/notebook.ipynb"]) == 2
    assert "No notebook or folder" in capsys.readouterr().err
    assert cli.main(["grade", str(CH01), "--timeout", "0"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["grade"])


def test_spawn_mode_runs_and_stops_an_infinite_loop(tmp_path):
    """The portable path (a fresh interpreter per exercise, as on Windows and macOS)."""
    loop = "def forward_step(x_prev, beta_t, eps):\n    while True:\n        pass\n"
    path = with_answers(CH01, tmp_path / "01_forward_diffusion.ipynb", {"ch01.forward_step": loop})
    with grader.Grader(timeout=3, mode="spawn") as spawn:
        result = by_id(spawn.grade_notebook(path, only={"ch01.forward_step", "ch01.q_sample"}))
    assert list(result) == ["ch01.forward_step", "ch01.q_sample"]
    assert result["ch01.forward_step"].status == "timeout" and result["ch01.q_sample"].passed


def test_classroom_workflow_gives_each_exercise_its_points():
    yaml = pytest.importorskip("yaml")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_workflow", ROOT / "tests" / "classroom" / "make_workflow.py")
    make_workflow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_workflow)
    text = make_workflow.workflow([str(p) for p in CHAPTERS], install="pip install -e .", python="3.11", minutes=10)
    steps = yaml.safe_load(text)["jobs"]["run-autograding-tests"]["steps"]
    graded = {s["with"]["test-name"]: s["with"]["max-score"] for s in steps
              if "autograding-command-grader" in s.get("uses", "")}
    assert graded == {e: ex.points for e, ex in EXERCISES.items() if any(s.exercise_id == e for p in CHAPTERS
                                                                          for s in grader.exercises_of(p))}
    reporter = steps[-1]
    assert reporter["with"]["runners"].split(",") == [s["id"] for s in steps if s.get("id")]
    assert all(f"{s['id'].upper()}_RESULTS" in reporter["env"] for s in steps if s.get("id"))


def test_library_shortcuts_are_refused_for_their_exercise_only(pool, tmp_path):
    """BLOCKED_CALLABLES in the grader: torch's fused attention and transformers' CLIP loss score nothing for the
    exercise they answer, with feedback that names them and says to compute by hand; the same fused attention in
    another exercise's answer (guidance here, where it is no shortcut) is left alone."""
    path = latent_notebook(tmp_path / "given", 5)
    guidance_with_sdpa = """
import torch.nn.functional as F
def classifier_free_guidance(eps_uncond, eps_cond, guidance_scale):
    q = torch.zeros(1, 1, 1, 2, dtype=eps_cond.dtype)
    one = F.scaled_dot_product_attention(q, q, q + 1)[0, 0, 0, 0]  # 1.0: allowed outside the attention exercise
    return eps_uncond + one * guidance_scale * (eps_cond - eps_uncond)
"""
    answers = {e: REFERENCE_ANSWERS[e][0] for e in ("ch05.cross_attention", "ch05.clip_loss")}
    result = by_id(pool.grade_notebook(with_answers(path, tmp_path / "answers" / path.name,
                                                    {**answers, "ch05.guidance": guidance_with_sdpa})))
    for exercise_id, name in (("ch05.cross_attention", "scaled_dot_product_attention"),
                              ("ch05.clip_loss", "image_text_contrastive_loss")):
        feedback = result[exercise_id].feedback
        assert result[exercise_id].score == 0 and name in feedback and "by hand" in feedback, feedback
    assert result["ch05.guidance"].passed, result["ch05.guidance"].feedback
