"""Chapter 5's checks (sdlearn.course.checks.conditioning): correct answers pass in float32 and float64, each planted
mistake is caught and named, sdlearn's own implementations agree with the checks, and the library shortcuts
(torch's fused attention, transformers' CLIP loss) are refused with a message that says to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sdlearn.course import checks as grading
from sdlearn.course.checks import EXERCISES, check, run_check

from course.check_harness import harness_tests  # tests/course/check_harness.py


# ---------------------------------------------------------------------------- implementations with knobs
def make_cross_attention(axis=-1, scale="head", source="text", split_transpose=True, merge_transpose=True):
    def cross_attention(hidden_states, encoder_hidden_states, to_q, to_k, to_v, heads):
        B, N, _ = hidden_states.shape
        context = encoder_hidden_states if source == "text" else hidden_states
        q, k, v = to_q(hidden_states), to_k(context), to_v(context)  # (B, T, inner)
        inner = q.shape[-1]
        d = inner // heads

        def split(x):  # (B, T, inner) -> (B, heads, T, d)
            return x.view(B, -1, heads, d).transpose(1, 2) if split_transpose else x.reshape(B, heads, -1, d)

        q, k, v = split(q), split(k), split(v)
        factor = {"head": d**-0.5, "none": 1.0, "inner": inner**-0.5, "d": 1 / d}[scale]
        probs = (q @ k.transpose(-1, -2) * factor).softmax(dim=axis)  # (B, heads, N, M)
        out = probs @ v  # (B, heads, N, d)
        out = out.transpose(1, 2).reshape(B, N, inner) if merge_transpose else out.reshape(B, N, inner)
        return out, probs
    return cross_attention


def make_guidance(kind="right"):
    def classifier_free_guidance(eps_uncond, eps_cond, guidance_scale):
        s, u, c = guidance_scale, eps_uncond, eps_cond
        return {"right": lambda: u + s * (c - u), "sign": lambda: u - s * (c - u), "swapped": lambda: c + s * (u - c),
                "on_uncond": lambda: s * u + (c - u), "on_cond": lambda: s * c,
                "paper": lambda: (1 + s) * c - s * u}[kind]()
    return classifier_free_guidance


def make_clip_loss(directions=("i2t", "t2i"), scale="exp", labels="diagonal", normalise=True, reduction="mean",
                   half=True, detach=False):
    def clip_loss(image_embeds, text_embeds, t):
        i, x = (F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)) if normalise else (image_embeds, text_embeds)
        factor = {"exp": t.exp(), "none": 1.0, "t": t, "divided": 1 / t.exp()}[scale]
        logits = factor * i @ x.T  # (B, B)
        B = len(logits)
        target = torch.arange(B) if labels == "diagonal" else torch.zeros(B, dtype=torch.long)
        terms = {"i2t": F.cross_entropy(logits, target, reduction=reduction),
                 "t2i": F.cross_entropy(logits.T, target, reduction=reduction)}
        loss = sum(terms[k] for k in directions)
        loss = loss / 2 if half else loss
        return loss.detach() if detach else loss
    return clip_loss


def make_condition_dropout(rule="right", fill="null", draws="per_sample", remove=False):
    def condition_dropout(conditions, null_condition, p_uncond, generator):
        B = conditions.shape[0]
        u = torch.rand(B if draws == "per_sample" else 1, generator=generator).expand(B)
        drop = {"right": u < p_uncond, "keep": u < 1 - p_uncond, "inverted": u >= p_uncond, "fixed": u < 0.1}[rule]
        if remove:
            return conditions[~drop]
        null = null_condition if fill == "null" else torch.zeros_like(null_condition)
        return torch.where(drop.view(-1, *[1] * (conditions.ndim - 1)), null.expand_as(conditions), conditions)
    return condition_dropout


CORRECT = {
    "ch05.cross_attention": make_cross_attention(),
    "ch05.guidance": make_guidance(),
    "ch05.clip_loss": make_clip_loss(),
    "ch05.condition_dropout": make_condition_dropout(),
}

# (exercise, implementation with one planted mistake, what the feedback must say)
MISTAKES = [
    ("ch05.cross_attention", make_cross_attention(axis=-2), "softmax_axis"),
    ("ch05.cross_attention", make_cross_attention(scale="none"), "missing_scale"),
    ("ch05.cross_attention", make_cross_attention(scale="inner"), "wrong_scale"),
    ("ch05.cross_attention", make_cross_attention(scale="d"), "missing_sqrt"),
    ("ch05.cross_attention", make_cross_attention(source="image"), "self_attention"),
    ("ch05.cross_attention", make_cross_attention(split_transpose=False, merge_transpose=False), "head_split"),
    ("ch05.cross_attention", make_cross_attention(merge_transpose=False), "head_split"),
    ("ch05.guidance", make_guidance("sign"), "wrong_sign"),
    ("ch05.guidance", make_guidance("swapped"), "swapped"),
    ("ch05.guidance", make_guidance("on_uncond"), "scale_wrong_term"),
    ("ch05.guidance", make_guidance("on_cond"), "scale_wrong_term"),
    ("ch05.guidance", make_guidance("paper"), "paper_convention"),
    ("ch05.clip_loss", make_clip_loss(directions=("i2t",), half=False), "one_direction"),
    ("ch05.clip_loss", make_clip_loss(directions=("t2i",), half=False), "one_direction"),
    ("ch05.clip_loss", make_clip_loss(directions=("i2t",)), "one_direction"),
    ("ch05.clip_loss", make_clip_loss(scale="none"), "no_temperature"),
    ("ch05.clip_loss", make_clip_loss(scale="t"), "no_temperature"),
    ("ch05.clip_loss", make_clip_loss(scale="divided"), "divided"),
    ("ch05.clip_loss", make_clip_loss(labels="zeros"), "wrong_labels"),
    ("ch05.clip_loss", make_clip_loss(normalise=False), "no_normalisation"),
    ("ch05.clip_loss", make_clip_loss(reduction="sum"), "sum_for_mean"),
    ("ch05.clip_loss", make_clip_loss(half=False), "missing_coefficient"),
    ("ch05.clip_loss", make_clip_loss(detach=True), "no gradient"),
    ("ch05.condition_dropout", make_condition_dropout(rule="keep"), "keep_for_drop"),
    ("ch05.condition_dropout", make_condition_dropout(rule="inverted"), "keep_for_drop"),
    ("ch05.condition_dropout", make_condition_dropout(fill="zeros"), "zeroed"),
    ("ch05.condition_dropout", make_condition_dropout(draws="one"), "one_draw"),
    ("ch05.condition_dropout", make_condition_dropout(remove=True), "dropped_sample"),
    ("ch05.condition_dropout", make_condition_dropout(rule="fixed"), "ignored_argument"),
]


# ---------------------------------------------------------------------------- tests
def test_chapter_5_is_registered_with_a_check_each():
    chapter = {e for e, ex in EXERCISES.items() if ex.chapter == 5}
    assert chapter == set(CORRECT) == {e for e, _, _ in MISTAKES}
    for exercise_id in chapter:
        assert grading.CHECKS[exercise_id].__doc__
        assert EXERCISES[exercise_id].signature.startswith(exercise_id.split(".")[1].replace("guidance", "classifier_free_guidance"))


test_correct_implementation_passes, test_planted_mistake_is_caught_and_named = harness_tests(CORRECT, MISTAKES)


def test_checks_cover_both_dtypes():
    from sdlearn.course.checks import conditioning

    for cases, position in ((conditioning.ATTENTION_CASES, 7), (conditioning.GUIDANCE_CASES, 1),
                            (conditioning.CLIP_CASES, 2), (conditioning.DROPOUT_CASES, 2)):
        assert {c[position] for c in cases} >= {torch.float32, torch.float64} or position == 2 and cases is \
            conditioning.DROPOUT_CASES and {c[position] for c in cases} >= {torch.float32, torch.float64, torch.int64}


def test_equivalent_answers_pass():
    """torch's own pieces are fine: einsum, F.normalize vs a manual norm, torch.bernoulli-free masking with
    torch.where, labels as an index_put."""
    def cross_attention(hidden_states, encoder_hidden_states, to_q, to_k, to_v, heads):
        q = to_q(hidden_states).unflatten(-1, (heads, -1))  # (B, N, heads, d)
        k = to_k(encoder_hidden_states).unflatten(-1, (heads, -1))
        v = to_v(encoder_hidden_states).unflatten(-1, (heads, -1))
        scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])
        probs = torch.softmax(scores, dim=-1)
        return torch.einsum("bhnm,bmhd->bnhd", probs, v).flatten(2), probs

    def condition_dropout(conditions, null_condition, p_uncond, generator):
        out = conditions.clone()
        out[torch.rand(len(conditions), generator=generator) < p_uncond] = null_condition
        return out

    def clip_loss(image_embeds, text_embeds, t):
        i = image_embeds / image_embeds.norm(dim=1, keepdim=True)
        x = text_embeds / text_embeds.norm(dim=1, keepdim=True)
        logits = t.exp() * i @ x.T
        log_i2t, log_t2i = logits.log_softmax(1), logits.log_softmax(0)
        return -(log_i2t.diagonal().mean() + log_t2i.diagonal().mean()) / 2

    check("ch05.cross_attention", cross_attention)
    check("ch05.condition_dropout", condition_dropout)
    check("ch05.clip_loss", clip_loss)


def test_sdlearn_implementations_agree_with_the_checks():
    """sdlearn's attention (the AttentionStore processor, which keeps the probabilities), guided, clip_loss and
    drop_condition pass the checks that compute their references from the formulas (the guards bypassed)."""
    from sdlearn.models.attention import Attention, AttentionStore
    from sdlearn.pipelines.ddpm import guided
    from sdlearn.training.contrastive import clip_loss
    from sdlearn.training.losses import drop_condition

    def cross_attention(hidden_states, encoder_hidden_states, to_q, to_k, to_v, heads):
        attn = Attention(hidden_states.shape[-1], encoder_hidden_states.shape[-1], heads=heads,
                         dim_head=to_q.out_features // heads, bias=to_q.bias is not None).to(hidden_states.dtype)
        attn.to_q, attn.to_k, attn.to_v = to_q, to_k, to_v
        attn.to_out[0] = torch.nn.Identity()
        store = AttentionStore()
        attn.processor = store
        out = attn(hidden_states, encoder_hidden_states)
        return out, store.records[-1]["probs"].to(hidden_states.dtype)

    grading.CHECKS["ch05.guidance"](guided)
    grading.CHECKS["ch05.clip_loss"](lambda i, x, t: clip_loss(i, x, t.exp()))
    grading.CHECKS["ch05.condition_dropout"](lambda c, null, p, g: drop_condition(c, p, null, g))
    # AttentionStore keeps float32 probabilities: check it on the float32 cases' tolerance
    from sdlearn.course.checks import conditioning
    cases = conditioning.ATTENTION_CASES
    try:
        conditioning.ATTENTION_CASES = [c for c in cases if c[7] == torch.float32]
        grading.CHECKS["ch05.cross_attention"](cross_attention)
    finally:
        conditioning.ATTENTION_CASES = cases


def test_condition_dropout_rate_is_checked_statistically():
    """An answer that drops the right share of samples, but not by the stated draw, is told so."""
    def condition_dropout(conditions, null_condition, p_uncond, generator):
        drop = torch.rand(len(conditions)) < p_uncond  # the global generator, not the given one
        return torch.where(drop.view(-1, *[1] * (conditions.ndim - 1)), null_condition.expand_as(conditions), conditions)

    torch.manual_seed(0)
    passed, feedback = run_check("ch05.condition_dropout", condition_dropout)
    assert not passed and "Algorithm 1" in feedback


def test_checks_leave_the_random_state_alone():
    state = torch.random.get_rng_state()
    for exercise_id, fn in CORRECT.items():
        run_check(exercise_id, fn)
    assert torch.equal(torch.random.get_rng_state(), state)


# ---------------------------------------------------------------------------- library shortcuts are refused
def test_fused_attention_is_refused_while_checked_and_put_back():
    def cross_attention(hidden_states, encoder_hidden_states, to_q, to_k, to_v, heads):
        B, N, _ = hidden_states.shape
        q, k, v = (x.unflatten(-1, (heads, -1)).transpose(1, 2) for x in
                   (to_q(hidden_states), to_k(encoder_hidden_states), to_v(encoder_hidden_states)))
        out = F.scaled_dot_product_attention(q, k, v)
        probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        return out.transpose(1, 2).reshape(B, N, -1), probs

    original = F.scaled_dot_product_attention
    grading.CHECKS["ch05.cross_attention"](cross_attention)  # right without the guard: only the guard stops it
    passed, feedback = run_check("ch05.cross_attention", cross_attention)
    assert not passed and "scaled_dot_product_attention" in feedback and "by hand" in feedback
    assert "LDM eq. 3" in feedback
    assert F.scaled_dot_product_attention is original and torch.nn.functional.scaled_dot_product_attention is original

    def via_module(hidden_states, encoder_hidden_states, to_q, to_k, to_v, heads):
        mha = torch.nn.MultiheadAttention(to_q.out_features, heads, batch_first=True, dtype=hidden_states.dtype)
        return mha(to_q(hidden_states), to_k(encoder_hidden_states), to_v(encoder_hidden_states))

    passed, feedback = run_check("ch05.cross_attention", via_module)
    assert not passed and "MultiheadAttention.forward" in feedback and "by hand" in feedback
    # elsewhere (another exercise, or outside a check) the function works as usual
    q = torch.randn(1, 1, 3, 4)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, q, q), (q @ q.transpose(-1, -2) / 2).softmax(-1) @ q)


def test_transformers_clip_loss_is_refused_while_checked():
    modeling_clip = pytest.importorskip("transformers.models.clip.modeling_clip")

    def clip_loss(image_embeds, text_embeds, t):
        i, x = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
        return modeling_clip.image_text_contrastive_loss(t.exp() * x @ i.T)  # transformers' logits_per_text

    original = modeling_clip.image_text_contrastive_loss
    grading.CHECKS["ch05.clip_loss"](clip_loss)  # right without the guard
    passed, feedback = run_check("ch05.clip_loss", clip_loss)
    assert not passed and "image_text_contrastive_loss" in feedback and "by hand" in feedback
    assert modeling_clip.image_text_contrastive_loss is original


def test_feedback_never_shows_reference_code():
    """Feedback quotes the learner's own line and the math, never a line of the check's code."""
    import inspect

    from sdlearn.course.checks import conditioning as module
    code_lines = [line.strip() for line in inspect.getsource(module).splitlines()
                  if line.strip().startswith("return ") or " = " in line and not line.strip().startswith(('"', "#"))]
    code_lines = [line for line in code_lines if len(line) > 15]
    assert len(code_lines) > 20
    for exercise_id, fn, _ in MISTAKES:
        _, feedback = run_check(exercise_id, fn)
        assert not [line for line in code_lines if line in feedback], exercise_id
