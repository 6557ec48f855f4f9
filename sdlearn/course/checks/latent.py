"""Checks for chapter 4: diffusion in a VAE's latent space (Rombach et al. 2022; Meng et al. 2022).

L_simple on latents (LDM eq. 2: DDPM eq. 14 on z_0 = scaling_factor * E(x)), sampling in latent space
then decoding once (LDM sec. 3.2), and encode-diffuse-decode (SDEdit, Meng et al. 2022, the idea behind
img2img). The checks hand the learner's function tiny seeded models: sdlearn's AutoencoderKL (random
weights), a denoiser whose output has a formula, and sdlearn's deterministic DDIM (eta = 0) and Euler
schedulers; the reference runs the equation with the same models. No check calls sdlearn's latent pipeline.
"""

from __future__ import annotations

import re
import types
import warnings

import torch
from torch import nn

from ...schedulers import DDIMScheduler, EulerDiscreteScheduler
from ...models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussianDistribution
from .core import (
    EXERCISES,
    LABELS,
    OFF_BY_ONE_MINUS,
    OFF_BY_ONE_PLUS,
    Exercise,
    _at,
    _call,
    _Case,
    _close,
    _describe,
    _diagnose,
    _expect_tensor,
    _randn,
    _register,
    _tables,
    _unchanged,
)

EXERCISES.update({
    "ch04.latent_diffusion_loss": Exercise(
        4, "L_simple on latents", "LDM eq. 2 (DDPM eq. 14 on z_0)",
        "z_0 = s E(x_0), with E(x_0) the mode (the mean) of the encoder's posterior and s the scaling factor; "
        "z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps; L = mean((eps - eps_theta(z_t, t))^2)",
        "latent_diffusion_loss(unet, vae, x0, t, eps, alphas_cumprod, scaling_factor) -> scalar tensor   "
        "(x0 images (B, C, H, W) in [-1, 1]; t a LongTensor (B,); eps shaped like z_0)", 2),
    "ch04.sample_latents": Exercise(
        4, "sampling in latent space, then decoding", "LDM sec. 3.2 (DDPM Algorithm 2 on z)",
        "z_T ~ N(0, I) brought to the scheduler's starting noise level; on the grid of num_inference_steps "
        "timesteps, one reverse step z_t -> z_(t-1) per timestep, each from the model's noise prediction "
        "eps_theta at the input the scheduler prepares for it; then x = D(z_0 / s), clamped to [-1, 1]",
        "sample_latents(unet, vae, scheduler, z_T, num_inference_steps) -> images in [-1, 1]   "
        "(z_T (B, c, h, w) drawn from N(0, I))", 3),
    "ch04.encode_diffuse_decode": Exercise(
        4, "encode, diffuse part-way, denoise, decode", "SDEdit (Meng et al. 2022) in LDM's latent space",
        "z_0 = s E(x_0) (the posterior's mode); of the S-step grid only the last n = min(floor(S strength), S) "
        "steps run, from grid position t_start = S - n; z_0 is noised to the level of that first step by the "
        "scheduler's forward process with the given eps (no noise when n = 0), the reverse steps of exercise 2 "
        "run from there (the noise level is already right), and x = D(z / s), clamped to [-1, 1]",
        "encode_diffuse_decode(unet, vae, scheduler, x0, strength, eps, num_inference_steps) -> images in [-1, 1]   "
        "(x0 (B, C, H, W) in [-1, 1]; strength in [0, 1]; eps shaped like z_0; S = num_inference_steps)", 3),
})

LABELS.update({
    "missing_scaling": "scaling factor not applied",
    "divided": "divided instead of multiplied",
    "posterior_sample": "a sample of the posterior instead of its mode",
    "noised_image": "the image instead of its latent",
    "no_clamp": "not clamped to [-1, 1]",
    "missing_init_noise_sigma": "z_T not scaled by init_noise_sigma",
    "unscaled_model_input": "scale_model_input skipped",
    "wrong_start": "noised to the wrong timestep",
    "all_timesteps": "the loop runs every timestep",
    "extra_init_sigma": "init_noise_sigma on top of add_noise",
    "wrong_space": "noise added outside the scheduler",
    "no_steps": "strength 0 runs no step",
})


