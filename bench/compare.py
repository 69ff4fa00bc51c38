"""slambayes side by side with astroslam and The Cannon, on identical inputs and splits.

    bench/peers/setup.sh                       # once: the peers' venv (bench/.venv-peers)
    python bench/compare.py --dataset apogee100 [--methods slambayes,astroslam,cannon]
    python bench/compare.py --dataset lamost131      # pipeline-normalized LAMOST (protocol)
    python bench/compare.py --dataset lamost131raw   # the same stars through OUR preprocessing of the raw FITS
    python bench/compare.py --dataset dwarfsim

The datasets, splits and ivar rules come from ../shared/bench/datasets.py (the
benchmark protocol, imported, not re-implemented). slambayes runs in this
interpreter; each peer runs in its own subprocess in the peers' venv
(bench/peers/run_peer.py). Hyperparameters for both SVR methods: C ∈ {1, 10, 100},
γ ∈ {0.01, 0.1, 1}, ε = 0.05, 5-fold CV (3-fold on dwarfsim); The Cannon:
quadratic, its defaults. slambayes gives three rows from one trained emulator:
"slambayes" (fit_map's defaults: Eq. 8's per-pixel model error plus its
correlations between pixels, learned from the out-of-fold CV residuals),
"slambayes_eq8" (model_error="cv": Eq. 8 with independent pixels) and
"slambayes_soft_l1" (the default with loss="soft_l1", f_scale=1: pixels off by
more than 1 total σ lose weight, as in astroslam's own soft_l1 fit). Prints one table (CV scatter, bias, MAE, median formal
error, z-score std per label; training wall time per fold; MAP seconds per
spectrum) with the ratios slambayes/peer, the same statistics for the test stars whose true labels
lie inside the training set's coverage (`U_COVERED`), and for dwarfsim the same per S/N with
the Cramér–Rao bound of the generating model. Writes bench/compare_<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
sys.path.insert(0, str(SHARED / "bench"))
import datasets as D  # noqa: E402  the benchmark protocol

PEER_PYTHON = HERE / ".venv-peers" / "bin" / "python"
C_GRID, GAMMA_GRID, EPSILON = (1.0, 10.0, 100.0), (0.01, 0.1, 1.0), 0.05
METHODS = ("slambayes", "astroslam", "cannon")
# slambayes' MAP in three flavours from one trained emulator: "slambayes" is fit_map's default
# (the per-pixel error of Eq. 8 plus its correlations between pixels); "slambayes_eq8" is Eq. 8
# with independent pixels (formal errors); "slambayes_formal" is the default without the error
# calibration; "slambayes_soft_l1" is the default with scipy's robust soft_l1 loss
# (pixels off by more than 1 total σ lose weight; astroslam fits with soft_l1 too)
SLAMBAYES_FITS = {"slambayes": {}, "slambayes_formal": dict(calibration="none"),
                  "slambayes_eq8": dict(model_error="cv"),
                  "slambayes_soft_l1": dict(loss="soft_l1", f_scale=1.0)}


def row_names(method):
    """The table rows one method produces."""
    return list(SLAMBAYES_FITS) if method == "slambayes" else [method]


# ------------------------------------------------------------------ methods
def run_slambayes(split, n_jobs, cv):
    """{row name: (pred, err, train_s, fit_s)} for every entry of SLAMBAYES_FITS."""
    from slambayes import Emulator, Spectra, calibrate, fit_map
    from slambayes.validation import labels_from_catalog

    tr, te = split["train"], split["test"]
    train = Spectra(split["wave"], tr["flux"], tr["ivar"], labels=tr["labels"], label_names=split["label_names"])
    t0 = time.perf_counter()
    em = Emulator(C=C_GRID, gamma=GAMMA_GRID, epsilon=EPSILON, cv=cv, n_jobs=n_jobs, progress=False).fit(train)
    train_s = time.perf_counter() - t0
    calibrate(em, train)                          # out-of-fold fits of the training stars only
    print(f"    calibration (training set, out-of-fold): {em.calibration_.stats}, "
          f"{time.perf_counter() - t0 - train_s:.1f} s", flush=True)
    test = Spectra(split["wave"], te["flux"], te["ivar"])
    out = {}
    for name, kw in SLAMBAYES_FITS.items():
        t0 = time.perf_counter()
        cat = fit_map(em, test, n_jobs=n_jobs, chunk_size=max(1, -(-test.n_star // n_jobs)), progress=False, **kw)
        fit_s = time.perf_counter() - t0
        out[name] = (*labels_from_catalog(cat, em.label_names_), train_s, fit_s)
    return out


def run_peer(method, split, n_jobs, cv):
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} not found: run bench/peers/setup.sh first")
    tr, te = split["train"], split["test"]
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, train_flux=tr["flux"], train_ivar=tr["ivar"], train_labels=tr["labels"],
                 test_flux=te["flux"], test_ivar=te["ivar"], wave=split["wave"],
                 C=np.array(C_GRID), gamma=np.array(GAMMA_GRID), epsilon=EPSILON)
        env = dict(os.environ, PYTHONPATH=str(HERE / "peers" / "shim"))    # shims reach loky workers too
        r = subprocess.run([str(PEER_PYTHON), str(HERE / "peers" / "run_peer.py"), method, str(inp), str(out),
                            "--n-jobs", str(n_jobs), "--cv", str(cv)], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{method} failed:\n{r.stderr[-3000:]}")
        o = np.load(out)
        return {method: (o["pred"], o["err"], float(o["train_s"]), float(o["fit_s"]))}


# ------------------------------------------------------------------ data
def load_lamost131raw():
    """The LAMOST stars from the raw FITS through slambayes' preprocessing, 5 folds."""
    from slambayes import join_labels, preprocess as P, read_lamost

    base = D.DATA_DIR / "lamost_dr1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = join_labels(read_lamost(base / "spectra", progress=False), base / "lasp_catalog.csv",
                         ["teff", "logg", "feh"])
    sp = P.normalize(P.to_rest_frame(sp, rv_kms=np.asarray(sp.meta["rv"], float), wave=P.default_grid()))
    flux = np.where(sp.ivar > 0, sp.flux, 1.0)
    splits = []
    for k, te in enumerate(D.cv_folds(sp.n_star)):
        trn = np.setdiff1d(np.arange(sp.n_star), te)
        take = lambda ix: dict(flux=flux[ix], ivar=sp.ivar[ix], labels=sp.labels[ix], index=ix)  # noqa: E731
        splits.append(dict(train=take(trn), test=take(te), label_names=sp.label_names, wave=sp.wave,
                           dataset="lamost131raw", split=k))
    return splits


