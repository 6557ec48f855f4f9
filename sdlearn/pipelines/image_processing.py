"""Images and masks into the pipelines: PIL, numpy or torch in, (B, C, H, W) tensors out (diffusers' conventions).

- An image becomes (B, 3, H, W) in [-1, 1]: PIL images and numpy arrays (H, W, C) or (B, H, W, C) in [0, 1] are
  scaled by 2x - 1; a torch tensor (B, C, H, W) in [0, 1] is scaled, one already in [-1, 1] is kept (as diffusers).
- A mask becomes (B, 1, H, W) of 0 and 1 (binarised at 0.5): **1 (white) marks the region to repaint**, 0 the
  region to keep, as in diffusers' inpainting pipelines.
Nothing is resized: a size that is not a multiple of the VAE's factor is refused, with what to do.
"""

from __future__ import annotations

import numpy as np
import torch


def _to_tensor(image, what: str) -> torch.Tensor:
    """(B, C, H, W) float32 from PIL / list of PIL / numpy (H, W[, C]) or (B, H, W, C) / torch (C, H, W) or (B, C, H, W)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        image = [image]
    if isinstance(image, list) and image and Image is not None and isinstance(image[0], Image.Image):
        arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in image]  # (H, W[, C]) in [0, 1]
        image = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])  # (B, H, W, C)
    if isinstance(image, np.ndarray):
        a = image.astype(np.float32)
        if a.ndim == 2:
            a = a[None, :, :, None]  # one gray image
        elif a.ndim == 3:
            a = a[None]  # (1, H, W, C)
        if a.ndim != 4:
            raise ValueError(f"{what} as a numpy array must be (H, W, C) or (B, H, W, C), got shape {image.shape}.")
        return torch.from_numpy(a).permute(0, 3, 1, 2)  # (B, C, H, W)
    if isinstance(image, torch.Tensor):
        t = image.float()
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[None]
        if t.ndim != 4:
            raise ValueError(f"{what} as a tensor must be (C, H, W) or (B, C, H, W), got {tuple(image.shape)}.")
        return t
    raise TypeError(f"{what} must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}.")


def _check_size(x: torch.Tensor, multiple: int, what: str) -> None:
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"{what} is {h}x{w}; its height and width must be multiples of {multiple} (the VAE's factor "
                         f"times the UNet's): resize or crop it, e.g. to {h - h % multiple}x{w - w % multiple}.")


def preprocess_image(image, multiple: int) -> torch.Tensor:
    """An image for the VAE's encoder: (B, 3, H, W) in [-1, 1]."""
    x = _to_tensor(image, "image")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"image must have 3 (RGB) channels, got {x.shape[1]} (a 4-channel latent or RGBA image? "
                         "convert RGBA with PIL's .convert('RGB')).")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # gray to RGB
    _check_size(x, multiple, "image")
    if x.min() >= 0:  # [0, 1] -> [-1, 1]; an image already in [-1, 1] is kept, as diffusers does
        x = 2 * x - 1
    return x


def preprocess_mask(mask, multiple: int) -> torch.Tensor:
    """A mask: (B, 1, H, W) of 0.0 and 1.0, 1 where the image is repainted."""
    m = _to_tensor(mask, "mask_image")
    if m.shape[1] != 1:
        raise ValueError(f"mask_image must be single-channel (1 = repaint, 0 = keep), got {m.shape[1]} channels: "
                         "use a grayscale image (PIL mode 'L') or a (B, 1, H, W) tensor.")
    if m.min() < 0 or m.max() > 1:
        raise ValueError(f"mask_image values must lie in [0, 1] (1 = repaint), got {m.min().item():g}.."
                         f"{m.max().item():g}.")
    _check_size(m, multiple, "mask_image")
    return (m >= 0.5).float()  # binarised, as diffusers' mask processor does
