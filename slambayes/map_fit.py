"""Survey-wide MAP fitting: Levenberg–Marquardt-type least squares on Eq. 8.

`fit_map` returns (and optionally writes, resumably) an astropy Table with one
row per spectrum: labels, errors and covariance from (JᵀJ)⁻¹, fit statistics
and flags.

With `loss="soft_l1"` or `"cauchy"` the pixel residuals (in units of the total
σ of Eq. 8) pass through scipy's robust loss, so that a few pixels the emulator
or the data get badly wrong (cosmic rays, sky lines, telluric residuals, lines
the training set never showed) cannot drag the labels. The prior residuals stay
quadratic. The covariance is then (Jᵀ W J)⁻¹, W = ρ'(r²/f²) — each pixel's σ
inflated as iteratively reweighted least squares would — and `n_downweighted`
counts the pixels with weight < ½. With the correlated model error the loss
acts on the whitened residuals, which mix pixels along the error's principal
components, so a single bad pixel is caught less sharply than with
model_error="cv". A spectrum that cannot be fit gets a flagged row with NaN labels;
the batch never stops.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass

import astropy.units as u
import numpy as np
from astropy.table import Table
from scipy.optimize import least_squares

from .catalog import run_chunked
from .likelihood import pixel_weights
from .model_covariance import Whitener
from .model_file import DEFAULT_UNITS

__all__ = ["fit_map", "fit_chunk", "MapSettings", "FLAGS", "check_grid"]

# bit flags of the `flag` column
FLAGS = {"no_data": 1, "not_converged": 2, "at_edge": 4, "error": 8}


@dataclass(frozen=True)
class MapSettings:
    """Fit options (see `fit_map`)."""

    model_error: str = "cv"
    n_starts: int = 1
    bounds_pad: float = 0.0
    method: str = "trf"
    max_nfev: int = 100
    edge_tol: float = 1e-3
    jac: str = "analytic"     # or "2-point": finite differences, for benchmarks only
    prior_terms: tuple = ()   # ((label index array, mean, inverse Cholesky factor), ...)
    loss: str = "linear"      # on the pixel residuals only; see `pixel_loss`
    f_scale: float = 1.0      # residual (in total σ) where a robust loss turns over


def check_grid(emulator, spectra):
    """Raise a clear error if the spectra are not on the emulator's grid."""
    w = emulator.wave_
    if spectra.wave.shape != w.shape or not np.allclose(spectra.wave, w, rtol=0, atol=1e-6):
        raise ValueError(
            f"spectra are on another wavelength grid ({spectra.n_pix} px, "
            f"{spectra.wave[0]:.2f}..{spectra.wave[-1]:.2f} Å) than the model ({w.size} px, "
            f"{w[0]:.2f}..{w[-1]:.2f} Å); resample first: "
            f"slambayes.preprocess.resample(spectra, emulator.wave_)")


def _gaussian_terms(prior, label_names):
    """Gaussian priors become extra residuals L⁻¹(θ − μ); anything else is refused here."""
    if prior is None:
        return ()
    terms = prior.gaussian_terms() if hasattr(prior, "gaussian_terms") else None
    if terms is None:
        raise TypeError(f"fit_map takes Gaussian priors as residuals; {type(prior).__name__} "
                        f"is not Gaussian: use slambayes.fit_map_posterior (jax optimizer) instead")
    out = []
    for names, mean, cov in terms:
        missing = [n for n in names if n not in label_names]
        if missing:
            raise KeyError(f"prior names label(s) {missing} that the emulator does not have "
                           f"(it has {label_names})")
        idx = np.array([label_names.index(n) for n in names])
        L_inv = np.linalg.inv(np.linalg.cholesky(np.atleast_2d(cov)))
        out.append((idx, np.atleast_1d(np.asarray(mean, float)), L_inv))
    return tuple(out)


# ρ(z), ρ'(z), ρ''(z) of scipy's losses, z = (r / f_scale)²
_LOSSES = {
    "linear": lambda z: (z, np.ones_like(z), np.zeros_like(z)),
    "soft_l1": lambda z: (2 * (np.sqrt(1 + z) - 1), (1 + z) ** -0.5, -0.5 * (1 + z) ** -1.5),
    "cauchy": lambda z: (np.log1p(z), 1 / (1 + z), -1 / (1 + z) ** 2),
}


def pixel_loss(kind, n_pix):
    """A scipy `least_squares` loss: `kind` on the first n_pix residuals, quadratic on the
    rest (the prior's), as the (3, m) array of ρ, ρ', ρ'' that scipy expects."""
    rho = _LOSSES[kind]

    def loss(z):
        out = np.vstack(_LOSSES["linear"](z))
        out[:, :n_pix] = np.vstack(rho(z[:n_pix]))
        return out
    return loss


