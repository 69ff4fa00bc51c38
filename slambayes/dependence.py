"""Leave-one-label-out coefficients of dependence (after SLAM paper Sec. 6).

For pixel j and label l, CoD_lj = 1 − MSE_j(all labels) / MSE_j(all but l),
with MSE the k-fold cross-validated error of the per-pixel SVR. A pixel whose
flux does not need label l to be predicted has CoD ≈ 0; one that is mostly
determined by l has CoD near 1.
"""
from __future__ import annotations

import numpy as np

from .emulator import Emulator

__all__ = ["coefficients_of_dependence"]


def coefficients_of_dependence(spectra, **emulator_kw):
    """CoD array (n_label, n_pix) from k + 1 emulator trainings on `spectra`.

    `emulator_kw` are passed to `Emulator` (cv must be ≥ 2).
    """
    if emulator_kw.get("cv", 5) < 2:
        raise ValueError("coefficients of dependence need cross-validation (cv >= 2)")
    full = Emulator(**emulator_kw).fit(spectra).cv_mse_
    out = np.empty((len(spectra.label_names), spectra.n_pix))
    for l, name in enumerate(spectra.label_names):
        keep = [i for i in range(len(spectra.label_names)) if i != l]
        sub = spectra.replace(labels=spectra.labels[:, keep],
                              label_names=[spectra.label_names[i] for i in keep])
        without = Emulator(**emulator_kw).fit(sub).cv_mse_
        out[l] = 1.0 - full / np.maximum(without, 1e-12)
    return out
