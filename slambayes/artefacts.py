"""Artefacts of real survey spectra, injected into clean ones (for robustness tests).

What no emulator predicts and pipelines leave behind: unflagged cosmic rays and
sky residuals (single-pixel spikes up or down, ivar left as it is) and spectra
that were never continuum-normalized (flux scaled by a constant). Each function
returns a new `Spectra` (the input is not changed) and is deterministic for a
given seed, so a robustness figure can be reproduced.
"""
from __future__ import annotations

import numpy as np

__all__ = ["add_spikes", "scale_flux"]


def add_spikes(spectra, fraction=0.01, amplitude=(0.3, 5.0), negative=0.3, seed=0):
    """Add single-pixel spikes to a fraction of each spectrum's good pixels.

    fraction : share of the good pixels hit per spectrum (at least one pixel)
    amplitude : (low, high) of the spike height in units of the spectrum's median flux,
        drawn log-uniform (cosmic rays span decades)
    negative : share of the spikes that are dips (sky over-subtraction), their depth
        capped at 0.9 × the local flux so that the flux stays positive
    Returns (spectra with spikes, hit (n_star, n_pix) boolean mask).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), not {fraction!r}")
    lo, hi = amplitude
    if not 0 < lo <= hi:
        raise ValueError(f"amplitude must be (low, high) with 0 < low <= high, not {amplitude!r}")
    rng = np.random.default_rng(seed)
    flux = np.array(spectra.flux, float)
    hit = np.zeros(flux.shape, bool)
    for i in range(spectra.n_star):
        good = np.flatnonzero(spectra.ivar[i] > 0)
        if good.size == 0:
            continue
        pix = rng.choice(good, max(1, int(round(fraction * good.size))), replace=False)
        height = np.exp(rng.uniform(np.log(lo), np.log(hi), pix.size)) * np.median(flux[i, good])
        down = rng.random(pix.size) < negative
        height[down] = -np.minimum(height[down], 0.9 * np.abs(flux[i, pix[down]]))
        flux[i, pix] += height
        hit[i, pix] = True
    return spectra.replace(flux=flux), hit


def scale_flux(spectra, factor):
    """The spectra with flux × factor and ivar / factor² (a spectrum never normalized)."""
    factor = float(factor)
    if not (np.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a positive number, not {factor!r}")
    return spectra.replace(flux=spectra.flux * factor, ivar=spectra.ivar / factor**2)