# ============================================================================ chapter 4: tiny models
# The learner's code calls these models, so they use methods and torch only: the grader guards this module's
# private functions whenever the learner's code is on the call stack (sdlearn.course.grader._install_guards).
class _LatentDenoiser(nn.Module):
    """A stand-in for the latent UNet eps_theta(z_t, t) whose output has a formula: the best noise prediction for
    latents z_0 ~ N(0, I), sqrt(1 - alpha_bar_t) z_t, bent by a learnable tanh term so that no slip cancels out.
    Takes fractional timesteps (Euler's grid) and remembers how it was called."""

    def __init__(self, alphas_cumprod: torch.Tensor, dtype: torch.dtype, channels: int = 4):
        super().__init__()
        self.log_alpha_bar = alphas_cumprod.double().log()  # (T,), not a buffer: .to() must not round it
        self.w = nn.Parameter(torch.tensor(0.3, dtype=dtype))
        self.config = types.SimpleNamespace(in_channels=channels, out_channels=channels, sample_size=4)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.w.dtype

    @property
    def device(self) -> torch.device:
        return self.w.device

    def forward(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        c = self.config.in_channels
        if sample.ndim != 4 or sample.shape[1] != c:
            raise ValueError(f"the denoiser takes latents shaped (B, {c}, h, w), got {tuple(sample.shape)}.")
        t = torch.as_tensor(timestep).detach().to(torch.float64).flatten()
        t = t.expand(sample.shape[0]) if t.numel() == 1 else t
        if t.numel() != sample.shape[0]:
            raise ValueError(f"got {t.numel()} timesteps for a batch of {sample.shape[0]}: pass one or one per sample.")
        self.calls.append((sample.detach().clone(), t.clone()))
        pos = t.clamp(0, len(self.log_alpha_bar) - 1)
        low, frac = pos.floor().long(), pos - pos.floor()
        high = (low + 1).clamp(max=len(self.log_alpha_bar) - 1)
        log_ab = (1 - frac) * self.log_alpha_bar[low] + frac * self.log_alpha_bar[high]  # interpolated, (B,)
        ab = log_ab.exp().to(sample.dtype).reshape(-1, 1, 1, 1)
        return (1 - ab).sqrt() * sample + self.w * ab.sqrt() * torch.tanh(sample)


class _RecordingPosterior(DiagonalGaussianDistribution):
    """sdlearn's posterior, noting whether the learner drew a sample from it instead of taking its mode."""

    def __init__(self, parameters: torch.Tensor, used: set):
        super().__init__(parameters)
        self.used = used

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        self.used.add("sample")
        return super().sample(generator)


class _RecordingVAE(AutoencoderKL):
    """sdlearn's AutoencoderKL whose ``encode(x).latent_dist`` records its use (see _RecordingPosterior)."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__(config)
        self.used: set = set()

    def encode(self, x: torch.Tensor):
        out = super().encode(x)
        out.latent_dist = _RecordingPosterior(out.latent_dist.parameters, self.used)
        return out


IMAGE_SHAPE, LATENT_SHAPE = (3, 16, 16), (4, 4, 4)  # the tiny VAE: f = 4, 4 latent channels; batches stay below 4


def _tiny_vae(dtype: torch.dtype, scaling_factor: float) -> _RecordingVAE:
    """A seeded random KL autoencoder (f = 4). Its posterior's log-variances are near 0 (std ~ 1, so a sample lies
    far from the mode), and its output layer is scaled up so that about a fifth of the decoded pixels leave [-1, 1]."""
    config = AutoencoderKLConfig.with_factor(4, channels=8, in_channels=3, out_channels=3, latent_channels=4,
                                             layers_per_block=1, norm_num_groups=4, sample_size=16,
                                             scaling_factor=scaling_factor)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the learner's random state
        torch.manual_seed(0)
        vae = _RecordingVAE(config)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(3.0)
        vae.decoder.conv_out.bias.mul_(3.0)
    return vae.to(dtype).eval()


def _images(batch: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Seeded images (B, 3, 16, 16) in [-1, 1]: smooth colour blobs plus some texture."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((batch, 3, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    fine = torch.rand((batch, *IMAGE_SHAPE), generator=g, dtype=torch.float64) * 2 - 1
    x = 0.7 * nn.functional.interpolate(coarse, scale_factor=4, mode="bilinear", align_corners=False) + 0.3 * fine
    return x.clamp(-1, 1).to(dtype)


def _scheduler(name: str):
    """The test schedulers: deterministic (DDIM with eta = 0, Euler without churn), T = 1000 linear betas."""
    if name == "DDIM":
        return DDIMScheduler(clip_sample=False)
    if name == "DDIM-trailing":
        return DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    if name == "Euler":
        return EulerDiscreteScheduler()
    return EulerDiscreteScheduler(timestep_spacing="leading")


def _scheduler_text(name: str, steps: int) -> str:
    scheduler = _scheduler(name)
    scheduler.set_timesteps(steps)
    kind = type(scheduler).__name__ + f"(timestep_spacing={scheduler.config.timestep_spacing!r})"
    return kind + (f", init_noise_sigma = {scheduler.init_noise_sigma:.4g} and scale_model_input divides by "
                   "sqrt(sigma^2 + 1)" if name.startswith("Euler") else ", eta = 0 (deterministic)")


@torch.no_grad()
def _reverse(unet: nn.Module, scheduler, z: torch.Tensor, timesteps, scale_input: bool = True) -> torch.Tensor:
    """The reverse process over ``timesteps``: z <- scheduler.step(eps_theta(scaled z, t), t, z).prev_sample."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Euler warns when scale_model_input is skipped, as one slip does
        for t in timesteps:
            model_input = scheduler.scale_model_input(z, t) if scale_input else z
            z = scheduler.step(unet(model_input, t), t, z).prev_sample
    return z


