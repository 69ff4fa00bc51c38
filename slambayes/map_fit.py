"""Survey-wide MAP fitting: the single-star core (`slambayes.map_core`) over chunks.

`fit_map` resolves the noise model and the label space once, then fits every
spectrum with `fit_spectra` (`slambayes.map_core`) in chunks (joblib locally, dask with a client),
writing each chunk as it finishes (see `slambayes.catalog`) so that a re-run
resumes. It returns an astropy Table with one row per spectrum: labels, their
calibrated errors and covariance (and the formal ones beside them), fit
statistics and flags. A spectrum that cannot be fit gets a flagged row with
NaN labels; the batch never stops.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Table

from .catalog import run_chunked
from .label_space import LabelSpace
from .likelihood import NoiseModel
from .fit_checks import CHECK_FLAGS
from .map_core import FLAGS as SOLVER_FLAGS
from .laplace_check import check_compression
from .map_core import MapOptions, fit_spectra, gaussian_prior_terms
from .spectra_file import SpectraFile

# every bit of the catalog's `flag` column: the solver's and the fit checks'
FLAGS = dict(sorted({**SOLVER_FLAGS, **CHECK_FLAGS}.items(), key=lambda kv: kv[1]))

__all__ = ["fit_map", "fit_chunk", "FLAGS", "check_grid", "training_models"]


def resolve_noise(emulator, options):
    """The `NoiseModel` of `options` (model_error, calibration) for `emulator`."""
    return NoiseModel.resolve(emulator, options.model_error, options.calibration)


_WARNED = set()


def warn_uncalibrated(emulator, options):
    """Warn, once per model, that fits with an uncalibrated noise model report formal errors."""
    key = getattr(emulator, "model_hash", id(emulator))
    if key in _WARNED:
        return
    _WARNED.add(key)
    why = ("the model has no error calibration (train it with cross-validation and slambayes.calibrate, "
           "or `slambayes train` without --no-calibrate)" if getattr(emulator, "calibration_", None) is None else
           f"calibration={options.calibration!r} was asked for, or the calibration was learned for another "
           f"model error than {options.model_error!r}")
    warnings.warn(f"the errors are the formal ones, which on real spectra are 2-6x too small: {why}",
                  UserWarning, stacklevel=3)


def check_grid(emulator, spectra):
    """Raise a clear error if the spectra are not on the emulator's wavelength grid."""
    w = emulator.wave_
    if spectra.wave.shape != w.shape or not np.allclose(spectra.wave, w, rtol=0, atol=1e-6):
        raise ValueError(
            f"spectra are on another wavelength grid ({spectra.n_pix} px, "
            f"{spectra.wave[0]:.2f}..{spectra.wave[-1]:.2f} Å) than the model ({w.size} px, "
            f"{w[0]:.2f}..{w[-1]:.2f} Å); resample first: "
            f"slambayes.preprocess.resample(spectra, emulator.wave_)")


def training_models(emulator):
    """(labels (n_train, k), model spectra (n_train, n_pix)) of the training set: the start candidates."""
    labels = emulator.from_std(emulator.X_train_)
    return labels, emulator.predict(labels)


