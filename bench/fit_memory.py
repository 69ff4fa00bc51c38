"""Peak memory of `slambayes fit` against the number of spectra (benchmark, not a test).

Trains a demo model, writes 1,000 and 20,000 demo spectra (S/N 50) to npz files, and runs
`slambayes fit` on each in a fresh process, sampling the resident memory of the run's
process tree (main process and workers) every 0.1 s. The input is read a chunk at a time,
so the two peaks should differ by far less than the input's size; the baseline is the
same fit of the 20,000 spectra loaded into memory first (`Spectra.from_npz`), which is what
`slambayes fit` did before.

    python bench/fit_memory.py [--n-small 1000] [--n-large 20000] [--n-jobs 2] [--no-baseline]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from slambayes import Emulator
from slambayes.datasets import make_demo

MiB = 2.0**20
IN_MEMORY = """
import sys
from slambayes import Emulator, Spectra, fit_map
fit_map(Emulator.load(sys.argv[1]), Spectra.from_npz(sys.argv[2]), output=sys.argv[3], n_jobs=int(sys.argv[4]),
        progress=False)
"""


def peak_rss(argv):
    """(peak resident MiB of the main process, peak of the whole tree, wall s) of a command."""
    t0 = time.perf_counter()
    proc = psutil.Popen(argv, stdout=subprocess.DEVNULL)
    main = tree = 0
    while proc.poll() is None:
        try:
            procs = [proc] + proc.children(recursive=True)
            rss = [p.memory_info().rss for p in procs]
        except psutil.Error:            # a worker ended between the listing and the read
            continue
        main, tree = max(main, rss[0]), max(tree, sum(rss))
        time.sleep(0.1)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed with exit code {proc.returncode}")
    return main / MiB, tree / MiB, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-small", type=int, default=1000)
    ap.add_argument("--n-large", type=int, default=20000)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true", help="skip the in-memory run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        em = Emulator(C=10.0, gamma=0.1, cv=3, n_jobs=args.n_jobs, progress=False).fit(make_demo(300, seed=1))
        em.save(tmp / "model.npz")
        files = {}
        for n in (args.n_small, args.n_large):
            files[n] = tmp / f"spectra-{n}.npz"
            make_demo(n, snr=50.0, seed=2, wave=em.wave_).to_npz(files[n])
        size = files[args.n_large].stat().st_size / MiB
        print(f"model: {em.wave_.size} px × {em.X_train_.shape[0]} training stars; "
              f"input {args.n_large} spectra = {size:.0f} MiB on disk")
        runs = [(f"slambayes fit, {n} spectra",
                 [sys.executable, "-m", "slambayes.cli", "-q", "fit", "--model", tmp / "model.npz",
                  "--spectra", files[n], "--out", tmp / f"cat-{n}.fits", "--n-jobs", str(args.n_jobs)])
                for n in (args.n_small, args.n_large)]
        if not args.no_baseline:
            runs.append((f"in memory first, {args.n_large} spectra",
                         [sys.executable, "-c", IN_MEMORY, tmp / "model.npz", files[args.n_large],
                          tmp / "cat-mem.fits", str(args.n_jobs)]))
        print(f"{'run':<36} {'main MiB':>9} {'all MiB':>9} {'wall s':>8}", flush=True)
        rows = []
        for name, argv in runs:
            rows.append((name,) + peak_rss(argv))
            print(f"{name:<36} {rows[-1][1]:9.0f} {rows[-1][2]:9.0f} {rows[-1][3]:8.1f}", flush=True)
    d_main, d_tree = rows[1][1] - rows[0][1], rows[1][2] - rows[0][2]
    print(f"\n{args.n_large} vs {args.n_small} spectra: peak RSS +{d_main:.0f} MiB (main process), "
          f"+{d_tree:.0f} MiB (all processes); target < 100 MiB")
    if not args.no_baseline:
        print(f"in-memory baseline: +{rows[2][1] - rows[0][1]:.0f} MiB (main process) over the "
              f"{args.n_small}-spectra streamed run")


if __name__ == "__main__":
    main()
