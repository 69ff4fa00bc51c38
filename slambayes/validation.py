"""Validation against known labels: scatter, bias, error model, calibration."""
from __future__ import annotations

import numpy as np
from astropy.table import Table
from scipy.optimize import curve_fit
from scipy.stats import norm

__all__ = ["scatter_bias", "scatter_by_snr", "error_model", "fit_error_model", "calibration",
           "labels_from_catalog"]


def labels_from_catalog(catalog, label_names):
    """(estimates, errors) arrays (n, k) from a `fit_map` catalog."""
    est = np.column_stack([np.asarray(catalog[n], float) for n in label_names])
    err = np.column_stack([np.asarray(catalog[n + "_err"], float) for n in label_names])
    return est, err


def scatter_bias(estimate, truth):
    """Paper eqs. 9–10 per label: bias = mean(est − truth), scatter = std(est − truth).
    NaN rows (failed fits) are ignored. Returns (scatter (k,), bias (k,))."""
    d = np.asarray(estimate, float) - np.asarray(truth, float)
    return np.nanstd(d, axis=0), np.nanmean(d, axis=0)


def scatter_by_snr(estimate, truth, snr, bins):
    """Scatter and bias per S/N bin. `bins` are edges (or distinct values when
    every snr equals one of them). Returns an astropy Table, one row per bin."""
    snr = np.asarray(snr, float)
    bins = np.asarray(bins, float)
    exact = np.all(np.isin(snr, bins))
    rows = []
    for i in range(len(bins) if exact else len(bins) - 1):
        sel = snr == bins[i] if exact else (snr >= bins[i]) & (snr < bins[i + 1])
        if not sel.any():
            continue
        s, b = scatter_bias(estimate[sel], truth[sel])
        rows.append((np.median(snr[sel]), int(sel.sum()), s, b))
    return Table(rows=rows, names=("snr", "n", "scatter", "bias"))


def error_model(snr, a, b, c):
    """σ(S/N) = a·exp(−b·S/N) + c (paper Table 1)."""
    return a * np.exp(-b * np.asarray(snr, float)) + c


def fit_error_model(snr, sigma):
    """Fit `error_model` to (snr, sigma) pairs, e.g. the per-bin scatter.
    Returns (a, b, c)."""
    snr, sigma = np.asarray(snr, float), np.asarray(sigma, float)
    p0 = (max(sigma.max() - sigma.min(), 1e-6), 3.0 / max(np.median(snr), 1e-3), max(sigma.min(), 0.0))
    popt, _ = curve_fit(error_model, snr, sigma, p0=p0, bounds=([0, 0, 0], [np.inf, np.inf, np.inf]),
                        maxfev=20000)
    return tuple(float(v) for v in popt)


def calibration(estimate, error, truth):
    """z = (est − truth)/σ per label: z-score std and coverage of the 68% and 95%
    Gaussian intervals (should be ≈ 1, 0.68, 0.95). Returns dict of (k,) arrays."""
    z = (np.asarray(estimate, float) - np.asarray(truth, float)) / np.asarray(error, float)
    ok = np.isfinite(z)
    zstd = np.array([np.std(z[ok[:, j], j]) for j in range(z.shape[1])])
    cov68 = np.array([np.mean(np.abs(z[ok[:, j], j]) < norm.ppf(0.84)) for j in range(z.shape[1])])
    cov95 = np.array([np.mean(np.abs(z[ok[:, j], j]) < norm.ppf(0.975)) for j in range(z.shape[1])])
    return dict(z_std=zstd, coverage68=cov68, coverage95=cov95)