def fit_chunk(emulator, flux, ivar, ids, starts, noise, space, options, prior_terms=(), checks=None, meta=None):
    """Fit a chunk of spectra (arrays (n, n_pix)) → Table (see `fit_map`).

    meta : Table of the chunk's input columns to carry into the catalog (`meta_columns`), or None.
    starts : (train_labels (n_train, k), train_models (n_train, n_pix)), the start candidates.
    checks : `slambayes.fit_checks.FitChecks` or None (then only the solver's flags).
    """
    space = options.parameter_space(space)
    names = list(space.names)                     # the labels, then rv_resid when fitted
    n, k = len(names), space.n_labels
    fits, idx0 = fit_spectra(emulator, flux, ivar, noise, space, starts, options, prior_terms, checks)
    values = np.array([f.values for f in fits]).reshape(-1, n)
    cov = np.array([f.cov for f in fits]).reshape(-1, n, n)
    cov_formal = np.array([f.cov_formal for f in fits]).reshape(-1, n, n)
    rchi2 = np.array([f.rchi2 for f in fits])
    share = np.array([f.share for f in fits])
    flags = np.array([f.flag for f in fits], dtype=np.int16)
    good = ivar > 0
    with np.errstate(invalid="ignore"):
        snr = np.array([np.median(np.abs(f[g]) * np.sqrt(iv[g])) if g.any() else 0.0
                        for f, iv, g in zip(flux, ivar, good)])
    t = Table()
    t["id"] = np.asarray(ids).astype(str)
    if meta is not None:
        for name in meta.colnames:
            t[name] = meta[name]
    units = [u.Unit(un) if un else None for un in space.units]
    init = starts[0][idx0[:, 0]]
    for j, name in enumerate(names):
        t[name] = values[:, j]
        t[name + "_err"] = np.sqrt(cov[:, j, j])
        t[name + "_err_formal"] = np.sqrt(cov_formal[:, j, j])
        for c, what in ((name, "MAP"), (name + "_err", "calibrated 1-sigma error"),
                        (name + "_err_formal", "formal 1-sigma error (uncalibrated likelihood)")):
            t[c].unit, t[c].description = units[j], f"{name} {what}"
    t["cov"] = cov
    t["cov_formal"] = cov_formal
    t["chi2"] = [f.chi2 for f in fits]
    t["rchi2"] = rchi2
    t["model_share"] = share
    t["rms_resid"] = [f.rms for f in fits]
    t["n_good_pix"] = good.sum(1)
    t["n_clipped"] = [f.n_clipped for f in fits]
    t["n_downweighted"] = [f.n_down for f in fits]
    t["snr"] = snr
    t["nfev"] = [f.nfev for f in fits]
    t["converged"] = [f.converged for f in fits]
    t["flag"] = flags
    if options.posterior_draws:
        _summary_columns(t, fits, names, units)
    t["status"] = [f.status for f in fits]
    for j, name in enumerate(space.label_names):
        t["init_" + name] = init[:, j]
        t["init_" + name].unit, t["init_" + name].description = units[j], f"{name} of the start point"
    for name, text in COLUMN_NOTES.items():
        if name in t.colnames:
            t[name].description = text
    return t


def _summary_columns(t, fits, names, units):
    """The posterior summaries' columns (see `fit_map`)."""
    from .posterior_summary import PERCENTILES, Summary

    n = len(names)
    sums = [f.summary if f.summary is not None else Summary.none(n) for f in fits]
    for j, name in enumerate(names):
        t[name + "_mean"] = [s.mean[j] for s in sums]
        t[name + "_std"] = [s.std[j] for s in sums]
        t[name + "_mean"].description = f"{name} posterior mean"
        t[name + "_std"].description = f"{name} posterior standard deviation"
        for i, q in enumerate(PERCENTILES):
            col = f"{name}_p{q:02d}"
            t[col] = [s.percentiles[i, j] for s in sums]
            t[col].description = f"{name} posterior {q}th percentile"
        for col in (name + "_mean", name + "_std") + tuple(f"{name}_p{q:02d}" for q in PERCENTILES):
            t[col].unit = units[j]
    t["posterior_khat"] = [s.khat for s in sums]
    t["posterior_ess"] = [s.ess for s in sums]
    t["posterior_draws"] = np.array([s.n_draws for s in sums], dtype=np.int32)
    t["posterior_method"] = [s.method for s in sums]
    t["widened"] = [f.widened for f in fits]
    t["laplace_ok"] = [f.laplace_ok for f in fits]


# what the FITS header's TCOMMn says of the columns that are not labels
COLUMN_NOTES = {
    "id": "input identifier", "cov": "label covariance, calibrated (labels in column order)",
    "cov_formal": "label covariance of the uncalibrated likelihood", "chi2": "chi^2 of the fit (clipped pixels left out)",
    "rchi2": "reduced chi^2", "model_share": "emulator error share of the pixel variance",
    "rms_resid": "rms of the whitened residuals", "n_good_pix": "pixels with ivar > 0",
    "n_clipped": "pixels clipped as outliers", "n_downweighted": "pixels down-weighted by the robust loss",
    "snr": "median per-pixel S/N", "nfev": "function evaluations", "converged": "the solver converged",
    "flag": "flag bits, see FLAGS in the header", "status": "the solver's message",
    "posterior_khat": "Pareto k-hat of the importance weights (<= 0.7 trustworthy)",
    "posterior_ess": "effective sample size of the importance weights",
    "posterior_method": "what gave the posterior summary",
    "posterior_draws": "importance draws the posterior summary evaluated",
    "widened": "errors widened to the importance-sampled posterior sigma",
    "laplace_ok": "MAP +- sigma describes the posterior (its summary)",
}


