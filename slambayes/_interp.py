"""Row-wise linear interpolation of flux with inverse-variance propagation."""
from __future__ import annotations

import numpy as np


def interp_rows(wave_in, flux, ivar, wave_out):
    """Linearly interpolate each star's spectrum onto `wave_out`.

    Parameters
    ----------
    wave_in : array (n_star, n_in) or (n_in,)
        Increasing wavelengths of the input pixels, per star or shared.
    flux, ivar : arrays (n_star, n_in)
    wave_out : array (n_out,)

    Returns
    -------
    flux_out, ivar_out : arrays (n_star, n_out)
        Variance is propagated for f = (1-t) f_a + t f_b as
        (1-t)² v_a + t² v_b. An output pixel that leans on a bad input pixel
        (ivar 0) or lies outside the input coverage gets ivar 0 and flux 1.
    """
    flux = np.atleast_2d(flux)
    ivar = np.atleast_2d(ivar)
    n_star, n_in = flux.shape
    wave_in = np.broadcast_to(np.asarray(wave_in, float), (n_star, n_in))
    wave_out = np.asarray(wave_out, float)
    f_out = np.ones((n_star, wave_out.size))
    iv_out = np.zeros((n_star, wave_out.size))
    for i in range(n_star):
        w = wave_in[i]
        hi = np.clip(np.searchsorted(w, wave_out, side="right"), 1, n_in - 1)
        lo = hi - 1
        t = (wave_out - w[lo]) / (w[hi] - w[lo])
        inside = (wave_out >= w[0]) & (wave_out <= w[-1])
        iva, ivb = ivar[i, lo], ivar[i, hi]
        # a pixel exactly on an input pixel must not be spoiled by its neighbour
        use_a = t < 1.0
        use_b = t > 0.0
        ok = inside & (~use_a | (iva > 0)) & (~use_b | (ivb > 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            var = np.where(use_a, (1 - t) ** 2 / iva, 0.0) + np.where(use_b, t**2 / ivb, 0.0)
            f = (1 - t) * flux[i, lo] + t * flux[i, hi]
        ok &= np.isfinite(var) & (var > 0) & np.isfinite(f)
        f_out[i, ok] = f[ok]
        iv_out[i, ok] = 1.0 / var[ok]
    return f_out, iv_out