class _Problem:
    """Residuals and Jacobian of one spectrum in standardized label space,
    evaluated together and cached (least_squares asks for both at one θ).

    weights : (n_pix,) Eq. 8's 1/(σ²_obs + σ²_model); factor : (n_pix, m) or None, the
    correlated part of σ²_model (then residuals are whitened with the full covariance).
    """

    def __init__(self, emulator, flux, weights, settings, factor=None):
        self.exp = emulator.expansion
        self.good = weights > 0
        var = 1.0 / weights[self.good]
        if factor is not None:
            F = factor[self.good]
            var = var - (F**2).sum(1)        # the correlated part moves from the diagonal to F Fᵀ
        self.white = Whitener(var, None if factor is None else F)
        self.fm = emulator.flux_mean_[self.good]
        self.fs = emulator.flux_std_[self.good]
        self.flux = flux[self.good]
        self.mu, self.sd = emulator.label_mean_, emulator.label_std_
        self.terms = settings.prior_terms
        self._theta = None

    def _eval(self, theta):
        if self._theta is None or not np.array_equal(theta, self._theta):
            f, J = self.exp.predict_and_jacobian(theta[None])
            model = self.fm + self.fs * f[0][self.good]
            self._resid = self.flux - model
            rs, js = [self.white(self._resid)], [self.white(-self.fs[:, None] * J[0][self.good])]
            for idx, mean, L_inv in self.terms:
                phys = theta[idx] * self.sd[idx] + self.mu[idx]
                rs.append(L_inv @ (phys - mean))
                jp = np.zeros((len(idx), theta.size))
                jp[:, idx] = L_inv * self.sd[idx][None, :]
                js.append(jp)
            self._theta, self._r, self._J = theta.copy(), np.concatenate(rs), np.vstack(js)
        return self._r, self._J

    def residuals(self, theta):
        return self._eval(theta)[0]

    def jacobian(self, theta):
        return self._eval(theta)[1]


def _initial_guesses(train_models, flux, weights, n_starts):
    """Indices (n_spec, n_starts) of the training labels whose model spectra have the
    highest likelihood (lowest weighted χ²) for each spectrum."""
    wf = weights * flux
    chi2 = (wf * flux).sum(1)[:, None] - 2 * wf @ train_models.T + weights @ (train_models**2).T
    return np.argsort(chi2, axis=1)[:, :n_starts]


def _nan_row(k):
    return dict(theta=np.full(k, np.nan), cov=np.full((k, k), np.nan), chi2=np.nan,
                rchi2=np.nan, rms=np.nan, nfev=0, converged=False, flag=0, status="", n_down=0)


def _fit_one(emulator, flux, weights, starts_std, lo, hi, settings, factor=None):
    k = len(emulator.label_names_)
    row = _nan_row(k)
    n_good = int((weights > 0).sum())
    if n_good <= k:
        row.update(flag=FLAGS["no_data"], status=f"only {n_good} good pixel(s) for {k} labels")
        return row
    prob = _Problem(emulator, flux, weights, settings, factor)
    best = None
    jac = prob.jacobian if settings.jac == "analytic" else settings.jac
    kw = dict(jac=jac, x_scale="jac", max_nfev=settings.max_nfev)
    if settings.loss != "linear":
        kw.update(loss=pixel_loss(settings.loss, prob.flux.size), f_scale=settings.f_scale)
    for x0 in starts_std:
        x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
        if settings.method == "lm":
            res = least_squares(prob.residuals, x0, method="lm", **kw)
        else:
            res = least_squares(prob.residuals, x0, method=settings.method, bounds=(lo, hi), **kw)
        if best is None or res.cost < best.cost:
            best = res
    theta = best.x
    r, J = prob._eval(theta)
    n_pix_res = prob.flux.size
    sd = emulator.label_std_
    w = np.ones(r.size)
    w[:n_pix_res] = _LOSSES[settings.loss]((r[:n_pix_res] / settings.f_scale) ** 2)[1]
    F = J.T @ (w[:, None] * J)
    try:
        cov_std = np.linalg.inv(F)
    except np.linalg.LinAlgError:
        cov_std = np.linalg.pinv(F)
    chi2 = float(r[:n_pix_res] @ r[:n_pix_res])
    resid = prob._resid                      # un-whitened: flux − model on the good pixels
    at_edge = bool(np.any(theta <= lo + settings.edge_tol) or np.any(theta >= hi - settings.edge_tol))
    flag = (0 if best.success else FLAGS["not_converged"]) | (FLAGS["at_edge"] if at_edge else 0)
    status = best.message + (" | at the edge of the training label range" if at_edge else "")
    row.update(theta=theta * sd + emulator.label_mean_, cov=cov_std * np.outer(sd, sd),
               chi2=chi2, rchi2=chi2 / max(n_good - k, 1), rms=float(np.sqrt(np.mean(resid**2))),
               nfev=int(best.nfev), converged=bool(best.success), flag=flag, status=status,
               n_down=int((w[:n_pix_res] < 0.5).sum()))
    return row