@torch.no_grad()
def _decode(vae: AutoencoderKL, z: torch.Tensor, divide_by: float, clamp: bool = True) -> torch.Tensor:
    images = vae.decode(z / divide_by).sample
    return (images.clamp(-1, 1) if clamp else images).double()


def _image_hint(e: Exception) -> tuple[str, str] | None:
    """An exception that shows the image (3 x 16 x 16) meeting a latent-sized tensor (4 x 4 x 4)."""
    text = str(e)
    sizes = re.search(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\)", text)
    image_meets_latent = sizes is not None and {int(sizes[1]), int(sizes[2])} == {IMAGE_SHAPE[-1], LATENT_SHAPE[-1]}
    if image_meets_latent or ("denoiser takes latents" in text and f"{IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}" in text):
        return ("noised_image", "diffusion runs on the latent: encode first, z_0 = scaling_factor * "
                                "vae.encode(x0).latent_dist.mode() (B, 4, h, w), then noise z_0 with eps (shaped like "
                                "z_0) and give the model z_t.")
    return None


POSTERIOR_SAMPLE = ("the latent is the posterior's mode (its mean, latent_dist.mode()), which is deterministic; you drew "
                    "a random sample from it (latent_dist.sample()). LDM trains on the mode as this exercise does, "
                    "and this check's VAE has a posterior standard deviation near 1, so a sample lands far from it.")


# ============================================================================ chapter 4
LOSS_CASES = [("linear-1000", 3, torch.float32, [500, 17, 999], 4.0), ("linear-1000", 1, torch.float64, [250], 2.5),
              ("cosine-50", 2, torch.float32, [0, 49], 4.0), ("linear-20", 2, torch.float64, [19, 0], 0.5)]
CONFIG_SCALING = 1.5  # the loss check's VAE carries this scaling_factor; the loss is given another one


