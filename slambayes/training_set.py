"""Checks of a training set before an emulator is trained on it.

A broken training set otherwise becomes a model without a word: a constant label
makes the label box empty (every later fit fails), a star without good pixels or
with absurd flux distorts every pixel's SVR, and duplicated stars leak across
the CV folds so that the CV error (and with it the model error of the
likelihood) comes out too small. `check_training_set` refuses what cannot be
trained on, and drops (with a warning naming them) the stars that would spoil
the rest.
"""
from __future__ import annotations

import warnings

import numpy as np

from .spectra import SpectraWarning

__all__ = ["check_training_set", "FLUX_RATIO_LIMIT"]

FLUX_RATIO_LIMIT = 10.0     # a star's median flux this far (×, ÷) from the set's median: not normalized


def _names(spectra, idx):
    meta = getattr(spectra, "meta", None)
    col = next((c for c in ("id", "obsid", "filename", "designation") if meta is not None and c in meta.colnames), None)
    shown = [str(meta[col][i]) if col else str(i) for i in idx[:10]]
    return ", ".join(shown) + (f" and {len(idx) - 10} more" if len(idx) > 10 else "")


def check_training_set(spectra, min_stars=3):
    """The training spectra without unusable stars; raises ValueError for what cannot be trained on.

    Refused: no labels, non-finite labels, a constant label, fewer than `min_stars`
    usable stars. Dropped with a `SpectraWarning` naming them: stars with no good pixel
    (ivar > 0), with non-finite flux on good pixels, with a median flux more than
    FLUX_RATIO_LIMIT times off the set's median (not normalized), and exact duplicates
    (same labels and flux; the first is kept).
    """
    if spectra.labels is None:
        raise ValueError("training spectra need labels (Spectra(labels=..., label_names=...))")
    labels = np.asarray(spectra.labels, float)
    if not np.all(np.isfinite(labels)):
        bad = np.flatnonzero(~np.all(np.isfinite(labels), axis=1))
        raise ValueError(f"training labels are NaN or infinite for star(s) {_names(spectra, bad)}; "
                         f"fix or drop them in the label catalogue")
    good = spectra.ivar > 0
    drop = {}
    no_pix = ~good.any(1)
    drop["no good pixel (ivar > 0)"] = no_pix
    with np.errstate(invalid="ignore"):
        drop["non-finite flux on good pixels"] = ~no_pix & ~np.all(np.isfinite(np.where(good, spectra.flux, 0.0)), 1)
        med = np.array([np.median(f[g]) if g.any() else np.nan for f, g in zip(spectra.flux, good)])
        ref = np.nanmedian(np.where(np.isfinite(med), med, np.nan))
        ratio = np.abs(med / ref)
    drop[f"median flux more than {FLUX_RATIO_LIMIT:g}× off the set's (not normalized?)"] = \
        ~no_pix & np.isfinite(med) & ((ratio > FLUX_RATIO_LIMIT) | (ratio < 1 / FLUX_RATIO_LIMIT))
    rows = np.ascontiguousarray(np.column_stack([labels, np.where(good, spectra.flux, 0.0)]))
    _, first = np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel(),
                         return_index=True)
    dup = np.ones(spectra.n_star, bool)
    dup[first] = False
    drop["duplicate of an earlier star (same labels and flux)"] = dup
    out = np.zeros(spectra.n_star, bool)
    why_dropped = []
    for why, mask in drop.items():
        mask = mask & ~out
        if mask.any():
            warnings.warn(f"training set: dropping {mask.sum()} star(s) with {why}: "
                          f"{_names(spectra, np.flatnonzero(mask))}", SpectraWarning, stacklevel=3)
            why_dropped.append(f"{mask.sum()} with {why}")
            out |= mask
    kept = spectra[np.flatnonzero(~out)] if out.any() else spectra
    if kept.n_star < min_stars:
        raise ValueError(f"need at least {min_stars} usable training stars, got {kept.n_star} "
                         f"(of {spectra.n_star}" + (f"; dropped {', '.join(why_dropped)})" if why_dropped else ")"))
    lab = np.asarray(kept.labels, float)
    const = [n for n, lo, hi in zip(kept.label_names, lab.min(0), lab.max(0)) if not hi > lo]
    if const:
        raise ValueError(f"training label(s) {const} take a single value across all {kept.n_star} "
                         f"stars: nothing to learn; drop them from label_names")
    return kept
