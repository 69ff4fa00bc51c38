"""The likelihood of the paper's Eq. 8 and its correlated extension, as ONE noise model.

    ln p(f | θ) = −½ [ rᵀ Σ⁻¹ r + ln det 2πΣ ],   r = f − f(θ) on the good pixels (ivar > 0)
    Σ = diag(σ²_obs) + Σ_model

Eq. 8 is Σ_model = diag(σ²_model) (independent pixels); the correlated model
error is Σ_model = diag(ψ) + F Fᵀ with diag(Σ_model) = σ²_model, F the leading
principal components of the emulator's out-of-fold CV residuals (see
`slambayes.model_covariance`). `NoiseModel.resolve` is the one place where a
model-error setting ("auto", "correlated", "cv", "cv_minus_noise", "none") and
the calibration setting are turned into arrays; every consumer (survey MAP,
single-star MAP, NUTS, emcee, diagnostics) takes the resolved object. The
calibration is part of the density as an errors-in-variables term on the labels
(`NoiseModel.label_covariance`: p(f | θ) = ∫ p(f | θ + δ) N(δ; 0, Δ) dδ), never a map
applied to a fit's covariance or to posterior draws.

For one spectrum, `NoiseModel.star(ivar)` gives a `StarNoise`: Σ = D^½(I + V Vᵀ)D^½
with D = diag(σ²_obs + ψ), V = D^(−½) F = Q S Pᵀ, so Σ^(−½) = (I − Q c Qᵀ) D^(−½),
c = 1 − (1 + S²)^(−½), and

    rᵀ Σ⁻¹ r = ‖r_w‖² − ‖√(2c − c²) ∘ Qᵀ r_w‖²,   r_w = D^(−½) r.

All its arrays cover every pixel (0 on bad ones), so jax compiles the density
once for any mask; numpy's `whiten` (for least squares) and the jax
`log_likelihood` (for the samplers) are the same algebra.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MODEL_ERRORS", "CALIBRATIONS", "NoiseModel", "StarNoise", "pixel_weights", "model_sigma"]

MODEL_ERRORS = ("auto", "correlated", "cv", "cv_minus_noise", "none")
CALIBRATIONS = ("auto", "none")


def pixel_weights(ivar, sigma_model):
    """w = 1/(σ²_obs + σ²_model), shape like ivar; 0 where ivar = 0.

    ivar : (..., n_pix) inverse variance of the observed flux
    sigma_model : (n_pix,) model error in flux units
    """
    ivar = np.asarray(ivar, float)
    s2 = np.asarray(sigma_model, float) ** 2
    return np.where(ivar > 0, ivar / (1.0 + ivar * s2), 0.0)


def model_sigma(emulator, kind, floor=1e-4):
    """Per-pixel model error σ_j in flux units, (n_pix,), for a resolved `kind`.

    "cv" and "correlated": s_j·sqrt(CV MSE_j) (the training MSE for pixels without CV);
    "cv_minus_noise": the same after removing the training spectra's mean noise variance
    (so the observed σ is not counted twice), floored at `floor` (standardized variance);
    "none": zeros.
    """
    if kind == "none":
        return np.zeros_like(emulator.flux_std_)
    if kind == "cv_minus_noise":
        mse = (emulator.cv_error / emulator.flux_std_) ** 2
        return emulator.flux_std_ * np.sqrt(np.maximum(mse - emulator.noise_var_, floor))
    return emulator.cv_error


@dataclass(frozen=True)
class StarNoise:
    """The noise of one spectrum (n_pix pixels, m correlated components).

    isd : (n_pix,) D^(−½), 0 on bad pixels; Q : (n_pix, m); c : (m,); norm : −½ ln det 2πΣ
    weights : (n_pix,) Eq. 8's diagonal 1/(σ²_obs + σ²_model) (for starting points)
    var_obs : (n_pix,) σ²_obs, 0 on bad pixels
    ivar, source : the inverse variance and `NoiseModel` it was built from (for `without`)
    """

    isd: np.ndarray
    Q: np.ndarray
    c: np.ndarray
    norm: float
    weights: np.ndarray
    var_obs: np.ndarray
    ivar: np.ndarray = field(default=None, compare=False, repr=False)
    source: object = field(default=None, compare=False, repr=False)

    def without(self, pixels):
        """The same spectrum's noise with `pixels` (boolean mask or indices) set bad."""
        if self.source is None:
            raise ValueError("this StarNoise was not built by NoiseModel.star; it cannot drop pixels")
        ivar = np.array(self.ivar, float)
        ivar[pixels] = 0.0
        return self.source.star(ivar)

    @property
    def good(self):
        return self.isd > 0

    @property
    def n_good(self):
        return int(self.good.sum())

    @property
    def model_share(self):
        """Mean over good pixels of σ²_model / (σ²_obs + σ²_model): how much of this spectrum's
        error budget is the emulator's (→ 1 at high S/N)."""
        g = self.good
        return float(np.mean(1.0 - self.var_obs[g] * self.weights[g])) if g.any() else np.nan

    def whiten(self, x):
        """Σ^(−½) x for x (n_pix,) or (n_pix, k); ‖whiten(r)‖² = rᵀ Σ⁻¹ r. In float32 where x is
        (the posterior summaries' draws), else float64."""
        x = np.asarray(x)
        dtype = np.float32 if x.dtype == np.float32 else float
        x = x.astype(dtype, copy=False)
        isd = self.isd.astype(dtype, copy=False)
        xw = x * (isd if x.ndim == 1 else isd[:, None])
        if self.c.size == 0:
            return xw
        Q, c = self.Q.astype(dtype, copy=False), self.c.astype(dtype, copy=False)
        proj = Q.T @ xw
        return xw - Q @ (c * proj if x.ndim == 1 else c[:, None] * proj)

    def whiten_T(self, x):
        """(Σ^(−½))ᵀ x, so that Σ⁻¹ J = whiten_T(whiten(J))."""
        x = np.asarray(x, float)
        if self.c.size:
            proj = self.Q.T @ x
            x = x - self.Q @ (self.c * proj if x.ndim == 1 else self.c[:, None] * proj)
        return x * (self.isd if x.ndim == 1 else self.isd[:, None])

    def model_part(self, Jw, cov):
        """The share of a fit's covariance `cov` (k, k) that comes from the model error:
        cov Jᵀ Σ⁻¹ Σ_model Σ⁻¹ J cov, from the whitened Jacobian Jw = Σ^(−½) J (n_pix, k).
        (The rest, cov Jᵀ Σ⁻¹ Σ_obs Σ⁻¹ J cov, is the observed noise's; with a prior, its
        share cov P cov is neither.)"""
        G = self.whiten_T(Jw)
        info_model = Jw.T @ Jw - G.T @ (self.var_obs[:, None] * G)
        return cov @ info_model @ cov

    def arrays(self):
        """(isd, Q, 2c − c², norm): the data the jax density takes."""
        return self.isd, self.Q, self.c * (2.0 - self.c), np.float64(self.norm)

    @staticmethod
    def log_likelihood(resid, isd, Q, c2, norm, xp=np):
        """−½ rᵀ Σ⁻¹ r + norm for residuals (..., n_pix); numpy or jax.numpy."""
        rw = resid * isd
        p = rw @ Q
        return -0.5 * (xp.sum(rw * rw, axis=-1) - xp.sum(c2 * p * p, axis=-1)) + norm

    @staticmethod
    def draw(rng, n, isd, Q, c2):
        """n noise vectors (n, n_good) ~ N(0, Σ) on the good pixels (isd > 0): Σ^½ ε with the
        symmetric root of I + V Vᵀ, D^½ (I + Q (1/(1 − c) − 1) Qᵀ) ε, c from c2 = 2c − c²
        (the posterior predictive's noise)."""
        g = isd > 0
        eps = rng.standard_normal((n, int(g.sum())))
        Q = Q[g]
        if Q.shape[1]:
            eps = eps + ((eps @ Q) * (1.0 / np.sqrt(1.0 - c2) - 1.0)) @ Q.T
        return eps / isd[g]

    @staticmethod
    def project(resid0, B, isd, Q, c2, norm):
        """The log likelihood of residuals r = resid0 − u B, for any coefficients u (R,), as
        (s0, a, G, norm) with −½ rᵀ Σ⁻¹ r = −½ (s0 − 2 u·a + uᵀ G u): resid0 (n_pix,) the
        residual at u = 0, B (R, n_pix) a basis of the model spectra (`Emulator.jax_projection`).
        Exact; each evaluation then costs O(R²) instead of O(n_pix R)."""
        yw, Bw = resid0 * isd, B * isd
        yq, BQ = yw @ Q, Bw @ Q
        s0 = yw @ yw - np.sum(c2 * yq * yq)
        a = Bw @ yw - BQ @ (c2 * yq)
        G = Bw @ Bw.T - (BQ * c2) @ BQ.T
        return np.float64(s0), a, G, np.float64(norm)

    @staticmethod
    def projected_log_likelihood(u, s0, a, G, norm, xp=np):
        """`log_likelihood` for coefficients u (..., R) from the output of `project`."""
        return -0.5 * (s0 - 2.0 * (u @ a) + xp.sum((u @ G) * u, axis=-1)) + norm

    @staticmethod
    def pointwise_log_likelihood(resid, isd, Q, c2, norm, xp=np):
        """Per-pixel terms (..., n_pix) that sum to `log_likelihood`: those of the whitened
        residual e = Σ^(−½) r (e ~ N(0, I) under the model), −½ e_i² + ln isd_i − ½ ln 2π,
        with the low-rank part of ln det Σ spread evenly over the good pixels. With
        independent pixels each term is exactly that pixel's log likelihood. Bad pixels
        (isd = 0) get 0."""
        rw = resid * isd
        c = 1.0 - xp.sqrt(1.0 - c2)                 # c2 = 2c − c²
        e = rw - (rw @ Q * c) @ Q.T
        good = isd > 0
        n_good = xp.sum(good)
        base = xp.where(good, xp.log(xp.where(good, isd, 1.0)) - 0.5 * np.log(2 * np.pi), 0.0)
        rest = (norm - xp.sum(base)) / n_good
        return xp.where(good, -0.5 * e * e + base + rest, 0.0)