def load_splits(name):
    if name == "lamost131raw":
        return load_lamost131raw()
    return [D.load(name, s) for s in D.list_splits(name)]


# ------------------------------------------------------------------ statistics
def stats(pred, err, truth):
    res = pred - truth
    z = res / err
    ok = np.isfinite(z)
    return dict(scatter=np.nanstd(res, 0), bias=np.nanmean(res, 0), mae=np.nanmean(np.abs(res), 0),
                median_err=np.nanmedian(err, 0),
                z_std=np.array([np.std(z[ok[:, j], j]) for j in range(z.shape[1])]),
                coverage68=np.array([np.mean(np.abs(z[ok[:, j], j]) < 1) for j in range(z.shape[1])]),
                n_failed=int((~np.all(np.isfinite(pred), 1)).sum()))


# a test star counts as inside the training set's coverage when its TRUE labels lie within this many
# typical spacings (slambayes.calibration's u) of its 8 nearest training stars: where the emulator
# interpolates. Outside it extrapolates, and the fit returns labels inside the covered region with
# nothing in the spectrum's fit to tell (what no per-star error model can see)
U_COVERED = 3.0


def truth_coverage(split):
    """u (n_test,) of each test star's true labels against its split's training labels
    (standardized by the training set, as the emulator does)."""
    from slambayes.calibration import neighbour_features, typical_spacing
    from slambayes.preprocess import standardize

    train = np.asarray(split["train"]["labels"], float)
    mean, std = standardize(train)
    X = (train - mean) / std
    return neighbour_features(X, (np.asarray(split["test"]["labels"], float) - mean) / std)[0] / typical_spacing(X)


def fmt(v):
    return " / ".join(f"{x:.3g}" for x in np.atleast_1d(v))