def meta_columns(spectra, reserved=(), skip=()):
    """The input's identifying columns (`Spectra.meta`, one value per star: obsid, designation,
    ra, dec, snr_*, …) to carry into the catalog; a name the catalog uses itself gets a
    "meta_" prefix; `skip` names the column the ids came from. None if there are none besides
    the default row index."""
    from astropy.table import Table

    m = spectra.meta
    keep = [n for n in m.colnames if m[n].ndim == 1 and m[n].dtype.kind in "biufUS" and n not in skip
            and not (n == "index" and m.colnames == ["index"])]
    if not keep:
        return None
    return Table({(f"meta_{n}" if n in reserved else n): m[n] for n in keep})


def _fingerprint(model_sha, spectra, ids, noise, space, options, prior_terms, checks, meta):
    h = hashlib.sha256()
    h.update(model_sha.encode())                    # the model itself, not only its training data
    h.update("\n".join(ids).encode())
    if meta is not None:
        for name in meta.colnames:
            h.update(name.encode() + b"\0" + "\n".join(np.asarray(meta[name]).astype(str)).encode())
    h.update(pixel_digest(spectra))
    h.update(noise.describe().encode())
    h.update(json.dumps(space.describe()).encode())
    h.update(json.dumps(asdict(options), default=str).encode())
    for idx, mean, L_inv in prior_terms:
        h.update(np.concatenate([idx, mean, L_inv.ravel()]).astype(float).tobytes())
    h.update(json.dumps(checks.describe() if checks is not None else None).encode())
    return h.hexdigest()[:32]


def pixel_digest(spectra, block=1024):
    """sha256 of the flux and the ivar of every star, read `block` stars at a time (a
    `SpectraFile` is never held in memory whole)."""
    hf, hi = hashlib.sha256(), hashlib.sha256()
    for start in range(0, spectra.n_star, block):
        flux, ivar = spectra.rows(start, start + block)
        hf.update(np.ascontiguousarray(flux).tobytes())
        hi.update(np.ascontiguousarray(ivar).tobytes())
    return hf.digest() + hi.digest()


class _ChunkTasks(Sequence):
    """The chunks' tasks, each made (its spectra read) only when joblib dispatches it, so that
    memory holds the chunks in flight, not the whole input."""

    def __init__(self, spans, make):
        self.spans, self.make = spans, make

    def __len__(self):
        return len(self.spans)

    def __getitem__(self, i):
        return self.make(*self.spans[i])


def _catalog_names(space, options):
    """The columns `fit_chunk` writes itself (an input column of the same name is renamed)."""
    from .posterior_summary import PERCENTILES

    names = list(options.parameter_space(space).names)
    summary = ("_mean", "_std") + tuple(f"_p{q:02d}" for q in PERCENTILES)
    return {"id", *COLUMN_NOTES, *names, *(n + "_err" for n in names), *(n + "_err_formal" for n in names),
            *(n + s for n in names for s in summary), *("init_" + n for n in space.label_names)}


def _ids(spectra, id_column):
    """(ids (n,) str, the meta column they come from or None)."""
    m = spectra.meta
    for name in [id_column] if id_column else ["id", "obsid", "filename", "designation", "index"]:
        if name in m.colnames:
            return np.asarray(m[name]).astype(str), name
    return np.arange(spectra.n_star).astype(str), None


class _Unset:
    """The default of `fit_map`'s per-setting arguments: take the value from `options`."""

    def __repr__(self):
        return "<from options>"


UNSET = _Unset()
# fit_map's arguments that are fields of MapOptions
OPTION_ARGS = ("model_error", "calibration", "n_starts", "bounds_pad", "method", "max_nfev", "jac", "loss",
               "f_scale", "clip_sigma", "fit_rv", "rv_window", "posterior_draws", "posterior_budget", "engine")


def resolve_options(options=None, **settings):
    """One `MapOptions` from `options` (None: the defaults) and the settings given beside it
    (those left at `UNSET` keep the options' value)."""
    from dataclasses import replace

    options = MapOptions() if options is None else options
    if not isinstance(options, MapOptions):
        raise TypeError(f"options must be a slambayes.MapOptions, not {type(options).__name__}")
    given = {k: v for k, v in settings.items() if v is not UNSET}
    unknown = sorted(set(given) - set(OPTION_ARGS))
    if unknown:
        raise TypeError(f"not a fit setting: {unknown}")
    return replace(options, **given) if given else options


