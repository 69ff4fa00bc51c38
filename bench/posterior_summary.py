"""The catalog's posterior summaries (`slambayes.posterior_summary`): calibration, agreement with NUTS, p50 vs MAP.

    python bench/posterior_summary.py [--parts sbc,coverage,nuts] [--nuts-stars 10]

- sbc: simulation-based calibration of the catalog's percentiles on generated spectra,
  1000 stars at S/N 10–200 (log-uniform), labels uniform in the training box (the catalog's
  flat prior): the demo generator (`slambayes.datasets.make_demo`, an emulator trained on 500
  demo stars and calibrated out of fold) and the dwarfsim generator (the El-Badry et al.
  network of ../shared/data, the emulator of bench/posterior_vs_catalog.py: every 4th protocol
  pixel, 600 training stars, 3-fold CV, calibrated). Per label: the counts of truths below
  p05, p05–p16, …, above p95, their χ² p-value against 5/11/34/34/11/5 %, and the coverage of
  [p16, p84]. Target p > 0.01.
- coverage: apogee100 and lamost131, the 5 protocol splits, `fit_map` defaults (the emulator
  of bench/external_prior.py, cached there): coverage of the truth by [p16, p84] per label
  for all test stars and for those without laplace_ok; the CV scatter of p50 and of the MAP;
  also for the dwarfsim protocol's 800 test stars. Target 60–76 %; p50 no worse than the MAP.
- nuts: `--nuts-stars` flag-0 stars without laplace_ok from apogee100 (split 0) and as many
  from the dwarfsim test set: the catalog's p16 / p50 / p84 against 4 × 1000-draw NUTS, in
  NUTS posterior σ. Target within 0.1 σ.

Writes bench/posterior_summary.json.
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
sys.path.insert(0, str(HERE))
import datasets as D  # noqa: E402  the benchmark protocol

PCT = (5, 16, 50, 84, 95)
EXPECTED = np.diff(np.r_[0, PCT, 100]) / 100


def sbc_table(cat, truth, names):
    from scipy import stats

    out = {}
    for j, n in enumerate(names):
        edges = np.column_stack([np.asarray(cat[f"{n}_p{q:02d}"], float) for q in PCT])
        ok = np.all(np.isfinite(edges), 1)
        bins = np.sum(truth[ok, j, None] > edges[ok], 1)
        counts = np.bincount(bins, minlength=6)
        p = float(stats.chisquare(counts, EXPECTED * ok.sum()).pvalue)
        out[n] = dict(counts=counts.tolist(), p=p, coverage68=float(np.mean((bins >= 2) & (bins <= 3))))
        print(f"    {n:6s} bins {counts.tolist()}  chi2 p = {p:.3f}  [p16, p84] covers {100 * out[n]['coverage68']:.1f} %")
    return out


def methods(cat):
    m, c = np.unique(np.asarray(cat["posterior_method"]), return_counts=True)
    return {str(a): int(b) for a, b in zip(m, c)}


def sbc_demo(n_star, seed=3):
    from slambayes import Emulator, calibrate, fit_map
    from slambayes.datasets import make_demo
    from slambayes.preprocess import default_grid

    wave = default_grid(4800.0, 5300.0, 2.0)
    train = make_demo(500, snr=100.0, seed=11, wave=wave)
    em = calibrate(Emulator(C=(3.0, 30.0), gamma=(0.1, 0.3), cv=3, n_jobs=2, progress=False).fit(train), train,
                   progress=False)
    rng = np.random.default_rng(seed)
    snr = np.exp(rng.uniform(np.log(10), np.log(200), n_star))
    ranges = np.column_stack([em.label_min_, em.label_max_])
    test = make_demo(n_star, snr=snr, seed=seed, wave=wave, ranges=ranges)
    cat = fit_map(em, test, progress=False)
    print(f"  demo generator, {n_star} stars, S/N 10-200: methods {methods(cat)}")
    return dict(methods=methods(cat), labels=sbc_table(cat, test.labels, list(em.label_names_)))


def sbc_dwarfsim(n_star, seed=4):
    from posterior_vs_catalog import emulator_and_test
    from slambayes import Spectra, fit_map

    em, *_ = emulator_and_test("dwarfsim")
    dw = D.load("dwarfsim", "main")
    lo, hi = em.label_min_, em.label_max_
    rng = np.random.default_rng(seed)
    lab = rng.uniform(lo, hi, (n_star, 4))
    snr = np.exp(rng.uniform(np.log(10), np.log(200), n_star))
    clean = D.dwarf_spectrum(np.column_stack([lab, np.full(n_star, D.DWARF_VMACRO)]))[:, ::4]
    flux = clean + rng.standard_normal(clean.shape) / snr[:, None]
    test = Spectra(dw["wave"][::4], flux, np.repeat(snr[:, None] ** 2, clean.shape[1], 1))
    cat = fit_map(em, test, progress=False)
    print(f"  dwarfsim generator, {n_star} stars, S/N 10-200: methods {methods(cat)}")
    return dict(methods=methods(cat), labels=sbc_table(cat, lab, list(em.label_names_))), em


def coverage_rows(cat, truth, names):
    """Per label: [p16, p84] coverage of all rows and of those without laplace_ok; scatter of p50 and MAP."""
    ok = np.asarray(cat["laplace_ok"], bool)
    out = {}
    for j, n in enumerate(names):
        inside = (np.asarray(cat[f"{n}_p16"]) < truth[:, j]) & (truth[:, j] < np.asarray(cat[f"{n}_p84"]))
        out[n] = dict(coverage=float(inside.mean()), coverage_not_laplace_ok=float(inside[~ok].mean()) if (~ok).any() else None,
                      scatter_p50=float(np.std(np.asarray(cat[f"{n}_p50"]) - truth[:, j])),
                      scatter_map=float(np.std(np.asarray(cat[n]) - truth[:, j])))
    return out, float(np.mean(~ok))


def print_coverage(name, res, not_ok):
    print(f"  {name}: {100 * not_ok:.0f} % of the rows without laplace_ok")
    for n, r in res.items():
        extra = f"{100 * r['coverage_not_laplace_ok']:.1f}" if r["coverage_not_laplace_ok"] is not None else "-"
        print(f"    {n:6s} [p16, p84] covers {100 * r['coverage']:.1f} % (rows without laplace_ok: {extra} %); "
              f"scatter p50 {r['scatter_p50']:.4g}, MAP {r['scatter_map']:.4g}")


def coverage_real(name, n_jobs):
    from external_prior import emulator_for
    from slambayes import Spectra, fit_map

    cats, truths = [], []
    for split in D.list_splits(name):
        em = emulator_for(name, split, n_jobs)
        d = D.load(name, split)
        te = d["test"]
        cats.append(fit_map(em, Spectra(d["wave"], te["flux"], te["ivar"]), progress=False))
        truths.append(te["labels"])
    from astropy.table import vstack
    cat, truth = vstack(cats), np.vstack(truths)
    res, not_ok = coverage_rows(cat, truth, list(d["label_names"]))
    print_coverage(f"{name} ({len(cat)} test stars, 5 splits; methods {methods(cat)})", res, not_ok)
    return dict(rows=len(cat), not_laplace_ok=not_ok, methods=methods(cat), labels=res)


def nuts_agreement(em, test, cat, n_stars, tag, seed=0):
    from slambayes import sample

    names = list(em.label_names_)
    pick = [i for i in range(len(cat)) if cat["flag"][i] == 0 and not cat["laplace_ok"][i]][:n_stars]
    rows = []
    for i in pick:
        t0 = time.perf_counter()
        idata = sample(em, test[i:i + 1], num_warmup=500, num_samples=1000, num_chains=4, seed=seed + i, progress=False)
        d = {n: idata.posterior[n].values.ravel() for n in names}
        err = {n: [(float(cat[f"{n}_p{q:02d}"][i]) - float(np.percentile(d[n], q))) / float(np.std(d[n]))
                   for q in (16, 50, 84)] for n in names}
        worst = max(abs(v) for e in err.values() for v in e)
        rows.append(dict(star=int(i), method=str(cat["posterior_method"][i]), khat=float(cat["posterior_khat"][i]),
                         err=err, worst=worst))
        print(f"    {tag} star {i}: {cat['posterior_method'][i]} (k̂ {cat['posterior_khat'][i]:.2f}); largest "
              f"|catalog − NUTS| of p16/p50/p84 {worst:.3f} σ ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def main():
    from slambayes import Spectra, fit_map
    from posterior_vs_catalog import emulator_and_test

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="sbc,coverage,nuts")
    ap.add_argument("--n-sbc", type=int, default=1000)
    ap.add_argument("--nuts-stars", type=int, default=10)
    ap.add_argument("--n-jobs", type=int, default=2)
    args = ap.parse_args()
    parts = args.parts.split(",")
    out_path = HERE / "posterior_summary.json"
    out = json.loads(out_path.read_text()) if out_path.exists() else {}
    warnings.simplefilter("ignore")
    if "sbc" in parts:
        print("SBC of the catalog's percentiles")
        out["sbc_demo"] = sbc_demo(args.n_sbc)
        out["sbc_dwarfsim"], _ = sbc_dwarfsim(args.n_sbc)
    if "coverage" in parts:
        print("coverage of [p16, p84] and the scatter of p50 against the MAP")
        for name in ("apogee100", "lamost131"):
            out[f"coverage_{name}"] = coverage_real(name, args.n_jobs)
        em, test, truth, _ = emulator_and_test("dwarfsim")
        cat = fit_map(em, test, progress=False)
        res, not_ok = coverage_rows(cat, truth, list(em.label_names_))
        print_coverage(f"dwarfsim protocol ({len(cat)} test stars; methods {methods(cat)})", res, not_ok)
        out["coverage_dwarfsim"] = dict(rows=len(cat), not_laplace_ok=not_ok, methods=methods(cat), labels=res)
    if "nuts" in parts:
        print(f"catalog p16 / p50 / p84 against NUTS (4 x 1000 draws), stars without laplace_ok")
        rows = []
        for name in ("apogee100", "dwarfsim"):
            em, test, truth, _ = emulator_and_test(name)
            cat = fit_map(em, test, progress=False)
            rows += nuts_agreement(em, test, cat, args.nuts_stars, name)
        worst = np.array([r["worst"] for r in rows])
        print(f"  {len(rows)} stars: largest error per star median {np.median(worst):.3f} σ, max {worst.max():.3f} σ; "
              f"{np.mean(worst < 0.1) * 100:.0f} % within 0.1 σ")
        out["nuts"] = dict(stars=rows, median_worst=float(np.median(worst)), max_worst=float(worst.max()),
                           within_0p1=float(np.mean(worst < 0.1)))
    out_path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
