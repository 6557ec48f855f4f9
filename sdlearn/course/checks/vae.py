"""Checks for chapter 3: the VAE's posterior and its latent space (Kingma & Welling 2014; Rombach et al. 2022).

The reparameterised sample z = mean + exp(0.5 logvar) eps (Kingma & Welling 2014, eq. 10), the KL of a
diagonal Gaussian to N(0, I) (their App. B), and the scale factor 1 / std of the latents that brings them
to unit variance for diffusion (Rombach et al. 2022, sec. 4.3.2). The references are computed here from
the formulas, with torch alone: no check calls sdlearn's posterior, VAE loss or scale factor.
"""

from __future__ import annotations

import math
import numbers

import torch

from .core import (
    EXERCISES,
    LABELS,
    Exercise,
    _call,
    _Case,
    _close,
    _describe,
    _diagnose,
    _expect_tensor,
    _randn,
    _register,
    _unchanged,
)

EXERCISES.update({
    "ch03.reparameterize": Exercise(
        3, "the reparameterised sample", "Kingma & Welling 2014, eq. 10",
        "z = mean + exp(0.5 * logvar) * eps   (the standard deviation is exp(0.5 * logvar), as logvar = log sigma^2)",
        "reparameterize(mean, logvar, eps) -> z   (mean, logvar, eps and z shaped (B, C, H, W))", 2),
    "ch03.kl_diagonal_gaussian": Exercise(
        3, "the KL of a diagonal Gaussian to N(0, I)", "Kingma & Welling 2014, App. B",
        "KL(N(mean, diag(exp(logvar))) || N(0, I)) = 0.5 * sum over (C, H, W) of (mean^2 + exp(logvar) - 1 - logvar), "
        "one value per sample",
        "kl_diagonal_gaussian(mean, logvar) -> kl   (mean, logvar (B, C, H, W); kl shaped (B,))", 2),
    "ch03.scaling_factor": Exercise(
        3, "the latent scale factor", "Rombach et al. 2022, sec. 4.3.2",
        "scaling_factor = 1 / std(z): one standard deviation over all the latent elements together",
        "scaling_factor(latents) -> float   (latents (N, C, h, w), unscaled, as the encoder gives them)", 2),
})

LABELS.update({
    "sqrt_logvar": "sqrt(logvar) instead of exp(0.5 * logvar)",
    "logvar_as_std": "log-variance used as the standard deviation",
    "missing_mean": "the mean is missing",
    "missing_term": "a term is missing",
    "mean_for_sum": "mean instead of sum",
    "batch_reduced": "reduced over the batch too",
    "not_inverted": "std instead of 1 / std",
    "per_channel": "per channel instead of one number",
    "mean_abs_for_std": "mean absolute value instead of the standard deviation",
    "not_centred": "not centred on the mean",
})


# ============================================================================ chapter 3
SQRT_LOGVAR = ("the standard deviation is exp(0.5 * logvar): logvar is log(sigma^2), so sigma = exp(logvar / 2). "
               "sqrt(logvar) treats the log-variance as a variance (and is NaN wherever logvar < 0).")