def fit_map(emulator, spectra, prior=None, model_error=UNSET, calibration=UNSET, n_starts=UNSET,
            bounds_pad=UNSET, method=UNSET, chunk_size=256, n_jobs=1, client=None,
            output=None, overwrite=False, progress=True, id_column=None, max_nfev=UNSET,
            jac=UNSET, loss=UNSET, f_scale=UNSET, clip_sigma=UNSET, fit_rv=UNSET, rv_window=UNSET,
            posterior_draws=UNSET, posterior_budget=UNSET, engine=UNSET, options=None):
    """Maximum a posteriori labels for every spectrum.

    The density is the calibrated likelihood (`slambayes.map_core.fit_spectra`: the
    calibration enters the pixel covariance as an errors-in-variables term) times the prior,
    so that with a Gaussian prior the result is the product of the no-prior row's Gaussian and
    the prior.

    Parameters
    ----------
    emulator : fitted `Emulator`
    spectra : `Spectra` on the emulator's wavelength grid, or a `SpectraFile` / the path of an
        npz (read a chunk at a time: memory does not grow with the number of spectra)
    prior : Gaussian prior (`slambayes.priors.Gaussian`) or None; enters as residuals
    options : `MapOptions` holding every setting of the density and its fit (defaults:
        `MapOptions()`); each of the settings below that is given replaces the options' value
        (`model_error` … `engine`; their defaults are MapOptions')
    model_error : "auto" | "correlated" | "cv" | "cv_minus_noise" | "none" (see `NoiseModel.resolve`). "auto" (default) is the
        correlated model error when the emulator has it, else Eq. 8 with independent pixels.
    calibration : "auto" (the emulator's out-of-fold calibration, if it has one) or "none"
    n_starts : number of starting points (best-matching training stars)
    bounds_pad : fraction of the training label range added on each side of the bounds
    method : "trf" (bounded, default), "dogbox" or "lm" (Levenberg–Marquardt, unbounded)
    chunk_size : spectra per task (memory is bounded by it)
    n_jobs : joblib processes; client : dask.distributed Client (runs on its cluster)
    output : path (.fits, .ecsv, .parquet); rows are written as chunks finish and a
        re-run resumes (see `slambayes.catalog`)
    overwrite : discard an existing output of a different run
    jac : "analytic" (default) or "2-point" (finite differences; for benchmarks)
    loss : "linear" (the Gaussian likelihood exactly), "soft_l1" or "cauchy" (robust: pixels
        whose residual exceeds `f_scale` total σ lose weight)
    f_scale : float > 0, in units of the total per-pixel σ
    clip_sigma : pixels whose raw residual exceeds this many total σ (times the spectrum's
        robust residual scale, if > 1) are clipped and the star refit (unflagged cosmic rays,
        sky residuals; see `slambayes.map_core`); None turns clipping off
    fit_rv : also fit a residual radial velocity `rv_resid` (km/s, |v| ≤ rv_window) of the
        model spectrum against the spectrum's rest frame (`slambayes.doppler`); its columns
        `rv_resid`, `rv_resid_err` follow the labels'; the labels' errors include its correlations
    posterior_draws : importance draws (even) per star of the catalog's density, the one switch
        of the posterior summaries (`slambayes.posterior_summary`: mean, σ and the 5th … 95th
        percentiles of every parameter, Pareto-smoothed weights) and of the Laplace check
        (`slambayes.laplace_check`: where the posterior is wider than the Laplace σ by more
        than its limit the errors are widened to it); 0: neither
    posterior_budget : the extra draws, in units of posterior_draws, a star whose weights
        fail (Pareto k̂ > 0.7) may get from adapted proposals; one that still fails is
        flagged `posterior_unsure` (256)
    engine : "batched" (the stars of a chunk fitted together, one emulator product per
        iteration: `slambayes.batched_lm`), "scipy" (`scipy.optimize.least_squares` one star
        at a time, the reference) or "auto" (default: batched, except with a robust loss,
        finite differences or method "dogbox", which only scipy's engine fits)

    Returns
    -------
    astropy Table, one row per spectrum in input order: `id`, the input's own columns
    (`Spectra.meta`: obsid, designation, ra, dec, snr_*, …; a name the catalog uses itself
    gets a "meta_" prefix), one column per label
    (physical units), `<label>_err` (calibrated), `<label>_err_formal`, `cov` (k, k,
    calibrated), `cov_formal`, `chi2`, `rchi2`, `model_share` (the emulator's share of the pixel
    variance), `rms_resid`, `n_good_pix`, `n_clipped` (pixels clipped as outliers), `n_downweighted`,
    `snr`, `nfev`, `converged`, `flag` (bits, see `FLAGS`), `status`; with posterior_draws > 0
    the posterior summary per parameter, `<label>_mean`, `<label>_std`, `<label>_p05`, `_p16`,
    `_p50`, `_p84`, `_p95`, and per row `posterior_khat` (Pareto k̂ of the weights; ≤ 0.7
    trustworthy), `posterior_ess` (their effective sample size), `posterior_draws` (the draws it
    evaluated), `posterior_method`
    ("importance", "importance_adapted", "unreliable", "none"), `widened` (the Laplace errors
    were widened to the importance-sampled σ) and `laplace_ok` (MAP ± σ describes the
    posterior: its mean within 0.5 σ of the MAP, its σ within 0.8–1.25 of the error, k̂ ≤ 0.7);
    `init_<label>`; every
    column has a unit where it has one (TUNITn in FITS, "dex" included) and a description
    (TCOMMn). The meta (FITS header) holds the provenance (DATE of the run in UTC, SLAMBVER,
    MODELFIL the model file's name, MODELSHA its content hash, TRAINSHA its training set's), the noise model (MODELERR, NOISETAG, CALIB, NOISE), the flag bits
    (FLAGS: 1 no data, 2 not converged, 4 at the edge of the training range, 8 error,
    16 poor fit, 32 out of the training distribution, 64 not normalized, 128 the solver did not
    move from its start, 256 the posterior summary is unreliable) and the limits of the fit checks (CHECKS, see `slambayes.fit_checks`).
    """
    from joblib import delayed

    if isinstance(spectra, (str, os.PathLike)):
        spectra = SpectraFile(spectra)
    check_grid(emulator, spectra)
    if spectra.n_star == 0:
        raise ValueError("no spectra to fit (the input holds 0 spectra)")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be ≥ 1 spectra, not {chunk_size!r}")
    chunk_size = int(chunk_size)
    options = resolve_options(options, model_error=model_error, calibration=calibration, n_starts=n_starts,
                              bounds_pad=bounds_pad, method=method, max_nfev=max_nfev, jac=jac, loss=loss,
                              f_scale=f_scale, clip_sigma=clip_sigma, fit_rv=fit_rv, rv_window=rv_window,
                              posterior_draws=posterior_draws, posterior_budget=posterior_budget, engine=engine)
    noise = resolve_noise(emulator, options)
    space = LabelSpace.from_emulator(emulator, options.bounds_pad)
    prior_terms = gaussian_prior_terms(prior, space)
    if prior_terms is None:
        raise TypeError(f"fit_map takes Gaussian priors as residuals; {type(prior).__name__} "
                        f"is not Gaussian: use slambayes.fit_map_posterior (jax optimizer) instead")
    starts = training_models(emulator)
    if options.posterior_draws:
        emulator.expansion_at(check_compression(emulator), single=True)   # built once here, not per task
    checks = getattr(emulator, "checks_", None)
    ids, id_from = _ids(spectra, id_column)
    meta_cols = meta_columns(spectra, reserved=_catalog_names(space, options), skip=(id_from,))
    spans = [(s, min(s + chunk_size, spectra.n_star)) for s in range(0, spectra.n_star, chunk_size)]
    tasks = _ChunkTasks(spans, lambda a, b: delayed(fit_chunk)(
        emulator, *spectra.rows(a, b), ids[a:b], starts, noise, space, options, prior_terms, checks,
        None if meta_cols is None else meta_cols[a:b]))
    model_sha = emulator.model_hash
    from . import __version__

    meta = dict(DATE=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), SLAMBVER=__version__,
                MODELFIL=Path(getattr(emulator, "model_path_", "") or "(not saved)").name,
                LABELS=",".join(space.label_names), MODELSHA=model_sha[:32],
                TRAINSHA=emulator.training_hash_[:32],
                MODELERR=noise.kind, ERRRANK=noise.rank, NOISETAG=noise.tag, CALIB="out-of-fold" if noise.calibrated else "none",
                NOISE=noise.describe(), METHOD=options.method, ENGINE="batched" if options.batched else "scipy",
                LOSS=options.loss, FSCALE=float(options.f_scale),
                CLIPSIG="none" if options.clip_sigma is None else float(options.clip_sigma),
                FITRV=bool(options.fit_rv), RVWINDOW=float(options.rv_window), POSTDRAW=int(options.posterior_draws),
                LAPCOMP=check_compression(emulator), MAPOPTS=options.to_json(),
                FLAGS=json.dumps(FLAGS), CHECKS=json.dumps(checks.describe()) if checks is not None else "none")
    if not noise.calibrated:
        warn_uncalibrated(emulator, options)
    fingerprint = _fingerprint(model_sha, spectra, ids, noise, space, options, prior_terms, checks, meta_cols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return run_chunked(tasks, output=output, fingerprint=fingerprint, meta=meta, n_jobs=n_jobs,
                           rows=spans,
                           backend="dask" if client is not None else None, progress=progress,
                           overwrite=overwrite)