@_register("ch04.latent_diffusion_loss")
def _check_latent_loss(fn) -> None:
    """LDM eq. 2: L = E || eps - eps_theta(z_t, t) ||^2 with z_t from DDPM eq. 4 on z_0 = scaling_factor * E(x)."""
    vaes = {dtype: _tiny_vae(dtype, CONFIG_SCALING) for dtype in (torch.float32, torch.float64)}
    for n, (schedule, batch, dtype, ts, sf) in enumerate(LOSS_CASES):
        _, ab_table = _tables(schedule, dtype)
        vae = vaes[dtype]
        vae.used.clear()
        x0, eps, t = _images(batch, dtype, 360 + n), _randn((batch, *LATENT_SHAPE), dtype, 370 + n), torch.tensor(ts)
        unet = _LatentDenoiser(ab_table, dtype)
        case = _Case("ch04.latent_diffusion_loss", _describe(dtype, x0=x0, t=t, eps=eps)
                     + f", schedule {schedule}, scaling_factor = {sf}, a tiny VAE (f = 4) and a test model", _image_hint)
        args = (unet, vae, x0.clone(), t.clone(), eps.clone(), ab_table.clone(), sf)
        got = _call(case, fn, *args)
        _unchanged(case, x0=(args[2], x0), eps=(args[4], eps))

        with torch.no_grad():
            mode = vae.encode(x0).latent_dist.mode().double()  # in the learner's dtype, then float64
        ref = _LatentDenoiser(ab_table, torch.float64)
        e = eps.double()

        def z_t_of(z0, ab, signal_pow=0.5, noise_pow=0.5):
            return ab**signal_pow * z0 + (1 - ab) ** noise_pow * e

        def loss(z_in, target=e, reduce="mean", power=2):
            err = (target - ref(z_in, t).detach()).abs() ** power
            return err.mean() if reduce == "mean" else err.sum()

        ab = _at(ab_table, t, 4)
        z0 = sf * mode
        z_t = z_t_of(z0, ab)
        want = loss(z_t)
        if not isinstance(got, torch.Tensor):
            raise case.fail(f"the loss should be a tensor, got {type(got).__name__}. Keep it a tensor (no .item()) so "
                            "that loss.backward() can train the model.")
        if got.ndim != 0:
            raise case.fail(f"the loss has shape {tuple(got.shape)}; it should be one number (a 0-dim tensor). "
                            "Average over every element with .mean().")
        if not unet.calls:
            raise case.fail("the model was never called: eps_theta(z_t, t) is what the loss trains.")
        seen_z, seen_t = unet.calls[-1]
        if seen_z.shape == z0.shape and _close(seen_z, z0, dtype) and not _close(z0, z_t, dtype):
            raise case.fail("the loss differs from the equation.", (
                "model_input", "the model was given z_0; it must see the noisy z_t = sqrt(alpha_bar_t) z_0 + "
                               "sqrt(1 - alpha_bar_t) eps (DDPM eq. 4)."))
        if seen_t.numel() != t.numel() or not torch.equal(seen_t.reshape(-1), t.double()):
            raise case.fail(f"the model was called with timesteps {seen_t.reshape(-1).tolist()}; pass the same t "
                            f"({t.tolist()}) that chose alpha_bar_t.")
        got = _expect_tensor(case, got, want, dtype, "the loss")
        if not _close(got, want, dtype) and "sample" in vae.used:
            raise case.fail("the loss differs from the equation.", ("posterior_sample", POSTERIOR_SAMPLE))
        _diagnose(case, got, want, dtype, {
            "no_scale": ("missing_scaling", loss(z_t_of(mode, ab)),
                         "z_0 = scaling_factor * the encoder's latent: the noise schedule assumes data of about unit "
                         "standard deviation, which the raw latents are not (LDM sec. 4.3.2)."),
            "divided": ("divided", loss(z_t_of(mode / sf, ab)),
                        "the latent is multiplied by scaling_factor (1 / std of the latents) to bring it to unit "
                        "standard deviation; dividing is what decoding does."),
            "config": ("ignored_argument", loss(z_t_of(CONFIG_SCALING * mode, ab)),
                       "use the scaling_factor you are given; you used vae.config.scaling_factor."),
            "minus": ("off_by_one", loss(z_t_of(z0, _at(ab_table, t - 1, 4))), OFF_BY_ONE_MINUS),
            "plus": ("off_by_one", loss(z_t_of(z0, _at(ab_table, t + 1, 4))), OFF_BY_ONE_PLUS),
            "no_sqrt_signal": ("missing_sqrt", loss(z_t_of(z0, ab, signal_pow=1.0)),
                               "in z_t, z_0 is scaled by alpha_bar_t; its coefficient is sqrt(alpha_bar_t) (DDPM eq. 4)."),
            "var_noise": ("variance_for_std", loss(z_t_of(z0, ab, noise_pow=1.0)),
                          "in z_t the noise is scaled by its variance 1 - alpha_bar_t; use the standard deviation "
                          "sqrt(1 - alpha_bar_t)."),
            "target_z0": ("wrong_target", loss(z_t, target=z0),
                          "the target is the noise eps, not z_0: the model learns to predict the noise that was added."),
            "sum": ("sum_for_mean", loss(z_t, reduce="sum"), "you sum the squared errors; L_simple takes their mean."),
            "l1": ("not_squared_error", loss(z_t, power=1), "the error is squared in L_simple (the absolute error is L1)."),
        }, what="the loss")
        if not got.requires_grad:
            raise case.fail("the loss carries no gradient: did you call .item() or .detach(), or compute the model's "
                            "prediction under torch.no_grad()? Training calls loss.backward() on it. (Encoding under "
                            "torch.no_grad() is fine: the VAE is frozen.)")