@dataclass(frozen=True)
class NoiseModel:
    """The resolved noise model of an emulator: model error (with correlations) and calibration.

    kind : "correlated" | "cv" | "cv_minus_noise" | "none" (never "auto")
    sigma_model : (n_pix,) flux units; factor : (n_pix, m) flux units (m = 0 unless correlated)
    calibration : `slambayes.calibration.Calibration` or None (formal errors only)
    """

    kind: str
    sigma_model: np.ndarray
    factor: np.ndarray
    calibration: object = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def resolve(cls, emulator, model_error="auto", calibration="auto"):
        """The noise model for `emulator`. An existing `NoiseModel` passes through (checked).

        model_error : "auto" (correlated when the emulator has the factor, i.e. was trained
            with CV, else "cv"), "correlated", "cv" (Eq. 8, independent pixels),
            "cv_minus_noise", "none"
        calibration : "auto" (the emulator's `calibration_` when it has one) or "none"
        """
        if isinstance(model_error, NoiseModel):
            if model_error.sigma_model.shape != np.shape(emulator.wave_):
                raise ValueError(f"the noise model has {model_error.sigma_model.size} pixels, the "
                                 f"emulator {np.size(emulator.wave_)}")
            return model_error
        if model_error not in MODEL_ERRORS:
            raise ValueError(f"model_error must be one of {MODEL_ERRORS}, not {model_error!r}")
        if calibration not in CALIBRATIONS and not hasattr(calibration, "apply"):
            raise ValueError(f"calibration must be one of {CALIBRATIONS} or a Calibration, not {calibration!r}")
        n_pix = np.size(emulator.wave_)
        factor = getattr(emulator, "error_factor_", None)
        has_factor = factor is not None and np.shape(factor)[1] > 0
        kind = ("correlated" if has_factor else "cv") if model_error == "auto" else model_error
        if kind == "correlated" and not has_factor:
            raise ValueError("model_error='correlated' needs an emulator trained with cross-validation and "
                             "error_rank > 0 (this one has no correlated model error: it was trained "
                             "without CV or by an older slambayes); retrain it, or use model_error='cv'")
        if hasattr(emulator, "model_error_sigma"):          # emulators that define their own σ (tests, toys)
            sigma = np.asarray(emulator.model_error_sigma(kind), float)
        else:
            sigma = model_sigma(emulator, kind)
        F = np.asarray(factor, float) if kind == "correlated" else np.zeros((n_pix, 0))
        calib = getattr(emulator, "calibration_", None) if calibration == "auto" else \
            (None if calibration == "none" else calibration)
        if calib is not None and calib.stats.get("model_error", kind) != kind:
            if calibration != "auto":
                raise ValueError(f"the calibration was learned for model_error="
                                 f"{calib.stats['model_error']!r}, not {kind!r}")
            calib = None              # learned for another likelihood: formal errors only
        return cls(kind, sigma, F, calib)

    def for_fold(self, factor):
        """The same noise model for a CV fold's emulator, whose correlated part (if any) is
        `factor` (learned without that fold), uncalibrated."""
        return NoiseModel(self.kind, self.sigma_model, factor if self.rank else self.factor)

    # ---------------------------------------------------------------- per star
    def star(self, ivar):
        """`StarNoise` of one spectrum with inverse variance `ivar` (n_pix,)."""
        ivar = np.asarray(ivar, float)
        good = ivar > 0
        w = pixel_weights(ivar, self.sigma_model)
        d = np.where(good, 1.0 / np.where(good, w, 1.0), 1.0)
        F = self.factor[good]
        d_good = d[good] - (F**2).sum(1)                 # the correlated part moves to F Fᵀ
        isd = np.zeros(ivar.size)
        isd[good] = 1.0 / np.sqrt(d_good)
        logdet = float(np.log(d_good).sum())
        m = F.shape[1]
        Q, c = np.zeros((ivar.size, m)), np.zeros(m)
        if m:
            q, s, _ = np.linalg.svd(F * isd[good][:, None], full_matrices=False)
            r = q.shape[1]                   # < m when fewer good pixels than components: pad with zeros
            Q[np.ix_(good, np.arange(r))], c[:r] = q, 1.0 - 1.0 / np.sqrt(1.0 + s**2)
            logdet += float(np.log1p(s**2).sum())
        norm = -0.5 * (good.sum() * np.log(2 * np.pi) + logdet)
        return StarNoise(isd, Q, c, norm, w, np.where(good, 1.0 / np.where(good, ivar, 1.0), 0.0), ivar, self)

    # --------------------------------------------------------------- reporting
    @property
    def rank(self):
        return int(self.factor.shape[1])

    @property
    def calibrated(self):
        return self.calibration is not None

    def label_covariance(self, cov, cov_model, theta_std, quality):
        """The calibration as an errors-in-variables term: Δ (m, n, n), physical units, the
        covariance of the offset δ ~ N(0, Δ) between a star's labels θ and the labels φ = θ + δ
        at which the emulator describes its spectrum. The calibrated likelihood is then
        p(f | θ) = ∫ p(f | φ = θ + δ) N(δ; 0, Δ) dδ, whose label covariance is cov + Δ: the
        calibrated one (`Calibration.apply`). cov (m, n, n) the formal covariance of fits
        without a prior, the first k of the n parameters the emulator's labels (cov_model
        (m, k, k) their model-error share, `StarNoise.model_part`; theta_std (m, k); quality
        (m, 2): χ²_ν and `StarNoise.model_share`). Nuisance parameters get no term of their own.
        Projected on the positive semi-definite cone (the per-label scales can make the
        difference indefinite along a direction where the labels are strongly correlated).
        Zeros without a calibration; NaN for a failed fit."""
        cov = np.array(cov, float)
        m, n = cov.shape[0], cov.shape[-1]
        out = np.zeros((m, n, n))
        if self.calibration is None:
            return out
        k = np.shape(theta_std)[-1]
        target = self.calibration.apply(cov[:, :k, :k], cov_model, theta_std, quality)
        for i in range(m):
            d = target[i] - cov[i, :k, :k]
            if not np.all(np.isfinite(d)):
                out[i] = np.nan
                continue
            lam, V = np.linalg.eigh(0.5 * (d + d.T))
            out[i, :k, :k] = (V * np.clip(lam, 0.0, None)) @ V.T
        return out

    @property
    def tag(self):
        """A short string that identifies the density (stored with every result)."""
        return f"{self.kind}" + (f"(m={self.rank})" if self.rank else "") + \
            ("+calibrated" if self.calibrated else "")

    def describe(self):
        """JSON text for catalog headers and InferenceData attributes."""
        out = dict(model_error=self.kind, rank=self.rank, calibrated=self.calibrated)
        if self.calibration is not None:
            out["calibration"] = self.calibration.describe()
        return json.dumps(out)
