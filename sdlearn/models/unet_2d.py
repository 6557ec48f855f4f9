"""The noise-prediction network eps_theta(x_t, t): a UNet.

Ronneberger et al. 2015 (the U-shape with skip connections), as adapted for diffusion by
Ho et al. 2020 (DDPM, Appendix B): residual blocks with GroupNorm, a sinusoidal embedding of t
(Vaswani et al. 2017, sec. 3.5) added inside every residual block, and self-attention at low
resolution. The down path pushes every intermediate map on a stack; the up path pops them and
concatenates them to its input, which is the "U".

Module and parameter names follow diffusers' ``UNet2DModel`` (``conv_in``, ``time_embedding``,
``down_blocks.i.resnets.j``, ``mid_block``, ``up_blocks``, ``conv_out``), so weights load across
the two libraries and chapter 7 can read Stable Diffusion's UNet. A test checks that sdlearn's
UNet and diffusers' give the same output with the same weights.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SelfAttentionBlock


@dataclass(frozen=True)
class UNetConfig:
    sample_size: int = 32  # height = width of x_t
    in_channels: int = 1  # 1 for digits, 3 for RGB, 4 for SD latents
    out_channels: int = 1  # the model predicts a tensor shaped like x_t
    block_out_channels: tuple[int, ...] = (32, 64, 128)  # channels at each resolution (32, 16, 8 for 32x32 input)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")  # "Attn..." = self-attention
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")  # mirror of the down path
    layers_per_block: int = 1  # residual blocks per level on the way down (one more on the way up)
    attention_head_dim: int | None = 32  # channels per attention head; None: one head over all channels
    norm_num_groups: int = 8  # GroupNorm groups (Wu & He 2018); DDPM uses 32 on wider nets
    norm_eps: float = 1e-5
    dropout: float = 0.0  # DDPM used 0.1 on CIFAR-10
    flip_sin_to_cos: bool = True  # embedding is [cos, sin] (diffusers' default) rather than [sin, cos]
    freq_shift: int = 0  # frequencies exp(-ln(10000) * i / (half - freq_shift))
    add_mid_attention: bool = True  # self-attention between the two middle residual blocks
    num_class_embeds: int | None = None  # class-conditional: rows of the label embedding (classes + 1 null for CFG)

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"block_out_channels has {n} levels but down_block_types has {len(self.down_block_types)} and "
                f"up_block_types {len(self.up_block_types)}: give one block type per level."
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block_out_channels {c} is not divisible by norm_num_groups {self.norm_num_groups}.")
        if self.sample_size % 2 ** (n - 1):
            raise ValueError(f"sample_size {self.sample_size} must be divisible by 2**{n - 1} to halve it {n - 1} times.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Read our own config.json or a diffusers UNet2DModel one (unknown keys are ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
        if "add_attention" in d:
            kw["add_mid_attention"] = d["add_attention"]
        return cls(**kw)


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017, sec. 3.5).

    emb[:, i] = sin(t * w_i), emb[:, half + i] = cos(t * w_i), w_i = max_period^(-i / (half - freq_shift)).
    Returns (B, dim); [cos, sin] order when ``flip_sin_to_cos``.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D (one per sample), got shape {tuple(timesteps.shape)}.")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))  # (half,)
    args = timesteps[:, None].float() * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, 2*half)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoidal embedding: Linear -> SiLU -> Linear (DDPM's "temb" dense layers)."""

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, add the time embedding, GroupNorm -> SiLU -> dropout -> conv3x3, plus shortcut.

    ``temb_channels=None`` gives the block without a time embedding that the VAE uses (sdlearn.models.autoencoder_kl).
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int, eps: float,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # a 1x1 conv matches channel counts for the residual when they differ
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # the same t-vector added at every pixel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Downsample2D(nn.Module):
    """Halve H and W with a strided 3x3 conv.

    ``padding=1`` pads every side (the UNet); ``padding=0`` pads only right and bottom by one pixel first,
    as the latent-diffusion autoencoder does (Rombach et al. 2022), which diffusers' AutoencoderKL keeps.
    """

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # (left, right, top, bottom)
        return self.conv(x)


class Upsample2D(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """One resolution level on the way down: residual blocks (each followed by attention if asked), then downsample.

    ``make_attention(channels)`` builds the attention after each residual block: a SelfAttentionBlock in
    UNet2DModel ("AttnDownBlock2D"), a Transformer2DModel with cross-attention in UNet2DConditionModel
    ("CrossAttnDownBlock2D"); None for a plain "DownBlock2D".
    """

    def __init__(self, in_ch, out_ch, temb_ch, num_layers, add_downsample, groups, eps, dropout=0.0,
                 make_attention=None):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb_ch, groups, eps, dropout) for i in range(num_layers)]
        )
        if make_attention is not None:
            self.attentions = nn.ModuleList([make_attention(out_ch) for _ in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch)]) if add_downsample else None

    def forward(self, x, temb, skips: list, encoder_hidden_states=None, attention_mask=None):
        attentions = getattr(self, "attentions", [None] * len(self.resnets))
        for resnet, attn in zip(self.resnets, attentions):
            x = resnet(x, temb)
            if attn is not None:
                x = attn(x, encoder_hidden_states, attention_mask)
            skips.append(x)  # push: the up path will concatenate this map
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x


