"""UNet2DConditionModel: the noise-prediction UNet with cross-attention, eps_theta(z_t, t, tau(y)) (Rombach et al. 2022).

The same UNet as ``UNet2DModel`` (its residual blocks, time embedding, down- and up-samplers and skip stack are
reused, not copied), with a ``Transformer2DModel`` (``transformer_2d.py``) after each residual block of the
"CrossAttn" levels and in the middle: there the condition's tokens tau_theta(y) (B, T, cross_attention_dim),
e.g. a text encoder's output, enter as the keys and values of cross-attention (the LDM paper's eq. 3).
Optionally class-conditional as well (``num_class_embeds``: a label embedding added to the time embedding).

Config keys and module names are diffusers' ``UNet2DConditionModel``'s, so Stable Diffusion's ``unet/`` folders
load. **A trap that diffusers keeps for compatibility:** in this class's config, ``attention_head_dim`` is the
*number of heads* (per level, or one number for all), not channels per head; each head then has
channels / heads dimensions. (``UNet2DModel``'s ``attention_head_dim`` really is channels per head.) sdlearn
follows diffusers' meaning so that folders load; ``num_attention_heads``, the honest name, wins when given.

``forward`` returns the predicted noise as a tensor, as ``UNet2DModel.forward`` does in sdlearn
(diffusers returns an object with ``.sample``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
from torch import nn

from .attention import AttnProcessor, attn_processors, set_attn_processor
from .transformer_2d import Transformer2DModel
from .unet_2d import build_unet, embed_time_and_class, run_unet

_PerLevel = int | tuple[int, ...]

# diffusers config keys whose non-default values select machinery sdlearn does not build (SDXL, ControlNet, ...)
UNSUPPORTED = {"class_embed_type": None, "addition_embed_type": None, "time_embedding_type": "positional",
               "resnet_time_scale_shift": "default", "only_cross_attention": False, "dual_cross_attention": False,
               "encoder_hid_dim": None, "time_cond_proj_dim": None, "center_input_sample": False, "conv_in_kernel": 3,
               "conv_out_kernel": 3, "act_fn": "silu", "mid_block_scale_factor": 1, "downsample_padding": 1,
               "class_embeddings_concat": False, "mid_block_only_cross_attention": None}


@dataclass(frozen=True)
class UNet2DConditionConfig:
    sample_size: int | None = None  # height = width of z_t (SD 1.x: 64 latents for 512 pixels)
    in_channels: int = 4  # latent channels (9 for SD's inpainting UNet: latents, mask, masked-image latents)
    out_channels: int = 4
    flip_sin_to_cos: bool = True  # timestep embedding as [cos, sin]
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2  # residual blocks per level on the way down (one more on the way up)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280  # width of the condition's tokens (SD 1.x: 768, CLIP ViT-L; SD 2.x: 1024)
    attention_head_dim: _PerLevel = 8  # diffusers' misnomer: the NUMBER OF HEADS per level (see the module docstring)
    num_attention_heads: _PerLevel | None = None  # the same, under its honest name; wins when given
    use_linear_projection: bool = False  # proj_in / proj_out as Linear (SD 2.x) instead of 1x1 conv (SD 1.x)
    transformer_layers_per_block: _PerLevel = 1
    num_class_embeds: int | None = None  # class-conditional as well: rows of the label embedding

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"block_out_channels has {n} levels but down_block_types has {len(self.down_block_types)} "
                             f"and up_block_types {len(self.up_block_types)}: give one block type per level.")
        known = {"CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}
        for b in (*self.down_block_types, *self.up_block_types):
            if b not in known:
                raise ValueError(f"block type {b!r} is not one sdlearn builds ({sorted(known)}).")
        if self.mid_block_type not in ("UNetMidBlock2DCrossAttn", None):
            raise ValueError(f"mid_block_type {self.mid_block_type!r}: sdlearn builds 'UNetMidBlock2DCrossAttn' (or None).")
        for c, h in zip(self.block_out_channels, self.heads):
            if c % h:
                raise ValueError(f"{c} channels do not split into {h} attention heads (attention_head_dim, which in "
                                 "this class counts heads, must divide each level's channels).")

    def per_level(self, value) -> tuple[int, ...]:
        return tuple(value) if isinstance(value, (tuple, list)) else (value,) * len(self.block_out_channels)

    @property
    def heads(self) -> tuple[int, ...]:
        """Attention heads per level: num_attention_heads, else diffusers' attention_head_dim (which counts heads)."""
        return self.per_level(self.num_attention_heads if self.num_attention_heads is not None
                              else self.attention_head_dim)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        # diffusers raises on num_attention_heads; write the head counts the way it reads them
        d["attention_head_dim"], d["num_attention_heads"] = list(self.heads), None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNet2DConditionConfig":
        """Our config.json or diffusers' (unknown keys ignored; keys for machinery sdlearn lacks are refused)."""
        wrong = {k: d[k] for k, default in UNSUPPORTED.items() if k in d and d[k] != default}
        if wrong:
            raise ValueError(f"this UNet2DConditionModel config uses options sdlearn does not build: {wrong}. sdlearn "
                             "loads Stable Diffusion 1.x and 2.x UNets (not SDXL's added embeddings, ControlNet, ...).")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
        return cls(**kw)


