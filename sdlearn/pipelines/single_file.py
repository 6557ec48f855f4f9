"""Original Stable Diffusion single-file checkpoints (Stability's layout) <-> sdlearn's modules.

The CompVis/Stability code stores one state dict with three prefixes:
    model.diffusion_model.*          the UNet (input_blocks / middle_block / output_blocks)
    first_stage_model.*              the autoencoder (encoder.down.i.block.j, decoder.up.i..., mid.attn_1 as 1x1 convs)
    cond_stage_model.transformer.*   the CLIP text encoder (transformers' CLIPTextModel keys after the prefix)
diffusers' module names (which sdlearn uses) group the same weights differently. ``ldm_key`` maps each of sdlearn's
keys to the original one; loading inverts that table for the model built from the config, so every key must
match (strict). A single file carries no tokenizer (it comes from a folder) and no config: sdlearn takes the
configs from a diffusers-format folder when given (``config=``), otherwise infers a Stable Diffusion 1.x-style
config from the tensors' shapes (8 heads with 1x1-conv projections; 64 channels per head with linear ones, as 2.x).

Only ``.safetensors``: a ``.ckpt`` is a pickle, and unpickling runs code stored in the file.
"""

from __future__ import annotations

import json
import os
import re

import torch

from ..models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from ..models.unet_2d_condition import UNet2DConditionConfig, UNet2DConditionModel
from ..schedulers import PNDMScheduler
from .ddpm import SCHEDULER_CLASSES

UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
CKPT_ADVICE = ("a .ckpt file is a Python pickle: loading it runs code stored in the file. Convert it once, in a "
               "trusted environment (a throwaway container), to safetensors:\n  python -c \"import torch, "
               "safetensors.torch as st; sd = torch.load('model.ckpt', map_location='cpu', weights_only=True); "
               "sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous() for k, v in sd.items() if "
               "isinstance(v, torch.Tensor)}, 'model.safetensors')\"\nthen load model.safetensors.")

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _rename(rest: str, table) -> str:
    head, _, tail = rest.partition(".")
    for new, old in table:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return head + ("." + tail if tail else "")


def unet_ldm_key(key: str, config: UNet2DConditionConfig) -> str:
    """The original UNet key (without prefix) of one of sdlearn's (diffusers') UNet keys."""
    n = config.layers_per_block
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "class_embedding": "label_emb"}
    for new, old in fixed.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + level * (n + 1) + j
        return f"input_blocks.{block}.0.{_rename(rest, _RESNET)}" if kind == "resnets" else f"input_blocks.{block}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{1 + int(m[1]) * (n + 1) + n}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{0 if m[1] == '0' else 2}.{_rename(m[2], _RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = level * (n + 1) + j
        return f"output_blocks.{block}.0.{_rename(rest, _RESNET)}" if kind == "resnets" else f"output_blocks.{block}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        level = int(m[1])
        has_attention = config.up_block_types[level].startswith("CrossAttn")
        return f"output_blocks.{level * (n + 1) + n}.{2 if has_attention else 1}.conv.{m[2]}"
    raise KeyError(f"no original name for UNet key {key!r}")


def vae_ldm_key(key: str, config: AutoencoderKLConfig) -> str:
    """The original autoencoder key (without prefix) of one of sdlearn's (diffusers') AutoencoderKL keys."""
    levels = len(config.block_out_channels)
    for side in ("encoder", "decoder"):
        if key.startswith(f"{side}.conv_norm_out."):
            return f"{side}.norm_out." + key.split(".", 2)[2]
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], (('conv_shortcut', 'nin_shortcut'),))}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):  # the original counts up levels upwards
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_rename(m[3], (('conv_shortcut', 'nin_shortcut'),))}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename(m[3], (('conv_shortcut', 'nin_shortcut'),))}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        return f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTN)}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def _text_model_key(key: str) -> str:
    """transformers 5 names CLIPTextModel's weights embeddings.*, encoder.*, final_layer_norm.*; the original files
    (and transformers 4) put them under text_model.*."""
    return key if key.startswith("text_model.") else "text_model." + key


