"""Measuring generated digits: an evaluation classifier, the confident-sample share, and Frechet distance.

- ``DigitClassifier``: a small CNN trained by the project (``python -m sdlearn train-classifier``)
  on the 4,500 training digits, with "outlier exposure" (Hendrycks et al. 2019): pure noise,
  heavily blurred and pixel-shuffled images are trained towards the uniform distribution, so
  that the classifier is not confidently fooled by things that are not digits.
- confident share: the fraction of samples classified with max softmax probability >= 0.9.
- Frechet distance (Heusel et al. 2017, the "FID" formula, on this classifier's penultimate
  features instead of Inception's): ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).
- Shapes: ``read_shapes`` reads colour, shape, size and position back from a shapes image (defined in sdlearn.evaluation.shapes_checker).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.files import load_model_folder, save_model_folder
from .frechet import frechet_distance

CONFIDENCE = 0.9


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, ...] = (32, 64, 128)  # conv widths at 32, 16, 8 pixels
    feature_dim: int = 128  # penultimate features (used by the Frechet distance)
    num_classes: int = 10

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


class DigitClassifier(nn.Module):
    """(B, 1, 32, 32) in [-1, 1] -> logits (B, 10); ``features`` gives the penultimate layer."""

    config_name = "config.json"
    weights_name = "model.safetensors"

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClassifierConfig()
        layers, c_in = [], 1
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * (32 // 2 ** len(config.channels)) ** 2, config.feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (1, 32, 32):
            raise ValueError(f"the classifier reads (B, 1, 32, 32) digits in [-1, 1], got {tuple(x.shape)}.")
        return F.relu(self.fc(self.conv(x).flatten(1)))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    def save_pretrained(self, folder):
        save_model_folder(self, folder, dict(self.config.to_dict(), _class_name="DigitClassifier"))

    @classmethod
    def from_pretrained(cls, folder_or_name="mnist-classifier"):
        return load_model_folder(cls, ClassifierConfig, folder_or_name)


# ---------------------------------------------------------------------------- corruptions (the "not digits")
def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (B, C, H, W) with a Gaussian of standard deviation ``sigma`` pixels (separable, reflect padding)."""
    radius = max(1, int(3 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    C = x.shape[1]
    h = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).repeat(C, 1, 1, 1), groups=C)
    return F.conv2d(F.pad(h, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).repeat(C, 1, 1, 1), groups=C)


