"""A residual radial velocity: the model spectrum Doppler-shifted on the model's own grid.

Survey spectra are shifted to the rest frame by the pipeline's RV, which is off
by a few km/s; the emulator predicts rest-frame flux on its fixed grid. The
shifted model at pixel i is the model at rest wavelength λ_i / (1 + v/c),
interpolated with a normalized Lanczos-3 kernel in ln λ inside each contiguous
run of pixels (runs break at gaps larger than 1.5 × the median step, such as
chip gaps or masked regions, and the kernel is clamped at their ends). The
kernel is C¹ in v and exact at v = 0, so least squares and NUTS get analytic
derivatives: ∂f_v/∂θ = S(v) ∂f/∂θ and ∂f_v/∂v = S'(v) f.

One definition serves numpy (least squares) and jax (the samplers) through `xp`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["C_KMS", "DopplerShift"]

C_KMS = 299792.458


TAPS = np.arange(-2, 4)        # the points j−2 … j+3 around [j, j+1]
_A = 3.0                       # Lanczos order


def _dsinc(x, xp):
    """d sinc(x) / dx, sinc(x) = sin(πx)/(πx)."""
    safe = xp.where(x == 0, 1.0, x)
    return xp.where(x == 0, 0.0, (xp.cos(np.pi * safe) - xp.sinc(safe)) / safe)


def _lanczos(t, xp):
    """Normalized Lanczos-3 weights (…, 6) of the points j−2 … j+3 at fraction t ∈ [0, 1] of
    [j, j+1], and their derivative in t. The kernel and its derivative vanish at ±3, so the
    interpolant is C¹ in t (and in v); normalizing keeps a flat spectrum flat."""
    d = t[..., None] - xp.asarray(TAPS, dtype=float)
    L = xp.sinc(d) * xp.sinc(d / _A)
    dL = _dsinc(d, xp) * xp.sinc(d / _A) + xp.sinc(d) * _dsinc(d / _A, xp) / _A
    S, dS = L.sum(-1, keepdims=True), dL.sum(-1, keepdims=True)
    return L / S, (dL * S - L * dS) / S**2


class DopplerShift:
    """Shift spectra on the grid `wave` (n_pix,) Å by a velocity v (km/s, positive = redshift)."""

    def __init__(self, wave):
        lnw = np.log(np.asarray(wave, float))
        step = np.diff(lnw)
        if np.any(step <= 0):
            raise ValueError("the wavelength grid must increase strictly")
        brk = np.flatnonzero(step > 1.5 * np.median(step)) + 1
        starts = np.concatenate([[0], brk])
        ends = np.concatenate([brk, [lnw.size]]) - 1               # last pixel of each run
        run = np.repeat(np.arange(starts.size), np.diff(np.concatenate([starts, [lnw.size]])))
        self.lnw = lnw
        self.first, self.last = starts[run], ends[run]             # (n_pix,) the run of each pixel
        self.n_runs = int(starts.size)

    def kernel(self, v, xp=np):
        """(idx (n_pix, 6), w (n_pix, 6), dw/dv (n_pix, 6)) for a scalar velocity v (km/s)."""
        lnw = xp.asarray(self.lnw)
        first, last = xp.asarray(self.first), xp.asarray(self.last)
        x = lnw - xp.log1p(v / C_KMS)
        j = xp.clip(xp.searchsorted(lnw, x, side="right") - 1, first, xp.maximum(last - 1, first))
        nxt = xp.minimum(j + 1, last)
        width = xp.where(nxt > j, lnw[nxt] - lnw[j], 1.0)
        t_raw = (x - lnw[j]) / width
        t = xp.clip(t_raw, 0.0, 1.0)
        inside = (t_raw >= 0.0) & (t_raw <= 1.0) & (nxt > j)
        idx = xp.clip(j[:, None] + xp.asarray(TAPS)[None, :], first[:, None], last[:, None])
        w, dw_dt = _lanczos(t, xp)
        dt_dv = xp.where(inside, -1.0 / ((C_KMS + v) * width), 0.0)
        return idx, w, dw_dt * dt_dv[:, None]

    def shift(self, flux, v, xp=np):
        """The spectrum (n_pix,) or Jacobian (n_pix, k) as seen at velocity v."""
        idx, w, _ = self.kernel(v, xp)
        f = flux[idx]
        return (w * f).sum(1) if f.ndim == 2 else (w[..., None] * f).sum(1)

    def shift_and_derivatives(self, flux, jac, v):
        """numpy: (f_v (n_pix,), S(v) J (n_pix, k), ∂f_v/∂v (n_pix,)) for flux (n_pix,), J (n_pix, k)."""
        idx, w, dw = self.kernel(float(v))
        f = flux[idx]
        return (w * f).sum(1), np.einsum("na,nak->nk", w, jac[idx]), (dw * f).sum(1)
