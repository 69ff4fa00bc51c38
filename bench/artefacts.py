"""Real spectra's artefacts on generated APOGEE dwarfs: what the default fit_map makes of them.

    python bench/artefacts.py [--n-train 600] [--stride 4] [--n-test 100]

Spectra come from the dwarfsim generating model (../shared/bench/datasets.py,
`dwarf_spectrum`) with a correlated label distribution (`dwarf_population`
below: log g follows the main sequence in Teff, [Mg/Fe] falls with [Fe/H]) and
log-uniform S/N 15–300. An emulator is trained (3-fold CV, C {10, 100} × γ
{0.01, 0.1}) and calibrated on such stars, then the defaults of `fit_map` fit:

- clean test stars, and the same stars with 1 % of the pixels spiked
  (`slambayes.artefacts.add_spikes`, ivar left as is): scatter and z-score std
  per label, and the scatter ratio spiked / clean (target ≤ 1.1, z-std ≤ 1.3);
- stars outside the training distribution (off the correlations, or up to 5 %
  beyond the range): fraction flagged (target ≥ 95 %), against in-distribution
  stars falsely flagged (target ≤ 2 %);
- gross cases (flux × 100, × 1e30, one pixel at 50): their flags.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dwarf_cases import NAMES, dwarf_population, observe, off_population  # noqa: E402
from slambayes import Emulator, calibrate, fit_map  # noqa: E402
from slambayes.artefacts import add_spikes, scale_flux  # noqa: E402
from slambayes.validation import calibration, labels_from_catalog  # noqa: E402

def trained(n_train, stride, seed=0):
    rng = np.random.default_rng(seed)
    train, _ = observe(dwarf_population(rng, n_train), stride, rng, snr=100.0)
    em = Emulator(C=(10.0, 100.0), gamma=(0.01, 0.1), cv=3, n_jobs=2, block_size=64, progress=False).fit(train)
    return calibrate(em, train, progress=False), train


def summary(cat, truth, names=NAMES):
    est, err = labels_from_catalog(cat, names)
    ok = np.all(np.isfinite(est), 1)
    c = calibration(est[ok], err[ok], truth[ok])
    return np.std(est[ok] - truth[ok], 0), c["z_std"], c["coverage68"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--stride", type=int, default=4, help="every n-th dwarfsim pixel")
    ap.add_argument("--n-test", type=int, default=200)
    args = ap.parse_args(argv)
    em, train = trained(args.n_train, args.stride)
    rng = np.random.default_rng(1)
    test, snr = observe(dwarf_population(rng, args.n_test), args.stride, rng)
    clean = fit_map(em, test, progress=False)
    spiked, _ = add_spikes(test, 0.01, seed=2)
    spk = fit_map(em, spiked, progress=False)
    off_lab = off_population(rng, args.n_test, train.labels)
    off, _ = observe(off_lab, args.stride, rng)
    ood = fit_map(em, off, progress=False)
    print(f"dwarfs: {args.n_train} training stars × {em.wave_.size} px, {args.n_test} test stars, S/N 15–300")
    for name, cat in (("clean", clean), ("spikes 1%", spk)):
        s, z, cov = summary(cat, test.labels)
        print(f"  {name:10s} scatter {np.round(s, 3)}  z-std {np.round(z, 2)}  68% cov {np.round(cov, 2)}  "
              f"flagged {np.mean(cat['flag'] != 0):.1%}  median n_clipped {np.median(cat['n_clipped']):.0f}")
    print(f"  scatter ratio spiked / clean: {np.round(summary(spk, test.labels)[0] / summary(clean, test.labels)[0], 3)}")
    half = args.n_test // 2
    f = ood["flag"] != 0
    print(f"  outside the training distribution: flagged {f.mean():.1%} (off the correlations "
          f"{f[:half].mean():.1%}, beyond the range {f[half:].mean():.1%}); in-distribution falsely "
          f"flagged {np.mean(clean['flag'] != 0):.1%}")
    one = test[:1]
    big = one.flux.copy()
    big[0, big.shape[1] // 2] = 50.0
    for name, sp in (("flux × 100", scale_flux(one, 100.0)), ("flux × 1e30", scale_flux(one, 1e30)),
                     ("one pixel at 50", one.replace(flux=big))):
        row = fit_map(em, sp, progress=False)[0]
        print(f"  {name:16s} flag {row['flag']:4d}  teff {row['teff']:.0f} (true {one.labels[0, 0]:.0f})  "
              f"n_clipped {row['n_clipped']}")


if __name__ == "__main__":
    main()
