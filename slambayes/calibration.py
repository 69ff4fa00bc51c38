"""Calibration of the label uncertainties, learned from out-of-fold fits of the training stars.

The formal covariance of a fit, Σ = (Jᵀ Σ_pix⁻¹ J)⁻¹, is right only if the
likelihood describes the data. On real spectra it does not quite: the emulator
errs beyond its CV estimate where a star is poorly covered by the training
set, and the training labels carry their own noise. Both grow per star, so one
global factor cannot fix them (the z-scores are heavy-tailed). Per label j,

    σ²_cal,j = σ²_obs,j + s_j² σ²_model,j + c_j²,
    ln s_j   = a_j + b_j ln(χ²_ν / E[χ²_ν]) + d_j ln u + g_j e

where the formal variance σ²_formal = σ²_obs + σ²_model is split into the share
of the observed noise and the share of the model error (exactly, through the
fit's Jacobian: `slambayes.likelihood.StarNoise.model_part`). Only the model
error's share is scaled: the noise of a faint spectrum is what Eq. 8 says it
is, while the emulator's error is what the CV estimate understates. χ²_ν is
the fit's reduced χ², relative to what the noise model expects of a good fit
at the star's S/N (`expected_rchi2`: a poor fit is a less trustworthy one, and
the ratio carries over between S/N, where χ²_ν itself does not); u the star's
distance to its nearest training stars in standardized label space, relative
to the training set's own typical spacing, and e ∈ [0, 1] how one-sided those
neighbours are (the offset of their centroid in units of their distance: ≈ 0
inside the training set, → 1 at its boundary, where the emulator extrapolates).
Unusual stars are where the emulator is least constrained. c_j is a floor in
physical units (label noise of the training set). The calibration's term Δ = S Σ_model S −
Σ_model + diag(c²) is added to the formal covariance; its correlations are then replaced by a
correlation matrix R learned from the same residuals (`fit_correlation`): Δ = D R D with
D² = diag(Δ), so each label's calibrated σ stays as fitted. The labels' errors on real spectra
are more strongly correlated than the formal covariance says (APOGEE giants: Teff–[M/H]
0.93 against 0.84), and a prior on one label narrows the others only as far as R lets it.

(a, b, d, g, c) are fitted by maximizing the likelihood of the out-of-fold label
residuals of the training stars (`slambayes.out_of_fold`), so the stars a
calibrated model is validated on never inform it. The likelihood is a
Student-t with ν = 5, and the fitted t scale is turned into a Gaussian σ with
the factor κ that makes it consistent at the Gaussian (`t_consistency`: on
Gaussian residuals, as from an exact model, the fit is unbiased): a handful of catastrophic out-of-fold fits would
otherwise set every star's error (a Gaussian fit matches the variance and
leaves the 68 % intervals too wide; on APOGEE giants 78 % instead of 68 %). The
parameters are stored in the model file and applied by the MAP catalog and
the samplers alike (through `slambayes.likelihood.NoiseModel`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Calibration", "fit_calibration", "neighbour_features", "typical_spacing", "position_features",
           "misfit_feature", "expected_rchi2", "fit_rho", "N_NEIGHBOURS", "FEATURES"]

N_NEIGHBOURS = 8
FEATURES = ("ln_relative_rchi2", "ln_u", "edge")
_MISFIT_RANGE = (0.0, 5.0)     # a fit better than expected is no reason to trust it more
_U_RANGE = (0.25, 50.0)
NU = 5.0          # Student-t degrees of freedom of the calibration fit


def neighbour_features(X_ref, X, exclude_self=False, k=N_NEIGHBOURS):
    """For each row of X (m, d): the mean distance to its k nearest rows of X_ref (n, d), and
    how one-sided they are, ‖centroid − x‖ / mean distance ∈ [0, 1]. Returns two (m,) arrays."""
    from scipy.spatial import cKDTree

    X_ref, X = np.atleast_2d(X_ref), np.atleast_2d(X)
    kk = min(k + int(exclude_self), X_ref.shape[0])
    dist, idx = cKDTree(X_ref).query(X, k=kk)
    dist, idx = dist.reshape(len(X), -1)[:, int(exclude_self):], idx.reshape(len(X), -1)[:, int(exclude_self):]
    mean = dist.mean(1)
    offset = np.linalg.norm(X_ref[idx].mean(1) - X, axis=1)
    return mean, np.where(mean > 0, offset / np.where(mean > 0, mean, 1.0), 0.0)


def typical_spacing(X_ref):
    """Median leave-one-out neighbour distance within X_ref: the unit of u."""
    return float(np.median(neighbour_features(X_ref, X_ref, exclude_self=True)[0]))


def position_features(theta_std, X_ref, d_ref):
    """(m, 2): ln u and e of stars at standardized labels (m, k) against training labels X_ref;
    a failed fit (NaN) gets the neutral u = 1, e = 0."""
    theta_std = np.atleast_2d(theta_std)
    ok = np.all(np.isfinite(theta_std), 1)
    u, e = np.ones(theta_std.shape[0]), np.zeros(theta_std.shape[0])
    if ok.any():
        dist, e[ok] = neighbour_features(X_ref, theta_std[ok])
        u[ok] = dist / d_ref
    return np.column_stack([np.log(np.clip(u, *_U_RANGE)), e])


def expected_rchi2(share, rho):
    """E[χ²_ν] of a good fit when the true model variance is ρ × the noise model's: each pixel
    contributes (σ²_obs + ρ σ²_model) / (σ²_obs + σ²_model), so E = 1 − share (1 − ρ), with
    `share` the star's mean fraction of model error in its pixel variance."""
    return 1.0 - np.asarray(share, float) * (1.0 - rho)


