"""What the grader takes away while a notebook's code runs: sdlearn's own answer to each exercise.

``REFERENCES``: sdlearn's implementations of each exercise's equation. ``BLOCKED_PACKAGES``: libraries that are not
importable at all while grading. ``BLOCKED_CALLABLES``: single functions of other libraries (torch's fused attention,
transformers' CLIP loss) that answer one exercise in one call; they are taken away for that exercise only.

Each entry is "module:function" or "module:Class.method". While the notebook's code runs they raise
ReferenceUnavailable (when called from that code, even through other sdlearn functions). A chapter that adds
an exercise adds its references here; a test imports every path, so a stale one fails instead of being skipped.
"""

from __future__ import annotations


# sdlearn's implementations of each exercise's equation: "module:function" or "module:Class.method".
# While the notebook's code runs they raise ReferenceUnavailable (when called from that code, even
# through other sdlearn functions). A chapter that adds an exercise adds its references here.
_ADD_NOISE = (
    "sdlearn.schedulers.ddpm:add_noise",  # eq. 4; with a one-entry table it is eq. 2 as well
    "sdlearn.schedulers.ddpm:DDPMScheduler.add_noise",
    "sdlearn.schedulers.ddim:DDIMScheduler.add_noise",
    "sdlearn.schedulers.euler:EulerDiscreteScheduler.add_noise",
    "sdlearn.schedulers.dpmsolver:DPMSolverMultistepScheduler.add_noise",
)


_STEPS = (
    "sdlearn.schedulers.ddpm:DDPMScheduler.step",
    "sdlearn.schedulers.ddim:DDIMScheduler.step",
    "sdlearn.schedulers.euler:EulerDiscreteScheduler.step",
    "sdlearn.schedulers.dpmsolver:DPMSolverMultistepScheduler.step",
)


REFERENCES: dict[str, tuple[str, ...]] = {
    "ch01.forward_step": _ADD_NOISE,
    "ch01.q_sample": _ADD_NOISE,
    "ch01.cosine_betas": ("sdlearn.schedulers.schedules:cosine_betas", "sdlearn.schedulers.schedules:cosine_alpha_bar"),
    "ch02.predict_x0": ("sdlearn.schedulers.ddpm:predicted_original", "sdlearn.schedulers.dpmsolver:data_prediction",
                        *_STEPS),
    "ch02.posterior_mean_variance": ("sdlearn.schedulers.ddpm:DDPMScheduler.posterior_variance", *_STEPS),
    "ch02.simple_loss": ("sdlearn.training.losses:diffusion_loss",),
    "ch02.ddpm_step": ("sdlearn.schedulers.ddpm:DDPMScheduler.posterior_variance", *_STEPS),
}


# Chapter 6: the DDIM update (eq. 12) and sigma (eq. 16), the spacing grids, and the Euler step.
_SET_TIMESTEPS = (
    "sdlearn.schedulers.base:spaced_timesteps",
    "sdlearn.schedulers.ddpm:DDPMScheduler.set_timesteps",
    "sdlearn.schedulers.ddim:DDIMScheduler.set_timesteps",
    "sdlearn.schedulers.euler:EulerDiscreteScheduler.set_timesteps",
    "sdlearn.schedulers.dpmsolver:DPMSolverMultistepScheduler.set_timesteps",
)


REFERENCES.update({
    "ch06.ddim_step": ("sdlearn.schedulers.ddim:ddim_update", "sdlearn.schedulers.ddim:ddim_sigma",
                       "sdlearn.pipelines.ddim_inversion:ddim_invert", "sdlearn.pipelines.ddim_inversion:ddim_reconstruct", *_STEPS),
    "ch06.timestep_grid": (*_SET_TIMESTEPS, "sdlearn.viz.samplers:previous_timesteps"),
    "ch06.euler_step": (*_STEPS,),
})


# Chapters 3-4: the VAE's posterior (reparameterised sample, KL), the scale factor, and the latent pipeline.
# Not the VAE's encode/decode, the UNet or the scheduler's step: chapter 4's answers must call those. Diffusers'
# versions (its DiagonalGaussianDistribution, AutoencoderKL, pipelines) are covered by BLOCKED_PACKAGES.
_POSTERIOR = (
    "sdlearn.models.autoencoder_kl:DiagonalGaussianDistribution.__init__",  # it computes std = exp(0.5 logvar) and var = exp(logvar)
    "sdlearn.training.losses:vae_loss",
    "sdlearn.training.losses:VAELoss.__call__",
)


