"""`Parallax`: the parallax a star's labels predict, against the observed one.

    L/L☉ = (M/M☉) (Teff/5772 K)⁴ / 10^(log g − 4.438)
    M_bol = 4.74 − 2.5 log10 L/L☉
    M_G = M_bol − BC_G(Teff)
    ϖ(θ) [mas] = 10^((M_G − m_G + A_G + 10)/5)
    log p = log N(ϖ_obs | ϖ(θ), σ_ϖ²)

BC_G is the polynomial of Andrae et al. (2018, A&A 616, A8, Table 8 / Eq. 7),
BC_G = Σᵢ aᵢ (Teff − 5772)ⁱ, with separate coefficients for 4000–8000 K and
3300–4000 K; outside 3300–8000 K it is evaluated at the nearest end of that
range. Solar values: Teff☉ = 5772 K, log g☉ = 4.438, M_bol,☉ = 4.74 (IAU 2015
B2 / Prša et al. 2016).

Mass is a nuisance parameter: a fixed value (`mass=1.0`), or, by default, a
log-normal prior (median `mass_median`, width `mass_sigma_ln` in ln M) that
the samplers marginalize over (it appears in the posterior as "mass").
"""
from __future__ import annotations

import numpy as np

from .base import Prior

__all__ = ["Parallax", "bc_g", "predicted_parallax"]

TEFF_SUN, LOGG_SUN, MBOL_SUN = 5772.0, 4.438, 4.74
BC_G_HOT = (6.000e-02, 6.731e-05, -6.647e-08, 2.859e-11, -7.197e-15)   # 4000–8000 K
BC_G_COOL = (1.749e+00, 1.977e-03, 3.737e-07, -8.966e-11, -4.183e-14)  # 3300–4000 K
MASS_RANGE = (0.1, 5.0)   # M☉; support of the nuisance mass


def bc_g(teff, xp=np):
    """Gaia G bolometric correction (mag) of Andrae et al. (2018) for Teff in K."""
    t = xp.clip(teff, 3300.0, 8000.0) - TEFF_SUN
    hot = sum(a * t**i for i, a in enumerate(BC_G_HOT))
    cool = sum(a * t**i for i, a in enumerate(BC_G_COOL))
    return xp.where(t + TEFF_SUN >= 4000.0, hot, cool)


def predicted_parallax(teff, logg, mass, mag, extinction=0.0, xp=np):
    """Parallax (mas) of a star of Teff (K), log g (cgs), mass (M☉) and apparent G mag."""
    log_l = xp.log10(mass) + 4 * xp.log10(teff / TEFF_SUN) - (logg - LOGG_SUN)
    m_abs = MBOL_SUN - 2.5 * log_l - bc_g(teff, xp)
    return 10.0 ** ((m_abs - mag + extinction + 10.0) / 5.0)


class Parallax(Prior):
    """Likelihood of an observed parallax given Teff, log g and mass.

    Parameters
    ----------
    parallax_mas, parallax_err_mas : observed parallax and its 1σ error (mas)
    mag : apparent magnitude in `band`; extinction : A_band (mag)
    band : only "G" (Gaia G, Andrae et al. 2018 BC) is built in
    mass : fixed mass in M☉, or None to sample it as a nuisance parameter
    mass_median, mass_sigma_ln : log-normal prior on the nuisance mass
    teff, logg : the emulator's names of those labels
    """

    def __init__(self, parallax_mas, parallax_err_mas, mag, band="G", extinction=0.0, mass=None,
                 mass_median=1.0, mass_sigma_ln=0.3, teff="teff", logg="logg"):
        if band != "G":
            raise ValueError(f"band {band!r}: only 'G' (Gaia, Andrae et al. 2018 BC) is built in")
        if not parallax_err_mas > 0:
            raise ValueError(f"parallax_err_mas must be > 0, got {parallax_err_mas}")
        for name, v in (("parallax_mas", parallax_mas), ("mag", mag), ("extinction", extinction)):
            if not np.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
        self.parallax, self.parallax_err = float(parallax_mas), float(parallax_err_mas)
        self.mag, self.extinction, self.band = float(mag), float(extinction), band
        self.mass = None if mass is None else float(mass)
        self.mass_median, self.mass_sigma_ln = float(mass_median), float(mass_sigma_ln)
        if self.mass is None:
            self.label_names = (teff, logg, "mass")
            self.nuisance = {"mass": MASS_RANGE}
        else:
            self.label_names = (teff, logg)
            self.nuisance = {}

    def mass_log_prob(self, mass):
        import jax.numpy as jnp
        z = (jnp.log(mass) - np.log(self.mass_median)) / self.mass_sigma_ln
        return -0.5 * z * z - jnp.log(mass * self.mass_sigma_ln * np.sqrt(2 * np.pi))

    def repr_params(self):
        return dict(parallax_mas=self.parallax, parallax_err_mas=self.parallax_err, mag=self.mag, band=self.band,
                    extinction=self.extinction, mass=self.mass, mass_median=self.mass_median,
                    mass_sigma_ln=self.mass_sigma_ln, label_names=list(self.label_names))

    def log_prob(self, values):
        import jax.numpy as jnp

        v = jnp.asarray(values)
        mass = v[..., 2] if self.mass is None else self.mass
        plx = predicted_parallax(v[..., 0], v[..., 1], mass, self.mag, self.extinction, xp=jnp)
        z = (self.parallax - plx) / self.parallax_err
        lp = -0.5 * z * z - np.log(self.parallax_err * np.sqrt(2 * np.pi))
        return lp + (self.mass_log_prob(mass) if self.mass is None else 0.0)
