"""Per-pixel RBF support-vector regression: (C, γ) by k-fold CV, then the final fit.

Everything here works in standardized units (labels and each pixel's flux
scaled to mean 0, variance 1). A star whose pixel is masked is left out of
that pixel's regression (zero weight), never imputed.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold
from sklearn.svm import SVR

from .progress import bar

__all__ = ["run_pixel_blocks", "rbf_gram", "cv_pixel", "fit_pixel", "fit_pixel_block", "fit_fold_block", "cv_folds", "PIXEL_STATS"]

# per-pixel results of `fit_pixel_block`, in this order
PIXEL_STATS = ("C", "gamma", "cv_mse", "cv_md", "train_mse", "intercept")


def rbf_gram(X, Y, gamma):
    """exp(−γ ‖x − y‖²) for all pairs: (n_x, n_y)."""
    d2 = ((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1)
    return np.exp(-gamma * d2)


def cv_pixel(grams, y, good, folds, C_grid, epsilon):
    """k-fold CV over the (C, γ) grid for one pixel.

    grams : dict γ → (n, n) Gram matrix of all training stars
    y : (n,) standardized flux, good : (n,) bool, folds : list of (train, test) index arrays
    Returns (mse, md, oof): arrays of shape (n_C, n_γ) with the CV mean squared error
    and mean difference (prediction − truth) over the held-out good stars, and
    (n_C, n_γ, n) with each star's out-of-fold residual (0 for a masked star).
    """
    gammas = list(grams)
    mse = np.full((len(C_grid), len(gammas)), np.inf)
    md = np.zeros_like(mse)
    oof = np.zeros(mse.shape + (y.size,))
    for jg, g in enumerate(gammas):
        K = grams[g]
        for ic, C in enumerate(C_grid):
            sq, diff, n = 0.0, 0.0, 0
            for tr, te in folds:
                tr, te = tr[good[tr]], te[good[te]]
                if tr.size < 2 or te.size == 0:
                    continue
                svr = SVR(kernel="precomputed", C=C, epsilon=epsilon).fit(K[np.ix_(tr, tr)], y[tr])
                r = svr.predict(K[np.ix_(te, tr)]) - y[te]
                oof[ic, jg, te] = r
                sq += float(r @ r)
                diff += float(r.sum())
                n += te.size
            if n:
                mse[ic, jg] = sq / n
                md[ic, jg] = diff / n
    return mse, md, oof


def fit_pixel(X, y, good, C, gamma, epsilon):
    """The final scikit-learn SVR of one pixel, trained on its good stars."""
    return SVR(kernel="rbf", C=C, gamma=gamma, epsilon=epsilon).fit(X[good], y[good])


def fit_pixel_block(X, Y, G, C_grid, gamma_grid, epsilon, cv, seed):
    """Train a block of pixels.

    X : (n, k) standardized labels; Y : (n, p) standardized flux; G : (n, p) bool good
    Returns (dual (p, n), stats (p, len(PIXEL_STATS)), oof (p, n)): oof holds the
    out-of-fold residuals of the chosen (C, γ) (zeros without CV or for masked stars).
    """
    n, p = Y.shape
    folds = cv_folds(n, cv, seed) if cv else []
    grams = {g: rbf_gram(X, X, g) for g in gamma_grid} if cv else {}
    dual = np.zeros((p, n))
    oof = np.zeros((p, n))
    stats = np.full((p, len(PIXEL_STATS)), np.nan)
    for j in range(p):
        y, good = Y[:, j], G[:, j]
        if good.sum() < 3:
            # nothing to learn: the pixel predicts the mean, with unit error
            stats[j] = (C_grid[0], gamma_grid[0], 1.0, 0.0, 1.0, 0.0)
            continue
        if cv:
            mse, md, res = cv_pixel(grams, y, good, folds, C_grid, epsilon)
            ic, jg = np.unravel_index(np.argmin(mse), mse.shape)
            C, g = C_grid[ic], gamma_grid[jg]
            oof[j] = res[ic, jg]
            cv_mse, cv_md = mse[ic, jg], md[ic, jg]
        else:
            C, g, cv_mse, cv_md = C_grid[0], gamma_grid[0], np.nan, np.nan
        svr = fit_pixel(X, y, good, C, g, epsilon)
        idx = np.flatnonzero(good)[svr.support_]
        dual[j, idx] = svr.dual_coef_[0]
        r = svr.predict(X[good]) - y[good]
        stats[j] = (C, g, cv_mse, cv_md, float(r @ r) / r.size, float(svr.intercept_[0]))
    return dual, stats, oof


def cv_folds(n, cv, seed):
    """The (train, test) index arrays of the CV that chose (C, γ): shuffled k-fold, seeded."""
    return list(KFold(n_splits=cv, shuffle=True, random_state=seed).split(np.zeros((n, 1))))


def fit_fold_block(X, Y, G, C, gamma, epsilon, folds):
    """The per-fold SVRs of a block of pixels at their chosen hyperparameters.

    X : (n, k); Y, G : (n, p); C, gamma : (p,); folds : list of (train, test)
    Returns (dual (n_fold, p, n), intercept (n_fold, p), oof (p, n)): each fold's dense
    dual coefficients (0 outside its training stars), and every star's out-of-fold
    residual (prediction − truth, standardized; 0 for a masked star).
    """
    n, p = Y.shape
    dual = np.zeros((len(folds), p, n))
    icpt = np.zeros((len(folds), p))
    oof = np.zeros((p, n))
    for j in range(p):
        y, good = Y[:, j], G[:, j]
        for f, (tr, te) in enumerate(folds):
            tr, te = tr[good[tr]], te[good[te]]
            if tr.size < 3:
                continue
            svr = SVR(kernel="rbf", C=C[j], gamma=gamma[j], epsilon=epsilon).fit(X[tr], y[tr])
            dual[f, j, tr[svr.support_]] = svr.dual_coef_[0]
            icpt[f, j] = svr.intercept_[0]
            if te.size:
                oof[j, te] = svr.predict(X[te]) - y[te]
    return dual, icpt, oof


def run_pixel_blocks(func, X, Y, G, per_pixel=(), shared=(), block_size=16, n_jobs=1, backend=None,
                     desc="training pixels", progress=True, axes=None):
    """Run `func(X, Y_block, G_block, *per_pixel_blocks, *shared)` over blocks of pixels with
    joblib (backend "dask" for a cluster) and join the blocks' outputs.

    per_pixel : arrays (n_pix,) cut into blocks like the columns of Y; `axes` gives, per
    output of `func`, the axis along which blocks are joined (default 0 for all).
    """
    from contextlib import nullcontext

    from joblib import Parallel, delayed, parallel_config

    starts = range(0, Y.shape[1], block_size)
    task = delayed(func)
    with parallel_config(backend=backend) if backend else nullcontext():
        gen = Parallel(n_jobs=n_jobs, return_as="generator")(
            task(X, Y[:, s:s + block_size], G[:, s:s + block_size],
                 *(a[s:s + block_size] for a in per_pixel), *shared) for s in starts)
        parts = list(bar(gen, progress, total=len(starts), desc=desc, unit="block"))
    axes = axes or (0,) * len(parts[0])
    return tuple(np.concatenate([p[i] for p in parts], axis=ax) for i, ax in enumerate(axes))