class UNet2DConditionModel(nn.Module):
    """eps_theta(z_t, t, c): a noisy latent, its timestep and the condition's tokens -> a tensor shaped like z_t."""

    config_name = "config.json"
    weights_name = "diffusion_pytorch_model.safetensors"

    def __init__(self, config: UNet2DConditionConfig | None = None, **overrides):
        super().__init__()
        config = config or UNet2DConditionConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        ch, heads = config.block_out_channels, config.heads
        depth = config.per_level(config.transformer_layers_per_block)

        def cross_attention(level: int, block_type: str = "CrossAttn"):
            if not block_type.startswith("CrossAttn"):
                return None

            def make(channels: int) -> Transformer2DModel:
                return Transformer2DModel(heads[level], channels // heads[level], channels, config.cross_attention_dim,
                                          depth[level], config.norm_num_groups, config.use_linear_projection)
            return make

        build_unet(self, config, cross_attention, cross_attention(len(ch) - 1) if config.mid_block_type else None)
        set_attn_processor(self, AttnProcessor())  # also names every attention layer (for AttentionStore's records)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def attn_processors(self) -> dict:
        """{module path: processor} of every attention layer (attn1: self-attention, attn2: cross-attention)."""
        return attn_processors(self)

    def set_attn_processor(self, processor) -> None:
        """Use ``processor`` in every attention layer, e.g. ``AttentionStore()`` to record the attention maps."""
        set_attn_processor(self, processor)

    @property
    def has_cross_attention(self) -> bool:
        c = self.config
        return c.mid_block_type is not None or any(b.startswith("CrossAttn") for b in c.down_block_types)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """sample: z_t (B, C, H, W); timestep: int, float or (B,); encoder_hidden_states: the condition's tokens
        (B, T, cross_attention_dim); encoder_attention_mask: (B, T), 1 keeps a token, 0 hides it (Stable
        Diffusion's pipelines pass none: padding tokens are attended). Returns eps_theta (B, C_out, H, W)."""
        self._check_input(sample, encoder_hidden_states)
        temb = embed_time_and_class(self, sample, timestep, class_labels)  # (B, 4*C0)
        mask = None
        if encoder_attention_mask is not None:  # as diffusers: (1 - mask) * -10000, broadcast over heads and queries
            mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0)[:, None, None, :]  # (B, 1, 1, T)
        return run_unet(self, sample, temb, encoder_hidden_states, mask)

    def _check_input(self, sample: torch.Tensor, encoder_hidden_states) -> None:
        c = self.config
        if sample.ndim != 4 or sample.shape[1] != c.in_channels:
            raise ValueError(f"UNet2DConditionModel expects z_t shaped (B, {c.in_channels}, H, W), got "
                             f"{tuple(sample.shape)}.")
        factor = 2 ** (len(c.block_out_channels) - 1)
        if sample.shape[-1] % factor or sample.shape[-2] % factor:
            raise ValueError(f"H and W must be divisible by {factor} (the UNet halves them "
                             f"{factor.bit_length() - 1} times); got {tuple(sample.shape[-2:])}.")
        if not self.has_cross_attention:
            return
        if encoder_hidden_states is None:
            raise ValueError("this UNet has cross-attention: pass encoder_hidden_states, the condition's tokens "
                             f"(B, T, {c.cross_attention_dim}), e.g. the text encoder's last hidden state.")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != c.cross_attention_dim:
            raise ValueError(f"encoder_hidden_states must be (B, T, {c.cross_attention_dim}) (this UNet's "
                             f"cross_attention_dim), got {tuple(encoder_hidden_states.shape)}: is the text encoder's "
                             "width the one the UNet was trained with?")
        if encoder_hidden_states.shape[0] != sample.shape[0]:
            raise ValueError(f"{encoder_hidden_states.shape[0]} condition(s) for a batch of {sample.shape[0]}: give "
                             "one encoder_hidden_states row per sample.")

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write config.json + diffusion_pytorch_model.safetensors (diffusers' layout and config keys)."""
        from ..utils.files import save_model_folder

        save_model_folder(self, folder, dict(self.config.to_dict(), _class_name="UNet2DConditionModel"))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "UNet2DConditionModel":
        """A folder written by save_pretrained or by diffusers (strict key matching)."""
        from ..utils.files import load_model_folder

        return load_model_folder(cls, UNet2DConditionConfig, folder)


__all__ = ["UNet2DConditionConfig", "UNet2DConditionModel"]