@_register("ch03.reparameterize")
def _check_reparameterize(fn) -> None:
    """Kingma & Welling 2014, eq. 10: z = mean + sigma * eps, sigma = exp(0.5 logvar), with eps ~ N(0, I) given."""
    # (shape, dtype, logvar all positive?, whether mean and logvar carry gradients)
    cases = [((2, 4, 8, 8), torch.float32, True, False), ((1, 4, 4, 4), torch.float64, False, False),
             ((3, 4, 8, 8), torch.float32, False, True), ((2, 3, 4, 4), torch.float64, False, True)]
    for n, (shape, dtype, positive, grad) in enumerate(cases):
        mean, logvar, eps = _randn(shape, dtype, 300 + n), 1.5 * _randn(shape, dtype, 310 + n), _randn(shape, dtype, 320 + n)
        if positive:
            logvar = logvar.abs() + 0.1
        case = _Case("ch03.reparameterize", _describe(dtype, mean=mean) + f", logvar in [{float(logvar.min()):.2f}, "
                     f"{float(logvar.max()):.2f}]" + (", mean and logvar require grad" if grad else ""))
        args = (mean.clone().requires_grad_(grad), logvar.clone().requires_grad_(grad), eps.clone())
        got = _call(case, fn, *args)
        _unchanged(case, mean=(args[0], mean), logvar=(args[1], logvar), eps=(args[2], eps))
        m, lv, e = mean.double(), logvar.double(), eps.double()
        want = m + torch.exp(0.5 * lv) * e
        if (isinstance(got, torch.Tensor) and got.shape == want.shape and not torch.isfinite(got).all()
                and bool((lv < 0).any()) and bool((torch.isfinite(got) | (lv < 0)).all())):
            raise case.fail("z is NaN exactly where logvar < 0.", ("sqrt_logvar", SQRT_LOGVAR))
        got = _expect_tensor(case, got, want, dtype, "the sample z")
        _diagnose(case, got, want, dtype, {
            "variance": ("variance_for_std", m + torch.exp(lv) * e,
                         "exp(logvar) is the variance sigma^2; eps is scaled by the standard deviation "
                         "sigma = exp(0.5 * logvar)."),
            "sqrt": ("sqrt_logvar", m + lv.sqrt() * e if bool((lv >= 0).all()) else None, SQRT_LOGVAR),
            "logvar": ("logvar_as_std", m + lv * e,
                       "logvar is the LOG of the variance; the standard deviation that scales eps is exp(0.5 * logvar)."),
            "no_mean": ("missing_mean", torch.exp(0.5 * lv) * e,
                        "z = mean + sigma * eps: the noise is added to the mean; without it z is centred on 0."),
            "sign": ("wrong_sign", m - torch.exp(0.5 * lv) * e,
                     "add sigma * eps to the mean; subtracting it draws from the same distribution, but the check "
                     "gives you eps and expects + sigma * eps."),
        }, what="the sample z")
        if grad and not got.requires_grad:
            raise case.fail("z carries no gradient, though mean and logvar require one: did you call .detach(), "
                            ".item() or torch.no_grad()? The trick exists so that gradients flow through z to mean "
                            "and logvar (the randomness sits in eps, outside the network).")


@_register("ch03.kl_diagonal_gaussian")
def _check_kl(fn) -> None:
    """Kingma & Welling 2014, App. B: KL(N(mu, sigma^2) || N(0, 1)) = 0.5 (mu^2 + sigma^2 - 1 - log sigma^2), summed."""
    cases = [((2, 4, 8, 8), torch.float32), ((1, 4, 4, 4), torch.float64), ((3, 4, 4, 4), torch.float32),
             ((2, 3, 8, 8), torch.float64)]
    for n, (shape, dtype) in enumerate(cases):
        mean, logvar = 0.8 * _randn(shape, dtype, 330 + n), _randn(shape, dtype, 340 + n)
        case = _Case("ch03.kl_diagonal_gaussian", _describe(dtype, mean=mean, logvar=logvar))
        args = (mean.clone(), logvar.clone())
        got = _call(case, fn, *args)
        _unchanged(case, mean=(args[0], mean), logvar=(args[1], logvar))
        m, lv = mean.double(), logvar.double()

        def kl(var=None, minus_one=1.0, logvar_sign=-1.0, mean_sq=True, reduce="sum", half=0.5):
            var = lv.exp() if var is None else var
            terms = (m**2 if mean_sq else 0.0) + var - minus_one + logvar_sign * lv  # (B, C, H, W)
            return half * (terms.sum(dim=(1, 2, 3)) if reduce == "sum" else terms.mean(dim=(1, 2, 3)))  # (B,)

        want = kl()
        if isinstance(got, numbers.Real) or (isinstance(got, torch.Tensor) and got.ndim == 0):
            value = float(got)
            how = ("summed" if math.isclose(value, float(want.sum()), rel_tol=1e-4) else
                   "averaged" if math.isclose(value, float(want.mean()), rel_tol=1e-4) else "reduced")
            raise case.fail(f"the KL is one number ({value:.6g}); it should have shape {tuple(want.shape)}, one value "
                            "per sample.", ("batch_reduced", f"the KL of each sample was {how} over the batch. Sum over "
                                                            "the latent elements only: dim=(1, 2, 3) for (B, C, H, W) "
                                                            "(the VAE's loss averages over the batch later)."))
        got = _expect_tensor(case, got, want, dtype, "the KL",
                             shape_hint="Sum over the latent elements (C, H, W), one value per sample: shape (B,).")
        _diagnose(case, got, want, dtype, {
            "sign": ("wrong_sign", -want, "a KL divergence is never negative. App. B writes -D_KL = 0.5 * sum(1 + "
                                          "logvar - mean^2 - exp(logvar)) (the term of the ELBO); the KL is its negative."),
            "logvar_sign": ("wrong_sign", kl(logvar_sign=1.0), "the last term is - logvar (the log of the variance is "
                                                               "subtracted)."),
            "half": ("missing_coefficient", kl(half=1.0), "the factor 0.5 in front of the sum is missing."),
            "mean": ("mean_for_sum", kl(reduce="mean"),
                     "the KL of independent dimensions adds up: sum over (C, H, W), do not average."),
            "std": ("std_for_variance", kl(var=(0.5 * lv).exp()),
                    "the second term is the variance sigma^2 = exp(logvar); you used the standard deviation "
                    "exp(0.5 * logvar)."),
            "no_minus_one": ("missing_term", kl(minus_one=0.0), "each element contributes - 1 (so that N(0, 1) itself "
                                                                "has KL 0)."),
            "no_mean_sq": ("missing_term", kl(mean_sq=False), "each element contributes mean^2: moving the mean away "
                                                              "from 0 costs KL too."),
        }, what="the KL")


