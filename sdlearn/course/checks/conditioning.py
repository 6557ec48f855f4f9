"""Checks for chapter 5: conditioning (Rombach et al. 2022; Ho & Salimans 2022; Radford et al. 2021).

Cross-attention from image tokens to text tokens (LDM eq. 3, multi-head), classifier-free guidance (Ho & Salimans
2022, eq. 6, in diffusers' guidance_scale convention), CLIP's symmetric contrastive loss (Radford et al. 2021,
Figure 3) and the condition dropout that trains one network for both branches of guidance (Ho & Salimans 2022,
Algorithm 1). The references are computed here in float64 from the formulas, with torch alone. While a check runs
the learner's function, torch's fused attention and transformers' CLIP loss are unavailable as well
(``BLOCKED_CALLABLES`` of sdlearn.course.grader.references).
"""

from __future__ import annotations

import math

import torch
from torch import nn

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
    "ch05.cross_attention": Exercise(
        5, "multi-head cross-attention", "LDM eq. 3 (Vaswani et al. 2017, eq. 1)",
        "Q = W_Q phi(z_t) from the image tokens, K = W_K tau(y) and V = W_V tau(y) from the text tokens, each split "
        "into heads of width d = inner / heads; probs = softmax(Q K^T / sqrt(d)) over the text tokens (keys), one "
        "map per head; out = probs V, the heads merged back to width inner",
        "cross_attention(hidden_states, encoder_hidden_states, to_q, to_k, to_v, heads) -> (out, probs)   "
        "(hidden_states (B, N, C) image tokens; encoder_hidden_states (B, M, D) text tokens; to_q, to_k, to_v "
        "nn.Linear layers to width inner; out (B, N, inner); probs (B, heads, N, M))", 3),
    "ch05.guidance": Exercise(
        5, "classifier-free guidance", "Ho & Salimans 2022, eq. 6 (diffusers' guidance_scale s = 1 + w)",
        "eps = eps_uncond + s (eps_cond - eps_uncond), with s the guidance scale (the paper's (1 + w) eps_cond - "
        "w eps_uncond with s = 1 + w)",
        "classifier_free_guidance(eps_uncond, eps_cond, guidance_scale) -> eps   (eps_uncond, eps_cond (B, C, H, W); "
        "guidance_scale a float)", 2),
    "ch05.clip_loss": Exercise(
        5, "CLIP's symmetric contrastive loss", "Radford et al. 2021, Figure 3",
        "I_e = I / ||I||, T_e = T / ||T|| (each row L2-normalised); logits = exp(t) I_e T_e^T (B x B); labels = "
        "0, 1, ..., B - 1 (the diagonal: image i with caption i); loss = (CE(logits, labels) + CE(logits^T, "
        "labels)) / 2, each cross-entropy averaged over the batch",
        "clip_loss(image_embeds, text_embeds, t) -> scalar tensor   (image_embeds, text_embeds (B, d), row i of each "
        "a pair; t the learned log-temperature, a 0-dim tensor: the logits are scaled by exp(t))", 2),
    "ch05.condition_dropout": Exercise(
        5, "condition dropout for guidance training", "Ho & Salimans 2022, Algorithm 1 (line 3)",
        "u = B uniform draws in [0, 1) from the generator (one per sample, drawn once); sample i keeps its condition "
        "c_i when u_i >= p_uncond and gets the null condition when u_i < p_uncond (so with probability p_uncond)",
        "condition_dropout(conditions, null_condition, p_uncond, generator) -> conditions   (conditions (B, ...): "
        "class labels (B,) or text embeddings (B, M, D); null_condition shaped like one row; draw "
        "u = torch.rand(B, generator=generator) once; return a new tensor shaped like conditions)", 2),
})

LABELS.update({
    "softmax_axis": "softmax over the wrong axis",
    "missing_scale": "missing 1 / sqrt(d)",
    "wrong_scale": "scaled by the wrong width",
    "self_attention": "self-attention instead of cross-attention",
    "head_split": "heads split or merged wrongly",
    "scale_wrong_term": "the guidance scale on the wrong term",
    "paper_convention": "the paper's w where diffusers' s = 1 + w belongs",
    "one_direction": "one direction only",
    "no_temperature": "temperature missing",
    "wrong_labels": "labels not the diagonal",
    "no_normalisation": "embeddings not normalised",
    "keep_for_drop": "keep probability instead of drop probability",
    "zeroed": "zeros instead of the null condition",
    "dropped_sample": "the sample dropped instead of its condition",
    "one_draw": "one draw for the whole batch",
})