def fit_rho(quality):
    """ρ from the out-of-fold fits' (χ²_ν, share) (n, 2): the median of the per-star solutions
    of χ²_ν = E[χ²_ν]. The CV error includes the training spectra's noise, so ρ < 1 is usual."""
    rchi2, share = np.asarray(quality, float).T
    ok = np.isfinite(rchi2) & np.isfinite(share) & (share > 0.02)
    if not ok.any():
        return 1.0
    return float(np.clip(np.median(1.0 - (1.0 - rchi2[ok]) / share[ok]), 0.01, 100.0))


def misfit_feature(quality, rho):
    """ln(χ²_ν / E[χ²_ν]) (m,), floored at 0: how much worse a star is fitted than its noise
    model, at its own S/N, expects. A failed fit (NaN) gets 0."""
    rchi2, share = np.atleast_2d(np.asarray(quality, float)).T
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.log(rchi2 / np.maximum(expected_rchi2(share, rho), 1e-3))
    return np.clip(np.nan_to_num(f, nan=0.0, posinf=_MISFIT_RANGE[1], neginf=_MISFIT_RANGE[0]), *_MISFIT_RANGE)


@dataclass(frozen=True)
class Calibration:
    """Per-label calibration parameters (k labels) and the training set they refer to.

    a : (k,); w : (3, k) the coefficients (b, d, g) of the features; c : (k,) physical units
    rho : the model-variance ratio that sets E[χ²_ν] (`fit_rho`)
    X_ref : (n_train, k) standardized training labels; d_ref : their typical neighbour distance
    stats : what the fit achieved on the training stars (z-std before and after, n, noise model)
    R : (k, k) the correlation of the calibration's term (`fit_correlation`), or None (the
        correlations of S Σ_model S − Σ_model + diag(c²) itself: models calibrated before R)
    """

    a: np.ndarray
    w: np.ndarray
    c: np.ndarray
    rho: float
    X_ref: np.ndarray
    d_ref: float
    stats: dict
    R: np.ndarray = None

    @classmethod
    def for_training_set(cls, X_ref, a, w, c, rho, stats=None, R=None):
        return cls(np.asarray(a, float), np.asarray(w, float), np.asarray(c, float), float(rho),
                   np.asarray(X_ref, float), typical_spacing(X_ref), dict(stats or {}),
                   None if R is None else np.asarray(R, float))

    def features(self, theta_std, quality):
        """(m, 3) features of stars with standardized labels (m, k) and fit quality (m, 2):
        (χ²_ν, share of the model error in the pixel variance)."""
        return np.column_stack([misfit_feature(quality, self.rho),
                                position_features(theta_std, self.X_ref, self.d_ref)])

    def scale(self, theta_std, quality):
        """s (m, k): the factor on each label's model-error σ."""
        return np.exp(self.a + self.features(theta_std, quality) @ self.w)

    def apply(self, cov, cov_model, theta_std, quality):
        """Calibrated covariance (m, k, k) from formal ones and their model-error share
        (m, k, k), physical units."""
        return np.asarray(cov, float) + self.term(cov_model, self.scale(theta_std, quality))

    def term(self, cov_model, s):
        """The calibration's term Δ (m, k, k) from the model-error shares (m, k, k) and the
        scales s (m, k): S Σ_model S − Σ_model + diag(c²), with the correlation R if learned."""
        cov_model = np.asarray(cov_model, float)
        delta = cov_model * (s[:, :, None] * s[:, None, :] - 1.0) + np.eye(cov_model.shape[-1]) * self.c**2
        if self.R is None:
            return delta
        d = np.sqrt(np.clip(np.diagonal(delta, axis1=1, axis2=2), 0.0, None))
        return d[:, :, None] * self.R * d[:, None, :]

    def describe(self):
        return dict(model="sigma^2 = sigma_obs^2 + (exp(a + w . features) sigma_model)^2 + c^2",
                    features=list(FEATURES), a=self.a.tolist(), w=self.w.tolist(), c=self.c.tolist(), rho=self.rho,
                    n_neighbours=N_NEIGHBOURS, d_ref=self.d_ref,
                    R=None if self.R is None else np.round(self.R, 4).tolist(), **self.stats)

    # ----------------------------------------------------------- storage
    def to_arrays(self):
        out = dict(calib_params_=np.vstack([self.a, self.w, self.c]), calib_rho_=np.float64(self.rho),
                   calib_X_ref_=self.X_ref)
        if self.R is not None:
            out["calib_R_"] = self.R
        return out

    @classmethod
    def from_arrays(cls, params, rho, X_ref, stats=None, R=None):
        params = np.asarray(params, float)
        return cls.for_training_set(X_ref, params[0], params[1:-1], params[-1], float(rho), stats=stats, R=R)


