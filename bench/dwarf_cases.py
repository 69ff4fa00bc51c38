"""Generated APOGEE-dwarf cases for the robustness benchmarks and tests.

The spectra come from the dwarfsim generating model of the benchmark protocol
(../shared/bench/datasets.py: the El-Badry et al. per-pixel networks in
../shared/data/apogee_dwarf_emulator), with a correlated label distribution
instead of the protocol's uniform one:

- `observe`: the protocol's pixels (every 4th unmasked one), labels → noisy spectra;
- `observe_full`: a contiguous block of the full-resolution grid (4.1 km/s per pixel,
  APOGEE's sampling) with each star Doppler-shifted by its own velocity; the shift is
  applied to the full-resolution model with a cubic spline in ln λ, an interpolant
  independent of the one slambayes fits with.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "shared" / "bench"))

import datasets  # noqa: E402  (the benchmark protocol's generator)

from slambayes import Spectra  # noqa: E402

C_KMS = 299792.458

NAMES = ["teff", "logg", "feh", "mgfe"]
RANGE = np.array([[4300.0, 6900.0], [4.05, 4.95], [-0.75, 0.35], [-0.25, 0.48]])


def dwarf_population(rng, n):
    """Labels (n, 4) of FGK dwarfs with the correlations of a real sample: log g falls along
    the main sequence with Teff, [Mg/Fe] rises as [Fe/H] falls (thick disc); draws outside
    RANGE are redrawn (no pile-up at its edges)."""
    out = np.empty((0, 4))
    while len(out) < n:
        teff = rng.uniform(4400.0, 6800.0, n)
        logg = 4.68 - 0.45 * ((teff - 4400.0) / 2400.0) ** 1.5 + rng.normal(0, 0.06, n)
        feh = rng.normal(-0.15, 0.22, n)
        mgfe = 0.04 - 0.30 * feh + rng.normal(0, 0.04, n)
        lab = np.column_stack([teff, logg, feh, mgfe])
        out = np.vstack([out, lab[np.all((lab >= RANGE[:, 0]) & (lab <= RANGE[:, 1]), 1)]])
    return out[:n]


def off_population(rng, n, train_labels):
    """Labels (n, 4) outside the training distribution: half off its correlations (log g
    0.25–0.4 dex off the main sequence, or [Mg/Fe] 0.15–0.25 dex off its trend), half at or
    up to 5 % beyond the range of the training labels in one label."""
    lab = dwarf_population(rng, n)
    lo, hi = train_labels.min(0), train_labels.max(0)
    span = hi - lo
    half = n // 2
    for i in range(half):
        j = 1 if i % 2 == 0 else 3
        delta = rng.uniform(0.25, 0.4) if j == 1 else rng.uniform(0.15, 0.25)
        side = -1.0 if lab[i, j] + delta > RANGE[j, 1] else 1.0
        lab[i, j] += side * delta
    for i in range(half, n):
        j = rng.integers(4)
        frac = rng.uniform(0.0, 0.05)
        lab[i, j] = hi[j] + frac * span[j] if rng.random() < 0.5 else lo[j] - frac * span[j]
    return np.clip(lab, datasets._dwarf_emulator()[0]["x_min"][:4], datasets._dwarf_emulator()[0]["x_max"][:4])


def observe(labels, stride, rng, snr=None):
    """Spectra of `labels` on every `stride`-th dwarfsim pixel, log-uniform S/N 15–300 (or `snr`)."""
    n = len(labels)
    flux = datasets.dwarf_spectrum(np.column_stack([labels, np.full(n, datasets.DWARF_VMACRO)]))[:, ::stride]
    wave = datasets._dwarf_emulator()[2][::stride]
    s = np.exp(rng.uniform(np.log(15), np.log(300), n)) if snr is None else np.full(n, float(snr))
    noisy = flux + rng.normal(size=flux.shape) / s[:, None]
    return Spectra(wave, noisy, np.repeat(s[:, None] ** 2, flux.shape[1], 1), labels=labels,
                   label_names=NAMES), s


@functools.lru_cache(maxsize=None)
def _full_model():
    base = datasets.DATA_DIR / "apogee_dwarf_emulator"
    nn = {k: np.asarray(v, float) for k, v in np.load(base / "NN_normalized_spectra.npz").items()}
    mask = np.load(base / "apogee_mask.npz")["apogee_mask"].astype(bool)
    wave = np.load(base / "apogee_wavelength.npz")["wavelength"].astype(float)
    return nn, mask, wave


def full_spectrum(labels4):
    """The generating model on all 7214 APOGEE pixels, (n, 7214), vmacro as in dwarfsim."""
    nn, _, _ = _full_model()
    lab = np.column_stack([np.atleast_2d(labels4), np.full(len(np.atleast_2d(labels4)), datasets.DWARF_VMACRO)])
    x = (lab - nn["x_min"]) / (nn["x_max"] - nn["x_min"]) - 0.5
    h = 1.0 / (1.0 + np.exp(-(np.einsum("ijk,nk->nij", nn["w_array_0"], x) + nn["b_array_0"][None])))
    return np.einsum("ij,nij->ni", nn["w_array_1"], h) + nn["b_array_1"][None]


def full_block(start=1000, n=600):
    """`n` contiguous pixels of the full grid from `start` (indices), and which of them the
    APOGEE mask excludes (bool): the model grid keeps them, a survey spectrum has ivar 0 there."""
    _, mask, _ = _full_model()
    idx = np.arange(start, start + n)
    return idx, mask[idx]


def observe_full(labels, pix, rng, snr=None, rv=None, bad=None):
    """Spectra on the full-resolution pixels `pix`, each star shifted by rv (km/s, (n,), default 0),
    log-uniform S/N 15–300 (or `snr`), ivar 0 on the pixels `bad` (bool, like pix)."""
    from scipy.interpolate import CubicSpline

    _, _, wave = _full_model()
    n = len(labels)
    rest = full_spectrum(labels)
    rv = np.zeros(n) if rv is None else np.asarray(rv, float)
    lnw = np.log(wave)
    flux = np.array([CubicSpline(lnw, rest[i])(lnw[pix] - np.log1p(rv[i] / C_KMS)) for i in range(n)])
    s = np.exp(rng.uniform(np.log(15), np.log(300), n)) if snr is None else np.full(n, float(snr))
    noisy = flux + rng.normal(size=flux.shape) / s[:, None]
    ivar = np.repeat(s[:, None] ** 2, pix.size, 1)
    if bad is not None:
        ivar[:, bad] = 0.0
    return Spectra(wave[pix], noisy, ivar, labels=labels, label_names=NAMES), s