@_register("ch03.scaling_factor")
def _check_scaling_factor(fn) -> None:
    """Rombach et al. 2022, sec. 4.3.2: rescale the latents to unit standard deviation, scaling_factor = 1 / std(z)."""
    # channels with different means and spreads, as a VAE's latents have: (shape, dtype, means, stds)
    cases = [((16, 4, 8, 8), torch.float32, (0.6, -0.4, 0.2, 1.1), (4.0, 6.0, 5.0, 7.5)),
             ((1, 4, 4, 4), torch.float64, (0.3, -1.2, 0.5, 0.0), (1.5, 2.5, 0.8, 3.0)),
             ((8, 3, 8, 8), torch.float64, (2.0, -0.5, 0.4), (3.0, 5.0, 9.0))]
    for n, (shape, dtype, means, stds) in enumerate(cases):
        view = (1, len(means), 1, 1)
        latents = (_randn(shape, dtype, 350 + n).double() * torch.tensor(stds, dtype=torch.float64).view(view)
                   + torch.tensor(means, dtype=torch.float64).view(view)).to(dtype)
        case = _Case("ch03.scaling_factor", _describe(dtype, latents=latents) + f", channel means {list(means)}, "
                                                                                f"channel stds {list(stds)}")
        given = latents.clone()
        got = _call(case, fn, given)
        _unchanged(case, latents=(given, latents))
        z = latents.double().flatten()
        per_channel = latents.double().transpose(0, 1).flatten(1)  # (C, N h w)
        if isinstance(got, torch.Tensor) and got.numel() != 1:
            per = got.numel() == len(means)
            raise case.fail(f"the scale factor has shape {tuple(got.shape)}; it should be one number.",
                            ("per_channel", "take one standard deviation over all the latent elements together, "
                                            "channels included (latents.flatten()), not one per channel.") if per else None)
        if isinstance(got, torch.Tensor):
            got = got.detach().double().reshape(())
        elif isinstance(got, numbers.Real):
            got = torch.tensor(float(got), dtype=torch.float64)
        else:
            raise case.fail(f"the scale factor should be a number (a Python float), got {type(got).__name__}.")
        if not torch.isfinite(got):
            raise case.fail(f"the scale factor is {float(got)}; look for a division by zero.")
        if _close(got, 1 / z.std(correction=0), dtype):
            continue  # the biased estimate (divide by N) is as good as the unbiased one (N - 1) here

        def both(f):  # a slip, with either estimate of the standard deviation
            return {"": f(z.std()), "_biased": f(z.std(correction=0))}

        variants = {}
        for key, (label, f, detail) in {
            "std": ("not_inverted", lambda s: s,
                    "that is the standard deviation itself; the factor that brings it to 1 is its inverse, 1 / std."),
            "var": ("variance_for_std", lambda s: 1 / s**2,
                    "1 / variance over-corrects: scale by 1 / std so that the scaled latents have standard deviation 1."),
        }.items():
            variants |= {key + k: (label, v, detail) for k, v in both(f).items()}
        variants |= {
            "mean_abs": ("mean_abs_for_std", 1 / z.abs().mean(),
                         "the mean absolute value is not the standard deviation; use std over all latent elements."),
            "rms": ("not_centred", 1 / z.pow(2).mean().sqrt(),
                    "sqrt(mean(z^2)) includes the latents' mean; the standard deviation is taken around the mean."),
            "channel_mean": ("per_channel", 1 / per_channel.std(dim=1).mean(),
                             "one standard deviation over all the latent elements together, not an average of "
                             "per-channel ones: the channels' different means count too."),
        }
        _diagnose(case, got, 1 / z.std(), dtype, variants, what="the scale factor")
