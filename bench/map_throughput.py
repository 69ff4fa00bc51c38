"""MAP throughput: the batched engine against scipy's, and against the FLOP limit (benchmark, not a test).

Two models, trained on spectra generated with the El-Badry et al. APOGEE-dwarf
network (../shared/data/apogee_dwarf_emulator), 1000 stars each, fixed (C, γ) and
no CV (the cost of an evaluation does not depend on them):
- "dwarfsim": the dwarfsim protocol's 1585 pixels and training set
  (../shared/bench/datasets.py), fitted on its 800 test spectra (S/N 20–200);
- "7214": all 7214 pixels, fitted on `--n-test` spectra at S/N 50.
For each, on one core (one process, one BLAS thread), in the same run:
`fit_map(engine="scipy")` (scipy's least_squares one star at a time) and
`engine="batched"` (`slambayes.batched_lm`: a chunk's stars in one emulator
product per iteration), both with `posterior_draws=0` (the fit alone), their
labels and errors compared in units of σ; the batched engine with the default
posterior summaries (`posterior_draws=128`, `slambayes.posterior_summary`), as a
fraction of the fit alone; the same fits at `BASELINE_REV`, the commit before the
summaries, with its Laplace check (256 draws) and without, run from a git worktree
(bench/.cache) in a subprocess on the same model and spectra; and the FLOP limit: the spectra/s of one core
if the emulator evaluations a fit needs (the scipy engine's median number of flux +
Jacobian evaluations of the dense expansion, 2 n_pix n_train (k + 1) FLOP each) ran
at the GEMM rate measured on this machine at the model's shape. On the 7214-pixel
model also: 2 processes, the low-rank evaluation (`--compression`) and a
finite-difference Jacobian.

    python bench/map_throughput.py [--models dwarfsim,7214] [--n-test 200] [--model PATH]

The trained models are kept in bench/.cache and reused by later runs (the 7214-pixel
one by bench/posterior_speed.py too).
"""
from __future__ import annotations

import argparse
import os
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
BASELINE_REV = "4d68d75"     # the last commit with the Laplace check alone ("today's check" of issue 32)

_BASELINE_SCRIPT = """
import sys, time, json
import numpy as np
from threadpoolctl import threadpool_limits
from slambayes import Emulator, Spectra, fit_map
em = Emulator.load(sys.argv[1])
d = np.load(sys.argv[2])
test = Spectra(d["wave"], d["flux"], d["ivar"])
out = {}
with threadpool_limits(1):
    fit_map(em, test[:4], progress=False)
    assert "laplace_draws" in fit_map.__code__.co_varnames, "not the baseline's slambayes"
    for key, draws in (("fit", 0), ("check", 256)):
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            fit_map(em, test, n_jobs=1, chunk_size=len(test.flux), progress=False, laplace_draws=draws)
            best = min(best, time.perf_counter() - t0)
        out[key] = len(test.flux) / best
print(json.dumps(out))
"""


def baseline_rates(em, test):
    """MAP-only and MAP + Laplace check spectra/s of one core at `BASELINE_REV`, run from a git
    worktree of that commit (bench/.cache/baseline) in a subprocess on the same model and spectra."""
    import json
    import subprocess
    import tempfile

    repo = Path(__file__).resolve().parents[1]
    tree = CACHE / f"baseline-{BASELINE_REV}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), BASELINE_REV], check=True,
                       capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        model, spectra = Path(tmp) / "model.npz", Path(tmp) / "spectra.npz"
        em.save(model)
        np.savez(spectra, wave=test.wave, flux=test.flux, ivar=test.ivar)
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
        # cwd: `-c` puts the working directory first on sys.path, and it must not be this checkout
        res = subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT, str(model), str(spectra)], env=env, cwd=tree,
                             capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"the baseline run at {BASELINE_REV} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


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