SAMPLING_CASES = [("DDIM", 2, torch.float32, 4), ("DDIM-trailing", 1, torch.float64, 3), ("Euler", 3, torch.float32, 4),
                  ("Euler-leading", 2, torch.float64, 5)]
SAMPLING_SCALING = 4.0  # the sampling checks' VAE: its latents' std is about 1 / 4, so scaled latents are about N(0, I)
STALE_STEPS = 2  # the scheduler arrives set to this many steps: the function must call set_timesteps itself


@_register("ch04.sample_latents")
def _check_sample_latents(fn) -> None:
    """LDM sec. 3.2: the reverse process of DDPM (Algorithm 2) run on latents from z_T ~ N(0, I), then x = D(z_0 / s)."""
    vaes = {dtype: _tiny_vae(dtype, SAMPLING_SCALING) for dtype in (torch.float32, torch.float64)}
    for n, (name, batch, dtype, S) in enumerate(SAMPLING_CASES):
        vae, sf = vaes[dtype], SAMPLING_SCALING
        scheduler = _scheduler(name)
        scheduler.set_timesteps(STALE_STEPS)
        unet, ref = _LatentDenoiser(scheduler.alphas_cumprod, dtype), _LatentDenoiser(scheduler.alphas_cumprod, dtype)
        z_T = _randn((batch, *LATENT_SHAPE), dtype, 380 + n)
        case = _Case("ch04.sample_latents", _describe(dtype, z_T=z_T, num_inference_steps=S)
                     + f", {_scheduler_text(name, S)}, a tiny VAE (scaling_factor = {sf}) and a test model", _image_hint)
        args = (unet, vae, scheduler, z_T.clone(), S)
        got = _call(case, fn, *args)
        stale = len(scheduler.timesteps) == STALE_STEPS != S  # seen, not guessed: set_timesteps was not called
        _unchanged(case, z_T=(args[3], z_T))

        def run(steps=S, init_sigma=True, scale_input=True, divide_by=sf, clamp=True):
            s = _scheduler(name)
            s.set_timesteps(steps)
            z = z_T * s.init_noise_sigma if init_sigma else z_T
            return _decode(vae, _reverse(ref, s, z, s.timesteps, scale_input), divide_by, clamp)

        want = run()
        got = _expect_tensor(case, got, want, dtype, "the image batch", shape_hint=(
            "Return images (B, 3, H, W): decode the final latents with vae.decode(...).sample."))
        # Euler's step computes in float32 whatever the dtype: compare at float32's tolerance there
        precision = torch.float32 if name.startswith("Euler") else dtype
        _diagnose(case, got.detach(), want, precision, {
            "no_unscale": ("missing_scaling", run(divide_by=1.0),
                           "the model works on scaled latents z_0 = scaling_factor * z; the decoder takes unscaled "
                           "ones: decode z / vae.config.scaling_factor."),
            "multiplied": ("multiplied", run(divide_by=1 / sf),
                           "undo the scaling before decoding: z / vae.config.scaling_factor, not z * scaling_factor."),
            "init": ("missing_init_noise_sigma", run(init_sigma=False),
                     "the loop starts from z_T * scheduler.init_noise_sigma: Euler-type schedulers work in sigma "
                     "space, where the starting noise has standard deviation about sigma_max, not 1 (DDIM's is 1.0)."),
            "scale_input": ("unscaled_model_input", run(scale_input=False),
                            "give the model scheduler.scale_model_input(z, t): an Euler scheduler's z is in sigma space "
                            "(z_0 + sigma eps), and the model was trained on z_t = z / sqrt(sigma^2 + 1)."),
            "no_clamp": ("no_clamp", run(clamp=False),
                         "decoded images can leave [-1, 1] (this check's decoder overshoots on purpose); clamp them to "
                         "the range of the data, as the pipeline does."),
            "stale_grid": ("ignored_argument", run(steps=STALE_STEPS) if stale else None,
                           f"the loop ran the {STALE_STEPS} steps the scheduler was last set to: call "
                           "scheduler.set_timesteps(num_inference_steps) first."),
        }, what="the image batch")


