"""Start points of the MAP fit: the training stars whose model spectra fit a spectrum best.

A least-squares fit from one start can end in a local minimum; starting from the
training stars that already fit best (the emulator's predictions at their labels,
computed once per `fit_map` call: `map_fit.training_models`) starts the solver
near the star's own labels, at the cost of two matrix products per chunk of spectra.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CANDIDATES", "start_indices"]

CANDIDATES = 32     # training stars ranked by the capped χ², preselected with matrix products


def start_indices(train_models, flux, weights, n_starts, cap=None):
    """Indices (n_spec, n_starts) of the training stars whose model spectra fit best
    (lowest χ² with Eq. 8's diagonal weights). train_models (n_train, n_pix); flux, weights (n_spec, n_pix).
    With `cap` (σ), each pixel adds at most cap² to a candidate's χ², so that a few wild pixels
    (spikes) do not choose the start; that χ² ranks the `CANDIDATES` best by the plain χ² of
    the flux clipped to within cap σ of the models' range at each pixel (where a wild pixel
    adds no more than the models' own spread): two matrix products instead of one
    elementwise pass over every training model per spectrum."""
    def chi2(f):
        wf = weights * f
        return (wf * f).sum(1)[:, None] - 2 * wf @ train_models.T + weights @ (train_models**2).T

    if cap is None:
        return np.argsort(chi2(flux), axis=1, kind="stable")[:, :n_starts]
    sd = np.where(weights > 0, 1.0 / np.sqrt(np.where(weights > 0, weights, 1.0)), 0.0)
    clipped = np.clip(flux, train_models.min(0) - cap * sd, train_models.max(0) + cap * sd)
    n_cand = min(max(CANDIDATES, 4 * n_starts), train_models.shape[0])
    cand = np.sort(np.argpartition(chi2(clipped), n_cand - 1, axis=1)[:, :n_cand], axis=1)
    out = np.empty((flux.shape[0], n_starts), int)
    for i, (f, w) in enumerate(zip(flux, weights)):
        g = w > 0
        capped = np.minimum((train_models[np.ix_(cand[i], g)] - f[g]) ** 2 * w[g], cap**2).sum(1)
        out[i] = cand[i][np.argsort(capped, kind="stable")[:n_starts]]
    return out