def fit_chunk(emulator, flux, ivar, ids, train_models, settings):
    """Fit a chunk of spectra (arrays (n, n_pix)) → Table (see `fit_map`)."""
    names = emulator.label_names_
    k = len(names)
    sigma_model = emulator.model_error(settings.model_error)
    weights = pixel_weights(ivar, sigma_model)
    factor = emulator.error_factor_ if settings.model_error == "correlated" else None
    X = emulator.X_train_
    lo = X.min(0) - settings.bounds_pad * (X.max(0) - X.min(0))
    hi = X.max(0) + settings.bounds_pad * (X.max(0) - X.min(0))
    idx0 = _initial_guesses(train_models, flux, weights, settings.n_starts)
    rows = []
    for i in range(flux.shape[0]):
        try:
            row = _fit_one(emulator, flux[i], weights[i], X[idx0[i]], lo, hi, settings, factor)
        except Exception as exc:  # one bad spectrum must not stop the batch
            row = _nan_row(k)
            row.update(flag=FLAGS["error"], status=f"{type(exc).__name__}: {exc}")
        row["init"] = X[idx0[i, 0]] * emulator.label_std_ + emulator.label_mean_
        rows.append(row)
    good = ivar > 0
    with np.errstate(invalid="ignore"):
        snr = np.array([np.median(np.abs(f[g]) * np.sqrt(iv[g])) if g.any() else 0.0
                        for f, iv, g in zip(flux, ivar, good)])
    t = Table()
    t["id"] = np.asarray(ids).astype(str)
    theta = np.array([r["theta"] for r in rows]).reshape(-1, k)
    cov = np.array([r["cov"] for r in rows]).reshape(-1, k, k)
    units = [_fits_unit(DEFAULT_UNITS.get(n, "")) for n in names]
    for j, n in enumerate(names):
        t[n] = theta[:, j]
        t[n + "_err"] = np.sqrt(cov[:, j, j])
        for c in (n, n + "_err"):
            t[c].unit, t[c].description = units[j], DEFAULT_UNITS.get(n, "")
    t["cov"] = cov
    t["chi2"] = [r["chi2"] for r in rows]
    t["rchi2"] = [r["rchi2"] for r in rows]
    t["rms_resid"] = [r["rms"] for r in rows]
    t["n_good_pix"] = good.sum(1)
    t["n_downweighted"] = [r["n_down"] for r in rows]
    t["snr"] = snr
    t["nfev"] = [r["nfev"] for r in rows]
    t["converged"] = [r["converged"] for r in rows]
    t["flag"] = np.array([r["flag"] for r in rows], dtype=np.int16)
    t["status"] = [r["status"][:120] for r in rows]
    init = np.array([r["init"] for r in rows]).reshape(-1, k)
    for j, n in enumerate(names):
        t["init_" + n] = init[:, j]
        t["init_" + n].unit = units[j]
    return t


def _fits_unit(name):
    """The unit if FITS can store it (K, km/s); dex has no FITS form, so it stays in
    the column description instead."""
    try:
        unit = u.Unit(name)
        unit.to_string("fits")
        return unit
    except (ValueError, TypeError):
        return None


def _fingerprint(emulator, spectra, settings, chunk_size):
    h = hashlib.sha256()
    h.update(emulator.training_hash_.encode())
    h.update(np.ascontiguousarray(spectra.flux).tobytes())
    h.update(np.ascontiguousarray(spectra.ivar).tobytes())
    h.update(json.dumps(asdict(settings), default=str).encode())
    h.update(str(chunk_size).encode())
    return h.hexdigest()[:32]


def _ids(spectra, id_column):
    m = spectra.meta
    for name in [id_column] if id_column else ["id", "obsid", "filename", "designation", "index"]:
        if name in m.colnames:
            return np.asarray(m[name]).astype(str)
    return np.arange(spectra.n_star).astype(str)