def t_consistency(nu=NU):
    """κ with which a Student-t(ν) maximum-likelihood scale is consistent at the Gaussian:
    the ML scale s of N(0, 1) data solves E[(ν + 1) z² / (ν s² + z²)] = 1; κ = 1/s."""
    from scipy.integrate import quad
    from scipy.optimize import brentq
    from scipy.stats import norm

    def score(s):
        return quad(lambda z: (nu + 1) * z**2 / (nu * s**2 + z**2) * norm.pdf(z), -np.inf, np.inf)[0] - 1
    return 1.0 / brentq(score, 0.3, 1.5)


def _variance(p, var_obs, var_model, F):
    return var_obs + np.exp(2 * (p[0] + F @ p[1:-1])) * var_model + np.exp(2 * p[-1])


def _nll(p, e, var_obs, var_model, F):
    var = _variance(p, var_obs, var_model, F)
    return np.sum(0.5 * np.log(var) + 0.5 * (NU + 1) * np.log1p(e**2 / (NU * var)))


def _correlation(params, k):
    """A correlation matrix (k, k) from k(k−1)/2 unconstrained numbers: a unit-diagonal lower
    triangle whose rows are normalized, times its transpose."""
    L = np.eye(k)
    L[np.tril_indices(k, -1)] = params
    L /= np.linalg.norm(L, axis=1, keepdims=True)
    return L @ L.T