def gemm_rate(n_train, n_pix):
    """FLOP/s of one core in a float64 matrix product of the emulator's shape: (320 × n_train)
    times (n_train × n_pix), the product of 64 stars' flux and 4 derivatives; the best of 10
    (the machine's clock varies between runs by up to 30 %: the best is its capability)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(320, n_train)), rng.normal(size=(n_train, n_pix))
    best = np.inf
    with threadpool_limits(1):
        a @ b
        for _ in range(10):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best


def one_core_rate(em, test, repeats=3, **kw):
    """(spectra/s of `fit_map` on one core (one process, one BLAS thread), the best of `repeats`
    runs as for the GEMM rate; its catalog)."""
    from threadpoolctl import threadpool_limits

    best = np.inf
    with threadpool_limits(1):
        fit_map(em, test[:4], progress=False, **kw)                     # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            cat = fit_map(em, test, n_jobs=1, chunk_size=len(test), progress=False, **kw)
            best = min(best, time.perf_counter() - t0)
    return len(cat) / best, cat


def agreement(a, b, names):
    """(max |Δ label| / σ, max |σ_b / σ_a − 1|) between two catalogs of the same spectra."""
    shift = max(float(np.nanmax(np.abs(a[n] - b[n]) / a[n + "_err"])) for n in names)
    width = max(float(np.nanmax(np.abs(b[n + "_err"] / a[n + "_err"] - 1))) for n in names)
    return shift, width


def engines(em, test, names, truth):
    """Print the scipy and batched engines' rates, their agreement and the FLOP limit; returns
    the batched engine's catalog (fit only)."""
    rate, cats = {}, {}
    for eng in ("scipy", "batched"):
        rate[eng], cats[eng] = one_core_rate(em, test, engine=eng, posterior_draws=0)
    rate["summary"], _ = one_core_rate(em, test, engine="batched")
    n_pix, n_train = em.wave_.size, em.X_train_.shape[0]
    shift, width = agreement(cats["scipy"], cats["batched"], names)
    flags = float(np.mean(cats["scipy"]["flag"] == cats["batched"]["flag"]))
    print(f"  scipy engine   {rate['scipy']:7.1f} spectra/s (median nfev {np.median(cats['scipy']['nfev']):.0f})")
    print(f"  batched engine {rate['batched']:7.1f} spectra/s (median {np.median(cats['batched']['nfev']):.0f} "
          f"evaluations) -> {rate['batched'] / rate['scipy']:.1f}x scipy; labels differ by ≤ {shift:.4f} σ, "
          f"errors by ≤ {100 * width:.2f} %, flags equal for {100 * flags:.0f} % of the spectra")
    print(f"  batched engine with the posterior summaries (the default, posterior_draws=128): {rate['summary']:.1f} "
          f"spectra/s = {100 * rate['summary'] / rate['batched']:.0f} % of the MAP-only rate")
    if BASELINE_REV:
        base = baseline_rates(em, test)
        print(f"  the same fits at {BASELINE_REV} (before the summaries), same machine, same run: MAP only "
              f"{base['fit']:.1f} spectra/s, with its Laplace check (256 Gaussian draws) {base['check']:.1f} spectra/s "
              f"= {100 * base['check'] / base['fit']:.0f} % of its MAP-only rate")
    nfev = float(np.median(cats["scipy"]["nfev"]))
    flops = 2.0 * n_pix * n_train * (len(names) + 1) * nfev
    gemm = gemm_rate(n_train, n_pix)
    limit = gemm / flops
    print(f"  FLOP limit of one core: {limit:.1f} spectra/s ({nfev:.0f} evaluations of flux + Jacobian, "
          f"{flops / 1e9:.3f} GFLOP per spectrum, at the measured GEMM rate {gemm / 1e9:.1f} GFLOP/s); "
          f"batched {100 * rate['batched'] / limit:.0f} %, scipy {100 * rate['scipy'] / limit:.0f} % of it")
    est = np.column_stack([cats["batched"][n] for n in names])
    print(f"  scatter (batched): {np.round(np.std(est - truth, 0), 3)}  [{', '.join(names)}]")
    return cats["batched"]