def fit_map(emulator, spectra, prior=None, model_error="auto", n_starts=1,
            bounds_pad=0.0, method="trf", chunk_size=256, n_jobs=1, client=None,
            output=None, overwrite=False, progress=True, id_column=None, max_nfev=100,
            jac="analytic", loss="linear", f_scale=1.0):
    """Maximum a posteriori labels for every spectrum.

    Parameters
    ----------
    emulator : fitted `Emulator`
    spectra : `Spectra` on the emulator's wavelength grid
    prior : Gaussian prior (`slambayes.priors.Gaussian`) or None; enters as residuals
    model_error : "auto" | "correlated" | "cv" | "cv_minus_noise" | "none", see
        `Emulator.model_error`. "correlated" adds the emulator's correlated model error
        (`error_factor_`, see `slambayes.model_covariance`) to the "cv" σ of Eq. 8;
        "cv" is Eq. 8 with independent pixels. "auto" (default) is "correlated" when the
        emulator has the factor (trained with CV) and "cv" otherwise; the catalog's
        meta MODELERR says which was used.
    n_starts : number of starting points (best-matching training stars)
    bounds_pad : fraction of the training label range added on each side of the bounds
    method : "trf" (bounded, default) or "lm" (Levenberg–Marquardt, unbounded)
    chunk_size : spectra per task (memory is bounded by it)
    n_jobs : joblib processes; client : dask.distributed Client (runs on its cluster)
    output : path (.fits, .ecsv, .parquet); rows are written as chunks finish and a
        re-run resumes (see `slambayes.catalog`)
    overwrite : discard an existing output of a different run
    jac : "analytic" (default) or "2-point" (finite differences; for benchmarks)
    loss : "linear" (Eq. 8 exactly), "soft_l1" or "cauchy" (robust: pixels whose residual
        exceeds `f_scale` total σ lose weight; see the module docstring)
    f_scale : float > 0, in units of the total per-pixel σ

    Returns
    -------
    astropy Table, one row per spectrum in input order: `id`, one column per label
    (physical units), `<label>_err`, `cov` (k, k), `chi2`, `rchi2`, `rms_resid`,
    `n_good_pix`, `n_downweighted`, `snr`, `nfev`, `converged`, `flag` (bits, see `FLAGS`), `status`,
    `init_<label>`.
    """
    from joblib import delayed

    check_grid(emulator, spectra)
    has_factor = getattr(emulator, "error_factor_", np.zeros((0, 0))).shape[1] > 0
    if model_error == "auto":
        model_error = "correlated" if has_factor else "cv"
    emulator.model_error(model_error)        # a clear ValueError for an unknown kind, before any work
    if method not in ("trf", "lm", "dogbox"):
        raise ValueError(f"method must be 'trf', 'dogbox' or 'lm', not {method!r}")
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {sorted(_LOSSES)}, not {loss!r}")
    if loss != "linear" and method == "lm":
        raise ValueError("scipy's method='lm' supports only loss='linear'; use method='trf'")
    if model_error == "correlated" and not has_factor:
        raise ValueError("model_error='correlated' needs an emulator trained with cross-validation and "
                         "error_rank > 0 (this one has no correlated model error: it was trained "
                         "without CV or by an older slambayes); retrain it, or use model_error='cv'")
    if not (np.isfinite(f_scale) and f_scale > 0):
        raise ValueError(f"f_scale must be a positive number of σ, not {f_scale!r}")
    settings = MapSettings(model_error=model_error, n_starts=int(n_starts), bounds_pad=float(bounds_pad),
                           method=method, max_nfev=int(max_nfev), jac=jac,
                           prior_terms=_gaussian_terms(prior, emulator.label_names_),
                           loss=loss, f_scale=float(f_scale))
    train_models = emulator.predict(emulator.from_std(emulator.X_train_))
    ids = _ids(spectra, id_column)
    tasks = [delayed(fit_chunk)(emulator, spectra.flux[s:s + chunk_size], spectra.ivar[s:s + chunk_size],
                                ids[s:s + chunk_size], train_models, settings)
             for s in range(0, spectra.n_star, chunk_size)]
    meta = dict(LABELS=",".join(emulator.label_names_), MODELSHA=emulator.training_hash_[:32],
                MODELERR=model_error, METHOD=method, LOSS=loss, FSCALE=float(f_scale),
                FLAGS=json.dumps(FLAGS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return run_chunked(tasks, output=output, fingerprint=_fingerprint(emulator, spectra, settings, chunk_size),
                           meta=meta, n_jobs=n_jobs, backend="dask" if client is not None else None,
                           progress=progress, overwrite=overwrite)