def crlb_by_snr():
    """Median Cramér–Rao bound per S/N from ../shared/bench/crlb.py (it prints as it runs)."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        import crlb
    return {float(k): np.asarray(v, float) for k, v in crlb.out.items()}


def jsonable(o):
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return o


def write_json(dataset, names, cv, results):
    """bench/compare_<dataset>.json (rewritten after every method, so a crash loses nothing done)."""
    out = HERE / f"compare_{dataset}.json"
    out.write_text(json.dumps(dict(dataset=dataset, label_names=list(names), cv=cv, C=C_GRID, gamma=GAMMA_GRID,
                                   epsilon=EPSILON, methods=jsonable(results),
                                   date=time.strftime("%Y-%m-%d %H:%M")), indent=1))
    return out


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=("apogee100", "lamost131", "lamost131raw", "dwarfsim"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--reuse", default="", help="comma-separated methods to take from an earlier "
                    "bench/compare_<dataset>.json of this dataset instead of running them again")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose from {METHODS}")
    cv = 3 if args.dataset == "dwarfsim" else 5
    splits = load_splits(args.dataset)
    names = splits[0]["label_names"]
    n_total = sum(len(s["test"]["labels"]) for s in splits)
    print(f"{args.dataset}: {len(splits)} split(s), {n_total} test spectra × {len(splits[0]['wave'])} px, "
          f"labels {names}; SVR grid C {C_GRID} × γ {GAMMA_GRID}, ε {EPSILON}, {cv}-fold CV; "
          f"The Cannon quadratic")
    results = {}
    reuse = [m.strip() for m in args.reuse.split(",") if m.strip()]
    if reuse:
        old = json.loads((HERE / f"compare_{args.dataset}.json").read_text())["methods"]

        def arrays(o):
            if isinstance(o, dict):
                return {(float(k) if k.replace(".", "").isdigit() else k): arrays(v) for k, v in o.items()}
            return np.asarray(o) if isinstance(o, list) else o
        for m in reuse:
            for row in (r for r in row_names(m) if r in old):
                results[row] = arrays(old[row])
                print(f"  {row:17s} taken from the earlier run (bench/compare_{args.dataset}.json)")
    rows = [r for m in methods for r in row_names(m)]
    # truths, S/N and coverage of the test stars: the same for every method and row
    truth = np.vstack([s["test"]["labels"] for s in splits])
    snr = np.concatenate([s["test"].get("snr", np.full(len(s["test"]["labels"]), np.nan)) for s in splits])
    inside = np.concatenate([truth_coverage(s) for s in splits]) <= U_COVERED
    for m in methods:
        if m in results:
            continue
        per_split = []
        for s in splits:
            t0 = time.perf_counter()
            out = run_slambayes(s, args.n_jobs, cv) if m == "slambayes" else run_peer(m, s, args.n_jobs, cv)
            per_split.append((s, out))
            for row, (_, _, tr_s, f_s) in out.items():
                print(f"  {row:17s} split {s['split']}: train {tr_s:7.1f} s, fit {f_s:7.1f} s "
                      f"(wall {time.perf_counter() - t0:.0f} s)", flush=True)
        for row in per_split[0][1]:
            pred = np.vstack([o[row][0] for _, o in per_split])
            err = np.vstack([o[row][1] for _, o in per_split])
            r = dict(all=stats(pred, err, truth), covered=dict(stats(pred[inside], err[inside], truth[inside]),
                                                              n=int(inside.sum()), n_outside=int((~inside).sum())),
                     train_s_per_fold=float(np.mean([o[row][2] for _, o in per_split])),
                     fit_s_per_spectrum=sum(o[row][3] for _, o in per_split) / len(pred))
            if args.dataset == "dwarfsim":
                r["by_snr"] = {float(v): stats(pred[snr == v], err[snr == v], truth[snr == v])
                               for v in D.DWARF_TEST_SNRS}
            results[row] = r
        write_json(args.dataset, names, cv, {k: results[k] for k in results})

    print(f"\n{args.dataset}: labels {' / '.join(names)}")
    print(f"{'method':17s} {'scatter':>28s} {'bias':>26s} {'MAE':>24s} {'median σ':>24s} {'z-std':>18s}"
          f" {'68% cover':>18s} {'train s/fold':>12s} {'MAP s/spec':>11s}")
    results = {m: results[m] for m in rows if m in results}
    for m, r in results.items():
        a = r["all"]
        print(f"{m:17s} {fmt(a['scatter']):>28s} {fmt(a['bias']):>26s} {fmt(a['mae']):>24s} "
              f"{fmt(a['median_err']):>24s} {fmt(a['z_std']):>18s} {fmt(a.get('coverage68', np.nan)):>18s} "
              f"{r['train_s_per_fold']:12.1f} "
              f"{r['fit_s_per_spectrum']:11.4f}")
    print(f"\ntest stars whose true labels lie within {U_COVERED:g} typical spacings of the training set "
          "(the emulator interpolates):")
    for m, r in results.items():
        if "covered" in r:
            c = r["covered"]
            print(f"{m:17s} {c['n']} in, {c['n_outside']} out: scatter {fmt(c['scatter'])}  z-std {fmt(c['z_std'])}"
                  f"  68% cover {fmt(c['coverage68'])}")
    for o in (o for o in SLAMBAYES_FITS if o in results):
        ours = results[o]
        for m, r in results.items():
            if m in SLAMBAYES_FITS:
                continue
            ratio = ours["all"]["scatter"] / r["all"]["scatter"]
            results[m][f"ratio_scatter_{o}_over_peer"] = ratio
            t_ratio = ours["fit_s_per_spectrum"] / r["fit_s_per_spectrum"]
            tr_ratio = ours["train_s_per_fold"] / r["train_s_per_fold"]
            print(f"{o}/{m:9s} scatter {fmt(ratio)}  |  MAP time {t_ratio:.3g} "
                  f"({1 / t_ratio:.1f}× faster)  |  training time {tr_ratio:.3g}")
    if args.dataset == "dwarfsim":
        bound = crlb_by_snr()
        print("\nper S/N: scatter (Teff / log g / [Fe/H] / [Mg/Fe]), z-std, scatter / CRLB")
        for v in D.DWARF_TEST_SNRS:
            print(f"S/N {v:5.0f}: CRLB {fmt(bound[v])}")
            for m, r in results.items():
                b = r["by_snr"][v]
                b["scatter_over_crlb"] = b["scatter"] / bound[v]
                print(f"   {m:17s} scatter {fmt(b['scatter']):>30s}  z-std {fmt(b['z_std']):>22s}  "
                      f"/CRLB {fmt(b['scatter_over_crlb'])}")
        results["crlb"] = {str(k): v for k, v in bound.items()}

    out = write_json(args.dataset, names, cv, results)
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
