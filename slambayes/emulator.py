"""`Emulator`: the SLAM forward model, labels → normalized flux, one SVR per pixel."""
from __future__ import annotations

import hashlib
import numpy as np

from .kernel_expansion import KernelExpansion
from .model_covariance import error_factor
from .preprocess import standardize
from .svr_training import PIXEL_STATS, fit_pixel_block, run_pixel_blocks
from .training_set import check_training_set

__all__ = ["Emulator", "DEFAULT_C", "DEFAULT_GAMMA"]

DEFAULT_C = tuple(10.0 ** np.array([0.0, 0.5, 1.0, 1.5, 2.0]))
DEFAULT_GAMMA = tuple(10.0 ** np.array([-3.0, -2.0, -1.0]))


def training_hash(labels, flux, ivar):
    h = hashlib.sha256()
    for a in (labels, flux, ivar):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()


class Emulator:
    """Per-pixel RBF support-vector regression from labels to normalized flux.

    Parameters
    ----------
    C, gamma : sequences of floats
        Hyperparameter grid searched per pixel by k-fold CV MSE (γ in
        standardized label units).
    epsilon : float, ε-insensitive tube width in standardized flux units
    cv : int, number of CV folds (shuffled, seeded by `random_state`); 0 skips
        CV (then the first C and γ are used and no CV statistics exist)
    n_jobs : int, joblib workers over pixel blocks (-1 = all cores)
    block_size : int, pixels per joblib task
    random_state : int, seed of the CV folds
    error_rank : int or "auto", principal components of the out-of-fold CV residuals
        kept as the correlated part of the model error (`error_factor_`; 0 = none).
        "auto" keeps n_train // 5, at most 100: the leading eigenvectors of a sample
        covariance are only trustworthy for a few times more samples than components
        (on LAMOST with 105 training stars, 100 components were worse than 20)
    progress : bool, show a tqdm bar while training
    backend : str or None, joblib backend (e.g. "dask" with a dask.distributed
        Client connected, to train the pixels on a cluster)
    compression : float ≥ 0, evaluate the emulator through a low-rank factorization of its
        coefficients whose predictions at the training labels move by at most this fraction
        of each pixel's CV RMS error (`KernelExpansion.compressed`); 0 (default) evaluates
        the SVR expansion exactly (as sklearn's `SVR.predict`, to 1e-10). 0.002 cuts the
        cost of flux and Jacobian several times on survey models (n_pix ≫ rank) at a
        change far below the emulator's own error. It can be set on a loaded model too.

    Fitted attributes (n_pix pixels, n_train stars, k labels)
    ----------------------------------------------------------
    label_names_ : list of k str
    wave_ : (n_pix,) Å
    label_mean_, label_std_ : (k,) physical units
    label_min_, label_max_ : (k,) training label range
    flux_mean_, flux_std_ : (n_pix,) flux scalers s_j
    X_train_ : (n_train, k) standardized training labels
    dual_coef_ : (n_pix, n_train) dense dual coefficients (0 for non-support vectors)
    intercept_, C_, gamma_ : (n_pix,)
    cv_mse_, cv_md_, train_mse_ : (n_pix,) standardized units
    noise_var_ : (n_pix,) mean training-noise variance, standardized units
    fold_C_, fold_gamma_ : (n_pix, n_fold) each pixel's (C, γ) chosen without CV fold f,
        for the out-of-fold models of the calibration (`slambayes.out_of_fold`)
    error_factor_ : (n_pix, m) correlated model error in flux units: Σ_model =
        diag(σ²_cv − Σ_k F²_jk) + F Fᵀ (m ≤ error_rank; m = 0 without CV)
    training_hash_ : str
    """

    evaluates_batches = True      # predict_and_jacobian takes (m, k) labels: `map_core.fit_stars` batches

    def __init__(self, C=DEFAULT_C, gamma=DEFAULT_GAMMA, epsilon=0.05, cv=5, n_jobs=-1,
                 block_size=16, random_state=0, error_rank="auto", progress=True, backend=None,
                 compression=0.0):
        self.C = C
        self.gamma = gamma
        self.epsilon = epsilon
        self.cv = cv
        self.n_jobs = n_jobs
        self.block_size = block_size
        self.random_state = random_state
        self.error_rank = error_rank
        self.progress = progress
        self.backend = backend
        self.compression = compression

    # ------------------------------------------------------------------ fit
    def fit(self, spectra):
        """Train on `spectra` (must have labels). Returns self.

        The set is checked first (`slambayes.training_set.check_training_set`): constant or
        non-finite labels are refused; stars without good pixels, with absurd flux or
        duplicated are dropped with a warning that names them."""
        for name in ("C", "gamma"):
            grid = np.atleast_1d(np.asarray(getattr(self, name), float))
            if grid.size == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
                raise ValueError(f"{name} must be one or more positive numbers (a grid for the CV), "
                                 f"not {getattr(self, name)!r}")
        if self.cv is not None and (int(self.cv) != self.cv or self.cv < 0 or self.cv == 1):
            raise ValueError(f"cv must be 0 (no cross-validation) or a number of folds ≥ 2, not {self.cv!r}")
        for name in ("epsilon", "compression"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number ≥ 0, not {value!r}")
        spectra = check_training_set(spectra, min_stars=max(3, self.cv or 0))
        labels = np.asarray(spectra.labels, float)
        good = spectra.good
        self.label_names_ = list(spectra.label_names)
        self.wave_ = spectra.wave.copy()
        self.label_mean_, self.label_std_ = standardize(labels)
        self.label_min_, self.label_max_ = labels.min(0), labels.max(0)
        self.flux_mean_, self.flux_std_ = standardize(spectra.flux, good.astype(float))
        X = (labels - self.label_mean_) / self.label_std_
        Y = (spectra.flux - self.flux_mean_) / self.flux_std_
        dual, stats, oof, self.fold_C_, self.fold_gamma_ = self._train(X, Y, good)
        self.X_train_ = X
        self.dual_coef_ = dual
        for i, name in enumerate(PIXEL_STATS):
            setattr(self, name + "_", stats[:, i].copy())
        self.error_factor_ = error_factor(oof.T, good, self._error_rank(spectra.n_star)) \
            * self.cv_error[:, None]
        with np.errstate(divide="ignore"):
            var = np.where(good, 1.0 / np.where(good, spectra.ivar, 1.0), 0.0) / self.flux_std_**2
        self.noise_var_ = var.sum(0) / np.maximum(good.sum(0), 1)
        self.training_hash_ = training_hash(labels, spectra.flux, spectra.ivar)
        self.calibration_ = self.checks_ = None   # they belong to one fit (slambayes.calibrate)
        self._expansion = None
        return self

    def _error_rank(self, n_train):
        if not self.cv:
            return 0        # no out-of-fold residuals without CV
        return min(n_train // 5, 100) if self.error_rank == "auto" else int(self.error_rank)

    def _train(self, X, Y, good):
        C_grid = tuple(float(c) for c in np.atleast_1d(self.C))
        g_grid = tuple(float(g) for g in np.atleast_1d(self.gamma))
        return run_pixel_blocks(fit_pixel_block, X, Y, good,
                                shared=(C_grid, g_grid, self.epsilon, self.cv, self.random_state),
                                block_size=self.block_size, n_jobs=self.n_jobs, backend=self.backend,
                                progress=self.progress)

    # ------------------------------------------------------------ properties
    def _check_fitted(self):
        if not hasattr(self, "dual_coef_"):
            raise RuntimeError("this Emulator is not fitted yet: call fit() or Emulator.load()")

    @property
    def n_labels(self) -> int:
        self._check_fitted()
        return len(self.label_names_)

    @property
    def expansion(self) -> KernelExpansion:
        """The kernel expansion in standardized units, compressed as `compression` asks."""
        return self.expansion_at(self.compression)

    def expansion_at(self, compression, single=False):
        """The kernel expansion compressed to `compression` (0: exact), built once per setting
        and cached (the posterior summaries evaluate their draws on a compressed one while the
        fit uses the emulator's own); single: its arrays in float32."""
        self._check_fitted()
        c = float(compression)
        cache = getattr(self, "_expansion", None) or {}
        if c not in cache:
            if 0.0 not in cache:
                cache[0.0] = KernelExpansion.from_dense(self.X_train_, self.dual_coef_, self.intercept_, self.gamma_)
            if c > 0:
                cache[c] = cache[0.0].compressed(c, self._cv_rms())
        if single and (c, "f4") not in cache:
            cache[(c, "f4")] = cache[c].astype(np.float32)
        self._expansion = cache
        return cache[(c, "f4")] if single else cache[c]

    def _cv_rms(self):
        """sqrt(CV MSE_j), standardized (n_pix,) (the training MSE where a pixel has no CV)."""
        return np.sqrt(np.where(np.isfinite(self.cv_mse_), self.cv_mse_, self.train_mse_))

    @property
    def cv_error(self):
        """s_j·sqrt(CV MSE_j): each pixel's cross-validated model error in flux units, (n_pix,)
        (the training MSE where a pixel has no CV). How it enters the likelihood is
        `slambayes.likelihood.NoiseModel`'s business."""
        self._check_fitted()
        return self.flux_std_ * self._cv_rms()

    # ------------------------------------------------------------ prediction
    def to_std(self, labels):
        self._check_fitted()
        return (np.asarray(labels, float) - self.label_mean_) / self.label_std_

    def from_std(self, theta):
        return np.asarray(theta) * self.label_std_ + self.label_mean_

    def predict(self, labels, compression=None, single=False):
        """Normalized flux for labels (m, k) or (k,) in physical units → (m, n_pix) or (n_pix,);
        with the expansion compressed to `compression` if given, else to the emulator's own;
        single: evaluated and returned in float32 (about 1e-6 of the flux; the posterior
        summaries' draws)."""
        theta = self.to_std(labels)
        exp = self.expansion_at(self.compression if compression is None else compression, single)
        dtype = np.float32 if single else float
        f = exp.predict(np.atleast_2d(theta).astype(dtype))
        f = self.flux_mean_.astype(dtype, copy=False) + self.flux_std_.astype(dtype, copy=False) * f
        return f[0] if theta.ndim == 1 else f

    def predict_and_jacobian(self, labels):
        """(flux, ∂flux/∂labels) in physical units: (m, n_pix), (m, n_pix, k)."""
        theta = self.to_std(labels)
        f, J = self.expansion.predict_and_jacobian(np.atleast_2d(theta))
        f = self.flux_mean_ + self.flux_std_ * f
        J = J * self.flux_std_[:, None] / self.label_std_
        return (f[0], J[0]) if theta.ndim == 1 else (f, J)

    def flux_curvature(self, labels, w):
        """Σ_j w_j ∂²flux_j/∂labels² (k, k), physical units, at one label vector (k,) for pixel
        weights w (n_pix,) (e.g. Σ⁻¹ r: the curvature term of the χ² Hessian); (m, k, k) for
        labels (m, k) and weights (m, n_pix)."""
        theta = self.to_std(np.asarray(labels, float))
        H = self.expansion.weighted_hessian(theta, np.asarray(w, float) * self.flux_std_)
        return H / np.outer(self.label_std_, self.label_std_)

    def jacobian(self, labels):
        """∂flux/∂labels in physical units, (m, n_pix, k) or (n_pix, k)."""
        return self.predict_and_jacobian(labels)[1]

    def jax_predictor(self):
        """A jax-traceable function labels (…, k) physical → flux (…, n_pix)."""
        import jax.numpy as jnp

        exp = self.expansion.to_xp(jnp)
        mu, sd = jnp.asarray(self.label_mean_), jnp.asarray(self.label_std_)
        fm, fs = jnp.asarray(self.flux_mean_), jnp.asarray(self.flux_std_)

        def predict(labels):
            theta = (labels - mu) / sd
            return fm + fs * exp.predict(theta, xp=jnp)

        return predict

    def jax_projection(self):
        """(coefficients, B, c0) with flux(labels) = c0 + coefficients(labels) @ B exactly, or
        None when that is no cheaper than the flux itself (R ≥ n_pix; R ≤ n_train for the exact
        expansion of one γ, ≪ n_pix with `compression`).
        coefficients : jax-traceable labels (…, k) physical → (…, R); B : (R, n_pix) and
        c0 : (n_pix,) numpy, flux units. A likelihood projected on B costs O(R²) per evaluation
        instead of O(n_pix R) (`slambayes.likelihood.StarNoise.project`)."""
        import jax.numpy as jnp

        exp = self.expansion
        if exp.projection_rank >= self.wave_.size:
            return None
        on_jax = exp.to_xp(jnp)
        mu, sd = jnp.asarray(self.label_mean_), jnp.asarray(self.label_std_)

        def coefficients(labels):
            return on_jax.coefficients((labels - mu) / sd, xp=jnp)

        return coefficients, exp.basis() * self.flux_std_, self.flux_mean_ + self.flux_std_ * exp.intercept()

    # --------------------------------------------------------------- file I/O
    @property
    def model_hash(self):
        """sha256 of the fitted model's content (see `slambayes.model_file.model_hash`)."""
        from .model_file import model_hash
        self._check_fitted()
        return model_hash(self)

    def save(self, path):
        """Write the model to an npz file (no pickle). See `slambayes.model_file`."""
        from .model_file import save_emulator
        save_emulator(self, path)

    @classmethod
    def load(cls, path):
        """Read a model written by `save`."""
        from .model_file import load_emulator
        return load_emulator(cls, path)

    def __repr__(self):
        if not hasattr(self, "dual_coef_"):
            return f"Emulator(C={self.C}, gamma={self.gamma}, epsilon={self.epsilon}, cv={self.cv})"
        return (f"Emulator(labels={self.label_names_}, n_pix={self.wave_.size}, "
                f"n_train={self.X_train_.shape[0]}, median CV MSE={np.nanmedian(self.cv_mse_):.3g})")
