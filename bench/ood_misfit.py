"""Can the fit tell a star outside the training distribution? (benchmark, not a test)

    python bench/ood_misfit.py [--n-test 400]

`bench/artefacts.py`'s emulator (600 generated dwarfs with correlated labels,
S/N 100, calibrated) fits in-distribution stars and stars off the training
distribution (`dwarf_cases.off_population`), log-uniform S/N 15–300, with the
defaults. Per S/N range it prints the flag rates, the share of stars whose
error bars miss the truth (max |z| > 3), and the percentiles of the misfit
feature ln(χ²_ν / E[χ²_ν]) that the poor-fit flag tests (`slambayes.fit_checks`),
so one can see where any χ²-type check can separate the two populations.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from artefacts import trained  # noqa: E402
from dwarf_cases import NAMES, dwarf_population, observe, off_population  # noqa: E402
from slambayes import fit_map  # noqa: E402
from slambayes.calibration import misfit_feature  # noqa: E402
from slambayes.validation import labels_from_catalog  # noqa: E402

SNR_BANDS = ((15, 30), (30, 60), (60, 120), (120, 301))


def report(name, cat, truth, snr, rho):
    est, err = labels_from_catalog(cat, NAMES)
    zmax = np.max(np.abs(est - truth) / err, axis=1)
    flag = np.asarray(cat["flag"])
    misfit = misfit_feature(np.column_stack([cat["rchi2"], cat["model_share"]]), rho)
    bits, counts = np.unique(flag[flag != 0], return_counts=True)
    print(f"{name}: flagged {np.mean(flag != 0):.1%} (bits {dict(zip(bits.tolist(), counts.tolist()))}), "
          f"max |z| > 3 {np.mean(zmax > 3):.1%}, unflagged with max |z| > 3 {np.mean((zmax > 3) & (flag == 0)):.1%}")
    for lo, hi in SNR_BANDS:
        s = (snr >= lo) & (snr < hi)
        p = np.percentile(misfit[s], [50, 90, 99])
        print(f"  S/N {lo:3d}-{hi:3d}: {s.sum():3d} stars, flagged {np.mean(flag[s] != 0):5.1%}, "
              f"max |z| > 3 {np.mean(zmax[s] > 3):5.1%}, misfit median / p90 / p99 {p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--stride", type=int, default=4, help="every n-th dwarfsim pixel")
    args = ap.parse_args(argv)
    em, train = trained(args.n_train, args.stride)
    rng = np.random.default_rng(1)
    test, snr = observe(dwarf_population(rng, args.n_test), args.stride, rng)
    off_labels = off_population(rng, args.n_test, train.labels)
    off, snr_off = observe(off_labels, args.stride, rng)
    print(f"poor-fit limit on the misfit: {em.checks_.misfit:.3f} (out-of-fold 99th percentile + margin)")
    report("in distribution", fit_map(em, test, progress=False), test.labels, snr, em.checks_.rho)
    report("out of distribution", fit_map(em, off, progress=False), off_labels, snr_off, em.checks_.rho)


if __name__ == "__main__":
    main()
