"""Do NUTS posteriors agree with the survey catalog? Same likelihood, same calibration.

    python bench/posterior_vs_catalog.py [--n-stars 5] [--num-samples 1000]

For apogee100 (protocol fold 0: the SVR grid of bench/compare.py, 5-fold CV) and
for generated APOGEE dwarfs (the dwarfsim protocol, every 4th protocol pixel,
600 training stars, C ∈ {10, 100}, γ ∈ {0.01, 0.1}, 3-fold CV) it trains and
calibrates an emulator, writes the catalog of the test stars with `fit_map`'s
defaults, samples `--n-stars` of them with NUTS (4 chains, defaults again) and
compares each posterior with its catalog row (`compare_to_laplace(idata, row)`):
width = σ_post / σ_catalog, shift = (mean − MAP) / σ_catalog, laplace_ok. The stars
are picked among those with flag 0 and `laplace_ok` (the catalog's own importance check
finds MAP ± σ a fair summary); `--n-flagged` more among flag-0 stars without `laplace_ok`,
to show how often NUTS agrees with that check.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "shared" / "bench"))
import datasets as D  # noqa: E402  the benchmark protocol


def emulator_and_test(name):
    from slambayes import Emulator, Spectra, calibrate

    if name == "apogee100":
        s = D.load("apogee100", 0)
        pix, kw = slice(None), dict(C=(1.0, 10.0, 100.0), gamma=(0.01, 0.1, 1.0), cv=5)
        n_train = None
    else:
        s = D.load("dwarfsim", "main")
        pix, kw = slice(None, None, 4), dict(C=(10.0, 100.0), gamma=(0.01, 0.1), cv=3)
        n_train = 600
    tr, te = s["train"], s["test"]
    train = Spectra(s["wave"][pix], tr["flux"][:n_train, pix], tr["ivar"][:n_train, pix],
                    labels=tr["labels"][:n_train], label_names=s["label_names"])
    t0 = time.perf_counter()
    em = calibrate(Emulator(n_jobs=2, block_size=64, progress=False, **kw).fit(train), train)
    print(f"{name}: trained and calibrated in {time.perf_counter() - t0:.0f} s; {em.calibration_.stats}")
    test = Spectra(s["wave"][pix], te["flux"][:, pix], te["ivar"][:, pix])
    snr = te.get("snr", np.full(len(te["labels"]), np.nan))
    return em, test, te["labels"], snr


def summary_shift(row, names):
    """(posterior mean − MAP) / σ of the catalog's own summary, per label."""
    return np.array([(row[n + "_mean"] - row[n]) / row[n + "_err"] for n in names])


def summary_width(row, names):
    return np.array([row[n + "_std"] / row[n + "_err"] for n in names])


def main():
    from slambayes import fit_map, sample
    from slambayes.diagnostics import compare_to_laplace

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-stars", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--n-flagged", type=int, default=3)
    ap.add_argument("--datasets", default="apogee100,dwarfsim")
    args = ap.parse_args()
    for name in args.datasets.split(","):
        em, test, truth, snr = emulator_and_test(name)
        cat = fit_map(em, test, progress=False, n_jobs=2)
        lo, hi = em.label_min_, em.label_max_
        central = np.all((truth - lo) / (hi - lo) > 0.1, 1) & np.all((truth - lo) / (hi - lo) < 0.9, 1)
        flag, ok = np.asarray(cat["flag"]), np.asarray(cat["laplace_ok"])
        print(f"{name}: laplace_ok False (the catalog's check: sample these) on {np.mean(~ok):.0%} of {len(flag)} "
              f"test stars, errors widened on {np.mean(cat['widened']):.0%}")
        for label, which, n_pick in (("laplace_ok", (flag == 0) & ok, args.n_stars),
                                     ("not laplace_ok", (flag == 0) & ~ok, args.n_flagged)):
            pick = np.flatnonzero(which & central & ((snr >= 50) | np.isnan(snr)))
            pick = pick[np.linspace(0, len(pick) - 1, min(n_pick, len(pick))).astype(int)]
            n_ok = 0
            for i in pick:
                t0 = time.perf_counter()
                idata = sample(em, test[int(i):int(i) + 1], num_warmup=1000, num_samples=args.num_samples,
                               num_chains=4, seed=int(i), progress=False)
                t = compare_to_laplace(idata, cat[int(i)])
                n_ok += bool(t.meta["laplace_ok"])
                print(f"  {name} star {i} (S/N {snr[i]:.0f}, {label}): width {np.round(np.asarray(t['width']), 3)}, "
                      f"shift {np.round(np.asarray(t['shift']), 3)}, r_hat ≤ {np.max(t['r_hat']):.3f}, "
                      f"ESS ≥ {np.min(t['ess_bulk']):.0f}, divergences {t.meta['divergences']}, "
                      f"KL {t.meta['kl']:.3f}, laplace_ok {t.meta['laplace_ok']}; catalog's summary: shift "
                      f"{np.round(summary_shift(cat[int(i)], em.label_names_), 2)}, width "
                      f"{np.round(summary_width(cat[int(i)], em.label_names_), 2)} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
            print(f"{name}, {label}: laplace_ok on {n_ok} of {len(pick)} stars (noise model {cat.meta['NOISETAG']})")


if __name__ == "__main__":
    main()
