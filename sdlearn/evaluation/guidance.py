"""Where guidance pushes: the guidance direction eps_cond - eps_uncond along a text-to-image run (chapter 5).

Classifier-free guidance (Ho & Salimans 2022, eq. 6, in diffusers' convention s = 1 + w) moves every step's noise
prediction from the unconditional one toward and past the conditional one:

    eps_guided = eps_uncond + s (eps_cond - eps_uncond)

The difference ``eps_cond - eps_uncond`` is what the prompt adds: a latent-sized field that is near zero where the
prompt has nothing to say (the black background) and large where it decides colour and shape. ``guidance_directions``
runs the sampler once with guidance and, at chosen steps, records both branches and the clean latents each one
predicts (x0 = (z_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), DDPM eq. 15), decoded to pictures.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def guidance_directions(pipe, prompt: str, steps: list[int], guidance_scale: float = 5.0,
                        num_inference_steps: int = 50, generator: torch.Generator | None = None,
                        negative_prompt: str | None = None) -> dict:
    """Run ``pipe(prompt)`` with guidance; at each step index in ``steps`` record

    - ``direction``: eps_cond - eps_uncond (C, h, w), the guidance direction;
    - ``x0_uncond``, ``x0_cond``, ``x0_guided``: the clean image each prediction implies, decoded, (3, H, W) in [0, 1];

    Returns {"image": the final image (3, H, W) in [0, 1], "timesteps": {step: t}, "steps": {step: record}}.
    For a v-predicting UNet (SD 2.x 768) the direction is v_cond - v_uncond and x0 = sqrt(alpha_bar_t) z_t -
    sqrt(1 - alpha_bar_t) v (Salimans & Ho 2022). The scheduler must have ``alphas_cumprod``.
    """
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"guidance_directions reads eps or v from the UNet; this scheduler says {prediction_type!r}.")
    if guidance_scale <= 1:
        raise ValueError(f"guidance_scale must be > 1 for guidance to run (diffusers' convention), got {guidance_scale}.")
    wanted = {int(s) for s in steps}
    if not wanted or min(wanted) < 0 or max(wanted) >= num_inference_steps:
        raise ValueError(f"steps must be step indices in [0, {num_inference_steps - 1}], got {sorted(wanted)}.")
    c, c_null = pipe.encode_prompt(prompt, 1, True, negative_prompt)
    alphas_cumprod = pipe.scheduler.alphas_cumprod
    records, timesteps = {}, {}

    def decode(z: torch.Tensor) -> torch.Tensor:
        image = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample.float()
        return ((image[0] + 1) / 2).clamp(0, 1).cpu()

    def record(p, i, t, info) -> None:
        if i not in wanted:
            return
        z_t = info["x_t"]
        model_in = p.scheduler.scale_model_input(torch.cat([z_t, z_t]), t)
        eps_uncond, eps_cond = p.unet(model_in, t, encoder_hidden_states=torch.cat([c_null, c])).chunk(2)
        eps_guided = eps_uncond + guidance_scale * (eps_cond - eps_uncond)  # eq. 6 with s = 1 + w
        ab = alphas_cumprod[int(t)].to(z_t.dtype)

        def x0(out: torch.Tensor) -> torch.Tensor:
            if prediction_type == "v_prediction":
                return decode(ab.sqrt() * z_t - (1 - ab).sqrt() * out)
            return decode((z_t - (1 - ab).sqrt() * out) / ab.sqrt())  # DDPM eq. 15

        records[i] = {"direction": (eps_cond - eps_uncond)[0].cpu(), "x0_uncond": x0(eps_uncond),
                      "x0_cond": x0(eps_cond), "x0_guided": x0(eps_guided)}
        timesteps[i] = int(t)

    image = pipe(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                 negative_prompt=negative_prompt, generator=generator, output_type="pt",
                 callback_on_step_end=record, progress=False).images[0]
    return {"image": image.cpu(), "timesteps": timesteps, "steps": dict(sorted(records.items()))}