# ============================================================================ cross-attention
def _linear(n_in: int, n_out: int, bias: bool, dtype: torch.dtype, seed: int) -> nn.Linear:
    """A seeded nn.Linear (its weights about 1.5 / sqrt(n_in), so the attention scores spread), built without touching
    the learner's random state."""
    with torch.random.fork_rng(devices=[]):
        layer = nn.Linear(n_in, n_out, bias=bias, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(_randn((n_out, n_in), dtype, seed) * 1.5 / n_in**0.5)
        if bias:
            layer.bias.copy_(_randn((n_out,), dtype, seed + 1) * 0.5)
    return layer


def _project(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out = x.double() @ layer.weight.detach().double().T
    return out + layer.bias.detach().double() if layer.bias is not None else out


# (B, N image tokens, M text tokens, C, D, heads, inner, dtype, bias); the third has N = M and C = D, so that
# self-attention gives a result of the right shape to compare with
ATTENTION_CASES = [(2, 6, 5, 16, 12, 2, 16, torch.float32, False), (1, 4, 7, 8, 8, 1, 8, torch.float64, True),
                   (3, 5, 5, 12, 12, 3, 12, torch.float32, False), (2, 9, 4, 16, 24, 4, 32, torch.float64, False)]

WIDTHS_HINT = ("to_q takes the image tokens (hidden_states, width C); to_k and to_v take the text tokens "
               "(encoder_hidden_states, width D): in cross-attention the keys and values come from the condition.")
SELF_ATTENTION = ("the keys and values come from the text tokens: K = to_k(encoder_hidden_states), V = "
                  "to_v(encoder_hidden_states). You took them from the image tokens (hidden_states), which is "
                  "self-attention: each pixel would look at other pixels, not at the words.")
HEAD_SPLIT = ("split a (B, T, inner) tensor into heads as (B, T, heads, d), then transpose to (B, heads, T, d); merge "
              "back the same way, transposing (B, heads, N, d) to (B, N, heads, d) before reshaping to (B, N, inner). "
              "Reshaping straight from (B, T, inner) to (B, heads, T, d), or back, mixes tokens with channels.")


def _attention_hint(e: Exception) -> tuple[str, str] | None:
    return ("self_attention", WIDTHS_HINT) if "mat1 and mat2" in str(e) else None


@_register("ch05.cross_attention")
def _check_cross_attention(fn) -> None:
    """LDM eq. 3: softmax(Q K^T / sqrt(d)) V with Q from the image tokens and K, V from the text tokens, per head."""
    for n, (B, N, M, C, D, heads, inner, dtype, bias) in enumerate(ATTENTION_CASES):
        x, ctx = _randn((B, N, C), dtype, 500 + n), _randn((B, M, D), dtype, 510 + n)
        to_q, to_k, to_v = (_linear(C, inner, bias, dtype, 520 + 10 * n), _linear(D, inner, bias, dtype, 522 + 10 * n),
                            _linear(D, inner, bias, dtype, 524 + 10 * n))
        case = _Case("ch05.cross_attention", _describe(dtype, hidden_states=x, encoder_hidden_states=ctx)
                     + f", heads = {heads}, inner = {inner} (d = {inner // heads})" + (", with biases" if bias else ""),
                     _attention_hint)
        args = (x.clone(), ctx.clone(), to_q, to_k, to_v, heads)
        got = _call(case, fn, *args)
        _unchanged(case, hidden_states=(args[0], x), encoder_hidden_states=(args[1], ctx))
        d = inner // heads

        def split(t, transpose=True):  # (B, T, inner) -> (B, heads, T, d)
            return t.reshape(B, -1, heads, d).transpose(1, 2) if transpose else t.reshape(B, heads, -1, d)

        def attend(scale=d**-0.5, axis=-1, source=ctx, split_t=True, merge_t=True):
            q, k, v = (split(_project(to_q, x), split_t), split(_project(to_k, source), split_t),
                       split(_project(to_v, source), split_t))
            probs = (q @ k.transpose(-1, -2) * scale).softmax(dim=axis)  # (B, heads, N, M)
            out = probs @ v  # (B, heads, N, d)
            out = out.transpose(1, 2).reshape(B, N, inner) if merge_t else out.reshape(B, N, inner)
            return out, probs

        want_out, want_probs = attend()
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise case.fail(f"return the pair (out, probs); got {type(got).__name__}"
                            + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "") + ".")
        out, probs = got
        if isinstance(probs, torch.Tensor) and probs.shape == (B, heads, N, N) and N != M:
            raise case.fail(f"probs has shape {tuple(probs.shape)}: one weight per image token, where there should be "
                            f"one per text token (M = {M}).", ("self_attention", SELF_ATTENTION))
        probs = _expect_tensor(case, probs, want_probs, dtype, "probs", shape_hint=(
            "probs holds one attention map per head: (B, heads, N, M), before it multiplies V."))
        out = _expect_tensor(case, out, want_out, dtype, "out", shape_hint=(
            "out is probs V with the heads merged back: (B, N, inner) (no output projection)."))
        wrong = {
            "axis": ("softmax_axis", attend(axis=-2),
                     "the softmax runs over the keys, the last axis (the M text tokens): each image token's weights "
                     "over the words sum to 1. You normalised over the queries (the image tokens)."),
            "no_scale": ("missing_scale", attend(scale=1.0),
                         f"the scores are Q K^T / sqrt(d), with d = inner / heads = {d} the width of one head."),
            "width": ("wrong_scale", attend(scale=inner**-0.5) if heads > 1 else (None, None),
                      f"d is the width of one head (inner / heads = {d}), not the full width inner = {inner}."),
            "query_dim": ("wrong_scale", attend(scale=C**-0.5) if C != d else (None, None),
                          f"d is the width of one head (inner / heads = {d}), not the image tokens' width C = {C}."),
            "no_sqrt": ("missing_sqrt", attend(scale=1 / d) if d != 1 else (None, None),
                        "the scores are divided by sqrt(d), not by d."),
            "self": ("self_attention", attend(source=x) if C == D and N == M else (None, None), SELF_ATTENTION),
            "split": ("head_split", attend(split_t=False, merge_t=False) if heads > 1 else (None, None), HEAD_SPLIT),
            "merge": ("head_split", attend(merge_t=False) if heads > 1 else (None, None), HEAD_SPLIT),
        }
        _diagnose(case, probs.detach(), want_probs, dtype, {k: (m, w[1], t) for k, (m, w, t) in wrong.items()},
                  what="probs")
        _diagnose(case, out.detach(), want_out, dtype, {k: (m, w[0], t) for k, (m, w, t) in wrong.items()},
                  what="out")


# ============================================================================ classifier-free guidance
GUIDANCE_CASES = [((2, 4, 8, 8), torch.float32, 7.5), ((1, 4, 8, 8), torch.float64, 1.0),
                  ((3, 3, 8, 8), torch.float32, 3.0), ((2, 4, 4, 4), torch.float64, 12.0)]


@_register("ch05.guidance")
def _check_guidance(fn) -> None:
    """Ho & Salimans 2022, eq. 6 with diffusers' s = 1 + w: eps = eps_uncond + s (eps_cond - eps_uncond)."""
    for n, (shape, dtype, s) in enumerate(GUIDANCE_CASES):
        eps_u, eps_c = _randn(shape, dtype, 540 + n), _randn(shape, dtype, 550 + n)
        case = _Case("ch05.guidance", _describe(dtype, eps_uncond=eps_u, guidance_scale=s))
        args = (eps_u.clone(), eps_c.clone(), s)
        got = _call(case, fn, *args)
        _unchanged(case, eps_uncond=(args[0], eps_u), eps_cond=(args[1], eps_c))
        u, c = eps_u.double(), eps_c.double()
        want = u + s * (c - u)
        got = _expect_tensor(case, got, want, dtype)
        _diagnose(case, got, want, dtype, {
            "sign": ("wrong_sign", u - s * (c - u),
                     "guidance moves towards the condition: eps_uncond + s (eps_cond - eps_uncond), a plus sign."),
            "swapped": ("swapped", c + s * (u - c),
                        "start from eps_uncond and add s times (eps_cond - eps_uncond); you swapped the two predictions, "
                        "which guides away from the prompt."),
            "on_uncond": ("scale_wrong_term", s * u + (c - u),
                          "s multiplies the difference (eps_cond - eps_uncond), not eps_uncond."),
            "on_cond": ("scale_wrong_term", s * c,
                        "s multiplies the difference (eps_cond - eps_uncond) and eps_uncond is added to it; s eps_cond "
                        "alone only rescales the conditional prediction."),
            "paper": ("paper_convention", u + (1 + s) * (c - u),
                      "the paper writes (1 + w) eps_cond - w eps_uncond; diffusers' guidance_scale is s = 1 + w, so "
                      "eps = eps_uncond + s (eps_cond - eps_uncond) (s = 1 gives eps_cond: no guidance). You used "
                      "w = guidance_scale."),
        })


# ============================================================================ CLIP's contrastive loss
CLIP_CASES = [(4, 8, torch.float32, math.log(1 / 0.07)), (2, 16, torch.float64, 0.5), (6, 8, torch.float32, 1.0),
              (3, 5, torch.float64, math.log(100.0))]


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """CE over the rows of logits (B, B'): -log softmax(logits)[i, labels[i]], in float64."""
    terms = logits.logsumexp(dim=1) - logits.gather(1, labels.view(-1, 1)).squeeze(1)
    return terms.mean() if reduce == "mean" else terms.sum()


@_register("ch05.clip_loss")
def _check_clip_loss(fn) -> None:
    """Radford et al. 2021, Figure 3: the symmetric cross-entropy over exp(t)-scaled cosine similarities."""
    for n, (B, d, dtype, t) in enumerate(CLIP_CASES):
        image = _randn((B, d), dtype, 560 + n) * 3.0  # norms far from 1, so that a missing normalisation shows
        text = (image.double() + 6.0 * _randn((B, d), torch.float64, 570 + n)).to(dtype)  # related pairs, loss ~ 0.2-30
        t_ = torch.tensor(t, dtype=dtype)
        case = _Case("ch05.clip_loss", _describe(dtype, image_embeds=image, text_embeds=text) + f", t = {t:.4g} "
                                                                                                f"(exp(t) = {math.exp(t):.4g})")
        image_in = image.clone().requires_grad_(True)
        args = (image_in, text.clone(), t_.clone())
        got = _call(case, fn, *args)
        _unchanged(case, image_embeds=(args[0].detach(), image), text_embeds=(args[1], text))
        labels = torch.arange(B)

        def loss(scale=math.exp(t), normalise=True, directions=("i2t", "t2i"), target=labels, reduce="mean", half=True):
            i, x = image.double(), text.double()
            if normalise:
                i, x = i / i.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True)
            logits = scale * i @ x.T  # (B, B)
            total = sum(_cross_entropy(logits if k == "i2t" else logits.T, target, reduce) for k in directions)
            return total / 2 if half else total

        want = loss()
        if isinstance(got, torch.Tensor) and got.ndim != 0:
            raise case.fail(f"the loss has shape {tuple(got.shape)}; it should be one number (a 0-dim tensor): each "
                            "cross-entropy is averaged over the batch.")
        got = _expect_tensor(case, got, want, dtype, "the loss")
        _diagnose(case, got.detach(), want, dtype, {
            "i2t": ("one_direction", loss(directions=("i2t",), half=False),
                    "CLIP's loss is symmetric: average the image -> text cross-entropy (rows of the logits) and the "
                    "text -> image one (rows of logits^T). You kept only the first."),
            "t2i": ("one_direction", loss(directions=("t2i",), half=False),
                    "CLIP's loss is symmetric: average the image -> text cross-entropy (rows of the logits) and the "
                    "text -> image one (rows of logits^T). You kept only the second."),
            "i2t_half": ("one_direction", loss(directions=("i2t",)),
                         "CLIP's loss is symmetric: average the image -> text cross-entropy (rows of the logits) and "
                         "the text -> image one (rows of logits^T). You halved the first and left out the second."),
            "no_temperature": ("no_temperature", loss(scale=1.0),
                               "the cosine similarities are multiplied by exp(t) before the softmax (Figure 3: "
                               "np.exp(t)); without it the logits stay in [-1, 1] and the softmax is nearly flat."),
            "t": ("no_temperature", loss(scale=t), "t is the log of the scale: multiply the cosines by exp(t), not t."),
            "divided": ("divided", loss(scale=math.exp(-t)), "multiply the cosines by exp(t); you divided by it."),
            "labels": ("wrong_labels", loss(target=torch.zeros(B, dtype=torch.long)),
                       "the right caption for image i is caption i: labels = 0, 1, ..., B - 1 (torch.arange(B)), the "
                       "diagonal of the logits."),
            "no_norm": ("no_normalisation", loss(normalise=False),
                        "L2-normalise each embedding (divide each row by its norm) before the dot products: the logits "
                        "are exp(t) times cosine similarities."),
            "sum": ("sum_for_mean", loss(reduce="sum"), "each cross-entropy is averaged over the batch, not summed."),
            "no_half": ("missing_coefficient", loss(half=False),
                        "the two cross-entropies are averaged: (CE(logits, labels) + CE(logits^T, labels)) / 2."),
        }, what="the loss")
        if not got.requires_grad:
            raise case.fail("the loss carries no gradient (image_embeds requires grad here): did you call .item(), "
                            ".detach() or work under torch.no_grad()? Training calls loss.backward() on it.")


