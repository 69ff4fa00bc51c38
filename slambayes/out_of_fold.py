"""Out-of-fold MAP fits of the training stars, and the error calibration learned from them.

`calibrate(emulator, train)` re-trains the per-fold SVRs of the CV that chose
each pixel's (C, γ) (same folds; each fold's model with the (C, γ) that the other
folds choose, so that the held-out stars never chose their own model), fits every training
star with the model of the fold that did not see it — through the same noise
model and MAP core as the survey catalog, with the correlated model error
learned from the other folds' residuals only — and fits the calibration of
`slambayes.calibration` to the out-of-fold label residuals. Stars a user later
validates on are never involved: everything here is the training set.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np

from .calibration import fit_calibration, position_features, typical_spacing
from .emulator import training_hash
from .fit_checks import fit_checks
from .label_space import LabelSpace
from .likelihood import NoiseModel
from .map_core import MapOptions, fit_spectra
from .model_covariance import error_factor
from .spectra import SpectraWarning
from .svr_training import cv_folds, fit_fold_block, run_pixel_blocks
from .training_set import check_training_set

__all__ = ["calibrate", "out_of_fold_fits"]


def _fold_emulators(emulator, spectra, n_jobs, progress):
    """[(fold emulator, train index, test index, fold error factor)] for every CV fold."""
    em = emulator
    good = spectra.good
    Y = (spectra.flux - em.flux_mean_) / em.flux_std_
    folds = cv_folds(spectra.n_star, em.cv, em.random_state)
    # each fold's model gets the (C, γ) chosen without that fold's stars (a model file from
    # before they were stored: the ones chosen with all folds)
    C, gamma = (em.fold_C_, em.fold_gamma_) if getattr(em, "fold_C_", None) is not None \
        and np.shape(em.fold_C_) == (em.wave_.size, len(folds)) else (em.C_, em.gamma_)
    dual, icpt, oof = run_pixel_blocks(fit_fold_block, em.X_train_, Y, good, per_pixel=(C, gamma),
                                       shared=(em.epsilon, folds), block_size=em.block_size, n_jobs=n_jobs,
                                       backend=em.backend, desc="out-of-fold models", progress=progress,
                                       axes=(1, 1, 0))
    rank = em.error_factor_.shape[1]
    out = []
    for f, (tr, te) in enumerate(folds):
        fold = copy.copy(em)
        fold.dual_coef_, fold.intercept_, fold._expansion = dual[f], icpt[f], None
        if np.ndim(gamma) == 2:
            fold.C_, fold.gamma_ = C[:, f], gamma[:, f]
        # the correlated error of this fold's model, from the residuals of the other folds only
        F = error_factor(oof[:, tr].T, good[tr], rank) * em.cv_error[:, None] if rank else np.zeros((em.wave_.size, 0))
        out.append((fold, tr, te, F))
    return out


def _fit_held_out(fold, noise, space, options, train_labels, flux, ivar):
    """The survey fit (`fit_spectra`) of each held-out spectrum of one fold, started at the best
    training star."""
    return fit_spectra(fold, flux, ivar, noise, space, (train_labels, fold.predict(train_labels)), options,
                       summaries=False)[0]


def out_of_fold_fits(emulator, spectra, model_error="auto", n_jobs=1, progress=True):
    """Fit each training star with the fold model that did not see it.

    Returns dict(values (n, k), sigma (n, k) formal, sigma_model (n, k) its model-error share,
    cov, cov_model (n, k, k) the formal covariance and its model-error share,
    rchi2 (n,), quality (n, 2): χ²_ν and the model share, position (n, 2): the label-space
    calibration features, each against the fold's training set, norm_ratio (n,), flag (n,)).
    """
    em = emulator
    base = NoiseModel.resolve(em, model_error, calibration="none")
    space = LabelSpace.from_emulator(em)
    options = MapOptions()        # the catalog's options: the same covariance rule
    n, k = spectra.n_star, len(em.label_names_)
    out = dict(values=np.full((n, k), np.nan), sigma=np.full((n, k), np.nan),
               cov=np.full((n, k, k), np.nan), cov_model=np.full((n, k, k), np.nan),
               sigma_model=np.full((n, k), np.nan), rchi2=np.full(n, np.nan),
               quality=np.full((n, 2), np.nan), position=np.zeros((n, 2)), norm_ratio=np.full(n, np.nan),
               flag=np.zeros(n, int))
    from joblib import delayed

    from .workers import run_parallel

    labels = em.from_std(em.X_train_)
    folds = _fold_emulators(em, spectra, n_jobs, progress)
    # the folds are independent: one joblib task each (only its held-out spectra travel)
    results = run_parallel((delayed(_fit_held_out)(fold, base.for_fold(F), space, options, labels[tr],
                                                   spectra.flux[te], spectra.ivar[te])
                            for fold, tr, te, F in folds), min(n_jobs, len(folds)) if n_jobs > 0 else n_jobs)
    for (fold, tr, te, F), fits in zip(folds, results):
        vals = np.array([f.values for f in fits])
        out["values"][te] = vals
        out["sigma"][te] = np.sqrt(np.array([np.diag(f.cov) for f in fits]))
        out["cov"][te] = np.array([f.cov[:k, :k] for f in fits])
        out["cov_model"][te] = np.array([f.cov_model[:k, :k] for f in fits])
        out["sigma_model"][te] = np.sqrt(np.clip(np.array([np.diag(f.cov_model) for f in fits]), 0, None))
        out["rchi2"][te] = [f.rchi2 for f in fits]
        out["flag"][te] = [f.flag for f in fits]
        X_tr = em.X_train_[tr]
        out["quality"][te] = [(f.rchi2, f.share) for f in fits]
        out["norm_ratio"][te] = [f.norm_ratio for f in fits]
        out["position"][te] = position_features(space.to_std(vals), X_tr, typical_spacing(X_tr))
    return out


def calibrate(emulator, spectra, model_error="auto", n_jobs=None, progress=None):
    """Learn the error calibration of `emulator` from its own training spectra.

    emulator : an `Emulator` fitted with cross-validation (cv ≥ 2) on `spectra`
    spectra : the training `Spectra` (with labels), exactly those given to `fit`
    model_error : the noise model the calibration is for ("auto": what `fit_map` uses)

    Sets `emulator.calibration_` (a `slambayes.calibration.Calibration`, saved with the
    model), `emulator.checks_` (the limits of the catalog's fit checks learned from the
    same fits, `slambayes.fit_checks.FitChecks`, saved too) and `emulator.out_of_fold_` (the fits it was learned from, see
    `out_of_fold_fits`; not saved) and returns the emulator. Costs one extra SVR fit per pixel and fold, and
    one MAP fit per training star.
    """
    em = emulator
    em._check_fitted()
    if not em.cv or em.cv < 2:
        raise ValueError("calibration needs an emulator trained with cross-validation (cv ≥ 2)")
    if spectra.labels is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SpectraWarning)     # `fit` already said what it dropped
            spectra = check_training_set(spectra)                # the same stars `fit` trained on
    if spectra.labels is None or training_hash(spectra.labels, spectra.flux, spectra.ivar) != em.training_hash_:
        raise ValueError("calibrate() needs the emulator's own training spectra (with labels): these "
                         "are other spectra (their hash differs from the model's training hash)")
    n_jobs = em.n_jobs if n_jobs is None else n_jobs
    progress = em.progress if progress is None else progress
    oof = out_of_fold_fits(em, spectra, model_error, n_jobs, progress)
    resid = oof["values"] - np.asarray(spectra.labels, float)      # NaN rows (failed fits) drop out
    space = LabelSpace.from_emulator(em)
    em.out_of_fold_ = oof                 # kept for inspection (not saved with the model)
    calib = fit_calibration(resid, oof["sigma"], oof["sigma_model"], oof["quality"], oof["position"], em.X_train_,
                            space.high - space.low, cov=oof["cov"], cov_model=oof["cov_model"])
    calib.stats["model_error"] = NoiseModel.resolve(em, model_error, calibration="none").kind
    em.calibration_ = calib
    em.checks_ = fit_checks(oof["quality"], oof["norm_ratio"], calib.rho, em.X_train_)
    return em
