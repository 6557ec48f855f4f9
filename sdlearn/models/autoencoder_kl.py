"""The KL autoencoder of latent diffusion: images <-> a small latent z_0 (Rombach et al. 2022, sec. 3.1).

The encoder maps an image x (B, 3, H, W) to the parameters of a diagonal Gaussian posterior
q(z | x) = N(mu, diag(sigma^2)) over latents (B, c, H/f, W/f); the decoder maps a latent back to an image.
Trained like a VAE (Kingma & Welling 2014): a reconstruction error plus a small KL term
KL(q(z | x) || N(0, I)) that keeps the latent space smooth and roughly centred (``vae_loss``).
Latent diffusion then runs the DDPM of chapter 2 on z_0 = scaling_factor * z, a tensor f^2 * 3 / c
times smaller than the image.

Module and parameter names follow diffusers' ``AutoencoderKL`` (``encoder.down_blocks.i.resnets.j``,
``encoder.mid_block.attentions.0``, ``quant_conv``, ``post_quant_conv``, ``decoder.up_blocks``...), and
the interface too: ``encode(x).latent_dist``, ``decode(z).sample``, ``config.scaling_factor`` (applied
by the pipeline, never inside encode/decode), so chapter 7 can load Stable Diffusion's real VAE weights.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SelfAttentionBlock
from .input_checks import channel_advice, size_advice
from .unet_2d import Downsample2D, ResnetBlock2D, Upsample2D

VAE_NORM_EPS = 1e-6  # GroupNorm epsilon throughout the autoencoder (diffusers and the LDM code use 1e-6)


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """Defaults are Stable Diffusion's KL-f8 autoencoder (83.7 M parameters); the course's models are smaller."""

    in_channels: int = 3  # image channels: 3 for RGB, 1 for digits
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # one level per entry; f = 2 ** (levels - 1)
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4  # diffusers' names; one per level
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    layers_per_block: int = 2  # residual blocks per level in the encoder (the decoder has one more)
    latent_channels: int = 4  # c: channels of z (Stable Diffusion: 4)
    norm_num_groups: int = 32  # GroupNorm groups
    sample_size: int = 512  # the image size the model was trained at (informational)
    scaling_factor: float = 0.18215  # z_0 = scaling_factor * z has about unit variance (measured on data)
    mid_block_add_attention: bool = True  # self-attention between the two middle residual blocks
    use_quant_conv: bool = True  # a 1x1 conv on the posterior's parameters (kept for weight compatibility)
    use_post_quant_conv: bool = True  # a 1x1 conv on z before the decoder
    act_fn: str = "silu"
    force_upcast: bool = True  # diffusers decodes in float32 even when the rest runs in float16

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"block_out_channels has {n} levels but down_block_types has {len(self.down_block_types)} "
                             f"and up_block_types {len(self.up_block_types)}: give one block type per level.")
        bad = [b for b in (*self.down_block_types, *self.up_block_types)
               if b not in ("DownEncoderBlock2D", "UpDecoderBlock2D")]
        if bad:
            raise ValueError(f"sdlearn's AutoencoderKL builds DownEncoderBlock2D / UpDecoderBlock2D levels only; got {bad}.")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block_out_channels {c} is not divisible by norm_num_groups {self.norm_num_groups}.")
        if self.act_fn != "silu":
            raise ValueError(f"only act_fn='silu' is implemented (Stable Diffusion's), got {self.act_fn!r}.")

    @property
    def downsampling_factor(self) -> int:
        """f: the encoder halves H and W once between consecutive levels."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def with_factor(cls, f: int, channels: tuple[int, ...] | int = 64, **kwargs) -> "AutoencoderKLConfig":
        """A config with downsampling factor f (1, 2, 4, 8, ...): log2(f) + 1 levels of the given widths."""
        if f < 1 or f & (f - 1):
            raise ValueError(f"the downsampling factor f must be a power of two (2, 4, 8), got {f}.")
        levels = f.bit_length()
        if isinstance(channels, int):
            channels = (channels,) * levels
        if len(channels) != levels:
            raise ValueError(f"f = {f} needs {levels} levels of channels, got {len(channels)}: {channels}.")
        return cls(block_out_channels=tuple(channels), down_block_types=("DownEncoderBlock2D",) * levels,
                   up_block_types=("UpDecoderBlock2D",) * levels, **kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderKLConfig":
        """Read our own config.json or one written by diffusers' AutoencoderKL (unknown keys are ignored)."""
        unsupported = {k: d[k] for k in ("shift_factor", "latents_mean", "latents_std") if d.get(k) is not None}
        if unsupported:
            raise ValueError(f"this config uses {sorted(unsupported)}, which sdlearn's AutoencoderKL does not "
                             "implement (Stable Diffusion 1.x/2.x's VAE does not use them).")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


class DiagonalGaussianDistribution:
    """q(z | x) = N(mean, diag(exp(logvar))), built from the encoder's 2c output channels (mean, logvar)."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters  # (B, 2c, h, w)
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # (B, c, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)  # keeps exp() finite, as the LDM code does
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The reparameterisation trick (Kingma & Welling 2014, eq. 10): z = mean + std * eps, eps ~ N(0, I).

        The randomness sits in eps, outside the network, so gradients flow through mean and std.
        """
        gen_device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=gen_device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        """The most likely latent: the mean (what to use for reconstructions and for caching latents)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(N(mean, var) || N(0, I)) per sample, summed over latent elements (Kingma & Welling 2014, App. B):
        0.5 * sum(mean^2 + var - 1 - log var). Shape (B,)."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=(1, 2, 3))


@dataclass
class AutoencoderKLOutput:
    latent_dist: DiagonalGaussianDistribution


@dataclass
class DecoderOutput:
    sample: torch.Tensor


class MidBlock(nn.Module):
    """At the lowest resolution: residual block, single-head self-attention over all positions, residual block."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, None, groups, VAE_NORM_EPS) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [SelfAttentionBlock(channels, None, groups, VAE_NORM_EPS)] if add_attention else [])

    def forward(self, x):
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class EncoderBlock(nn.Module):
    """One level of the encoder: residual blocks, then (except at the last level) a strided conv that halves H, W."""

    def __init__(self, in_ch: int, out_ch: int, num_layers: int, groups: int, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, None, groups, VAE_NORM_EPS) for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch, padding=0)]) if add_downsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class DecoderBlock(nn.Module):
    """One level of the decoder: residual blocks, then (except at the last level) nearest upsampling + conv."""

    def __init__(self, in_ch: int, out_ch: int, num_layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, None, groups, VAE_NORM_EPS) for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if add_upsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nn.Module):
    """x (B, in, H, W) -> posterior parameters (B, 2c, H/f, W/f): mean and log-variance stacked on channels."""

    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [EncoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, add_downsample=i < len(ch) - 1)
             for i in range(len(ch))])
        self.mid_block = MidBlock(ch[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=VAE_NORM_EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)  # (B, ch[0], H, W)
        for block in self.down_blocks:
            h = block(h)  # ... down to (B, ch[-1], H/f, W/f)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, 2c, H/f, W/f)


class Decoder(nn.Module):
    """z (B, c, H/f, W/f) -> image (B, out, H, W): the encoder's mirror, with one more residual block per level."""

    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        rev, g = list(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], g, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            [DecoderBlock(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, g, add_upsample=i < len(rev) - 1)
             for i in range(len(rev))])
        self.conv_norm_out = nn.GroupNorm(g, rev[-1], eps=VAE_NORM_EPS)
        self.conv_out = nn.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))  # (B, ch[-1], H/f, W/f)
        for block in self.up_blocks:
            h = block(h)  # ... up to (B, ch[0], H, W)
        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, out, H, W)


