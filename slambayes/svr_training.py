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

__all__ = ["run_pixel_blocks", "rbf_gram", "cv_pixel", "choice_without_each_fold", "fit_pixel", "fit_pixel_block", "fit_fold_block", "cv_folds", "fold_grams",
           "PIXEL_STATS"]

# per-pixel results of `fit_pixel_block`, in this order
PIXEL_STATS = ("C", "gamma", "cv_mse", "cv_md", "train_mse", "intercept")


def rbf_gram(X, Y, gamma):
    """exp(−γ ‖x − y‖²) for all pairs: (n_x, n_y)."""
    d2 = ((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1)
    return np.exp(-gamma * d2)


def cv_pixel(grams, y, good, folds, C_grid, epsilon, shared=None):
    """k-fold CV over the (C, γ) grid for one pixel.

    grams : dict γ → (n, n) Gram matrix of all training stars
    y : (n,) standardized flux, good : (n,) bool, folds : list of (train, test) index arrays
    shared : optional dict (γ, fold) → (K_train, K_test), the fold's Gram blocks of all its
        stars (`fold_grams`), used when none of the fold's stars is masked for this pixel
    Returns (mse, md, oof, fold_sse, fold_n): arrays of shape (n_C, n_γ) with the CV mean
    squared error and mean difference (prediction − truth) over the held-out good stars,
    (n_C, n_γ, n) with each star's out-of-fold residual (0 for a masked star),
    (n_C, n_γ, n_fold) the squared residuals summed per held-out fold and (n_fold,) their counts.
    """
    gammas = list(grams)
    mse = np.full((len(C_grid), len(gammas)), np.inf)
    md = np.zeros_like(mse)
    oof = np.zeros(mse.shape + (y.size,))
    fold_sse = np.zeros(mse.shape + (len(folds),))
    fold_n = np.array([int(good[te].sum()) if good[tr].sum() >= 2 else 0 for tr, te in folds])
    sq, diff, count = np.zeros(mse.shape), np.zeros(mse.shape), np.zeros(mse.shape, int)
    for jg, g in enumerate(gammas):
        K = grams[g]
        for f, (tr_all, te_all) in enumerate(folds):
            tr, te = tr_all[good[tr_all]], te_all[good[te_all]]
            if tr.size < 2 or te.size == 0:
                continue
            if shared is not None and tr.size == tr_all.size and te.size == te_all.size:
                K_tr, K_te = shared[g, f]
            else:
                K_tr, K_te = K[np.ix_(tr, tr)], K[np.ix_(te, tr)]      # one copy for every C
            for ic, C in enumerate(C_grid):
                svr = SVR(kernel="precomputed", C=C, epsilon=epsilon).fit(K_tr, y[tr])
                r = svr.predict(K_te) - y[te]
                oof[ic, jg, te] = r
                fold_sse[ic, jg, f] = float(r @ r)
                sq[ic, jg] += float(r @ r)          # summed in fold order: the same floats for any loop order
                diff[ic, jg] += float(r.sum())
                count[ic, jg] += te.size
    seen = count > 0
    mse[seen], md[seen] = sq[seen] / count[seen], diff[seen] / count[seen]
    return mse, md, oof, fold_sse, fold_n


_SHARED_GRAMS_MAX = 2**28     # bytes of fold Gram blocks kept per pixel block (256 MB)


def fold_grams(grams, folds):
    """(γ, fold) → (K[train, train], K[test, train]) of all the fold's stars, shared by the
    pixels of a block that mask none of them; None if they would take over 256 MB."""
    size = sum(tr.size * (tr.size + te.size) for tr, te in folds) * len(grams) * 8
    if size > _SHARED_GRAMS_MAX:
        return None
    return {(g, f): (K[np.ix_(tr, tr)], K[np.ix_(te, tr)]) for g, K in grams.items()
            for f, (tr, te) in enumerate(folds)}


def choice_without_each_fold(fold_sse, fold_n):
    """For each fold f, the grid point (index into the flattened (n_C, n_γ) grid) of least CV
    MSE over the other folds: the hyperparameters a model for fold f's stars would have been
    given without looking at them (choosing them on the stars one then tests on makes those
    stars' residuals look better than a new star's). Returns (n_fold,) ints."""
    total_sse, total_n = fold_sse.sum(-1), fold_n.sum()
    out = np.zeros(fold_n.size, int)
    for f in range(fold_n.size):
        n = total_n - fold_n[f]
        mse = (total_sse - fold_sse[..., f]) / n if n > 0 else total_sse
        out[f] = int(np.argmin(mse))
    return out


def fit_pixel(X, y, good, C, gamma, epsilon):
    """The final scikit-learn SVR of one pixel, trained on its good stars."""
    return SVR(kernel="rbf", C=C, gamma=gamma, epsilon=epsilon).fit(X[good], y[good])


def fit_pixel_block(X, Y, G, C_grid, gamma_grid, epsilon, cv, seed):
    """Train a block of pixels.

    X : (n, k) standardized labels; Y : (n, p) standardized flux; G : (n, p) bool good
    Returns (dual (p, n), stats (p, len(PIXEL_STATS)), oof (p, n), fold_C (p, n_fold),
    fold_gamma (p, n_fold)): oof holds the out-of-fold residuals of the chosen (C, γ) (zeros
    without CV or for masked stars); fold_C, fold_gamma the (C, γ) chosen without each fold
    (`choice_without_each_fold`), for the out-of-fold models of the calibration.
    """
    n, p = Y.shape
    folds = cv_folds(n, cv, seed) if cv else []
    grams = {g: rbf_gram(X, X, g) for g in gamma_grid} if cv else {}
    shared = fold_grams(grams, folds) if cv else None
    dual = np.zeros((p, n))
    oof = np.zeros((p, n))
    stats = np.full((p, len(PIXEL_STATS)), np.nan)
    fold_C = np.full((p, len(folds)), C_grid[0])
    fold_gamma = np.full((p, len(folds)), gamma_grid[0])
    for j in range(p):
        y, good = Y[:, j], G[:, j]
        if good.sum() < 3:
            # nothing to learn: the pixel predicts the mean, with unit error
            stats[j] = (C_grid[0], gamma_grid[0], 1.0, 0.0, 1.0, 0.0)
            continue
        if cv:
            mse, md, res, fold_sse, fold_n = cv_pixel(grams, y, good, folds, C_grid, epsilon, shared)
            ic, jg = np.unravel_index(np.argmin(mse), mse.shape)
            C, g = C_grid[ic], gamma_grid[jg]
            oof[j] = res[ic, jg]
            cv_mse, cv_md = mse[ic, jg], md[ic, jg]
            ics, jgs = np.unravel_index(choice_without_each_fold(fold_sse, fold_n), mse.shape)
            fold_C[j], fold_gamma[j] = np.asarray(C_grid)[ics], np.asarray(gamma_grid)[jgs]
        else:
            C, g, cv_mse, cv_md = C_grid[0], gamma_grid[0], np.nan, np.nan
        svr = fit_pixel(X, y, good, C, g, epsilon)
        idx = np.flatnonzero(good)[svr.support_]
        dual[j, idx] = svr.dual_coef_[0]
        r = svr.predict(X[good]) - y[good]
        stats[j] = (C, g, cv_mse, cv_md, float(r @ r) / r.size, float(svr.intercept_[0]))
    return dual, stats, oof, fold_C, fold_gamma


def cv_folds(n, cv, seed):
    """The (train, test) index arrays of the CV that chose (C, γ): shuffled k-fold, seeded."""
    return list(KFold(n_splits=cv, shuffle=True, random_state=seed).split(np.zeros((n, 1))))


def fit_fold_block(X, Y, G, C, gamma, epsilon, folds):
    """The per-fold SVRs of a block of pixels at their chosen hyperparameters.

    X : (n, k); Y, G : (n, p); C, gamma : (p,) one choice for all folds, or (p, n_fold) one
    per fold; folds : list of (train, test)
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
            Cj, gj = (C[j, f], gamma[j, f]) if np.ndim(C) == 2 else (C[j], gamma[j])
            svr = SVR(kernel="rbf", C=Cj, gamma=gj, epsilon=epsilon).fit(X[tr], y[tr])
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
    from joblib import delayed

    from .workers import run_parallel

    starts = range(0, Y.shape[1], block_size)
    task = delayed(func)
    gen = run_parallel((task(X, Y[:, s:s + block_size], G[:, s:s + block_size],
                             *(a[s:s + block_size] for a in per_pixel), *shared) for s in starts),
                       n_jobs, backend)
    parts = list(bar(gen, progress, total=len(starts), desc=desc, unit="block"))
    axes = axes or (0,) * len(parts[0])
    return tuple(np.concatenate([p[i] for p in parts], axis=ax) for i, ax in enumerate(axes))
