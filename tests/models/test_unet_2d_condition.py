"""UNet2DConditionModel: the same output as diffusers' with the same weights (SD 1.x-, 2.x-shaped and class-
conditional configs), folders loading both ways, attention recording, and the errors a learner meets."""

from __future__ import annotations

import json

import pytest
import torch

from sdlearn.models.attention import Attention, AttentionStore
from sdlearn.models.unet_2d_condition import UNet2DConditionConfig, UNet2DConditionModel

diffusers = pytest.importorskip("diffusers")

BASE = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            norm_num_groups=8, cross_attention_dim=12, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
CONFIGS = {
    "sd1": dict(BASE, attention_head_dim=2),  # conv projections, one head count for every level
    "sd2": dict(BASE, attention_head_dim=(2, 4), use_linear_projection=True),  # linear projections, heads per level
    "class": dict(BASE, attention_head_dim=4, num_class_embeds=5),  # class labels added to the time embedding
    "three-levels": dict(BASE, block_out_channels=(16, 16, 32), attention_head_dim=2,
                         down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
}


def pair(name):
    torch.manual_seed(0)
    theirs = diffusers.UNet2DConditionModel(**CONFIGS[name]).eval()
    ours = UNet2DConditionModel(UNet2DConditionConfig.from_dict(CONFIGS[name])).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same module names, same shapes
    return ours, theirs


def inputs(name, batch=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    context = torch.randn(batch, 7, 12, generator=g)
    labels = torch.tensor([1, 4])[:batch] if "num_class_embeds" in CONFIGS[name] else None
    return x, context, labels


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_output_as_diffusers(name):
    ours, theirs = pair(name)
    x, context, labels = inputs(name)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        expected = theirs(x, t, encoder_hidden_states=context, class_labels=labels).sample
        got = ours(x, t, encoder_hidden_states=context, class_labels=labels)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4


def test_same_output_with_an_attention_mask_and_fractional_timesteps():
    ours, theirs = pair("sd1")
    x, context, _ = inputs("sd1")
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
    t = torch.tensor([3.5, 412.25])
    with torch.no_grad():
        expected = theirs(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
        got = ours(x, t, encoder_hidden_states=context, encoder_attention_mask=mask)
        unmasked = ours(x, t, encoder_hidden_states=context)
    assert (got - expected).abs().max() < 1e-4
    assert (got - unmasked).abs().max() > 1e-4  # the mask changed something


@pytest.mark.parametrize("name", ["sd1", "sd2", "class"])
def test_folders_load_both_ways(name, tmp_path):
    ours, theirs = pair(name)
    x, context, labels = inputs(name)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    from_ours = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "ours").eval()  # diffusers reads ours
    from_theirs = UNet2DConditionModel.from_pretrained(tmp_path / "theirs")  # strict keys, ours reads theirs
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["_class_name"] == "UNet2DConditionModel" and config["num_attention_heads"] is None
    with torch.no_grad():
        reference = theirs(x, 5, encoder_hidden_states=context, class_labels=labels).sample
        assert (from_ours(x, 5, encoder_hidden_states=context, class_labels=labels).sample - reference).abs().max() < 1e-4
        assert (from_theirs(x, 5, encoder_hidden_states=context, class_labels=labels) - reference).abs().max() < 1e-4


def test_attention_head_dim_counts_heads_as_in_diffusers():
    """The misnomer: attention_head_dim=(2, 4) means 2 heads at the first level and 4 at the second."""
    ours, theirs = pair("sd2")
    heads = {n: m.heads for n, m in ours.named_modules() if isinstance(m, Attention) and n.endswith("attn2")}
    their_heads = {n: m.heads for n, m in theirs.named_modules() if n.endswith("attn2")}
    assert heads == their_heads and set(heads.values()) == {2, 4}
    assert UNet2DConditionConfig(**{**BASE, "num_attention_heads": 4}).heads == (4, 4)  # the honest name wins


def test_recording_attention_keeps_the_output_and_stores_probabilities():
    ours, _ = pair("sd1")
    x, context, _ = inputs("sd1")
    with torch.no_grad():
        plain = ours(x, 50, encoder_hidden_states=context)
        store = AttentionStore()
        ours.set_attn_processor(store)
        store.step = 50
        recorded = ours(x, 50, encoder_hidden_states=context)
    assert (plain - recorded).abs().max() < 1e-5
    cross_layers = [n for n in ours.attn_processors if n.endswith("attn2")]
    assert [r["layer"] for r in store.records] == cross_layers  # every cross-attention layer, in call order
    for r in store.records:
        probs = r["probs"]  # (B, heads, HW, T)
        assert probs.shape[0] == 2 and probs.shape[-1] == 7 and r["step"] == 50
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)  # a softmax over the text tokens


def test_attention_equals_the_formula_with_and_without_a_mask():
    torch.manual_seed(0)
    attn = Attention(8, cross_attention_dim=6, heads=2, dim_head=4)
    h, ctx = torch.randn(3, 5, 8), torch.randn(3, 4, 6)
    mask = torch.tensor([0.0, 0.0, -10000.0, 0.0]).view(1, 1, 1, 4)
    for m in (None, mask):
        q = attn.to_q(h).view(3, 5, 2, 4).transpose(1, 2)
        k = attn.to_k(ctx).view(3, 4, 2, 4).transpose(1, 2)
        v = attn.to_v(ctx).view(3, 4, 2, 4).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / 2.0  # sqrt(d) = 2
        probs = (scores + (0 if m is None else m)).softmax(-1)
        direct = attn.to_out[0]((probs @ v).transpose(1, 2).reshape(3, 5, 8))
        assert torch.allclose(attn(h, ctx, m), direct, atol=1e-5)
        if m is not None:
            assert probs[..., 2].max() < 1e-6  # the masked key gets no weight


def test_errors_say_what_to_do():
    ours, _ = pair("sd1")
    x, context, _ = inputs("sd1")
    with pytest.raises(ValueError, match="pass encoder_hidden_states"):
        ours(x, 1)
    with pytest.raises(ValueError, match=r"\(B, T, 12\)"):
        ours(x, 1, encoder_hidden_states=torch.randn(2, 7, 10))
    with pytest.raises(ValueError, match="not class-conditional"):
        ours(x, 1, encoder_hidden_states=context, class_labels=torch.tensor([0, 1]))
    labelled, _ = pair("class")
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        labelled(x, 1, encoder_hidden_states=context, class_labels=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="one per sample"):
        labelled(x, 1, encoder_hidden_states=context, class_labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="pass class_labels"):
        labelled(x, 1, encoder_hidden_states=context)
    with pytest.raises(ValueError, match="does not build"):
        UNet2DConditionConfig.from_dict({**CONFIGS["sd1"], "addition_embed_type": "text_time"})
