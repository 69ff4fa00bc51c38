"""MAP throughput on a full-size APOGEE model (benchmark, not a test).

Trains a 7214-pixel emulator on spectra generated with the El-Badry et al.
APOGEE-dwarf network (../shared/data/apogee_dwarf_emulator), then times
`fit_map` with 1 and 2 processes, and the same fit with a finite-difference
Jacobian, printed as ratios measured in this run. The emulator is timed both
exact (compression 0, the default) and with a low-rank evaluation
(`--compression`, 0.002), whose labels are compared with the exact ones in units
of their errors.

    python bench/map_throughput.py [--n-train 1000] [--n-test 200] [--cv 0] [--model PATH]

The trained model is kept in bench/.cache (`--model`) and reused by later runs
and by bench/posterior_speed.py.
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


NAMES = ["teff", "logg", "feh", "mgfe"]
CACHE = Path(__file__).resolve().parent / ".cache"


def model_7214(path=None, n_train=1000, cv=0, C=10.0, gamma=0.1):
    """The 7214-pixel emulator (trained on `n_train` generated dwarfs at S/N 100), read from
    `path` if it exists, else trained and written there. Returns (emulator, training seconds
    or None)."""
    path = Path(path or CACHE / f"dwarf7214_n{n_train}_cv{cv}_C{C:g}_g{gamma:g}.npz")
    if path.exists():
        return Emulator.load(path), None
    wave = np.load(D.DATA_DIR / "apogee_dwarf_emulator" / "apogee_wavelength.npz")["wavelength"]
    f, iv, lab = draw(np.random.default_rng(1), n_train, 100.0)
    t0 = time.perf_counter()
    em = Emulator(C=(C,), gamma=(gamma,), cv=cv, n_jobs=-1, block_size=64).fit(
        Spectra(wave, f, iv, labels=lab, label_names=NAMES))
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    em.save(path)
    return em, seconds


def time_evaluations(em):
    """Print the wall time of flux, and of flux with Jacobian, for 1 and 1000 label vectors."""
    for m in (1, 1000):
        labels = em.from_std(em.X_train_[:m])
        for what, func in (("flux", em.predict), ("flux+Jacobian", em.predict_and_jacobian)):
            func(labels)
            reps = max(1, int(200 / m))
            t0 = time.perf_counter()
            for _ in range(reps):
                func(labels)
            dt = (time.perf_counter() - t0) / reps
            print(f"  {what:13s} of {m:4d} label vector(s) on {em.wave_.size} px: {dt * 1e3:8.2f} ms")


def gemm_rate():
    """FLOP/s of one core in a float64 matrix product of the emulator's shape (1000 × 1000 × 7214)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1000, 1000)), rng.normal(size=(1000, 7214))
    with threadpool_limits(1):
        a @ b
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        return 3 * 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - t0)


def compare_compression(em, test, names, default):
    """Evaluation times exact and compressed; the exact model's MAP rate (1 process) and catalog."""
    for c in (0.0, default):
        em.compression = c
        t0 = time.perf_counter()
        ranks = em.expansion.ranks
        print(f"compression {c}: coefficient ranks {ranks} (built in {time.perf_counter() - t0:.1f} s)")
        time_evaluations(em)
    em.compression = 0.0
    return one_core_rate(em, test)


def one_core_rate(em, test):
    """(spectra/s of `fit_map` on one core (one process, one BLAS thread), its catalog)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        fit_map(em, test[:4], progress=False)                     # warm-up
        t0 = time.perf_counter()
        cat = fit_map(em, test, n_jobs=1, chunk_size=max(len(test) // 2, 1), progress=False)
        return len(cat) / (time.perf_counter() - t0), cat


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--cv", type=int, default=0, help="CV folds in training (0: fixed C, γ; fastest)")
    ap.add_argument("--C", type=float, default=10.0)
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--n-fd", type=int, default=20, help="spectra for the finite-difference run")
    ap.add_argument("--model", help="model file (default: bench/.cache/dwarf7214_…npz); trained if missing")
    ap.add_argument("--compression", type=float, default=0.002, help="the low-rank setting compared with exact")
    args = ap.parse_args()
    wave = np.load(D.DATA_DIR / "apogee_dwarf_emulator" / "apogee_wavelength.npz")["wavelength"]
    names = NAMES
    em, t_train = model_7214(args.model, args.n_train, args.cv, args.C, args.gamma)
    em.compression = args.compression
    print(f"{em.wave_.size}-pixel model on {em.X_train_.shape[0]} spectra (cv={args.cv}): "
          + (f"trained in {t_train:.0f} s" if t_train else f"read from {em.model_path_}"))
    f, iv, lab = draw(np.random.default_rng(2), args.n_test, 50.0)
    test = Spectra(wave, f, iv)
    default = em.compression
    exact_rate, exact_cat = compare_compression(em, test, names, default)
    em.compression = default
    rates = {1: one_core_rate(em, test)[0]}
    t0 = time.perf_counter()
    cat = fit_map(em, test, n_jobs=2, chunk_size=max(args.n_test // 4, 1), progress=False)
    rates[2] = len(cat) / (time.perf_counter() - t0)
    shift = max(float(np.max(np.abs(cat[n] - exact_cat[n]) / exact_cat[n + "_err"])) for n in names)
    width = max(float(np.max(np.abs(cat[n + "_err"] / exact_cat[n + "_err"] - 1))) for n in names)
    print(f"MAP, 1 process: compression {default} {rates[1]:.1f} spectra/s vs exact {exact_rate:.1f} -> "
          f"{rates[1] / exact_rate:.1f}x; labels differ by ≤ {shift:.4f} σ, errors by ≤ {100 * width:.2f} %")
    est = np.column_stack([cat[n] for n in names])
    t0 = time.perf_counter()
    fit_map(em, test[: args.n_fd], jac="2-point", progress=False)
    fd_per = (time.perf_counter() - t0) / args.n_fd
    an_per = 1.0 / rates[1]
    print(f"MAP, analytic Jacobian: {rates[1]:.1f} spectra/s (1 process), {rates[2]:.1f} spectra/s (2 processes)")
    print(f"MAP, finite-difference Jacobian: {fd_per * 1e3:.1f} ms/spectrum vs {an_per * 1e3:.1f} ms analytic "
          f"-> analytic is {fd_per / an_per:.1f}x faster")
    nfev = float(np.median(cat["nfev"]))
    flops = 2.0 * em.wave_.size * em.X_train_.shape[0] * (len(names) + 1) * nfev   # dense flux + Jacobian
    limit = gemm_rate() / flops
    print(f"FLOP limit of one core: {limit:.1f} spectra/s ({nfev:.0f} evaluations of the dense expansion per "
          f"spectrum at the measured GEMM rate); exact {exact_rate:.1f} = {100 * exact_rate / limit:.0f} %, "
          f"compression {default} {rates[1]:.1f} = {100 * rates[1] / limit:.0f} % of it")
    print(f"median nfev {np.median(cat['nfev']):.0f}; scatter at S/N 50 (teff, logg, feh, mgfe): "
          f"{np.round(np.std(est - lab, 0), 3)}")


if __name__ == "__main__":
    main()
