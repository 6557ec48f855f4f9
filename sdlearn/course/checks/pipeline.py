"""Checks for chapter 7: the pieces of the Stable Diffusion pipelines (Meng et al. 2022; Avrahami et al. 2023).

img2img's start on the inference grid from ``strength`` (SDEdit, Meng et al. 2022, in diffusers' convention), one
step of blended inpainting (Avrahami et al. 2023, Blended Latent Diffusion: after each step the known region is put
back, noised to the next step's level), and the safety checker's rule (cosines of a CLIP image embedding with concept
embeddings against thresholds, with the released checker's "special care" adjustment). The checks hand the learner's
function a stand-in scheduler (its grid and order) or sdlearn's deterministic DDIM scheduler; the references are
computed here from the formulas.
"""

from __future__ import annotations

import math

import torch

from ...schedulers import DDIMScheduler
from .core import (
    EXERCISES,
    LABELS,
    Exercise,
    _call,
    _Case,
    _describe,
    _diagnose,
    _expect_tensor,
    _randn,
    _register,
    _unchanged,
)

EXERCISES.update({
    "ch07.img2img_start": Exercise(
        7, "img2img's first step from strength", "SDEdit (Meng et al. 2022), diffusers' img2img convention",
        "of a grid of S inference steps, the last init_timestep = min(floor(S strength), S) run: t_start = "
        "max(S - init_timestep, 0), and the timesteps to run are the grid's entries from position t_start times the "
        "scheduler's order (1, or 2 for a second-order scheduler that lists each timestep twice) to the end",
        "img2img_timesteps(scheduler, num_inference_steps, strength) -> (timesteps, t_start)   (scheduler already "
        "set to num_inference_steps: its timesteps and order; strength in (0, 1]; t_start an int)", 2),
    "ch07.blended_inpaint_step": Exercise(
        7, "one step of blended inpainting", "Avrahami et al. 2023 (Blended Latent Diffusion), Algorithm 1",
        "z_prev = the scheduler's step from z_t with the model's eps; known = sqrt(alpha_bar_prev) z_known + "
        "sqrt(1 - alpha_bar_prev) noise, the known latents noised to the NEXT step's level t_prev (at the last step, "
        "with no t_prev, the clean z_known); result = m z_prev + (1 - m) known, with m = 1 where the image is repainted",
        "blended_inpaint_step(scheduler, eps, t, latents, known_latents, noise, mask, t_prev) -> latents   "
        "(a DDIM scheduler already set; latents, known_latents, noise (B, 4, h, w); mask (B or 1, 1, h, w), 1 = "
        "repaint; t, t_prev ints, t_prev None at the last step)", 2),
    "ch07.safety_cosine": Exercise(
        7, "the safety checker's rule", "Rombach et al. 2022's released safety checker (diffusers' rule)",
        "cos(e, c) = <e / ||e||, c / ||c||>; adjustment = 0.01 for an image whose cosine with some special-care "
        "concept exceeds that concept's threshold (else 0); score_k = cos(e, c_k) - threshold_k + adjustment; "
        "an image is flagged when some score_k > 0 (scores rounded to 3 decimals, as the released checker does, "
        "are accepted)",
        "safety_check(image_embeds, concept_embeds, concept_thresholds, special_care_embeds, special_care_thresholds) "
        "-> (scores, flagged)   (image_embeds (B, d); concept_embeds (K, d) and thresholds (K,); special-care "
        "embeds (S, d) and thresholds (S,); scores (B, K); flagged a bool tensor (B,))", 2),
})

LABELS.update({
    "strength_inverted": "strength inverted",
    "rounded": "rounded instead of truncated",
    "order_ignored": "the scheduler's order ignored",
    "wrong_end": "the first steps instead of the last",
    "mask_inverted": "mask inverted",
    "wrong_noise_level": "known latents noised to the wrong step",
    "known_not_noised": "known latents not noised",
    "noise_at_last_step": "noise on the last step",
    "blend_before_step": "blended before the step",
    "missing_blend": "the known region is not put back",
    "comparison": "> and >= confused",
    "any_for_all": "all instead of any",
    "special_flags": "special-care concepts flag on their own",
    "adjustment": "the special-care adjustment is wrong",
    "threshold_sign": "the threshold's sign flipped",
})


