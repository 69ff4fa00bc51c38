"""Label-space bookkeeping: names, units, standardization and the support box.

One `LabelSpace` is resolved per fit (from the emulator's training labels,
optionally padded, optionally extended by a prior's nuisance parameters and
cut to the prior's support) and handed to every consumer: the MAP core, the
survey catalog, the samplers and the diagnostics. Nothing else converts
between physical and standardized labels or re-derives the box.

Standardized labels are θ_std = (θ − loc) / scale, with loc, scale the
training mean and standard deviation (the units the emulator is trained in).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LabelSpace", "DEFAULT_UNITS"]

# physical units of the labels we know; others are unitless
DEFAULT_UNITS = {"teff": "K", "logg": "dex", "feh": "dex", "m_h": "dex", "mgfe": "dex",
                 "alpha_m": "dex", "vmacro": "km/s", "mass": "solMass", "rv_resid": "km/s"}


@dataclass(frozen=True)
class LabelSpace:
    """Parameters of a fit, in order: the emulator's labels, then nuisance parameters.

    names : tuple of str; units : tuple of str (astropy unit strings, "" = none)
    loc, scale : (n_par,) physical units, the standardization
    low, high : (n_par,) physical units, the support box
    n_labels : how many of `names` are emulator labels
    pad : fraction of the training range the box was widened by on each side
    """

    names: tuple
    units: tuple
    loc: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_labels: int
    pad: float = 0.0

    @classmethod
    def from_emulator(cls, emulator, pad=0.0):
        """The emulator's labels with the training range, widened by `pad` × span per side."""
        pad = float(pad)
        if not (np.isfinite(pad) and pad >= 0):
            raise ValueError(f"the support padding must be a fraction ≥ 0 of the training range, not {pad!r}")
        lo, hi = np.asarray(emulator.label_min_, float), np.asarray(emulator.label_max_, float)
        span = hi - lo
        names = tuple(emulator.label_names_)
        return cls(names=names, units=tuple(DEFAULT_UNITS.get(n, "") for n in names),
                   loc=np.asarray(emulator.label_mean_, float), scale=np.asarray(emulator.label_std_, float),
                   low=lo - pad * span, high=hi + pad * span, n_labels=len(names), pad=pad)

    def with_nuisance(self, nuisance):
        """Append nuisance parameters {name: (low, high[, loc])}; scale = range / 10."""
        names, units = list(self.names), list(self.units)
        loc, scale, low, high = (list(a) for a in (self.loc, self.scale, self.low, self.high))
        for name, spec in nuisance.items():
            if name in names:
                continue
            lo, hi = float(spec[0]), float(spec[1])
            names.append(name), units.append(DEFAULT_UNITS.get(name, ""))
            low.append(lo), high.append(hi)
            loc.append(float(spec[2]) if len(spec) > 2 else 0.5 * (lo + hi)), scale.append((hi - lo) / 10)
        return LabelSpace(tuple(names), tuple(units), np.array(loc), np.array(scale), np.array(low),
                          np.array(high), self.n_labels, self.pad)

    def labels_only(self):
        """The same space without nuisance parameters."""
        k = self.n_labels
        return LabelSpace(self.names[:k], self.units[:k], self.loc[:k], self.scale[:k], self.low[:k],
                          self.high[:k], k, self.pad)

    def cut(self, support):
        """Intersect the box with {name: (low, high)}; a clear error where nothing is left."""
        low, high = self.low.copy(), self.high.copy()
        for name, (lo, hi) in support.items():
            if name in self.names:
                i = self.names.index(name)
                low[i], high[i] = max(low[i], lo), min(high[i], hi)
        if np.any(high <= low):
            bad = [n for n, a, b in zip(self.names, low, high) if b <= a]
            raise ValueError(f"the prior's support does not overlap the training range for {bad}")
        return LabelSpace(self.names, self.units, self.loc, self.scale, low, high, self.n_labels, self.pad)

    # ------------------------------------------------------------ conversions
    @property
    def label_names(self):
        return self.names[:self.n_labels]

    def to_std(self, values):
        return (np.asarray(values, float) - self.loc[:np.shape(values)[-1]]) / self.scale[:np.shape(values)[-1]]

    def from_std(self, theta):
        k = np.shape(theta)[-1]
        return self.loc[:k] + self.scale[:k] * np.asarray(theta)

    def cov_to_phys(self, cov_std):
        k = np.shape(cov_std)[-1]
        return np.asarray(cov_std) * np.outer(self.scale[:k], self.scale[:k])

    def cov_to_std(self, cov):
        k = np.shape(cov)[-1]
        return np.asarray(cov) / np.outer(self.scale[:k], self.scale[:k])

    @property
    def low_std(self):
        return (self.low - self.loc) / self.scale

    @property
    def high_std(self):
        return (self.high - self.loc) / self.scale

    def at_edge(self, values, tol=1e-3):
        """True where any parameter lies within `tol` (fraction of the box) of its edge."""
        v = np.asarray(values, float)
        k = v.shape[-1]
        frac = (v - self.low[:k]) / (self.high[:k] - self.low[:k])
        return np.any((frac <= tol) | (frac >= 1 - tol), axis=-1)

    def edge_fraction(self, draws, tol=0.01):
        """Fraction of draws (..., n_par) within `tol` of the box, per parameter (n_par,)."""
        d = np.asarray(draws, float).reshape(-1, np.shape(draws)[-1])
        k = d.shape[-1]
        frac = (d - self.low[:k]) / (self.high[:k] - self.low[:k])
        return np.mean((frac <= tol) | (frac >= 1 - tol), axis=0)

    def describe(self):
        """A JSON-able summary for file headers and InferenceData attributes."""
        return dict(names=list(self.names), units=list(self.units), low=self.low.tolist(),
                    high=self.high.tolist(), pad=self.pad)
