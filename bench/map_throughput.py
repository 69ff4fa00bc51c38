"""MAP throughput on a full-size APOGEE model (benchmark, not a test).

Trains a 7214-pixel emulator on spectra generated with the El-Badry et al.
APOGEE-dwarf network (../shared/data/apogee_dwarf_emulator), then times
`fit_map` with 1 and 2 processes, and the same fit with a finite-difference
Jacobian, printed as ratios measured in this run.

    python bench/map_throughput.py [--n-train 1000] [--n-test 200] [--cv 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
sys.path.insert(0, str(SHARED / "bench"))
import datasets as D  # noqa: E402  the benchmark protocol, from ../shared/bench

from slambayes import Emulator, Spectra, fit_map  # noqa: E402


def full_dwarf_spectra(labels4):
    """All 7214 pixels of the dwarf network (the dataset README's formula)."""
    nn = np.load(D.DATA_DIR / "apogee_dwarf_emulator" / "NN_normalized_spectra.npz")
    w0, w1, b0, b1, lo, hi = (np.asarray(nn[k], float) for k in
                              ["w_array_0", "w_array_1", "b_array_0", "b_array_1", "x_min", "x_max"])
    lab5 = np.column_stack([labels4, np.full(len(labels4), D.DWARF_VMACRO)])
    x = (lab5 - lo) / (hi - lo) - 0.5
    h = 1 / (1 + np.exp(-(np.einsum("ijk,nk->nij", w0, x) + b0[None])))
    return np.einsum("ij,nij->ni", w1, h) + b1[None]


def draw(rng, n, snr):
    nn = np.load(D.DATA_DIR / "apogee_dwarf_emulator" / "NN_normalized_spectra.npz")
    lo, hi = np.asarray(nn["x_min"], float)[:4], np.asarray(nn["x_max"], float)[:4]
    span = hi - lo
    lab = rng.uniform(lo + D.DWARF_SHRINK * span, hi - D.DWARF_SHRINK * span, (n, 4))
    clean = full_dwarf_spectra(lab)
    return clean + rng.normal(0, 1 / snr, clean.shape), np.full(clean.shape, snr**2), lab


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--cv", type=int, default=0, help="CV folds in training (0: fixed C, γ; fastest)")
    ap.add_argument("--C", type=float, default=10.0)
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--n-fd", type=int, default=20, help="spectra for the finite-difference run")
    args = ap.parse_args()
    wave = np.load(D.DATA_DIR / "apogee_dwarf_emulator" / "apogee_wavelength.npz")["wavelength"]
    names = ["teff", "logg", "feh", "mgfe"]
    f, iv, lab = draw(np.random.default_rng(1), args.n_train, 100.0)
    train = Spectra(wave, f, iv, labels=lab, label_names=names)
    t0 = time.perf_counter()
    em = Emulator(C=(args.C,), gamma=(args.gamma,), cv=args.cv, n_jobs=-1, block_size=64).fit(train)
    t_train = time.perf_counter() - t0
    print(f"trained {train.n_pix}-pixel model on {train.n_star} spectra in {t_train:.0f} s (cv={args.cv})")
    for m in (1, 1000):
        labels = em.from_std(em.X_train_[:m])
        em.predict(labels)
        reps = max(1, int(200 / m))
        t0 = time.perf_counter()
        for _ in range(reps):
            em.predict(labels)
        dt = (time.perf_counter() - t0) / reps
        print(f"predict {m} label vector(s) on {em.wave_.size} px: {dt * 1e3:.2f} ms")
    f, iv, lab = draw(np.random.default_rng(2), args.n_test, 50.0)
    test = Spectra(wave, f, iv)
    fit_map(em, test[:4], progress=False)                         # warm-up
    rates = {}
    for n_jobs in (1, 2):
        t0 = time.perf_counter()
        cat = fit_map(em, test, n_jobs=n_jobs, chunk_size=max(args.n_test // (2 * n_jobs), 1), progress=False)
        rates[n_jobs] = len(cat) / (time.perf_counter() - t0)
    est = np.column_stack([cat[n] for n in names])
    t0 = time.perf_counter()
    fit_map(em, test[: args.n_fd], jac="2-point", progress=False)
    fd_per = (time.perf_counter() - t0) / args.n_fd
    an_per = 1.0 / rates[1]
    print(f"MAP, analytic Jacobian: {rates[1]:.1f} spectra/s (1 process), {rates[2]:.1f} spectra/s (2 processes)")
    print(f"MAP, finite-difference Jacobian: {fd_per * 1e3:.1f} ms/spectrum vs {an_per * 1e3:.1f} ms analytic "
          f"-> analytic is {fd_per / an_per:.1f}x faster")
    print(f"median nfev {np.median(cat['nfev']):.0f}; scatter at S/N 50 (teff, logg, feh, mgfe): "
          f"{np.round(np.std(est - lab, 0), 3)}")


if __name__ == "__main__":
    main()