IMG2IMG_CASES = [("DDIM", 2, torch.float32, 4, 0.5), ("DDIM", 1, torch.float64, 5, 1.0),
                 ("Euler", 3, torch.float32, 4, 0.7), ("Euler-leading", 2, torch.float64, 4, 0.75),
                 ("DDIM-trailing", 2, torch.float32, 4, 0.0)]


@_register("ch04.encode_diffuse_decode")
def _check_encode_diffuse_decode(fn) -> None:
    """SDEdit (Meng et al. 2022) in latent space: z_0 = s E(x), noise it to the step that strength picks (DDPM eq. 4),
    run the rest of the reverse process, decode D(z / s). diffusers' img2img convention for the steps."""
    vaes = {dtype: _tiny_vae(dtype, SAMPLING_SCALING) for dtype in (torch.float32, torch.float64)}
    for n, (name, batch, dtype, S, strength) in enumerate(IMG2IMG_CASES):
        vae, sf = vaes[dtype], SAMPLING_SCALING
        vae.used.clear()
        scheduler = _scheduler(name)
        scheduler.set_timesteps(STALE_STEPS)
        unet, ref = _LatentDenoiser(scheduler.alphas_cumprod, dtype), _LatentDenoiser(scheduler.alphas_cumprod, dtype)
        x0, eps = _images(batch, dtype, 390 + n), _randn((batch, *LATENT_SHAPE), dtype, 400 + n)
        steps_run = min(int(S * strength), S)

        def hint(e: Exception, steps_run=steps_run):
            if steps_run == 0 and (isinstance(e, IndexError) or "got 0 timesteps" in str(e)):
                return ("no_steps", "with this strength n = int(S * strength) = 0 steps run: t_start = S is past the "
                                    "end of the grid and there is no timestep to noise to. Add no noise and run no "
                                    "step: decode z_0 itself (the VAE's reconstruction).")
            return _image_hint(e)

        case = _Case("ch04.encode_diffuse_decode", _describe(dtype, x0=x0, strength=strength, num_inference_steps=S)
                     + f" (so {steps_run} steps run), {_scheduler_text(name, S)}, a tiny VAE (scaling_factor = {sf}) "
                       "and a test model", hint)
        args = (unet, vae, scheduler, x0.clone(), strength, eps.clone(), S)
        got = _call(case, fn, *args)
        stale = len(scheduler.timesteps) == STALE_STEPS != S  # seen, not guessed: set_timesteps was not called
        _unchanged(case, x0=(args[3], x0), eps=(args[5], eps))
        with torch.no_grad():
            mode = vae.encode(x0).latent_dist.mode()

        def run(steps=S, count=None, noise_at=None, loop_from=None, encode_scale=sf, divide_by=sf, init_sigma=False,
                ddpm_noise=False, clamp=True):
            s = _scheduler(name)
            s.set_timesteps(steps)
            count = min(int(steps * strength), steps) if count is None else count
            start = steps - count  # t_start
            noise_at, loop_from = start if noise_at is None else noise_at, start if loop_from is None else loop_from
            z = encode_scale * mode
            if noise_at < steps:
                t_noise = s.timesteps[noise_at:noise_at + 1]
                if ddpm_noise:  # DDPM eq. 4 with the scheduler's alpha_bar, whatever space the scheduler works in
                    ab = s.alphas_cumprod[t_noise.long()].to(dtype)
                    z = ab.sqrt() * z + (1 - ab).sqrt() * eps
                else:
                    z = s.add_noise(z, eps, t_noise)
                z = z * s.init_noise_sigma if init_sigma else z
            return _decode(vae, _reverse(ref, s, z, s.timesteps[loop_from:]), divide_by, clamp)

        want = run()
        got = _expect_tensor(case, got, want, dtype, "the image batch", shape_hint=(
            "Return images shaped like x0: decode the final latents with vae.decode(...).sample."))
        precision = torch.float32 if name.startswith("Euler") else dtype
        if not _close(got.detach(), want, precision) and "sample" in vae.used:
            raise case.fail("the image batch differs from the equation.", ("posterior_sample", POSTERIOR_SAMPLE))
        _diagnose(case, got.detach(), want, precision, {
            "first": ("wrong_start", run(noise_at=0),
                      "z_0 is noised to the first timestep that runs, timesteps[t_start] with t_start = S - n; you "
                      "noised it to scheduler.timesteps[0], the noisiest, whatever the strength."),
            "count_as_start": ("wrong_start", run(count=S - steps_run),
                               "strength is the fraction of the steps that run: n = int(S * strength) steps, the LAST n "
                               "of the grid, so t_start = S - n (strength 1: all of them, from the noisiest)."),
            "ignored": ("wrong_start", run(noise_at=0, loop_from=0),
                        "strength is ignored: noising to timesteps[0] and running every step makes a new image, "
                        "not an edit of x0. Run the last n = int(S * strength) steps only."),
            "all": ("all_timesteps", run(loop_from=0),
                    "the loop runs only the n steps that follow the noise level: for t in scheduler.timesteps[t_start:]."),
            "start_plus_one": ("off_by_one", run(count=steps_run - 1) if steps_run >= 1 else None,
                               "the last n steps of the grid start at position t_start = S - n; starting at S - n + 1 "
                               "runs one step fewer and noises z_0 one step too little."),
            "rounded": ("off_by_one", run(count=min(round(S * strength), S)),
                        "n = int(S * strength) truncates (diffusers' img2img convention); you rounded."),
            "no_scaling": ("missing_scaling", run(encode_scale=1.0, divide_by=1.0),
                           "z_0 = vae.config.scaling_factor * the encoder's latent, and the decoder takes "
                           "z / vae.config.scaling_factor: the model works on scaled latents."),
            "no_encode_scaling": ("missing_scaling", run(encode_scale=1.0),
                                  "z_0 = vae.config.scaling_factor * vae.encode(x0).latent_dist.mode(): scale the "
                                  "latent before noising it."),
            "no_decode_scaling": ("missing_scaling", run(divide_by=1.0),
                                  "decode z / vae.config.scaling_factor: the decoder takes unscaled latents."),
            "multiplied": ("multiplied", run(divide_by=1 / sf),
                           "undo the scaling before decoding: z / vae.config.scaling_factor, not z * scaling_factor."),
            "init_sigma": ("extra_init_sigma", run(init_sigma=True),
                           "scheduler.add_noise already puts z at the noise level of timesteps[t_start]; "
                           "init_noise_sigma is only for starting from pure noise z_T."),
            "ddpm_noise": ("wrong_space", run(ddpm_noise=True),
                           "noise with scheduler.add_noise(z_0, eps, t): an Euler scheduler works in sigma space "
                           "(z_0 + sigma eps), not DDPM's sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps."),
            "no_clamp": ("no_clamp", run(clamp=False),
                         "decoded images can leave [-1, 1] (this check's decoder overshoots on purpose); clamp them."),
            "stale_grid": ("ignored_argument", run(steps=STALE_STEPS) if stale else None,
                           f"the scheduler still had the {STALE_STEPS}-step grid it was last set to: call "
                           "scheduler.set_timesteps(num_inference_steps) first."),
        }, what="the image batch")
