"""Chapter 7's checks (sdlearn.course.checks.pipeline): correct answers pass in float32 and float64, each planted
mistake is caught and named, and sdlearn's own img2img start, inpainting blend and safety rule agree with the checks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdlearn.course import checks as grading
from sdlearn.course.checks import EXERCISES, check, run_check
from sdlearn.course.checks import pipeline as ch07

from course.check_harness import harness_tests  # tests/course/check_harness.py


# ---------------------------------------------------------------------------- implementations with knobs
def make_img2img_timesteps(count="int", inverted=False, shift=0, use_order=True, first=False):
    def img2img_timesteps(scheduler, num_inference_steps, strength):
        S = num_inference_steps
        share = 1 - strength if inverted else strength
        init_timestep = min({"int": int, "ceil": math.ceil, "round": round}[count](S * share), S)
        t_start = max(S - init_timestep, 0) + shift
        order = scheduler.order if use_order else 1
        if first:
            return scheduler.timesteps[:init_timestep * order], t_start
        return scheduler.timesteps[t_start * order:], t_start
    return img2img_timesteps


def make_blended_inpaint_step(mask_inverted=False, level="t_prev", last="clean", order="step_then_blend", blend=True):
    def blended_inpaint_step(scheduler, eps, t, latents, known_latents, noise, mask, t_prev):
        def noised(timestep):
            return scheduler.add_noise(known_latents, noise, torch.tensor([timestep]))

        if order == "blend_then_step":
            latents = mask * latents + (1 - mask) * noised(t)
            return scheduler.step(eps, t, latents).prev_sample
        z = scheduler.step(eps, t, latents).prev_sample
        if not blend:
            return z
        if t_prev is None:
            known = known_latents if last == "clean" else noised(0)
        else:
            known = {"t_prev": lambda: noised(t_prev), "t": lambda: noised(t), "clean": lambda: known_latents}[level]()
        m = 1 - mask if mask_inverted else mask
        return m * z + (1 - m) * known
    return blended_inpaint_step


def make_safety_check(normalise=True, threshold_sign=-1, adjustment=0.01, compare="gt", reduce="any",
                      special_flags=False, rounded=False):
    def safety_check(image_embeds, concept_embeds, concept_thresholds, special_care_embeds, special_care_thresholds):
        def cos(a, b):
            return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T if normalise else a @ b.T

        special = cos(image_embeds, special_care_embeds) - special_care_thresholds  # (B, S)
        fired = (special > 0).any(dim=1)  # (B,)
        scores = cos(image_embeds, concept_embeds) + threshold_sign * concept_thresholds \
            + adjustment * fired.to(image_embeds.dtype)[:, None]
        if rounded:
            scores = torch.round(scores, decimals=3)
        hits = scores > 0 if compare == "gt" else scores >= 0
        flagged = hits.any(dim=1) if reduce == "any" else hits.all(dim=1)
        return scores, flagged | fired if special_flags else flagged
    return safety_check


CORRECT = {
    "ch07.img2img_start": make_img2img_timesteps(),
    "ch07.blended_inpaint_step": make_blended_inpaint_step(),
    "ch07.safety_cosine": make_safety_check(),
}

MISTAKES = [
    ("ch07.img2img_start", make_img2img_timesteps(inverted=True), "strength_inverted"),
    ("ch07.img2img_start", make_img2img_timesteps(count="ceil"), "rounded"),
    ("ch07.img2img_start", make_img2img_timesteps(count="round"), "rounded"),
    ("ch07.img2img_start", make_img2img_timesteps(shift=1), "off_by_one"),
    ("ch07.img2img_start", make_img2img_timesteps(shift=-1), "off_by_one"),
    ("ch07.img2img_start", make_img2img_timesteps(use_order=False), "order_ignored"),
    ("ch07.img2img_start", make_img2img_timesteps(first=True), "wrong_end"),
    ("ch07.blended_inpaint_step", make_blended_inpaint_step(mask_inverted=True), "mask_inverted"),
    ("ch07.blended_inpaint_step", make_blended_inpaint_step(level="t"), "wrong_noise_level"),
    ("ch07.blended_inpaint_step", make_blended_inpaint_step(level="clean"), "known_not_noised"),
    ("ch07.blended_inpaint_step", make_blended_inpaint_step(last="noised"), "noise_at_last_step"),
    ("ch07.blended_inpaint_step", make_blended_inpaint_step(order="blend_then_step"), "blend_before_step"),
    ("ch07.blended_inpaint_step", make_blended_inpaint_step(blend=False), "missing_blend"),
    ("ch07.safety_cosine", make_safety_check(normalise=False), "no_normalisation"),
    ("ch07.safety_cosine", make_safety_check(threshold_sign=1), "threshold_sign"),
    ("ch07.safety_cosine", make_safety_check(adjustment=0.0), "adjustment"),
    ("ch07.safety_cosine", make_safety_check(adjustment=-0.01), "adjustment"),
    ("ch07.safety_cosine", make_safety_check(compare="ge"), "comparison"),
    ("ch07.safety_cosine", make_safety_check(reduce="all"), "any_for_all"),
    ("ch07.safety_cosine", make_safety_check(special_flags=True), "special_flags"),
]


# ---------------------------------------------------------------------------- tests
def test_chapter_7_is_registered_with_a_check_each():
    chapter = {e for e, ex in EXERCISES.items() if ex.chapter == 7}
    assert chapter == set(CORRECT) == {e for e, _, _ in MISTAKES}
    assert all(grading.CHECKS[e].__doc__ for e in chapter)


test_correct_implementation_passes, test_planted_mistake_is_caught_and_named = harness_tests(CORRECT, MISTAKES)


def test_cases_cover_both_dtypes_and_the_edges():
    assert {c[4] for c in ch07.BLEND_CASES} == {torch.float32, torch.float64}
    assert any(i == S - 1 for S, _, i, *_ in ch07.BLEND_CASES)  # the last step: t_prev is None
    assert any(order == 2 for *_, order in ch07.START_CASES) and any(strength == 1.0 for _, strength, _ in ch07.START_CASES)


def test_safety_cases_keep_clear_of_the_rounding():
    """Every score is at least 0.002 from 0 (rounding to 3 decimals, as the released checker does, changes no verdict)
    except the one built exactly at 0; each case has a flagged and an unflagged image, and the special-care rule
    fires for some images only, so every planted slip changes something."""
    fired_somewhere = False
    for n, dtype in enumerate([torch.float32, torch.float64, torch.float32]):
        inputs = ch07._safety_case(n, dtype)
        scores, fired = ch07._safety_reference(*inputs)
        flagged = (scores > 0).any(dim=1)
        assert flagged.any() and not flagged.all()
        exact = scores == 0
        assert (exact.sum() == 1) if n == 0 else not exact.any()
        assert (scores[~exact].abs() > 2e-3).all(), (n, scores)
        special = (ch07._unit(inputs[0].double()) @ ch07._unit(inputs[3].double()).T - inputs[4].double()).abs()
        assert (special > 2e-3).all()
        fired_somewhere |= bool(fired.any() and not fired.all())
        some_not_all = ((scores > 0).any(dim=1) & ~(scores > 0).all(dim=1)).any()
        assert some_not_all
    assert fired_somewhere
    check("ch07.safety_cosine", make_safety_check(rounded=True))  # the released checker's rounding is accepted


def test_sdlearn_implementations_agree_with_the_checks():
    """sdlearn's img2img_timesteps, blend_known and the safety checker's rule pass the checks (guards bypassed)."""
    from sdlearn.models.safety_checker import cosine_similarity, flag_images
    from sdlearn.pipelines.stable_diffusion_img2img import img2img_timesteps
    from sdlearn.pipelines.stable_diffusion_inpaint import blend_known

    def blended_inpaint_step(scheduler, eps, t, latents, known_latents, noise, mask, t_prev):
        z = scheduler.step(eps, t, latents).prev_sample
        known = known_latents if t_prev is None else scheduler.add_noise(known_latents, noise, torch.tensor([t_prev]))
        return blend_known(z, known, mask)

    def safety_check(image_embeds, concept_embeds, thresholds, special_embeds, special_thresholds):
        cos, special = cosine_similarity(image_embeds, concept_embeds), cosine_similarity(image_embeds, special_embeds)
        fired = ((special - special_thresholds) > 0).any(dim=1)
        scores = cos - thresholds + 0.01 * fired.to(cos.dtype)[:, None]
        return scores, torch.tensor(flag_images(cos, thresholds, special, special_thresholds))

    grading.CHECKS["ch07.img2img_start"](lambda scheduler, S, strength: img2img_timesteps(scheduler, S, strength))
    grading.CHECKS["ch07.blended_inpaint_step"](blended_inpaint_step)
    grading.CHECKS["ch07.safety_cosine"](safety_check)


def test_the_references_are_refused_in_the_check_cell():
    """An answer that calls sdlearn's own img2img_timesteps passes without the guard and fails with it, as in the
    grader; the function is put back afterwards."""
    from sdlearn.pipelines import stable_diffusion_img2img as module

    namespace: dict = {}
    exec("from sdlearn.pipelines.stable_diffusion_img2img import img2img_timesteps as library\n"
         "def img2img_timesteps(scheduler, num_inference_steps, strength):\n"
         "    return library(scheduler, num_inference_steps, strength)\n", namespace)
    original = module.img2img_timesteps
    grading.CHECKS["ch07.img2img_start"](namespace["img2img_timesteps"])
    passed, feedback = run_check("ch07.img2img_start", namespace["img2img_timesteps"])
    assert not passed and "scores nothing" in feedback and "img2img_timesteps" in feedback
    assert module.img2img_timesteps is original and namespace["library"] is original


def test_checks_leave_the_random_state_alone():
    state = torch.random.get_rng_state()
    for exercise_id, fn in CORRECT.items():
        run_check(exercise_id, fn)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_feedback_never_shows_reference_code():
    """Feedback quotes the learner's own line and the math, never a line of the check's code."""
    import inspect

    module = ch07
    code_lines = [line.strip() for line in inspect.getsource(module).splitlines()
                  if line.strip().startswith("return ") or " = " in line and not line.strip().startswith(('"', "#"))]
    code_lines = [line for line in code_lines if len(line) > 15]
    assert len(code_lines) > 20
    for exercise_id, fn, _ in MISTAKES:
        _, feedback = run_check(exercise_id, fn)
        assert not [line for line in code_lines if line in feedback], exercise_id