def pixel_shuffle(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Permute the pixels of each image at random: the same ink, no digit."""
    B = x.shape[0]
    flat = x.reshape(B, -1)
    idx = torch.stack([torch.randperm(flat.shape[1], generator=generator) for _ in range(B)])
    return flat.gather(1, idx).view_as(x)


def not_digits(x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Three kinds of non-digits built from real digits ``x`` (in [-1, 1]): pure noise, heavy blur, shuffled pixels."""
    B = x.shape[0]
    noise_kind = torch.rand(B, 1, 1, 1, generator=generator)
    gaussian = torch.randn(x.shape, generator=generator).clamp(-3, 3) / 3
    uniform = torch.rand(x.shape, generator=generator) * 2 - 1
    noise = torch.where(noise_kind < 0.5, gaussian, uniform)
    sigma = 2.5 + 1.5 * float(torch.rand(1, generator=generator))
    blurred = gaussian_blur(x, sigma)
    # stretch the blurred blob back to full contrast so brightness alone cannot give it away
    lo = blurred.amin(dim=(1, 2, 3), keepdim=True)
    hi = blurred.amax(dim=(1, 2, 3), keepdim=True)
    blurred = (blurred - lo) / (hi - lo).clamp(min=1e-6) * 2 - 1
    return {"noise": noise, "blur": blurred, "shuffle": pixel_shuffle(x, generator)}


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (augmentation)."""
    B = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    out = torch.empty_like(x)
    offsets = torch.randint(0, 2 * max_shift + 1, (B, 2), generator=generator)
    H, W = x.shape[-2:]
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + H, dx : dx + W]
    return out


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 30, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, progress: bool = True) -> DigitClassifier:
    """Cross-entropy on (shifted) digits + cross-entropy to the uniform distribution on non-digits."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    bar = tqdm(total=steps, disable=not progress, desc="classifier")
    for epoch in range(epochs):
        perm = torch.randperm(len(images), generator=g)
        for i in range(len(images) // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x, y = random_shift(images[idx], g), labels[idx]
            fakes = torch.cat(list(not_digits(images[idx[: batch_size // 4]], g).values()))
            logits = model(torch.cat([x, fakes]))
            loss_real = F.cross_entropy(logits[: len(x)], y, label_smoothing=0.0)
            loss_fake = -F.log_softmax(logits[len(x):], dim=1).mean()  # cross-entropy to uniform
            loss = loss_real + 0.5 * loss_fake
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


# ---------------------------------------------------------------------------- measures
def padded_to_32(x: torch.Tensor) -> torch.Tensor:
    """Digits at MNIST's own 28x28 (B, 1, 28, 28) -> (B, 1, 32, 32), with 2 background (-1) pixels on every side:
    the padding of the training digits (sdlearn.data.digits.to_model_range). 32x32 digits pass unchanged."""
    if x.ndim == 4 and tuple(x.shape[-2:]) == (28, 28):
        return F.pad(x, (2, 2, 2, 2), value=-1.0)
    return x


@torch.no_grad()
def classify(model: DigitClassifier, x: torch.Tensor, batch_size: int = 500):
    """(probabilities (B, 10), features (B, feature_dim)) for digits in [-1, 1] (28x28 ones are padded to 32x32)."""
    model.eval()
    x = padded_to_32(x)
    probs, feats = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(next(model.parameters()).device).float()
        f = model.features(xb)
        probs.append(F.softmax(model.head(f), dim=1).cpu())
        feats.append(f.cpu())
    return torch.cat(probs), torch.cat(feats)


def confident_share(probs: torch.Tensor, threshold: float = CONFIDENCE) -> float:
    """Share of images whose top class has probability >= threshold."""
    return float((probs.max(dim=1).values >= threshold).float().mean())


def digit_report(samples: torch.Tensor, classifier: DigitClassifier, reference: torch.Tensor) -> dict:
    """Confident share, class shares and Frechet distance of ``samples`` (B, 1, 32, 32) in [-1, 1] to ``reference``."""
    probs, feats = classify(classifier, samples)
    _, ref_feats = classify(classifier, reference)
    confident = probs.max(dim=1).values >= CONFIDENCE
    classes = probs.argmax(dim=1)
    shares = [float((classes[confident] == c).float().sum() / max(1, int(confident.sum()))) for c in range(10)]
    return {
        "n": len(samples),
        "confident_share": float(confident.float().mean()),
        "class_shares_among_confident": shares,
        "min_class_share": min(shares),
        "frechet_distance": frechet_distance(feats, ref_feats),
    }


def classifier_report(model: DigitClassifier, seed: int = 1234) -> dict:
    """Held-out accuracy and how often non-digits (noise, heavy blur, shuffled pixels) reach confidence 0.9."""
    from ..data.digits import load_digits

    test = load_digits("test")
    probs, _ = classify(model, test.images)
    report = {"held_out_accuracy": float((probs.argmax(1) == test.labels).float().mean()),
              "held_out_confident_share": confident_share(probs)}
    fakes = not_digits(test.images, torch.Generator().manual_seed(seed))
    for name, x in fakes.items():
        report[f"fooled_{name}"] = confident_share(classify(model, x)[0])
    return report




def quality_table(report: dict, real: dict, measured: dict | None = None, min_samples: int = 128) -> str:
    """Generated digits against real ones, measured the same way, as a text table (chapter 2, section 8).

    ``report`` and ``real``: :func:`digit_report` of the samples and of as many real digits. Below ``min_samples``
    (use the classifier's feature dimension: with fewer samples the feature covariances are singular) the Frechet
    distance and the smallest class share say more about the sample size than about the model: 16 real digits
    score a far larger distance than a model's samples, and some digit is missing from 16 by chance. They are
    then printed as "too few" and, when ``measured`` (the shipped model's quality.json: 256 samples, 1000 steps)
    is given, the measured figures stand next to them, labelled as such. Below ``min_samples`` the confident
    share comes with its 95% interval (Wilson's score interval for a binomial share).
    """
    enough = report["n"] >= min_samples

    def share(r: dict) -> str:
        p, n, z = r["confident_share"], r["n"], 1.96
        if n >= min_samples:
            return f"{p:.1%}"
        centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
        return f"{p:.0%} ({max(0.0, centre - half):.0%}-{min(1.0, centre + half):.0%})"  # Wilson's 95% interval

    def maybe(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if enough else f"too few (n < {min_samples})"

    columns = [("generated", report), ("real", real)]
    rows = [("samples", [str(r["n"]) for _, r in columns]),
            ("confident share (>=0.9)", [share(r) for _, r in columns]),
            ("smallest class share", [maybe(r, "min_class_share", ".1%") for _, r in columns]),
            ("Frechet distance", [maybe(r, "frechet_distance", ".2f") for _, r in columns])]
    header = ["", "generated", "real"]
    if measured is not None and not enough:
        header += ["shipped model, measured", "real, measured"]
        extra = [(str(measured["n"]), str(measured["n"])),
                 (f"{measured['confident_share']:.1%}", "-"),
                 (f"{measured['min_class_share']:.1%}", "-"),
                 (f"{measured['frechet_distance']:.2f}", f"{measured.get('real_vs_real_frechet', float('nan')):.2f}")]
        rows = [(name, values + list(more)) for (name, values), more in zip(rows, extra)]
    widths = [max(len(header[i]), *(len(v[i - 1]) if i else len(name) for name, v in rows)) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for name, values in rows:
        lines.append("  ".join([name.ljust(widths[0])] + [v.rjust(w) for v, w in zip(values, widths[1:])]))
    if measured is not None and not enough:
        lines.append(f"\nThe measured columns: the shipped model's own evaluation ({measured['n']} samples, "
                     f"{measured.get('num_inference_steps', '?')} DDPM steps; its model card and quality.json), not "
                     f"these {report['n']} samples.")
    return "\n".join(lines)