# ============================================================================ img2img's start
class _Grid:
    """A stand-in scheduler: the grid of timesteps set_timesteps gave, and the order (2: each timestep after the
    first listed twice, as diffusers' Heun scheduler does). Records set_begin_index, which is allowed."""

    def __init__(self, steps: int, order: int):
        base = torch.arange(steps - 1, -1, -1) * (1000 // steps) + 1  # leading spacing, steps_offset 1 (descending)
        self.timesteps = base if order == 1 else torch.cat([base[:1], base[1:].repeat_interleave(2)])
        self.order = order
        self.begin_index = None

    def set_begin_index(self, begin_index: int) -> None:
        self.begin_index = begin_index


# (num_inference_steps, strength, order): none leaves zero steps; int, round and ceil differ on several
START_CASES = [(50, 0.8, 1), (10, 0.75, 1), (4, 1.0, 1), (7, 0.3, 1), (3, 0.5, 1), (10, 0.35, 2), (20, 0.55, 1),
               (6, 0.5, 2)]


@_register("ch07.img2img_start")
def _check_img2img_start(fn) -> None:
    """SDEdit's start in diffusers' img2img: run the last int(S strength) steps of the grid, from t_start = S - that."""
    for S, strength, order in START_CASES:
        case = _Case("ch07.img2img_start", f"num_inference_steps = {S}, strength = {strength}, a scheduler of order "
                                           f"{order} whose grid has {len(_Grid(S, order).timesteps)} entries")
        scheduler = _Grid(S, order)
        grid = scheduler.timesteps.clone()
        got = _call(case, fn, scheduler, S, strength)
        _unchanged(case, timesteps=(scheduler.timesteps, grid))

        def start(count=None, order_=order, shift=0, first=False):
            count = min(int(S * strength), S) if count is None else count
            t_start = max(S - count, 0) + shift
            return (grid[:count * order_] if first else grid[t_start * order_:]), t_start

        want, want_start = start()
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise case.fail(f"return the pair (timesteps, t_start); got {type(got).__name__}.")
        timesteps, t_start = got
        if isinstance(t_start, torch.Tensor) and t_start.numel() == 1:
            t_start = int(t_start)
        if not isinstance(timesteps, torch.Tensor):
            raise case.fail(f"timesteps should be a tensor (part of scheduler.timesteps), got {type(timesteps).__name__}.")
        wrong = {
            "inverted": ("strength_inverted", start(count=min(int(S * (1 - strength)), S)),
                         "strength is the share of the steps that RUN (1: all of them, from pure noise; near 0: "
                         "almost none, the image barely changes): init_timestep = int(S * strength). You used "
                         "1 - strength."),
            "ceil": ("rounded", start(count=min(math.ceil(S * strength), S)),
                     "init_timestep = int(S * strength) truncates; you rounded up."),
            "round": ("rounded", start(count=min(round(S * strength), S)),
                      "init_timestep = int(S * strength) truncates; you rounded to the nearest integer."),
            "plus": ("off_by_one", start(shift=1), "t_start = S - init_timestep exactly; you started one step later."),
            "minus": ("off_by_one", start(shift=-1) if int(S * strength) < S else (None, None),
                      "t_start = S - init_timestep exactly; you started one step earlier."),
            "order": ("order_ignored", start(order_=1) if order > 1 else (None, None),
                      "the grid of a second-order scheduler lists its timesteps twice: start at position "
                      "t_start * scheduler.order."),
            "first": ("wrong_end", start(first=True),
                      "the steps that run are the LAST init_timestep of the grid (the least noisy): the image is "
                      "noised part-way and denoised from there, not from the noisiest step."),
        }
        if not torch.equal(torch.as_tensor(timesteps).long(), want) or timesteps.shape != want.shape:
            for key, (ts, _), detail in wrong.values():
                if ts is not None and not torch.equal(ts, want) and timesteps.shape == ts.shape \
                        and torch.equal(timesteps.long(), ts):
                    raise case.fail(f"you return {len(timesteps)} timesteps; {len(want)} should run.", (key, detail))
            raise case.fail(f"you return {len(timesteps)} timesteps {timesteps.tolist()[:8]}; the expected "
                            f"{len(want)} are {want.tolist()[:8]}" + (" ..." if len(want) > 8 else "")
                            + ". Compare each step of your code with the expected formula above.")
        if not isinstance(t_start, int) or t_start != want_start:
            raise case.fail(f"the timesteps are right but t_start is {t_start!r}; it should be {want_start} (the "
                            "position in the grid of S steps, before multiplying by the order).")


# ============================================================================ blended inpainting
# (steps, spacing, index i of t in the grid, batch, dtype, one mask for the whole batch)
BLEND_CASES = [(10, "leading", 3, 2, torch.float32, False), (10, "leading", 9, 1, torch.float64, False),
               (5, "leading", 0, 3, torch.float32, True), (20, "trailing", 10, 2, torch.float64, False),
               (4, "trailing", 3, 2, torch.float32, True)]


def _masks(batch: int, shared: bool, dtype: torch.dtype) -> torch.Tensor:
    """(B or 1, 1, 8, 8): 1 inside a rectangle (a different one per sample), 0 elsewhere."""
    m = torch.zeros(1 if shared else batch, 1, 8, 8, dtype=dtype)
    for b in range(m.shape[0]):
        m[b, :, 1 + b:5 + b, 2:6 + b] = 1
    return m


def _blend_hint(e: Exception) -> tuple[str, str] | None:
    if isinstance(e, (TypeError, ValueError)) and "None" in str(e):
        return ("noise_at_last_step", "at the last step t_prev is None: there is no noise level below it, so the "
                                      "known region is the clean known_latents (no noise).")
    return None


@_register("ch07.blended_inpaint_step")
def _check_blended_inpaint_step(fn) -> None:
    """Blended Latent Diffusion: step, then m z_prev + (1 - m) (known latents noised to t_prev), 1 = repaint."""
    for n, (S, spacing, i, B, dtype, shared) in enumerate(BLEND_CASES):
        scheduler = DDIMScheduler(clip_sample=False, timestep_spacing=spacing)
        scheduler.set_timesteps(S)
        t = int(scheduler.timesteps[i])
        t_prev = int(scheduler.timesteps[i + 1]) if i + 1 < S else None
        shape = (B, 4, 8, 8)
        eps, z_t, known, noise = (_randn(shape, dtype, 600 + 10 * n + k) for k in range(4))
        mask = _masks(B, shared, dtype)
        case = _Case("ch07.blended_inpaint_step", _describe(dtype, latents=z_t, mask=mask) + f", DDIM ({spacing}, "
                     f"{S} steps), t = {t}, t_prev = {t_prev}" + (" (the last step)" if t_prev is None else ""), _blend_hint)
        args = (scheduler, eps.clone(), t, z_t.clone(), known.clone(), noise.clone(), mask.clone(), t_prev)
        got = _call(case, fn, *args)
        _unchanged(case, eps=(args[1], eps), latents=(args[3], z_t), known_latents=(args[4], known),
                   noise=(args[5], noise), mask=(args[6], mask))

        def stepped(z):
            s = DDIMScheduler(clip_sample=False, timestep_spacing=spacing)
            s.set_timesteps(S)
            return s.step(eps, t, z).prev_sample.double()

        def noised(level):  # DDPM eq. 4 with the scheduler's alpha_bar; None: the clean latents
            if level is None:
                return known.double()
            ab = scheduler.alphas_cumprod.double()[level]
            return ab.sqrt() * known.double() + (1 - ab).sqrt() * noise.double()

        m = mask.double()
        z_prev = stepped(z_t)
        want = m * z_prev + (1 - m) * noised(t_prev)
        before = (m * z_t.double() + (1 - m) * noised(t)).to(dtype)
        got = _expect_tensor(case, got, want, dtype, "the latents")
        _diagnose(case, got.detach(), want, dtype, {
            "inverted": ("mask_inverted", (1 - m) * z_prev + m * noised(t_prev),
                         "mask = 1 marks the region to repaint (white in the mask image, diffusers' convention): "
                         "keep the model's latents where mask = 1 and the known image's where mask = 0."),
            "at_t": ("wrong_noise_level", m * z_prev + (1 - m) * noised(t) if t_prev is not None else None,
                     "after the step the latents are at the level of t_prev, so the known latents are noised to t_prev "
                     "(the next step's timestep), not to t."),
            "clean": ("known_not_noised", m * z_prev + (1 - m) * known.double() if t_prev is not None else None,
                      "the known region must carry the same noise level as the rest: noise known_latents to t_prev "
                      "with the given noise (the scheduler's add_noise); only the last step uses them clean."),
            "last": ("noise_at_last_step", m * z_prev + (1 - m) * noised(0) if t_prev is None else None,
                     "at the last step (t_prev is None) the known region is the clean known_latents: no noise."),
            "before": ("blend_before_step", stepped(before),
                       "step first, then blend: the scheduler's step gives z at t_prev, and the known latents noised "
                       "to t_prev are put back into it."),
            "no_blend": ("missing_blend", z_prev,
                         "after the step, put the known region back: mask * latents + (1 - mask) * known."),
            "no_step": ("missing_blend", m * z_t.double() + (1 - m) * noised(t_prev),
                        "first take the scheduler's step from latents with eps (to t_prev), then blend its result."),
        }, what="the latents")


# ============================================================================ the safety checker
def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _safety_case(n: int, dtype: torch.dtype):
    """(image_embeds, concept_embeds, thresholds, special_embeds, special_thresholds) built so that every score is at
    least 0.002 from 0 (case 0: one score exactly 0, to tell > from >=), some images show one concept of several,
    some trip a special-care concept only."""
    if n == 0:  # exact cosines: disjoint supports give 0, a multiple gives 1
        image = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 10.0, 24.0], [6.0, 0.0, 2.0, 0.0]], dtype=dtype)
        concepts = torch.tensor([[0.0, 0.0, 5.0, 12.0], [0.0, 2.0, 0.0, 0.0]], dtype=dtype)
        special = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype)
        return image, concepts, torch.tensor([0.0, 0.9], dtype=dtype), special, torch.tensor([0.96], dtype=dtype)
    d, K, S, B = 8, 3, 2, 6
    directions = _unit(_randn((K + S, d), torch.float64, 640 + n))
    weights = torch.tensor([[1.0, 0, 0, 0, 0], [0.6, 0.8, 0, 0, 0], [0.2, 0, 0, 1.0, 0], [0, 0, 0.7, 0, 0.7],
                            [0, 0.9, 0, 0, 0.45], [0.3, 0.3, 0.3, 0.1, 0.1]], dtype=torch.float64)
    image = (weights @ directions + 0.15 * _randn((B, d), torch.float64, 650 + n)) * (2.5 + n)
    thresholds = torch.tensor([0.55, 0.62, 0.5], dtype=torch.float64)
    special_thresholds = torch.tensor([0.6, 0.5], dtype=torch.float64)
    return (image.to(dtype), (directions[:K] * 3.0).to(dtype), thresholds.to(dtype), (directions[K:] * 0.5).to(dtype),
            special_thresholds.to(dtype))


