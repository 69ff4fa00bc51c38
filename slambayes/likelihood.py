"""The likelihood of the paper's Eq. 8, with observed and model errors per pixel.

    ln p(f | θ) = −½ Σ_j [ (f_j − f_j(θ))² / (σ²_obs,j + σ²_j) + ln 2π(σ²_obs,j + σ²_j) ]

over good pixels (ivar > 0), σ_obs,j = ivar_j^(−1/2), σ_j the emulator's
model error. Everything is expressed through the per-pixel weight
w_j = 1 / (σ²_obs,j + σ²_j) = ivar_j / (1 + ivar_j σ²_j), which is 0 for a
bad pixel, so masked pixels drop out without special cases (and without NaN
gradients in jax). The least-squares residuals for the MAP are these weights'
square roots, applied by `slambayes.model_covariance.Whitener` (with or without
the correlated part of the model error).
"""
from __future__ import annotations

import numpy as np

__all__ = ["pixel_weights", "log_likelihood", "log_norm"]


def pixel_weights(ivar, sigma_model):
    """w = 1/(σ²_obs + σ²_model), shape like ivar; 0 where ivar = 0.

    ivar : (..., n_pix) inverse variance of the observed flux
    sigma_model : (n_pix,) model error in flux units
    """
    ivar = np.asarray(ivar, float)
    s2 = np.asarray(sigma_model, float) ** 2
    return np.where(ivar > 0, ivar / (1.0 + ivar * s2), 0.0)


def log_norm(weights):
    """The θ-independent part of Eq. 8: −½ Σ_j ln(2π / w_j) over good pixels, (...,)."""
    w = np.asarray(weights, float)
    good = w > 0
    return -0.5 * np.sum(np.where(good, np.log(2 * np.pi) - np.log(np.where(good, w, 1.0)), 0.0), -1)


def log_likelihood(flux, model, weights, norm=0.0, xp=np):
    """Eq. 8: −½ Σ_j w_j (f_j − f_j(θ))² + norm, with norm = `log_norm(weights)`.

    Works with numpy or jax.numpy (`xp`); broadcasts over leading axes of `model`.
    """
    r = flux - model
    return -0.5 * xp.sum(weights * r * r, axis=-1) + norm
