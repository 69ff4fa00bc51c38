"""Run one peer method on one train/test split, inside the peers' venv.

    bench/.venv-peers/bin/python bench/peers/run_peer.py METHOD IN.npz OUT.npz [--n-jobs 2] [--cv 5]

METHOD is "astroslam" (PyPI astroslam, `slam.Slam`) or "cannon" (PyPI thecannon,
Anna Ho's TheCannon, quadratic model with its defaults). IN.npz holds
train_flux, train_ivar, train_labels, test_flux, test_ivar, wave, and for
astroslam C, gamma, epsilon. OUT.npz gets pred, err (physical units, formal
1σ), train_s, fit_s (wall seconds).

Compatibility shims for running these packages on Python 3.11 are applied here,
at import time; the peers' code is used as installed, never copied.
"""
import argparse
import contextlib
import io
import os
import runpy
import sys
import time
from pathlib import Path

import numpy as np


def _shims():
    # collections.Set/Mapping → collections.abc: the one shim file, also put on PYTHONPATH by
    # compare.py so that joblib's worker processes get it at start-up
    runpy.run_path(str(Path(__file__).resolve().parent / "shim" / "sitecustomize.py"))
    # numpy ≥ 1.24 removed np.int/np.float/np.bool; the venv pins 1.23, this keeps them if not
    for name, typ in (("int", int), ("float", float), ("bool", bool), ("object", object)):
        if name not in np.__dict__:
            setattr(np, name, typ)


def run_astroslam(d, n_jobs, cv):
    _shims()
    from slam import Slam

    k = Slam(d["wave"], d["train_flux"], d["train_ivar"], d["train_labels"])
    grid = dict(C=list(d["C"]), gamma=list(d["gamma"]), epsilon=[float(d["epsilon"])])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        k.train_pixels(profile=None, targets=None, temp_dir=None, sample_weight_scheme="bool",
                       model="svr", method="grid", param_grid=grid, cv=cv,
                       scoring="neg_mean_squared_error", n_jobs=n_jobs, verbose=0)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        x0 = k.predict_labels_quick(d["test_flux"], d["test_ivar"], n_jobs=1)
        res = k.predict_labels_multi(x0, d["test_flux"], d["test_ivar"], n_jobs=n_jobs)
    fit_s = time.perf_counter() - t0
    pred = np.array([r["x"] for r in res])
    err = np.array([r["pstd"] for r in res])
    return pred, err, train_s, fit_s


def run_cannon(d, n_jobs, cv):
    from TheCannon import dataset, model

    n_tr, n_te = len(d["train_flux"]), len(d["test_flux"])
    ds = dataset.Dataset(d["wave"], np.arange(n_tr).astype(str), d["train_flux"].copy(), d["train_ivar"].copy(),
                         d["train_labels"].copy(), np.arange(n_te).astype(str), d["test_flux"].copy(),
                         d["test_ivar"].copy())
    ds.set_label_names([f"l{i}" for i in range(d["train_labels"].shape[1])])
    md = model.CannonModel(2, useErrors=False)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        md.train(ds)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        errs, _ = md.infer_labels(ds)
    fit_s = time.perf_counter() - t0
    # TheCannon fits labels scaled by model.scales around model.pivots and reports the
    # errors of the scaled labels: bring them to physical units like the labels
    return np.asarray(ds.test_label_vals, float), np.asarray(errs) * md.scales, train_s, fit_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("method", choices=("astroslam", "cannon"))
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--cv", type=int, default=5)
    a = ap.parse_args()
    d = dict(np.load(a.inp))
    fn = run_astroslam if a.method == "astroslam" else run_cannon
    pred, err, train_s, fit_s = fn(d, a.n_jobs, a.cv)
    tmp = a.out + ".tmp.npz"
    np.savez(tmp, pred=pred, err=err, train_s=train_s, fit_s=fit_s)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    sys.exit(main())
