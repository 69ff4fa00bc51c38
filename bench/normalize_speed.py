"""Continuum normalization speed on the real LAMOST spectra (`../shared/data/lamost_dr1`).

Times `slambayes.preprocess.normalize` on the 176 raw LAMOST spectra (best of 3) and
prints it against one pass of a plain per-star smoothing spline (scipy's
`make_smoothing_spline`, no clipping) in the same run, as a ratio. This figure used to
be a wall-clock assertion in tests/test_preprocess.py (it failed a loaded machine).

    python bench/normalize_speed.py
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.interpolate import make_smoothing_spline

from slambayes import preprocess as P, read_lamost

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lamost_dr1" / "spectra"


def best_of(fn, n=3):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def plain_splines(sp):
    x = sp.wave
    for f, g in zip(sp.flux, sp.good):
        if g.sum() > 10:
            make_smoothing_spline(x[g], f[g], lam=1e6)


def main():
    if not DATA.exists():
        sys.exit(f"needs the LAMOST spectra under {DATA}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = read_lamost(DATA, flux="raw")
    t_ours = best_of(lambda: P.normalize(raw))
    t_plain = best_of(lambda: plain_splines(raw))
    print(f"normalize: {raw.n_star} spectra x {raw.n_pix} px in {t_ours:.2f} s "
          f"({raw.n_star / t_ours:.1f} spectra/s)")
    print(f"one plain smoothing spline per star: {t_plain:.2f} s; ratio ours / plain = {t_ours / t_plain:.2f}")


if __name__ == "__main__":
    main()
