"""CLIP's contrastive loss, and the hard negatives that teach it word order (chapter 5).

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision", Figure 3: for a batch
of B (image, caption) pairs with image embeddings I (B, d) and text embeddings T (B, d),

    I_e = I / ||I||,  T_e = T / ||T||                         (L2-normalised rows)
    logits = exp(t) * I_e @ T_e^T                              (B, B); exp(t) the learned temperature, t = logit_scale
    labels = [0, 1, ..., B - 1]                                the diagonal: image i belongs with caption i
    loss = (CE(logits, labels) + CE(logits^T, labels)) / 2     image -> text and text -> image, averaged

A contrastive model can solve this with a bag of words: in a random batch, the caption that names the right
colours and shapes is almost always the right one, whatever their order. Yuksekgonul et al. 2023 ("When and why
vision-language models behave like bags-of-words, and what to do about it", NegCLIP) add hard negatives: for each
image, captions with the same words made false (here: the relation flipped, ``sdlearn.data.shapes.flip_relation``,
and the two colours swapped, ``swap_colours``), appended to the batch as extra captions. They join the image ->
text cross-entropy as wrong answers (logits (B, B + K)); text -> image stays over the B true captions (a
negative caption has no image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NO_NEGATIVE = -1  # a hard-negative row filled with this means "this caption has none"


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
              negative_text_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """The symmetric contrastive loss of Figure 3. image_embeds and text_embeds: (B, d), row i of each a pair;
    logit_scale: exp(t), the multiplier of the cosine similarities; negative_text_embeds: (K, d) extra captions
    that match no image (hard negatives), or None."""
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"need one caption per image: image_embeds {tuple(image_embeds.shape)}, "
                         f"text_embeds {tuple(text_embeds.shape)} (both (B, d)).")
    image_e = F.normalize(image_embeds, dim=-1)  # I_e (B, d)
    text_e = F.normalize(text_embeds, dim=-1)  # T_e (B, d)
    logits = logit_scale * image_e @ text_e.T  # (B, B): logits[i, j] = exp(t) cos(image i, caption j)
    labels = torch.arange(len(logits), device=logits.device)  # the diagonal
    loss_text_to_image = F.cross_entropy(logits.T, labels)  # each caption picks its image among B
    if negative_text_embeds is not None and len(negative_text_embeds):
        negatives = logit_scale * image_e @ F.normalize(negative_text_embeds, dim=-1).T  # (B, K)
        logits = torch.cat([logits, negatives], dim=1)  # (B, B + K): each image picks its caption among B + K
    loss_image_to_text = F.cross_entropy(logits, labels)
    return (loss_image_to_text + loss_text_to_image) / 2


def embed(model, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Projected (not yet normalised) embeddings of a transformers CLIPModel: images (B, 3, H, W) or ids (B, L)."""
    if pixel_values is not None:
        out = model.get_image_features(pixel_values=pixel_values)
    else:
        out = model.get_text_features(input_ids=input_ids)
    return out if torch.is_tensor(out) else out.pooler_output  # transformers 5 returns an output object


@dataclass(frozen=True)
class ContrastiveLoss:
    """``loss_fn`` for ``sdlearn.training.loop.train``: images x0 (B, 3, H, W) in [-1, 1] and ``condition`` the
    token ids (B, L), or (B, 1 + K, L) = [caption, K hard negatives] with ``hard_negatives``; a negative row of
    ``NO_NEGATIVE`` is skipped. exp(logit_scale) is clamped to ``max_scale`` (CLIP: 100)."""

    hard_negatives: bool = False
    max_scale: float = 100.0

    def __call__(self, model, x0: torch.Tensor, generator=None, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is None:
            raise ValueError("the contrastive loss needs the captions' token ids: train(..., conditions=token_ids).")
        captions = condition[:, 0] if condition.ndim == 3 else condition  # (B, L)
        negatives = None
        if self.hard_negatives:
            if condition.ndim != 3:
                raise ValueError(f"hard_negatives needs conditions (N, 1 + K, L), got shape {tuple(condition.shape)}; "
                                 "build them with sdlearn.training.shipping.clip_conditions(..., hard_negatives=True).")
            rows = condition[:, 1:].reshape(-1, condition.shape[-1])  # (B * K, L)
            rows = rows[rows[:, 0] != NO_NEGATIVE]  # (K', L): the captions that have such a negative
            negatives = embed(model, input_ids=rows) if len(rows) else None
        scale = model.logit_scale.exp().clamp(max=self.max_scale)
        return clip_loss(embed(model, pixel_values=x0), embed(model, input_ids=captions), scale, negatives)