class UpBlock(nn.Module):
    """One level on the way up: for each residual block, pop a skip map and concatenate it; then upsample."""

    def __init__(self, in_ch, prev_out_ch, out_ch, temb_ch, num_layers, add_upsample, groups, eps, dropout=0.0,
                 make_attention=None):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            skip_ch = in_ch if i == num_layers - 1 else out_ch  # channels of the map this block pops
            x_ch = prev_out_ch if i == 0 else out_ch
            resnets.append(ResnetBlock2D(x_ch + skip_ch, out_ch, temb_ch, groups, eps, dropout))
        self.resnets = nn.ModuleList(resnets)
        if make_attention is not None:
            self.attentions = nn.ModuleList([make_attention(out_ch) for _ in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if add_upsample else None

    def forward(self, x, temb, skips: list, encoder_hidden_states=None, attention_mask=None):
        attentions = getattr(self, "attentions", [None] * len(self.resnets))
        for resnet, attn in zip(self.resnets, attentions):
            x = torch.cat([x, skips.pop()], dim=1)  # pop: (B, C_x + C_skip, H, W)
            x = resnet(x, temb)
            if attn is not None:
                x = attn(x, encoder_hidden_states, attention_mask)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """At the lowest resolution: residual block, attention (when ``make_attention`` is given), residual block."""

    def __init__(self, ch, temb_ch, groups, eps, dropout=0.0, make_attention=None):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb_ch, groups, eps, dropout) for _ in range(2)])
        self.attentions = nn.ModuleList([make_attention(ch)] if make_attention is not None else [])

    def forward(self, x, temb, encoder_hidden_states=None, attention_mask=None):
        x = self.resnets[0](x, temb)
        for attn in self.attentions:
            x = attn(x, encoder_hidden_states, attention_mask)
        return self.resnets[1](x, temb)


def condition_kwargs(condition: torch.Tensor | None) -> dict:
    """How a condition reaches the UNet: integer class labels as ``class_labels``, vectors (text-encoder tokens
    (B, T, C)) as ``encoder_hidden_states``; no condition, no argument."""
    if condition is None:
        return {}
    return {"encoder_hidden_states": condition} if condition.is_floating_point() else {"class_labels": condition}


def build_unet(unet: nn.Module, config, attention_for, mid_attention) -> None:
    """Give ``unet`` the modules both UNets share, under diffusers' names: conv_in, time_embedding (and
    class_embedding), down_blocks, mid_block, up_blocks, conv_norm_out, conv_out.

    ``attention_for(level, block_type)`` returns the attention factory of a resolution level (``None``: no
    attention there); the up path's block i sits at level ``len(levels) - 1 - i``. ``mid_attention``: the
    middle block's factory, or None.
    """
    ch = config.block_out_channels
    temb_ch = ch[0] * 4  # DDPM: the time embedding is 4x the base channel count wide
    g, eps, dropout = config.norm_num_groups, config.norm_eps, getattr(config, "dropout", 0.0)
    unet.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
    unet.time_embedding = TimestepEmbedding(ch[0], temb_ch)
    if config.num_class_embeds is not None:  # class-conditional: a label's vector is added to the time embedding
        unet.class_embedding = nn.Embedding(config.num_class_embeds, temb_ch)

    unet.down_blocks = nn.ModuleList()
    out_ch = ch[0]
    for level, block_type in enumerate(config.down_block_types):
        in_ch, out_ch = out_ch, ch[level]
        unet.down_blocks.append(DownBlock(in_ch, out_ch, temb_ch, config.layers_per_block, level < len(ch) - 1, g, eps,
                                          dropout, attention_for(level, block_type)))
    unet.mid_block = MidBlock(ch[-1], temb_ch, g, eps, dropout, mid_attention)
    unet.up_blocks = nn.ModuleList()
    rev = list(reversed(ch))
    out_ch = rev[0]
    for i, block_type in enumerate(config.up_block_types):
        prev_out_ch, out_ch = out_ch, rev[i]
        in_ch = rev[min(i + 1, len(ch) - 1)]
        unet.up_blocks.append(UpBlock(in_ch, prev_out_ch, out_ch, temb_ch, config.layers_per_block + 1,
                                      i < len(ch) - 1, g, eps, dropout, attention_for(len(ch) - 1 - i, block_type)))
    unet.conv_norm_out = nn.GroupNorm(g, ch[0], eps=eps)
    unet.conv_out = nn.Conv2d(ch[0], config.out_channels, 3, padding=1)