# ============================================================================ condition dropout
# (kind, B, dtype, p_uncond, seed): text embeddings (B, 3, 4) or class labels (B,) with 10 classes (null = 10)
DROPOUT_CASES = [("labels", 12, torch.int64, 0.5, 581), ("embeddings", 8, torch.float32, 0.25, 580),
                 ("embeddings", 6, torch.float64, 0.1, 582), ("labels", 5, torch.int64, 0.0, 583),
                 ("embeddings", 4, torch.float32, 1.0, 584), ("labels", 4000, torch.int64, 0.2, 585)]


def _conditions(kind: str, B: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditions, null_condition): labels 0..9 with the null class 10, or embeddings with a non-zero null row."""
    g = torch.Generator().manual_seed(seed)
    if kind == "labels":
        return torch.randint(0, 10, (B,), generator=g), torch.tensor(10)
    return _randn((B, 3, 4), dtype, seed), _randn((3, 4), dtype, seed + 1000) + 0.5


@_register("ch05.condition_dropout")
def _check_condition_dropout(fn) -> None:
    """Ho & Salimans 2022, Algorithm 1, line 3: c <- null with probability p_uncond, one uniform draw per sample."""
    for kind, B, dtype, p, seed in DROPOUT_CASES:
        conditions, null = _conditions(kind, B, dtype, seed)
        case = _Case("ch05.condition_dropout", f"{kind}, {str(dtype).replace('torch.', '')}, conditions "
                                               f"{tuple(conditions.shape)}, null_condition {tuple(null.shape)}, "
                                               f"p_uncond = {p}, a generator seeded with {seed}")
        args = (conditions.clone(), null.clone(), p, torch.Generator().manual_seed(seed))
        got = _call(case, fn, *args)
        _unchanged(case, conditions=(args[0], conditions), null_condition=(args[1], null))
        u = torch.rand(B, generator=torch.Generator().manual_seed(seed))  # (B,) in [0, 1), float32

        def dropped(drop: torch.Tensor, fill: torch.Tensor = null) -> torch.Tensor:
            return torch.where(drop.view(-1, *[1] * (conditions.ndim - 1)), fill.expand_as(conditions), conditions)

        want = dropped(u < p)
        if isinstance(got, torch.Tensor) and got.ndim == conditions.ndim and got.shape[0] == int((u >= p).sum()) != B:
            raise case.fail(f"the result has {got.shape[0]} rows for a batch of {B}.", (
                "dropped_sample", "Algorithm 1 drops the condition, not the sample: every sample stays in the batch "
                                  "(and still trains), and the dropped ones get null_condition in place of their c."))
        got = _expect_tensor(case, got, want, dtype, "the conditions", dtype_hint=(
            "Keep the dtype of the conditions (class labels stay integers)."))
        if kind == "labels" and B >= 1000 and not torch.equal(got, want):
            rate = float((got == null).double().mean())
            if abs(rate - p) < 0.03:
                raise case.fail(f"the share of null conditions is right ({rate:.1%} for p_uncond = {p}) but not which "
                                "samples got them: draw u = torch.rand(B, generator=generator) once (float32, with "
                                "the generator you are given, before anything else uses it) and drop sample i when "
                                "u_i < p_uncond.")
        variants = {
            "keep": ("keep_for_drop", dropped(u < 1 - p),
                     "p_uncond is the probability of DROPPING the condition: replace it where u < p_uncond (you "
                     "used the probability of keeping it, 1 - p_uncond)."),
            "inverted": ("keep_for_drop", dropped(u >= p),
                         "replace the condition where u < p_uncond, keep it where u >= p_uncond; you did the reverse."),
            "zeros": ("zeroed", dropped(u < p, torch.zeros_like(null)) if null.abs().sum() > 0 else None,
                      "a dropped condition becomes null_condition (the empty prompt's embedding, or the null class), "
                      "which is not zero: zero is a class of its own, and the empty prompt's embedding is not zeros."),
            "fixed": ("ignored_argument", dropped(u < 0.1) if p != 0.1 and 0 < int((u < 0.1).sum()) < B else None,
                      "use the p_uncond you are given; you used a fixed 0.1."),
        }
        explained = any(v is not None and torch.equal(got, v) for _, v, _ in variants.values())
        all_or_none = [dropped(torch.ones(B, dtype=torch.bool)), dropped(torch.zeros(B, dtype=torch.bool))]
        if 0 < p < 1 and not explained and any(torch.equal(got, w) for w in all_or_none) and not torch.equal(got, want):
            raise case.fail("every sample got the same decision (all dropped or all kept).", (
                "one_draw", "draw one uniform number per sample, u = torch.rand(B, generator=generator), so that "
                            "each sample's condition is dropped on its own with probability p_uncond."))
        _diagnose(case, got, want.double(), torch.float64, variants, what="the conditions", atol=0.0)
