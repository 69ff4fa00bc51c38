"""The catalog's check of its own Gaussian errors: is the Laplace approximation the posterior?

An emulator that bends on the scale of a star's own error (an RBF expansion
with a large γ, a faint star near the edge of the training set) gives skewed or
long-tailed posteriors. After the MAP fit (`slambayes.map_core`), importance
weights of Student-t draws about the MAP (`slambayes.posterior_summary`: the same
draws the star's posterior summary starts from) give the posterior mean and σ of
the density the fit maximizes. Where that σ exceeds the Laplace one by more than
`LAPLACE_LIMITS` allows, the fit widens each parameter's σ to the sampled one (the
model error's share with it); where the mean lies more than
`LAPLACE_LIMITS["shift"]` reported σ from the MAP, `laplace_ok` is False: MAP ± σ
does not describe that star's posterior (the catalog's posterior summary does). (Not
a flag bit: the fit is not wrong, its Gaussian summary is; on faint stars near the
edge of the training set it is common.) The same limits judge
NUTS draws in `slambayes.diagnostics.compare_to_laplace`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["LAPLACE_LIMITS", "CHECK_COMPRESSION", "check_compression", "laplace_check", "within_limits",
           "laplace_verdict"]

# how far the posterior may be from the fit's Gaussian (Laplace) approximation, in units of its σ:
# the limits of `laplace_check` and of `slambayes.diagnostics.compare_to_laplace` for NUTS
LAPLACE_LIMITS = dict(shift=0.5, width=(0.8, 1.25))
# the check's draws are evaluated on the emulator's low-rank expansion at this setting (or the
# emulator's own, if it is compressed already): its predictions differ from the exact ones by
# ≤ 0.2 % of each pixel's CV error, and the draws need flux only, so 256 of them cost about what
# the fit does instead of several times more (`Emulator.expansion_at`)
CHECK_COMPRESSION = 0.002


def check_compression(emulator):
    """The compression the Laplace check evaluates its draws with (see CHECK_COMPRESSION)."""
    return float(getattr(emulator, "compression", 0.0) or CHECK_COMPRESSION)


def laplace_check(draws, theta, cov_std, space):
    """How well the Laplace approximation N(θ̂, cov) describes the density the fit maximizes
    (the box prior included), by importance sampling: `draws` (`slambayes.posterior_summary.Draws`,
    Student-t about θ̂ with scale cov), weighted by density / proposal inside the box. Returns
    the posterior mean − θ̂ and the posterior σ, both per parameter in units of the Laplace σ
    ((n,), (n,)): what `compare_to_laplace` measures with NUTS draws.

    theta : (n,) the MAP, cov_std : (n, n) its covariance, both standardized; space : the box"""
    pts = draws.phi
    inside = np.all((pts >= space.low_std) & (pts <= space.high_std), 1)
    log_w = np.where(inside, draws.log_target - draws.log_q, -np.inf)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = w @ pts
    sd = np.sqrt(np.diag(cov_std))
    return (mean - theta) / sd, np.sqrt(w @ (pts - mean) ** 2) / sd


def within_limits(shift, width):
    """Whether a posterior whose mean − MAP and σ are `shift` and `width` (n,) reported σ is the
    reported Gaussian by `LAPLACE_LIMITS` (every parameter)."""
    lo, hi = LAPLACE_LIMITS["width"]
    shift, width = np.asarray(shift, float), np.asarray(width, float)
    return bool(np.all(np.abs(shift) < LAPLACE_LIMITS["shift"]) and np.all((width > lo) & (width < hi)))


def laplace_verdict(shift, width):
    """What the check's (shift, width), each (n,), mean for the reported errors: (the factors on
    each parameter's Laplace σ (n,), whether any was widened, laplace_ok).

    Where the posterior is wider than the curvature at the MAP says, each σ becomes the sampled
    one, never narrower than the Laplace σ (a posterior cut by the box is narrower, but about
    its mean, not about the MAP at the edge). MAP ± the reported σ misdescribes a posterior
    whose mean lies `LAPLACE_LIMITS["shift"]` reported σ or more from the MAP: not laplace_ok."""
    shift, width = np.asarray(shift, float), np.asarray(width, float)
    widened = bool(width.max() >= LAPLACE_LIMITS["width"][1])
    reported = np.maximum(width, 1.0) if widened else np.ones_like(width)
    return reported, widened, bool(np.all(np.abs(shift / reported) < LAPLACE_LIMITS["shift"]))