def fit_correlation(resid, cov, delta, nu=NU):
    """The correlation R (k, k) of the calibration's term: maximum likelihood of the residuals
    (n, k) under a multivariate Student-t (ν) with covariance cov + D R D (cov (n, k, k) the
    formal covariances, delta (n, k, k) the calibration's term, whose diagonal gives D), its
    scale made consistent at the Gaussian as the per-label fits are (`t_consistency`)."""
    from scipy.optimize import minimize

    resid, cov, delta = (np.asarray(v, float) for v in (resid, cov, delta))
    k = resid.shape[1]
    if k < 2:
        return np.eye(k)
    d = np.sqrt(np.clip(np.diagonal(delta, axis1=1, axis2=2), 0.0, None))
    kappa2 = t_consistency(nu) ** 2

    def nll(p):
        S = (cov + d[:, :, None] * _correlation(p, k) * d[:, None, :]) / kappa2
        sign, logdet = np.linalg.slogdet(S)
        q = np.einsum("ni,ni->n", resid, np.linalg.solve(S, resid[:, :, None])[..., 0])
        return float(np.sum(0.5 * logdet + 0.5 * (nu + k) * np.log1p(q / nu)))
    p = minimize(nll, np.zeros(k * (k - 1) // 2), method="Nelder-Mead",
                 options=dict(xatol=1e-4, fatol=1e-6, maxiter=4000)).x
    return _correlation(p, k)


def fit_calibration(resid, sigma, sigma_model, quality, position, X_ref, span, cov=None, cov_model=None):
    """Fit (ρ, a, w, c) per label by maximum likelihood of out-of-fold residuals.

    resid : (n, k) estimate − truth, physical; sigma : (n, k) formal σ; sigma_model : (n, k)
        the model error's share of it (σ²_model ≤ σ²)
    quality : (n, 2) χ²_ν and the model error's share of the pixel variance, per star
    position : (n, 2) `position_features`, each against the training set the estimate was made with
    X_ref : (n_train, k) standardized labels of the final training set; span : (k,) its range
    cov, cov_model : (n, k, k) the formal covariances and their model-error shares; given, the
        correlation of the calibration's term is learned too (`fit_correlation`)
    Rows with a non-finite entry are left out. Returns a `Calibration`.
    """
    from scipy.optimize import minimize

    resid, sigma, sigma_model = (np.asarray(v, float) for v in (resid, sigma, sigma_model))
    ok = np.all(np.isfinite(resid) & np.isfinite(sigma) & (sigma > 0) & np.isfinite(sigma_model), 1)
    if ok.sum() < 10:
        raise ValueError(f"calibration needs at least 10 successful out-of-fold fits, got {int(ok.sum())}")
    rho = fit_rho(np.asarray(quality)[ok])
    F = np.column_stack([misfit_feature(np.asarray(quality)[ok], rho), np.asarray(position, float)[ok]])
    k, n_f = resid.shape[1], F.shape[1]
    kappa = t_consistency()
    a, w, c = np.zeros(k), np.zeros((n_f, k)), np.zeros(k)
    z_before, z_after = np.zeros(k), np.zeros(k)
    for j in range(k):
        e, s = resid[ok, j], sigma[ok, j]
        vm = np.minimum(sigma_model[ok, j] ** 2, s**2)
        vo = s**2 - vm
        x0 = np.r_[np.log(max(np.std(e / s), 1.0)), np.zeros(n_f), np.log(1e-3 * span[j])]
        # s ≥ 1 (after κ): the formal errors are a floor. The CV error includes the training spectra's
        # noise, so at the training S/N it can look too large; shrinking it there would shrink
        # the errors of brighter stars, whose budget is all model error
        bounds = [(-np.log(kappa), 5.0)] + [(0.0, 3.0)] * n_f + [(np.log(1e-5 * span[j]), np.log(span[j]))]
        p = minimize(_nll, x0, args=(e, vo, vm, F), method="L-BFGS-B", bounds=bounds).x
        # the t scale → a Gaussian σ: κ on the scaled model share and on the floor (the observed
        # noise's share is known, not fitted)
        p[0] += np.log(kappa)
        p[-1] += np.log(kappa)
        a[j], w[:, j], c[j] = p[0], p[1:-1], np.exp(p[-1])
        z_before[j], z_after[j] = np.std(e / s), np.std(e / np.sqrt(_variance(p, vo, vm, F)))
    stats = dict(n_fit=int(ok.sum()), nu=NU, z_std_formal=z_before.tolist(), z_std_calibrated=z_after.tolist())
    R = None
    if cov is not None and cov_model is not None:
        cov, cov_model = np.asarray(cov, float)[ok], np.asarray(cov_model, float)[ok]
        fine = np.all(np.isfinite(cov.reshape(len(cov), -1)) & np.isfinite(cov_model.reshape(len(cov), -1)), 1)
        s = np.exp(a + F @ w)
        plain = Calibration.for_training_set(X_ref, a, w, c, rho)
        delta = plain.term(cov_model[fine], s[fine])
        R = fit_correlation(resid[ok][fine], cov[fine], delta)
        stats["correlation"] = np.round(R, 4).tolist()
    return Calibration.for_training_set(X_ref, a, w, c, rho, stats=stats, R=R)
