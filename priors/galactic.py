"""`GalacticModel`: thin disk, thick disk and halo along a line of sight.

The prior on [Fe/H] (and optionally [α/M]) is the mixture of the three
components' abundance distributions, each weighted by the number of stars it
puts along the line of sight (l, b):

    w_k ∝ ∫ d² ρ_k(R(d), z(d)) p(ϖ_obs | d) dd,

with p(ϖ_obs | d) = N(ϖ_obs | 1/d, σ_ϖ²) when a parallax is given, else 1 up
to `max_distance_kpc` (a magnitude-limited survey sees stars out to a few kpc).

Structural parameters (number densities relative to the local thin disk):

- thin disk: exponential, scale length 2.6 kpc, scale height 0.3 kpc
  (Bland-Hawthorn & Gerhard 2016, ARA&A 54, 529, Table/Sect. 5: L = 2.6 ± 0.5 kpc,
  H = 300 ± 50 pc);
- thick disk: scale length 2.0 kpc, scale height 0.9 kpc, local fraction 0.04
  (Bland-Hawthorn & Gerhard 2016: 2.0 ± 0.2 kpc, 900 ± 180 pc, f = 4 ± 2 %);
- halo: flattened power law ρ ∝ (R² + (z/q)²)^(−n/2), q = 0.64, n = 2.77,
  local fraction 0.0051 (Jurić et al. 2008, ApJ 673, 864, Table 10);
- Sun at R0 = 8.2 kpc, z0 = 25 pc (Bland-Hawthorn & Gerhard 2016).

Abundance distributions (Gaussians, mean ± σ):

- thin disk [Fe/H] −0.1 ± 0.2, [α/M] 0.02 ± 0.05;
- thick disk [Fe/H] −0.5 ± 0.3, [α/M] 0.25 ± 0.08
  (Bland-Hawthorn & Gerhard 2016 Sect. 5.4; Hayden et al. 2015, ApJ 808, 132);
- halo [Fe/H] −1.5 ± 0.5, [α/M] 0.3 ± 0.1
  (Ivezić et al. 2008, ApJ 684, 287: halo median −1.46; An et al. 2013).
"""
from __future__ import annotations

import numpy as np

from .base import Prior

__all__ = ["GalacticModel", "COMPONENTS"]

R0_KPC, Z0_KPC = 8.2, 0.025
COMPONENTS = {
    # name: (local fraction, density kind, params, ([Fe/H] mean, σ), ([α/M] mean, σ))
    "thin": (1.0, "disk", dict(length=2.6, height=0.3), (-0.1, 0.2), (0.02, 0.05)),
    "thick": (0.04, "disk", dict(length=2.0, height=0.9), (-0.5, 0.3), (0.25, 0.08)),
    "halo": (0.0051, "halo", dict(q=0.64, n=2.77), (-1.5, 0.5), (0.3, 0.1)),
}


def _density(kind, params, R, z):
    if kind == "disk":
        return np.exp(-(R - R0_KPC) / params["length"] - np.abs(z) / params["height"])
    r = np.sqrt(R**2 + (z / params["q"]) ** 2)
    return (R0_KPC / r) ** params["n"]


def line_of_sight_weights(l_deg, b_deg, parallax=None, parallax_err=None, max_distance_kpc=3.0,
                          n_grid=4000):
    """Fraction of stars of each component along (l, b): {name: weight}, summing to 1."""
    l, b = np.radians(l_deg), np.radians(b_deg)
    if parallax is not None:
        if not (parallax_err and parallax_err > 0):
            raise ValueError("GalacticModel: a parallax needs parallax_err > 0 (mas)")
        max_distance_kpc = max(max_distance_kpc, 100.0)
    d = np.linspace(max_distance_kpc / n_grid, max_distance_kpc, n_grid)
    R = np.sqrt(R0_KPC**2 + (d * np.cos(b)) ** 2 - 2 * R0_KPC * d * np.cos(b) * np.cos(l))
    z = Z0_KPC + d * np.sin(b)
    like = np.ones_like(d)
    if parallax is not None:
        like = np.exp(-0.5 * ((parallax - 1.0 / d) / parallax_err) ** 2)   # ϖ in mas, d in kpc
    w = {k: np.trapezoid(d**2 * f * _density(kind, p, R, z) * like, d)
         for k, (f, kind, p, _, _) in COMPONENTS.items()}
    total = sum(w.values())
    if not total > 0:
        raise ValueError(f"GalacticModel: no stars along l={l_deg}, b={b_deg} for parallax "
                         f"{parallax} ± {parallax_err} mas")
    return {k: v / total for k, v in w.items()}


class GalacticModel(Prior):
    """Thin disk / thick disk / halo mixture prior on [Fe/H] (and [α/M]).

    Parameters
    ----------
    l_deg, b_deg : Galactic longitude and latitude (degrees)
    parallax, parallax_err : observed parallax and error (mas), optional; they
        weight the line-of-sight integral by the distance likelihood
    feh : the emulator's name of [Fe/H]; alpha : name of [α/M] or None
    max_distance_kpc : depth of the line of sight when no parallax is given

    Attributes
    ----------
    weights : {"thin", "thick", "halo"} → fraction of stars along the line of sight
    """

    def __init__(self, l_deg, b_deg, parallax=None, parallax_err=None, feh="feh", alpha=None,
                 max_distance_kpc=3.0):
        self.l_deg, self.b_deg = float(l_deg), float(b_deg)
        self.weights = line_of_sight_weights(l_deg, b_deg, parallax, parallax_err, max_distance_kpc)
        self.label_names = (feh,) if alpha is None else (feh, alpha)
        comps = COMPONENTS.values()
        self._logw = np.log(np.maximum([self.weights[k] for k in COMPONENTS], 1e-300))
        self._mean = np.array([[c[3][0], c[4][0]] for c in comps])[:, :len(self.label_names)]
        self._sigma = np.array([[c[3][1], c[4][1]] for c in comps])[:, :len(self.label_names)]

    def repr_params(self):
        return dict(l_deg=self.l_deg, b_deg=self.b_deg, label_names=list(self.label_names),
                    weights={k: round(float(v), 4) for k, v in self.weights.items()})

    def log_prob(self, values):
        import jax.numpy as jnp
        from jax.scipy.special import logsumexp

        x = jnp.asarray(values)[..., None, :]                       # (..., 1, k)
        z = (x - self._mean) / self._sigma
        comp = self._logw - jnp.sum(0.5 * z * z + jnp.log(self._sigma * np.sqrt(2 * np.pi)), -1)
        return logsumexp(comp, axis=-1)

    def sample(self, key, n):
        import jax
        import jax.numpy as jnp

        k1, k2 = jax.random.split(key)
        c = jax.random.choice(k1, len(self._logw), (n,), p=jnp.exp(self._logw))
        eps = jax.random.normal(k2, (n, len(self.label_names)))
        return jnp.asarray(self._mean)[c] + jnp.asarray(self._sigma)[c] * eps
