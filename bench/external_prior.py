"""External information on real spectra: does a Gaussian prior combine with the catalog as Bayes says?

    python bench/external_prior.py --dataset apogee100 [--folds 5] [--nuts-stars 20]
    python bench/external_prior.py --dataset lamost131

Protocol splits (../shared/bench/datasets.py), `fit_map` defaults, the emulator trained and
calibrated on each fold's training stars (cached in bench/.cache/). For every test star an
"external measurement" m = truth + N(0, σ_ext) is drawn and N(m, σ_ext) given as the prior, in
three settings: (a) σ_ext = the star's catalog σ on every label; (b) 0.5 × that; (c) log g only,
at 0.1 dex (a parallax- or seismology-based log g). Per setting and label it prints the z-score
std and 68 % coverage of the posterior against the truth, for `fit_map(prior=)` (every test
star) and for NUTS (4 × 1000 draws, the first `--nuts-stars` flag-0 stars of fold 0), and the
fraction of laplace_ok stars whose posterior σ lies within 10 % of the Bayes product of the
catalog's Gaussian (full covariance) and the prior (and of the one-label formula
(σ_cat⁻² + σ_ext⁻²)^−½, which ignores the correlations between labels); and the same z-score
statistics of the catalog without a prior.
Targets: z-std in [0.8, 1.25], coverage in [60, 76] %. Writes bench/external_prior_<dataset>.json.

The `fit_map(prior=)` rows for all stars come from one `fit_map` call per star and setting.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "shared" / "bench"))
import datasets as D  # noqa: E402  the benchmark protocol

C_GRID, GAMMA_GRID, EPSILON = (1.0, 10.0, 100.0), (0.01, 0.1, 1.0), 0.05
SETTINGS = ("a: sigma_ext = catalog sigma", "b: sigma_ext = 0.5 catalog sigma", "c: logg only, 0.1 dex")


def emulator_for(name, split, n_jobs):
    from slambayes import Emulator, Spectra, calibrate

    path = HERE / ".cache" / f"external_prior_{name}_{split}.npz"
    if path.exists():
        return Emulator.load(path)
    d = D.load(name, split)
    tr = d["train"]
    train = Spectra(d["wave"], tr["flux"], tr["ivar"], labels=tr["labels"], label_names=d["label_names"])
    em = Emulator(C=C_GRID, gamma=GAMMA_GRID, epsilon=EPSILON, cv=5, n_jobs=n_jobs, progress=False).fit(train)
    calibrate(em, train, progress=False)
    path.parent.mkdir(exist_ok=True)
    em.save(path)
    return em


def external(setting, cat_err, names, rng, truth):
    """(σ_ext (n, k) with NaN where no measurement, m (n, k))."""
    s = np.full_like(cat_err, np.nan)
    if setting == 0:
        s[:] = cat_err
    elif setting == 1:
        s[:] = 0.5 * cat_err
    else:
        s[:, names.index("logg")] = 0.1
    m = truth + np.nan_to_num(s) * rng.standard_normal(truth.shape)
    return s, m


def prior_for(names, s, m):
    from slambayes.priors import Gaussian

    use = [j for j in range(len(names)) if np.isfinite(s[j])]
    return Gaussian([names[j] for j in use], m[use], s[use])


def zstats(est, err, truth):
    z = (est - truth) / err
    ok = np.all(np.isfinite(z), 1)
    return dict(z_std=np.std(z[ok], 0).tolist(), coverage68=np.mean(np.abs(z[ok]) < 1, 0).tolist(), n=int(ok.sum()))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="apogee100", choices=("apogee100", "lamost131"))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--nuts-stars", type=int, default=20)
    p.add_argument("--n-jobs", type=int, default=2)
    a = p.parse_args()
    warnings.simplefilter("ignore")
    from slambayes import Spectra, fit_map, sample

    results = {s: dict(fit_map=dict(est=[], err=[], truth=[], bayes_ok=[], single_ok=[]),
                       nuts=dict(est=[], err=[], truth=[])) for s in range(3)}
    results["none"] = dict(fit_map=dict(est=[], err=[], truth=[]))
    t_all = time.perf_counter()
    for fold_index, fold in enumerate(D.list_splits(a.dataset)[:a.folds]):
        t0 = time.perf_counter()
        em = emulator_for(a.dataset, fold, a.n_jobs)
        d = D.load(a.dataset, fold)
        names = list(em.label_names_)
        te = d["test"]
        test = Spectra(d["wave"], te["flux"], te["ivar"])
        truth = np.asarray(te["labels"], float)
        cat = fit_map(em, test, progress=False, n_jobs=a.n_jobs)
        cat_val = np.column_stack([cat[n] for n in names])
        cat_err = np.column_stack([cat[n + "_err"] for n in names])
        good = np.asarray(cat["flag"]) == 0
        results["none"]["fit_map"]["est"] += list(cat_val)
        results["none"]["fit_map"]["err"] += list(cat_err)
        results["none"]["fit_map"]["truth"] += list(truth)
        lap = np.asarray(cat["laplace_ok"])
        print(f"fold {fold}: {test.n_star} test stars, trained/loaded and fitted in {time.perf_counter() - t0:.0f} s",
              flush=True)
        nuts_idx = np.flatnonzero(good)[:a.nuts_stars] if fold_index == 0 else []
        for setting in range(3):
            rng = np.random.default_rng([setting, fold_index, 2026])
            s_ext, m_ext = external(setting, cat_err, names, rng, truth)
            r = results[setting]["fit_map"]
            for i in range(test.n_star):
                row = fit_map(em, test[i:i + 1], prior=prior_for(names, s_ext[i], m_ext[i]), progress=False)[0]
                est = np.array([row[n] for n in names])
                err = np.array([row[n + "_err"] for n in names])
                r["est"].append(est), r["err"].append(err), r["truth"].append(truth[i])
                if lap[i] and good[i]:
                    # Bayes: the catalog's Gaussian (its full covariance) times the prior, each label's
                    # marginal σ; and the one-label formula of the issue, (σ_cat⁻² + σ_ext⁻²)^−½
                    prec = np.linalg.inv(np.asarray(cat["cov"][i])[:len(names), :len(names)])
                    prec += np.diag(np.where(np.isfinite(s_ext[i]), np.nan_to_num(s_ext[i], nan=1.0) ** -2, 0.0))
                    expect = np.sqrt(np.diag(np.linalg.inv(prec)))
                    single = (cat_err[i] ** -2 + np.where(np.isfinite(s_ext[i]), np.nan_to_num(s_ext[i], nan=1.0) ** -2,
                                                           0.0)) ** -0.5
                    r["bayes_ok"].append(np.abs(err / expect - 1) < 0.1)
                    r["single_ok"].append(np.abs(err / single - 1) < 0.1)
            for i in nuts_idx:
                idata = sample(em, test[i:i + 1], prior=prior_for(names, s_ext[i], m_ext[i]), num_warmup=1000,
                               num_samples=1000, num_chains=4, seed=int(i), progress=False)
                rn = results[setting]["nuts"]
                rn["est"].append([float(idata.posterior[n].mean()) for n in names])
                rn["err"].append([float(idata.posterior[n].std()) for n in names])
                rn["truth"].append(truth[i])
            print(f"  setting {SETTINGS[setting]}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = dict(dataset=a.dataset, folds=a.folds, nuts_stars=a.nuts_stars, settings=list(SETTINGS))
    print(f"\n{a.dataset}: posterior z-score std / 68 % coverage against the truth ({time.perf_counter() - t_all:.0f} s)")
    for setting in range(3):
        out[SETTINGS[setting]] = {}
        for method in ("fit_map", "nuts"):
            r = results[setting][method]
            if not r["est"]:
                continue
            st = zstats(np.array(r["est"]), np.array(r["err"]), np.array(r["truth"]))
            if method == "fit_map":
                st["sigma_within_10pc_of_bayes"] = np.mean(np.array(r["bayes_ok"]), 0).tolist()
                st["sigma_within_10pc_of_one_label_formula"] = np.mean(np.array(r["single_ok"]), 0).tolist()
            out[SETTINGS[setting]][method] = st
            print(f"{SETTINGS[setting]:36s} {method:8s} n={st['n']:4d} z-std "
                  + " / ".join(f"{v:.2f}" for v in st["z_std"]) + "   68 %: "
                  + " / ".join(f"{100 * v:.1f}" for v in st["coverage68"])
                  + ("" if method != "fit_map" else "   σ within 10 % of Bayes (laplace_ok): "
                     + " / ".join(f"{100 * v:.0f} %" for v in st["sigma_within_10pc_of_bayes"])
                     + " (one-label formula: " + " / ".join(
                         f"{100 * v:.0f} %" for v in st["sigma_within_10pc_of_one_label_formula"]) + ")"))
    st = zstats(*(np.array(results["none"]["fit_map"][key]) for key in ("est", "err", "truth")))
    out["no prior"] = st
    print(f"{'no prior (the catalog)':36s} fit_map  n={st['n']:4d} z-std " + " / ".join(f"{v:.2f}" for v in st["z_std"])
          + "   68 %: " + " / ".join(f"{100 * v:.1f}" for v in st["coverage68"]))
    print("labels:", ", ".join(names))
    (HERE / f"external_prior_{a.dataset}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
