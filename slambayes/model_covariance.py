"""Correlated model error: a low-rank factor learned from out-of-fold CV residuals.

Eq. 8 treats the emulator's error as independent from pixel to pixel. It is
not: a star the training set covers poorly is mispredicted in many lines at
once, in the same direction. Independent errors then count the same mistake
once per pixel, which pulls the labels towards whatever the correlated part
of the error mimics and makes the formal errors too small. Here

    Σ_model = diag(ψ) + L Lᵀ,   diag(Σ_model) = σ²_model  (Eq. 8's per-pixel error)

with L (n_pix, m) the leading principal components of the out-of-fold
residuals of the training stars (the same residuals the CV MSE averages), so
each pixel keeps exactly its Eq. 8 variance and only the correlations are
added. For one spectrum, Σ = diag(σ²_obs + ψ) + L Lᵀ is applied through the
Woodbury identity, O(n_pix m²), by `slambayes.likelihood.StarNoise`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["error_factor"]


def error_factor(resid, good, rank):
    """Low-rank factor of the model-error correlation.

    resid : (n_train, n_pix) out-of-fold residuals (prediction − truth), any units
    good : (n_train, n_pix) bool, which residuals exist
    rank : number of components m kept

    Returns (n_pix, m) in units of each pixel's RMS residual (so the rows' squared
    norms are ≤ 1): multiply row j by σ_model,j to get flux units. A pixel without
    residuals gets a zero row.
    """
    good = np.asarray(good, bool)
    n_good = good.sum(0)
    rms = np.sqrt(np.where(good, resid**2, 0.0).sum(0) / np.maximum(n_good, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(good & (rms > 0), resid / rms, 0.0) / np.sqrt(np.maximum(n_good, 1))
    m = int(min(rank, *z.shape))
    if m == 0:
        return np.zeros((z.shape[1], 0))
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    return vt[:m].T * s[:m]