def dwarfsim_model(n_train=1000, C=10.0, gamma=0.1):
    """The dwarfsim protocol's training set (1585 px) with fixed (C, γ), no CV; cached."""
    path = CACHE / f"dwarfsim1585_n{n_train}_C{C:g}_g{gamma:g}.npz"
    d = D.load("dwarfsim", "main")
    if path.exists():
        return Emulator.load(path), d
    tr = d["train"]
    em = Emulator(C=(C,), gamma=(gamma,), cv=0, n_jobs=-1, block_size=64, progress=False).fit(
        Spectra(d["wave"], tr["flux"][:n_train], tr["ivar"][:n_train], labels=tr["labels"][:n_train],
                label_names=d["label_names"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    em.save(path)
    return em, d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="dwarfsim,7214")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=200, help="test spectra of the 7214-px model")
    ap.add_argument("--cv", type=int, default=0, help="CV folds in training the 7214-px model (0: fixed C, γ)")
    ap.add_argument("--C", type=float, default=10.0)
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--n-fd", type=int, default=20, help="spectra for the finite-difference run")
    ap.add_argument("--model", help="7214-px model file (default: bench/.cache/dwarf7214_…npz); trained if missing")
    ap.add_argument("--compression", type=float, default=0.002, help="the low-rank setting compared with exact")
    args = ap.parse_args()
    models = args.models.split(",")
    if "dwarfsim" in models:
        em, d = dwarfsim_model(args.n_train, args.C, args.gamma)
        te = d["test"]
        print(f"dwarfsim protocol model: {em.wave_.size} px, {em.X_train_.shape[0]} training spectra, "
              f"{len(te['flux'])} test spectra (S/N {sorted(set(te['snr'].tolist()))})")
        engines(em, Spectra(d["wave"], te["flux"], te["ivar"]), list(d["label_names"]), te["labels"])
    if "7214" not in models:
        return
    wave = np.load(D.DATA_DIR / "apogee_dwarf_emulator" / "apogee_wavelength.npz")["wavelength"]
    em, t_train = model_7214(args.model, args.n_train, args.cv, args.C, args.gamma)
    print(f"{em.wave_.size}-pixel model on {em.X_train_.shape[0]} spectra (cv={args.cv}): "
          + (f"trained in {t_train:.0f} s" if t_train else f"read from {em.model_path_}"))
    f, iv, lab = draw(np.random.default_rng(2), args.n_test, 50.0)
    test = Spectra(wave, f, iv)
    exact = engines(em, test, NAMES, lab)
    kw = dict(n_jobs=2, chunk_size=max(args.n_test // 2, 1), posterior_draws=0, progress=False)
    fit_map(em, test, **kw)                   # the workers start and receive the model once
    t0 = time.perf_counter()
    cat = fit_map(em, test, **kw)
    print(f"  batched engine, 2 processes: {len(cat) / (time.perf_counter() - t0):.1f} spectra/s")
    em.compression = args.compression
    print(f"  compression {args.compression}: coefficient ranks {em.expansion.ranks}")
    rate, cat = one_core_rate(em, test, 1, posterior_draws=0)
    shift, width = agreement(exact, cat, NAMES)
    print(f"  batched engine, compression {args.compression}: {rate:.1f} spectra/s; labels differ from the exact "
          f"expansion's by ≤ {shift:.4f} σ, errors by ≤ {100 * width:.2f} %")
    em.compression = 0.0
    an_rate, _ = one_core_rate(em, test[: args.n_fd], 1, engine="scipy", posterior_draws=0)
    fd_rate, _ = one_core_rate(em, test[: args.n_fd], 1, engine="scipy", jac="2-point", posterior_draws=0)
    print(f"  scipy engine, finite-difference Jacobian: {1e3 / fd_rate:.1f} ms/spectrum vs {1e3 / an_rate:.1f} ms "
          f"analytic -> analytic is {an_rate / fd_rate:.1f}x faster")


if __name__ == "__main__":
    main()
