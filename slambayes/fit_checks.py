"""Checks that a fit can be believed, with limits learned from the training stars.

A fit with flag 0 should be one whose error bars hold. Besides the solver's own
flags (no data, not converged, at the edge of the box, error, start returned
unchanged: `slambayes.map_core.FLAGS`), three checks compare a fit with what the
out-of-fold fits of the training stars looked like (`slambayes.out_of_fold`),
so that no limit is a magic number:

- poor fit: ln(χ²_ν / E[χ²_ν]) (`slambayes.calibration.misfit_feature`, the
  misfit relative to what the noise model expects at the star's S/N) above the
  training stars' 99th percentile, plus a margin of 0.1;
- out of the training distribution: the labels' distance to their nearest
  training stars (u) or how one-sided those are (e) beyond the training stars'
  own leave-one-out 99.5th percentile. Both are measured at the point within
  `TOLERANCE` σ (per label, the fit's own error) of the fitted labels that lies
  closest to those neighbours, so a faint star whose noisy labels scatter off
  the training set is not flagged while its error bars still reach it;
- not normalized: the median ratio of observed to model flux over good pixels
  off 1 by more than 3 × the training stars' 99th percentile (at least 0.05),
  e.g. a spectrum that was never continuum-normalized, or a non-stellar one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .calibration import N_NEIGHBOURS, misfit_feature, neighbour_features, position_features, typical_spacing

__all__ = ["FitChecks", "fit_checks", "CHECK_FLAGS", "nearest_consistent", "TOLERANCE"]

CHECK_FLAGS = {"poor_fit": 16, "out_of_distribution": 32, "not_normalized": 64}
_MARGIN = 0.1
TOLERANCE = 1.0      # σ a fit may lie off the training distribution before it counts as out of it


def nearest_consistent(theta_std, sigma_std, X_ref, tolerance=TOLERANCE):
    """The labels (m, k) within `tolerance` × sigma_std of theta_std (m, k), per label, moved
    towards the centroid of their nearest training stars X_ref (n, k)."""
    from scipy.spatial import cKDTree

    theta_std = np.atleast_2d(theta_std)
    ok = np.all(np.isfinite(theta_std), 1) & np.all(np.isfinite(sigma_std), 1)
    out = theta_std.copy()
    if ok.any():
        k = min(N_NEIGHBOURS, X_ref.shape[0])
        _, idx = cKDTree(X_ref).query(theta_std[ok], k=k)
        centroid = X_ref[np.reshape(idx, (ok.sum(), -1))].mean(1)
        step = tolerance * np.asarray(sigma_std, float)[ok]
        out[ok] = theta_std[ok] + np.clip(centroid - theta_std[ok], -step, step)
    return out


@dataclass(frozen=True)
class FitChecks:
    """Limits of the three checks (see the module docstring) and the training labels they refer to.

    misfit : limit on ln(χ²_ν / E[χ²_ν]); ln_u, edge : limits on the position features;
    norm : limit on |ln(median observed / median model flux)|; rho : as in the calibration
    X_ref : (n_train, k) standardized training labels; d_ref : their typical spacing
    """

    misfit: float
    ln_u: float
    edge: float
    norm: float
    rho: float
    X_ref: np.ndarray
    d_ref: float

    def flags(self, theta_std, quality, norm_ratio, sigma_std=None):
        """Flag bits (m,) for fits at standardized labels (m, k) with standardized errors
        sigma_std (m, k) (None: exact labels), quality (m, 2) = (χ²_ν, share) and median flux
        ratio (m,); failed fits (NaN labels) get no check bits."""
        theta_std = np.atleast_2d(theta_std)
        ok = np.all(np.isfinite(theta_std), 1)
        where = theta_std if sigma_std is None else nearest_consistent(theta_std, sigma_std, self.X_ref)
        pos = position_features(where, self.X_ref, self.d_ref)
        with np.errstate(invalid="ignore", divide="ignore"):
            ln_norm = np.abs(np.log(np.asarray(norm_ratio, float)))
        bits = np.where(misfit_feature(quality, self.rho) > self.misfit, CHECK_FLAGS["poor_fit"], 0)
        bits |= np.where((pos[:, 0] > self.ln_u) | (pos[:, 1] > self.edge), CHECK_FLAGS["out_of_distribution"], 0)
        bits |= np.where(~(ln_norm <= self.norm), CHECK_FLAGS["not_normalized"], 0)
        return np.where(ok, bits, 0).astype(np.int16)

    def describe(self):
        return dict(misfit=self.misfit, ln_u=self.ln_u, edge=self.edge, norm=self.norm, rho=self.rho,
                    flags=CHECK_FLAGS)

    def to_arrays(self):
        return dict(checks_limits_=np.array([self.misfit, self.ln_u, self.edge, self.norm, self.rho]))

    @classmethod
    def from_arrays(cls, limits, X_ref):
        misfit, ln_u, edge, norm, rho = np.asarray(limits, float)
        return cls(misfit, ln_u, edge, norm, rho, np.asarray(X_ref, float), typical_spacing(X_ref))


def fit_checks(quality, norm_ratio, rho, X_ref):
    """Learn the limits from the out-of-fold fits: quality (n, 2), norm_ratio (n,) of the training
    stars' fits; X_ref (n_train, k) standardized training labels. Returns `FitChecks`."""
    q = np.asarray(quality, float)
    ok = np.all(np.isfinite(q), 1)
    misfit = float(np.percentile(misfit_feature(q[ok], rho), 99)) + _MARGIN
    d_ref = typical_spacing(X_ref)
    dist, edge = neighbour_features(X_ref, X_ref, exclude_self=True)
    ln_u = float(np.percentile(np.log(dist / d_ref), 99.5))
    edge_limit = float(np.percentile(edge, 99.5))
    r = np.abs(np.log(np.asarray(norm_ratio, float)))
    norm = max(3.0 * float(np.percentile(r[np.isfinite(r)], 99)), 0.05)
    return FitChecks(misfit, ln_u, edge_limit, norm, float(rho), np.asarray(X_ref, float), d_ref)