def _is_vae_attention_linear(key: str) -> bool:
    return bool(re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", key))


def to_single_file(pipe, path: str | os.PathLike) -> None:
    """Write the pipeline's vae, text_encoder and unet as one original-layout ``.safetensors`` file."""
    from safetensors.torch import save_file

    if not os.fspath(path).endswith(".safetensors"):
        raise ValueError("write single files as .safetensors (never a pickled .ckpt).")
    tensors = {UNET + unet_ldm_key(k, pipe.unet.config): v for k, v in pipe.unet.state_dict().items()}
    for k, v in pipe.vae.state_dict().items():
        ldm = vae_ldm_key(k, pipe.vae.config)
        tensors[VAE + ldm] = v[:, :, None, None] if _is_vae_attention_linear(ldm) else v  # 1x1 convs there
    if pipe.text_encoder is not None:  # original files name CLIP's weights text_model.* (transformers 4's names)
        tensors.update({TEXT + _text_model_key(k): v for k, v in pipe.text_encoder.state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, os.fspath(path))


# ------------------------------------------------------------------ configs from the tensors
def _infer_unet_config(sd: dict) -> UNet2DConditionConfig:
    ch0 = sd["input_blocks.0.0.weight"].shape[0]
    levels = 1 + len({k.split(".")[1] for k in sd if re.match(r"input_blocks\.\d+\.0\.op\.weight$", k)})
    num_blocks = len({k.split(".")[1] for k in sd if k.startswith("input_blocks.")})
    per_level = num_blocks // levels - 1
    channels, attention = [], []
    for level in range(levels):
        first = 1 + level * (per_level + 1)
        channels.append(sd[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0])
        attention.append(any(k.startswith(f"input_blocks.{first}.1.") for k in sd))
    to_k = next(v for k, v in sd.items() if k.endswith("attn2.to_k.weight"))
    linear = next(v for k, v in sd.items() if k.endswith("proj_in.weight")).ndim == 2
    heads = tuple(c // 64 for c in channels) if linear else 8  # SD 2.x: 64 channels per head; SD 1.x: 8 heads
    return UNet2DConditionConfig(
        sample_size=64, in_channels=sd["input_blocks.0.0.weight"].shape[1], out_channels=sd["out.2.weight"].shape[0],
        block_out_channels=tuple(channels), layers_per_block=per_level, cross_attention_dim=to_k.shape[1],
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        attention_head_dim=heads, use_linear_projection=linear, norm_num_groups=32)


def _infer_vae_config(sd: dict) -> AutoencoderKLConfig:
    levels = len({k.split(".")[2] for k in sd if k.startswith("encoder.down.")})
    channels = tuple(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in range(levels))
    per_level = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    return AutoencoderKLConfig(in_channels=sd["encoder.conv_in.weight"].shape[1],
                               out_channels=sd["decoder.conv_out.weight"].shape[0],
                               latent_channels=sd["post_quant_conv.weight"].shape[0], block_out_channels=channels,
                               down_block_types=("DownEncoderBlock2D",) * levels,
                               up_block_types=("UpDecoderBlock2D",) * levels, layers_per_block=per_level,
                               norm_num_groups=32, sample_size=512, scaling_factor=0.18215)


def _infer_text_config(sd: dict):
    from transformers import CLIPTextConfig

    sd = {_text_model_key(k): v for k, v in sd.items()}
    emb = sd["text_model.embeddings.token_embedding.weight"]
    layers = len({k.split(".")[3] for k in sd if k.startswith("text_model.encoder.layers.")})
    return CLIPTextConfig(vocab_size=emb.shape[0], hidden_size=emb.shape[1], num_hidden_layers=layers,
                          num_attention_heads=max(1, emb.shape[1] // 64), hidden_act="quick_gelu",
                          intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                          max_position_embeddings=sd["text_model.embeddings.position_embedding.weight"].shape[0])


def _strict_load(model: torch.nn.Module, mapped: dict, what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise ValueError(f"the single file's {what} lacks {len(missing)} weights the config needs, e.g. {missing[:3]}: "
                         "is the config (config=FOLDER) the one this file was saved from?")
    wrong = [f"{k}: {tuple(v.shape)} in file, {tuple(expected[k].shape)} in model" for k, v in mapped.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"the single file's {what} does not fit its config: {wrong[:3]}.")
    model.load_state_dict({k: mapped[k] for k in expected}, strict=True)


def from_single_file(cls, path: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                     config: str | os.PathLike | None = None, prediction_type: str | None = None):
    """A pipeline of class ``cls`` from an original-layout ``.safetensors`` file (see the module docstring)."""
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = os.fspath(path)
    if path.endswith((".ckpt", ".pt", ".pth", ".bin")):
        raise ValueError(f"{os.path.basename(path)}: {CKPT_ADVICE}")
    if not path.endswith(".safetensors"):
        raise ValueError(f"{os.path.basename(path)} is not a .safetensors file; sdlearn reads single files only as "
                         "safetensors.")
    state = load_file(path)
    parts = {prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
             for prefix in (UNET, VAE, TEXT)}
    if not parts[UNET] or not parts[VAE]:
        unknown = [k for k in state if not k.startswith((UNET, VAE, TEXT, "cond_stage_model."))][:8]
        raise ValueError(f"{os.path.basename(path)} does not look like an original Stable Diffusion checkpoint (keys "
                         f"{UNET}*, {VAE}*, {TEXT}*); its first unknown keys: {unknown}. SD 2.x files (OpenCLIP "
                         "text encoder) and SDXL are not supported.")
    folder = os.fspath(config) if config is not None else None
    tokenizer_path = os.fspath(tokenizer) if tokenizer is not None else (
        os.path.join(folder, "tokenizer") if folder else None)
    if parts[TEXT] and tokenizer_path is None:
        raise ValueError("a single file carries no tokenizer: pass tokenizer=FOLDER (a folder with CLIP's tokenizer "
                         "files, e.g. a Stable Diffusion folder's tokenizer/).")

    def folder_json(name, file):
        p = os.path.join(folder, name, file) if folder else None
        return json.load(open(p)) if p and os.path.isfile(p) else None

    unet_cfg = folder_json("unet", "config.json")
    unet_cfg = UNet2DConditionConfig.from_dict(unet_cfg) if unet_cfg else _infer_unet_config(parts[UNET])
    vae_cfg = folder_json("vae", "config.json")
    vae_cfg = AutoencoderKLConfig.from_dict(vae_cfg) if vae_cfg else _infer_vae_config(parts[VAE])
    unet, vae = UNet2DConditionModel(unet_cfg), AutoencoderKL(vae_cfg)
    unet_names = {k: unet_ldm_key(k, unet_cfg) for k in unet.state_dict()}  # sdlearn's name -> the original's
    _strict_load(unet, {k: parts[UNET][ldm] for k, ldm in unet_names.items() if ldm in parts[UNET]}, "UNet")
    vae_weights = {}
    for k in vae.state_dict():
        ldm = vae_ldm_key(k, vae_cfg)
        if ldm in parts[VAE]:
            v = parts[VAE][ldm]
            vae_weights[k] = v[:, :, 0, 0] if _is_vae_attention_linear(ldm) and v.ndim == 4 else v
    _strict_load(vae, vae_weights, "autoencoder")
    text_encoder = None
    if parts[TEXT]:
        text_path = os.path.join(folder, "text_encoder") if folder else None
        text_cfg = CLIPTextConfig.from_pretrained(text_path) if text_path and os.path.isdir(text_path) else \
            _infer_text_config(parts[TEXT])
        text_encoder = CLIPTextModel(text_cfg).eval()
        by_original = {_text_model_key(k): k for k in text_encoder.state_dict()}
        weights = {by_original.get(k, k): v for k, v in parts[TEXT].items()
                   if not k.endswith("position_ids")}  # a buffer some files carry, not a weight
        _strict_load(text_encoder, weights, "text encoder")
    tok = CLIPTokenizer.from_pretrained(tokenizer_path) if tokenizer_path else None
    sched_cfg = folder_json("scheduler", "scheduler_config.json")
    if sched_cfg:
        scheduler = SCHEDULER_CLASSES[sched_cfg.get("_class_name", "PNDMScheduler")].from_config(sched_cfg)
    else:  # Stable Diffusion 1.x's scheduler_config.json
        scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    if prediction_type is not None:  # not stored in the file (SD 2.x 768 models use v_prediction)
        scheduler = type(scheduler).from_config(dict(scheduler.config), prediction_type=prediction_type)
    return cls(vae=vae.eval(), text_encoder=text_encoder, tokenizer=tok, unet=unet.eval(), scheduler=scheduler)