_LATENT_PIPELINE = (
    "sdlearn.pipelines.latent_diffusion:LatentDiffusionPipeline.__call__",
    "sdlearn.pipelines.latent_diffusion:LatentDiffusionPipeline.decode_latents",
    "sdlearn.pipelines.latent_diffusion:LatentDiffusionPipeline.encode_images",
    "sdlearn.pipelines.ddpm:DDPMPipeline.__call__",
    "sdlearn.pipelines.ddpm:DDPMPipeline.denoise",  # LatentDiffusionPipeline inherits its loop
)


REFERENCES.update({
    "ch03.reparameterize": ("sdlearn.models.autoencoder_kl:DiagonalGaussianDistribution.sample", *_POSTERIOR),
    "ch03.kl_diagonal_gaussian": ("sdlearn.models.autoencoder_kl:DiagonalGaussianDistribution.kl", *_POSTERIOR),
    "ch03.scaling_factor": ("sdlearn.models.autoencoder_kl:measure_scaling_factor",),
    "ch04.latent_diffusion_loss": ("sdlearn.training.losses:diffusion_loss", *_LATENT_PIPELINE),
    "ch04.sample_latents": _LATENT_PIPELINE,
    "ch04.encode_diffuse_decode": _LATENT_PIPELINE,
})


# Chapter 5: cross-attention (LDM eq. 3), classifier-free guidance, CLIP's loss, condition dropout.
REFERENCES.update({
    "ch05.cross_attention": ("sdlearn.models.attention:AttnProcessor.__call__", "sdlearn.models.attention:AttentionStore.__call__",
                             "sdlearn.models.attention:Attention.forward", "sdlearn.models.tiling:SlicedAttnProcessor.__call__"),
    "ch05.guidance": ("sdlearn.pipelines.ddpm:guided",),
    "ch05.clip_loss": ("sdlearn.training.contrastive:clip_loss", "sdlearn.training.contrastive:ContrastiveLoss.__call__"),
    "ch05.condition_dropout": ("sdlearn.training.losses:drop_condition", "sdlearn.training.losses:diffusion_loss"),
})


# Chapter 7: the pieces of the Stable Diffusion pipelines (img2img's start, blended inpainting, the safety checker).
REFERENCES.update({
    "ch07.img2img_start": ("sdlearn.pipelines.stable_diffusion_img2img:img2img_timesteps",
                           "sdlearn.pipelines.stable_diffusion_img2img:StableDiffusionImg2ImgPipeline.__call__"),
    "ch07.blended_inpaint_step": ("sdlearn.pipelines.stable_diffusion_inpaint:blend_known",
                                  "sdlearn.pipelines.stable_diffusion_inpaint:StableDiffusionInpaintPipeline.__call__"),
    "ch07.safety_cosine": ("sdlearn.models.safety_checker:cosine_similarity", "sdlearn.models.safety_checker:flag_images",
                           "sdlearn.models.safety_checker:StableDiffusionSafetyChecker.forward",
                           "sdlearn.models.safety_checker:StableDiffusionSafetyChecker.check"),
})


BLOCKED_PACKAGES = ("diffusers",)  # whole libraries that implement the exercises


# Other libraries' functions that compute an exercise's whole equation in one call: while that exercise is checked
# or graded they raise ReferenceUnavailable too (when called from the learner's code), with a message that says to
# compute the equation by hand. Same "module:function" / "module:Class.method" paths as REFERENCES.
BLOCKED_CALLABLES: dict[str, tuple[str, ...]] = {
    "ch05.cross_attention": ("torch.nn.functional:scaled_dot_product_attention",
                             "torch.nn.functional:multi_head_attention_forward",
                             "torch.nn.modules.activation:MultiheadAttention.forward"),
    "ch05.clip_loss": ("transformers.models.clip.modeling_clip:image_text_contrastive_loss",
                       "transformers.models.clip.modeling_clip:contrastive_loss",
                       "transformers.models.clip.modeling_clip:CLIPModel.forward"),
}