class AutoencoderKL(nn.Module):
    """The KL-regularised autoencoder: ``encode(x).latent_dist`` -> q(z | x); ``decode(z).sample`` -> image."""

    config_name = "config.json"
    weights_name = "diffusion_pytorch_model.safetensors"

    def __init__(self, config: AutoencoderKLConfig | None = None, **overrides):
        super().__init__()
        config = config or AutoencoderKLConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if config.use_post_quant_conv else None
        self.tile_latent_size = None  # set by enable_tiling: decode larger latents in tiles of this size
        self.tile_overlap = 0.25

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, x: torch.Tensor) -> AutoencoderKLOutput:
        """x: images (B, in_channels, H, W) in [-1, 1], H and W divisible by f. Returns q(z | x)."""
        self._check_image(x)
        moments = self.encoder(x)  # (B, 2c, H/f, W/f)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(moments))

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        """z: unscaled latents (B, c, h, w) (divide the diffusion model's z_0 by scaling_factor first)."""
        c = self.config.latent_channels
        if z.ndim != 4 or z.shape[1] != c:
            raise ValueError(f"decode expects latents shaped (B, {c}, h, w), got {tuple(z.shape)}. Latents made by "
                             "a diffusion model are scaled: decode(z_0 / vae.config.scaling_factor).")
        tile = self.tile_latent_size
        if tile is not None and max(z.shape[-2:]) > tile:
            from .tiling import tiled_decode

            return DecoderOutput(sample=tiled_decode(self._decode, z, tile, self.tile_overlap,
                                                     self.config.downsampling_factor))
        return DecoderOutput(sample=self._decode(z))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def enable_tiling(self, tile_latent_size: int | None = None, overlap: float = 0.25) -> None:
        """Decode latents larger than ``tile_latent_size`` (default: the training size, sample_size / f) in
        overlapping tiles blended at the seams (``sdlearn.models.tiling``): memory of one tile, not of the image."""
        size = tile_latent_size or self.config.sample_size // self.config.downsampling_factor
        if size < 1 or not 0 <= overlap < 1:
            raise ValueError(f"tile_latent_size must be >= 1 and overlap in [0, 1); got {size} and {overlap}.")
        self.tile_latent_size, self.tile_overlap = int(size), float(overlap)

    def disable_tiling(self) -> None:
        self.tile_latent_size = None

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> DecoderOutput:
        """Reconstruct: encode, take the posterior's mode (or a sample), decode."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z)

    def _check_image(self, x: torch.Tensor) -> None:
        cfg, f = self.config, self.config.downsampling_factor
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"encode expects images shaped (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}. "
                             + channel_advice(tuple(x.shape), cfg.in_channels))
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"H and W must be divisible by the downsampling factor f = {f}; got {tuple(x.shape[-2:])}. "
                             f"Pad or resize the images to a multiple of {f}.")
        if tuple(x.shape[-2:]) != (cfg.sample_size, cfg.sample_size):
            warnings.warn(size_advice(tuple(x.shape[-2:]), cfg.sample_size, "This AutoencoderKL"), stacklevel=3)
        if not torch.jit.is_tracing() and x.numel() and x.detach().abs().max() > 1.5:
            raise ValueError(f"images must be scaled to [-1, 1]; these reach {x.detach().abs().max().item():.3g}. "
                             "For uint8 pixels use x / 127.5 - 1 (sdlearn.data.digits does this for you).")

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write config.json + diffusion_pytorch_model.safetensors, readable by diffusers' AutoencoderKL too."""
        from ..utils.files import save_model_folder

        config = dict(self.config.to_dict(), _class_name="AutoencoderKL")
        save_model_folder(self, folder, config)

    @classmethod
    def from_pretrained(cls, folder_or_name: str | os.PathLike) -> "AutoencoderKL":
        """A folder written by save_pretrained (sdlearn's or diffusers'), or a shipped name like "shapes-vae"."""
        from ..utils.files import load_model_folder, resolve_pretrained

        folder = resolve_pretrained(folder_or_name)
        if os.path.isdir(os.path.join(folder, "vae")) and not os.path.isfile(os.path.join(folder, cls.config_name)):
            folder = os.path.join(folder, "vae")  # a pipeline folder: its vae component
        return load_model_folder(cls, AutoencoderKLConfig, folder)


# ---------------------------------------------------------------------------- training objective


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256, sample: bool = False,
                   generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Unscaled latents of a whole image set (N, c, H/f, W/f): the posterior's mode, or a sample from it."""
    from tqdm.auto import tqdm

    vae.eval()
    device = vae.device
    out = []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="encoding"):
        posterior = vae.encode(images[start:start + batch_size].to(device)).latent_dist
        out.append((posterior.sample(generator) if sample else posterior.mode()).cpu())
    return torch.cat(out)


def measure_scaling_factor(latents: torch.Tensor) -> float:
    """scaling_factor = 1 / std of the latents of the training images (Rombach et al. 2022, sec. 4.3.2: the
    latents of a KL autoencoder are rescaled to unit standard deviation, because the diffusion model's noise
    schedule assumes data of about unit variance; Stable Diffusion's 0.18215 is such a measured number).
    One number over all latent elements. ``latents``: unscaled latents, e.g. from encode_dataset."""
    if latents.numel() < 2:
        raise ValueError("need at least two latent values to measure a standard deviation.")
    return float(1.0 / latents.float().flatten().std())