def _safety_reference(image, concepts, thresholds, special, special_thresholds, normalise=True, sign=-1,
                      adjustment=0.01, adjust_all=False):
    """(scores (B, K), special fired (B,)) in float64."""
    def cos(a, b):
        a, b = a.double(), b.double()
        return _unit(a) @ _unit(b).T if normalise else a @ b.T

    fired = ((cos(image, special) - special_thresholds.double()) > 0).any(dim=1)  # (B,)
    adjust = torch.full_like(fired, True) if adjust_all else fired
    return cos(image, concepts) + sign * thresholds.double() + adjustment * adjust.double().view(-1, 1), fired


@_register("ch07.safety_cosine")
def _check_safety(fn) -> None:
    """The released safety checker's rule: cosine to each concept minus its threshold (+ 0.01 after a special-care
    concept), flagged when any score is above 0."""
    for n, dtype in enumerate([torch.float32, torch.float64, torch.float32]):
        inputs = _safety_case(n, dtype)
        names = ("image_embeds", "concept_embeds", "concept_thresholds", "special_care_embeds", "special_care_thresholds")
        case = _Case("ch07.safety_cosine", _describe(dtype, image_embeds=inputs[0], concept_embeds=inputs[1],
                                                     special_care_embeds=inputs[3])
                     + (" (one cosine is exactly equal to its threshold)" if n == 0 else ""))
        args = tuple(x.clone() for x in inputs)
        got = _call(case, fn, *args)
        _unchanged(case, **{name: (a, x) for name, a, x in zip(names, args, inputs)})
        want, fired = _safety_reference(*inputs)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise case.fail(f"return the pair (scores, flagged); got {type(got).__name__}.")
        scores, flagged = got
        scores = _expect_tensor(case, scores, want, dtype, "scores", shape_hint="One score per image and concept.")
        _diagnose(case, scores.detach(), want, dtype, {
            "no_norm": ("no_normalisation", _safety_reference(*inputs, normalise=False)[0],
                        "the rule compares cosines: divide each embedding by its norm before the dot product."),
            "plus": ("threshold_sign", _safety_reference(*inputs, sign=1)[0],
                     "score = cos - threshold (+ adjustment): the threshold is subtracted."),
            "reversed": ("threshold_sign", -_safety_reference(*inputs, adjustment=-0.01)[0],
                         "score = cos - threshold (+ adjustment), positive when the cosine is above the threshold; "
                         "you computed threshold - cos."),
            "no_adjust": ("adjustment", _safety_reference(*inputs, adjustment=0.0)[0],
                          "when a special-care concept fires for an image (its cos - threshold > 0), add 0.01 to that "
                          "image's scores: the checker becomes stricter about the other concepts."),
            "minus": ("adjustment", _safety_reference(*inputs, adjustment=-0.01)[0],
                      "the adjustment makes the checker stricter: it is ADDED to the scores (+0.01)."),
            "all": ("adjustment", _safety_reference(*inputs, adjust_all=True)[0],
                    "the 0.01 adjustment is for the images whose special-care cosines exceed a threshold, image by "
                    "image, not for every image."),
        }, what="scores", atol=6e-4)
        flagged = torch.as_tensor(flagged) if isinstance(flagged, (list, tuple)) else flagged
        if not isinstance(flagged, torch.Tensor) or flagged.dtype != torch.bool or flagged.shape != (len(want),):
            raise case.fail(f"flagged should be a bool tensor of shape ({len(want)},), one verdict per image; got "
                            f"{type(flagged).__name__}" + (f" {flagged.dtype} {tuple(flagged.shape)}"
                                                            if isinstance(flagged, torch.Tensor) else "") + ".")
        verdicts = {
            "ge": ("comparison", (want >= 0).any(dim=1),
                   "an image is flagged when a score is strictly above 0 (score > 0); a cosine exactly at its "
                   "threshold is not flagged."),
            "all": ("any_for_all", (want > 0).all(dim=1),
                    "one concept is enough: flag an image when ANY of its scores is above 0, not all of them."),
            "special": ("special_flags", (want > 0).any(dim=1) | fired,
                        "special-care concepts only make the checker stricter (the +0.01); they do not flag an "
                        "image themselves."),
        }
        _diagnose(case, flagged.double(), (want > 0).any(dim=1).double(), torch.float64,
                  {k: (m, v.double(), t) for k, (m, v, t) in verdicts.items()}, what="flagged", atol=0.0)
