"""The catalog's check of its own Gaussian errors: is the Laplace approximation the posterior?

An emulator that bends on the scale of a star's own error (an RBF expansion
with a large γ, a faint star near the edge of the training set) gives skewed or
long-tailed posteriors. After the MAP fit (`slambayes.map_core`), importance
weights of draws from the Laplace Gaussian (widened by `LAPLACE_SCALE`) give the
posterior mean and σ of the density the fit maximizes. Where that σ exceeds the
Laplace one by more than `LAPLACE_LIMITS` allows, the fit widens each
parameter's σ to the sampled one (the model error's share with it); where the
mean lies more than `LAPLACE_LIMITS["shift"]` reported σ from the MAP,
`laplace_ok` is False: MAP ± σ does not describe that star's posterior, sample
it. (Not a flag bit: the fit is not wrong, its Gaussian summary is; on faint
stars near the edge of the training set it is common.) The same limits judge
NUTS draws in `slambayes.diagnostics.compare_to_laplace`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["LAPLACE_LIMITS", "LAPLACE_SCALE", "CHECK_COMPRESSION", "check_compression", "laplace_check",
           "laplace_verdict"]

# how far the posterior may be from the fit's Gaussian (Laplace) approximation, in units of its σ:
# the limits of `laplace_check` and of `slambayes.diagnostics.compare_to_laplace` for NUTS
LAPLACE_LIMITS = dict(shift=0.5, width=(0.8, 1.25))
LAPLACE_SCALE = 1.5        # the importance proposal is the Laplace Gaussian widened by this factor
# the check's draws are evaluated on the emulator's low-rank expansion at this setting (or the
# emulator's own, if it is compressed already): its predictions differ from the exact ones by
# ≤ 0.2 % of each pixel's CV error, and the draws need flux only, so 256 of them cost about what
# the fit does instead of several times more (`Emulator.expansion_at`)
CHECK_COMPRESSION = 0.002


def check_compression(emulator):
    """The compression the Laplace check evaluates its draws with (see CHECK_COMPRESSION)."""
    return float(getattr(emulator, "compression", 0.0) or CHECK_COMPRESSION)


def laplace_check(prob, theta, cov_std, n_draws, seed=0):
    """How well the Laplace approximation N(θ̂, cov) describes the density the fit maximizes
    (the box prior included), by importance sampling: antithetic draws from the Laplace
    Gaussian widened by `LAPLACE_SCALE`, weighted by density / proposal (the flux of the draws
    from the low-rank expansion, `CHECK_COMPRESSION`). Returns the
    posterior mean − θ̂ and the posterior σ, both per parameter in units of the Laplace σ
    ((n,), (n,)): what `compare_to_laplace` measures with NUTS draws, at the cost of
    n_draws flux evaluations in one matrix product. Deterministic for a seed.

    prob : a solved star (`slambayes.map_core`'s problem): `eval(θ)` → whitened residuals,
        `objective(θs)` → ½ χ² plus prior terms of (m, n) standardized points, `space` the box
    theta : (n,) the MAP, cov_std : (n, n) its covariance, both standardized"""
    n = theta.size
    L = np.linalg.cholesky(cov_std)
    x = np.random.default_rng(seed).standard_normal((n_draws // 2, n))
    x = np.vstack([x, -x])
    # moment-matched: the draws' own mean and covariance are exactly 0 and I, so that the same
    # draws, shared by every star, add no bias of their own to the shift and width
    x = LAPLACE_SCALE * x @ np.linalg.inv(np.linalg.cholesky(x.T @ x / len(x))).T
    pts = theta + x @ L.T
    inside = np.all((pts >= prob.space.low_std) & (pts <= prob.space.high_std), 1)
    log_w = np.full(len(pts), -np.inf)
    phi0 = 0.5 * float(np.sum(prob.eval(theta)[0] ** 2))      # the fit's own residuals (cached)
    log_w[inside] = phi0 - prob.objective(pts[inside]) + 0.5 * np.sum((x[inside] / LAPLACE_SCALE) ** 2, 1)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = w @ pts
    sd = np.sqrt(np.diag(cov_std))
    return (mean - theta) / sd, np.sqrt(w @ (pts - mean) ** 2) / sd


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