def run_unet(unet: nn.Module, sample: torch.Tensor, temb: torch.Tensor, encoder_hidden_states=None,
             attention_mask=None) -> torch.Tensor:
    """The U: down the levels pushing every map on a stack, the middle, up the levels popping them."""
    x = unet.conv_in(sample)  # (B, C0, H, W)
    skips = [x]
    for block in unet.down_blocks:
        x = block(x, temb, skips, encoder_hidden_states, attention_mask)
    x = unet.mid_block(x, temb, encoder_hidden_states, attention_mask)
    for block in unet.up_blocks:
        x = block(x, temb, skips, encoder_hidden_states, attention_mask)
    return unet.conv_out(F.silu(unet.conv_norm_out(x)))  # (B, out_channels, H, W)


def embed_time_and_class(unet: nn.Module, sample: torch.Tensor, timestep, class_labels) -> torch.Tensor:
    """The vector every residual block receives: MLP(sinusoid(t)), plus the label's embedding row when the model
    is class-conditional (diffusers' UNet2DModel and UNet2DConditionModel add them the same way)."""
    c = unet.config
    t = torch.as_tensor(timestep, device=sample.device)
    if t.ndim == 0:
        t = t.expand(sample.shape[0])
    if t.shape[0] != sample.shape[0]:
        raise ValueError(f"got {t.shape[0]} timesteps for a batch of {sample.shape[0]}: pass one or one per sample.")
    temb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift).to(sample.dtype)  # (B, C0)
    temb = unet.time_embedding(temb)  # (B, 4*C0)
    n = c.num_class_embeds
    if n is None:
        if class_labels is not None:
            raise ValueError("this model is not class-conditional (its config has no num_class_embeds): call it "
                             "without class_labels.")
        return temb
    if class_labels is None:
        raise ValueError(f"this model is class-conditional: pass class_labels, one integer in [0, {n - 1}] per sample "
                         f"(index {n - 1} is the null class that classifier-free guidance uses, when it was trained so).")
    labels = torch.as_tensor(class_labels, device=sample.device)
    if labels.ndim == 0:
        labels = labels.expand(sample.shape[0])
    if labels.shape != (sample.shape[0],) or labels.is_floating_point():
        raise ValueError(f"class_labels must be {sample.shape[0]} integers (one per sample), got "
                         f"{tuple(labels.shape)} of {labels.dtype}.")
    if labels.min() < 0 or labels.max() >= n:
        raise ValueError(f"class_labels must lie in [0, {n - 1}] (num_class_embeds = {n}); got "
                         f"{labels.min().item()}..{labels.max().item()}.")
    return temb + unet.class_embedding(labels).to(temb.dtype)


class UNet2DModel(nn.Module):
    """eps_theta(x_t, t): maps a noisy sample and its timestep to a tensor of the same shape."""

    config_name = "config.json"
    weights_name = "diffusion_pytorch_model.safetensors"

    def __init__(self, config: UNetConfig | None = None, **overrides):
        super().__init__()
        config = config or UNetConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        g, eps = config.norm_num_groups, config.norm_eps

        def self_attention(level: int, block_type: str):
            if "Attn" not in block_type:
                return None
            return lambda channels: SelfAttentionBlock(channels, config.attention_head_dim, g, eps)

        build_unet(self, config, self_attention, self_attention(-1, "Attn") if config.add_mid_attention else None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """sample: x_t (B, C, H, W); timestep: an int, a float, or a (B,) tensor (fractional allowed);
        class_labels (B,) integers, for a class-conditional model. Returns eps_theta as a tensor (B, C_out, H, W)."""
        self._check_input(sample)
        temb = embed_time_and_class(self, sample, timestep, class_labels)  # (B, 4*C0)
        return run_unet(self, sample, temb)

    def _check_input(self, sample: torch.Tensor) -> None:
        import warnings

        from .input_checks import channel_advice, size_advice

        c = self.config
        if sample.ndim != 4 or sample.shape[1] != c.in_channels:
            raise ValueError(f"UNet expects x_t shaped (B, {c.in_channels}, H, W), got {tuple(sample.shape)}. "
                             + channel_advice(tuple(sample.shape), c.in_channels))
        factor = 2 ** (len(c.block_out_channels) - 1)
        if sample.shape[-1] % factor or sample.shape[-2] % factor:
            raise ValueError(f"H and W must be divisible by {factor} (the UNet halves them {factor.bit_length() - 1} times); "
                             f"got {tuple(sample.shape[-2:])}.")
        if tuple(sample.shape[-2:]) != (c.sample_size, c.sample_size):
            warnings.warn(size_advice(tuple(sample.shape[-2:]), c.sample_size, "UNet2DModel"),
                          stacklevel=5)  # _check_input, forward, torch's two __call__ frames, the caller

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write config.json + diffusion_pytorch_model.safetensors (diffusers' layout)."""
        from ..utils.files import save_model_folder

        config = dict(self.config.to_dict(), _class_name="UNet2DModel", add_attention=self.config.add_mid_attention)
        save_model_folder(self, folder, config)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> UNet2DModel:
        from ..utils.files import load_model_folder

        return load_model_folder(cls, UNetConfig, folder)
