"""The embedded demo data set: synthetic labelled spectra made by our own code.

These spectra are NOT physical models. They are a fast, honest stand-in with
the right shape: absorption lines at real (vacuum) line positions whose depths
and widths depend nonlinearly on Teff, log g and [Fe/H], on the paper's
3900–5800 Å grid at LAMOST-like resolution, with Gaussian noise at a chosen S/N.
"""
from __future__ import annotations

import numpy as np
from astropy.table import Table

from .preprocess import default_grid
from .spectra import Spectra

__all__ = ["make_demo", "demo_spectrum", "LINES", "DEMO_LABEL_NAMES", "DEMO_RANGES"]

DEMO_LABEL_NAMES = ["teff", "logg", "feh"]
DEMO_RANGES = np.array([[4000.0, 7500.0], [1.0, 5.0], [-2.0, 0.5]])

# (vacuum wavelength Å, species kind, oscillator-strength-like weight)
# kind: "H" Balmer, "ion" ionized metal (Ca II), "metal" neutral metal, "mol" CH G band
LINES = np.array([
    (3934.78, "ion", 3.0), (3969.59, "ion", 2.5),                       # Ca II K, H
    (4102.89, "H", 1.0), (4341.69, "H", 1.0), (4862.72, "H", 1.0),     # Hδ, Hγ, Hβ
    (4227.92, "metal", 1.5),                                            # Ca I
    (4046.96, "metal", 0.8), (4064.7, "metal", 0.6), (4072.8, "metal", 0.6),
    (4144.9, "metal", 0.5), (4260.5, "metal", 0.6), (4272.8, "metal", 0.4),
    (4326.8, "metal", 0.4), (4384.8, "metal", 0.7), (4405.9, "metal", 0.6),
    (4416.4, "metal", 0.3), (4529.0, "metal", 0.3), (4668.1, "metal", 0.3),
    (4891.5, "metal", 0.4), (4920.5, "metal", 0.5), (4958.0, "metal", 0.4),
    (5041.5, "metal", 0.3), (5168.9, "metal", 0.9), (5174.1, "metal", 1.1),
    (5185.0, "metal", 1.2), (5228.4, "metal", 0.3), (5270.9, "metal", 0.6),
    (5329.1, "metal", 0.5), (5372.4, "metal", 0.5), (5398.7, "metal", 0.3),
    (5407.4, "metal", 0.4), (5430.1, "metal", 0.3), (5448.7, "metal", 0.4),
    (5498.2, "metal", 0.2), (5587.6, "metal", 0.3), (5616.1, "metal", 0.3),
    (4303.0, "mol", 1.0),                                               # CH G band
], dtype=[("wave", float), ("kind", "U5"), ("weight", float)])


def demo_spectrum(labels, wave=None, resolution=1800.0):
    """Noise-free normalized demo spectra.

    Parameters
    ----------
    labels : array (n_star, 3) or (3,): Teff [K], log g [dex], [Fe/H] [dex]
    wave : array (n_pix,) in Å, default `default_grid()`
    resolution : λ/Δλ (FWHM) of the instrumental profile

    Returns
    -------
    flux : array (n_star, n_pix)
    """
    lab = np.atleast_2d(np.asarray(labels, float))
    wave = default_grid() if wave is None else np.asarray(wave, float)
    if lab.shape[0] > 200:   # bound the (star, line, pixel) temporaries
        return np.vstack([demo_spectrum(lab[i:i + 200], wave, resolution)
                          for i in range(0, lab.shape[0], 200)])
    teff, logg, feh = lab[:, 0:1], lab[:, 1:2], lab[:, 2:3]
    t = (teff - 5500.0) / 1000.0
    metal = 10.0 ** feh
    kind = LINES["kind"][None, :]
    w0 = LINES["wave"][None, :]
    # optical depths: neutral metals and molecules weaken with Teff, Balmer lines
    # peak near 9000 K and are broadened by pressure (log g)
    tau = np.where(kind == "metal", 1.2 * metal * np.exp(-0.9 * t) * (1 + 0.08 * (4.5 - logg)), 0.0)
    tau = tau + np.where(kind == "ion", 4.0 * metal**0.7 * np.exp(-0.4 * t) * (1 + 0.1 * (4.5 - logg)), 0.0)
    tau = tau + np.where(kind == "mol", 0.8 * metal * np.exp(-1.6 * t) * 10 ** (-0.15 * (logg - 4.5)), 0.0)
    tau = tau + np.where(kind == "H", 0.6 * np.exp(1.1 * t - 0.12 * t**2), 0.0)
    tau = tau * LINES["weight"][None, :]
    depth = 0.92 * (1.0 - np.exp(-tau))                              # saturation
    sig_inst = w0 / resolution / 2.3548
    width_H = 1.0 + 1.5 * np.exp(0.35 * (logg - 4.0)) * np.exp(0.3 * t)
    width_mol = np.full_like(depth, 12.0)
    width = np.where(kind == "H", width_H * 10.0, np.where(kind == "mol", width_mol, 1.0 + 0.3 * np.log1p(tau)))
    sig = np.sqrt(sig_inst**2 + (width * 0.5) ** 2)                   # (n_star, n_line)
    x = (wave[None, None, :] - w0[..., None]) / sig[..., None]
    prof = np.exp(-0.5 * x**2)
    absorb = np.einsum("sl,slp->sp", depth, prof)
    # gentle metallicity-dependent line blanketing in the blue
    blanket = 0.04 * metal * np.exp(-0.5 * t) * np.clip((4800.0 - wave) / 900.0, 0, None)[None, :]
    return np.exp(-(absorb + blanket))


def make_demo(n_star=500, snr=50.0, seed=0, wave=None, ranges=None):
    """Labelled synthetic spectra for the demo, tests and notebooks.

    Parameters
    ----------
    n_star : int
    snr : float or array (n_star,): per-pixel S/N of the normalized flux
    seed : int, for the labels and the noise
    wave : array (n_pix,) in Å, default the paper's 3900–5800 Å, 1 Å grid
    ranges : array (3, 2), label box (default `DEMO_RANGES`)

    Returns
    -------
    Spectra with labels teff [K], logg [dex], feh [dex]; meta has `id` and `snr`.
    """
    rng = np.random.default_rng(seed)
    ranges = DEMO_RANGES if ranges is None else np.asarray(ranges, float)
    wave = default_grid() if wave is None else np.asarray(wave, float)
    labels = rng.uniform(ranges[:, 0], ranges[:, 1], size=(n_star, 3))
    clean = demo_spectrum(labels, wave)
    snr = np.broadcast_to(np.asarray(snr, float), (n_star,))
    sigma = 1.0 / snr[:, None]
    flux = clean + rng.normal(size=clean.shape) * sigma
    ivar = np.broadcast_to(1.0 / sigma**2, flux.shape).copy()
    meta = Table({"id": [f"demo-{seed}-{i:06d}" for i in range(n_star)], "snr": snr.copy()})
    meta.meta["note"] = "synthetic demo spectra from slambayes.datasets (not physical models)"
    return Spectra(wave, flux, ivar, labels=labels, label_names=list(DEMO_LABEL_NAMES), meta=meta)
