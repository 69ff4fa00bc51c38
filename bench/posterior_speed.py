"""Posterior sampling speed on a full-size APOGEE model (benchmark, not a test).

One generated dwarf (S/N 100) on the 7214-pixel emulator of
`bench/map_throughput.py`: wall time of NumPyro NUTS, 4 chains × 1000 draws
(1000 warm-up), with chain_method "sequential" and "vectorized"; then emcee
run long enough to reach the same minimum bulk ESS, and the ratio of the two.
Compilation is reported separately (the jax persistent cache removes it from
later runs). The emulator runs with a low-rank evaluation (`--compression`,
`Emulator.compression`); one NUTS run with the exact expansion (the default,
itself sampled on the exact coefficient basis) checks that the posterior means
and widths agree.

    python bench/posterior_speed.py [--model PATH]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from map_throughput import NAMES, draw, model_7214  # noqa: E402  same generated spectra and model

import arviz as az  # noqa: E402

from slambayes import Spectra  # noqa: E402
from slambayes.posterior import Posterior  # noqa: E402
from slambayes.sampling import sample  # noqa: E402
import datasets as D  # noqa: E402  (put on sys.path by map_throughput)


def min_ess(idata, names):
    return float(min(az.ess(idata, var_names=names)[n] for n in names))


def nuts(post, star, method, map_row):
    """NUTS 4 chains × 1000 draws (+1000 warm-up) → (InferenceData, wall seconds)."""
    t0 = time.perf_counter()
    idata = sample(post, star, num_warmup=1000, num_samples=1000, num_chains=4, seed=0, chain_method=method,
                   map_row=map_row, progress=False)
    return idata, time.perf_counter() - t0


def compare_with_exact(em, star, names, idata, method):
    """NUTS once more with the exact emulator: posterior means and widths against `idata`'s."""
    import copy

    exact = copy.copy(em)
    exact.compression = 0.0
    post = Posterior(exact)
    ref, wall = nuts(post, star, method, post.find_map(star))
    a, b = idata.posterior, ref.posterior
    shift = max(float(abs(a[n].mean() - b[n].mean()) / b[n].std()) for n in names)
    width = max(float(abs(a[n].std() / b[n].std() - 1)) for n in names)
    print(f"exact emulator (compression 0), {method}: {wall:.1f} s (with compilation); compressed posterior "
          f"means within {shift:.3f} σ, widths within {100 * width:.1f} % of the exact ones")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model file (default: bench/map_throughput.py's cached one); "
                                    "trained (1000 stars, C=10, γ=0.1) and written there if missing")
    ap.add_argument("--compression", type=float, default=0.002,
                    help="low-rank evaluation of the emulator (0: exact, Emulator's default)")
    ap.add_argument("--walkers", type=int, default=32)
    ap.add_argument("--chain-methods", default="sequential,vectorized")
    ap.add_argument("--repeats", type=int, default=2, help="NUTS runs per chain method (the first compiles)")
    ap.add_argument("--skip-emcee", action="store_true")
    ap.add_argument("--baseline", action="store_true",
                    help="also time NUTS on the likelihood evaluated pixel by pixel (Posterior(project=False))")
    ap.add_argument("--nuts-reference", metavar="ESS,SECONDS",
                    help="skip the NUTS runs and compare emcee with this earlier NUTS result")
    args = ap.parse_args()
    names = NAMES
    wave = np.load(D.DATA_DIR / "apogee_dwarf_emulator" / "apogee_wavelength.npz")["wavelength"]
    em, seconds = model_7214(args.model)
    if seconds:
        print(f"trained 7214-px model in {seconds:.0f} s")
    em.compression = args.compression
    t0 = time.perf_counter()
    print(f"compression {em.compression}: coefficient ranks {em.expansion.ranks} "
          f"(built in {time.perf_counter() - t0:.1f} s)")
    f, iv, lab = draw(np.random.default_rng(7), 1, 100.0)
    star = Spectra(wave, f, iv)
    post = Posterior(em)
    t0 = time.perf_counter()
    m = post.find_map(star)
    print(f"star: truth {np.round(lab[0], 3)}, MAP {np.round(m['values'], 3)} ({time.perf_counter() - t0:.2f} s)")
    rows = []
    if args.nuts_reference:
        ess, wall = (float(v) for v in args.nuts_reference.split(","))
        rows.append(("reference", "second", wall, ess))
    attempts = ["first (with compilation)", "second", "third"][:args.repeats]
    for method in () if args.nuts_reference else args.chain_methods.split(","):
        for attempt in attempts:
            idata, wall = nuts(post, star, method, m)
            ess = min_ess(idata, names)
            div = int(idata.sample_stats["diverging"].sum())
            print(f"NUTS 4×1000 {method:10s} {attempt:25s}: {wall:6.1f} s, min bulk ESS {ess:.0f}, "
                  f"divergences {div}, mean leapfrog steps {float(idata.sample_stats['n_steps'].mean()):.1f}")
            rows.append((method, attempt, wall, ess))
    if not args.nuts_reference and em.compression > 0:
        compare_with_exact(em, star, names, idata, method)
    if args.baseline and not args.nuts_reference:
        ref, wall = nuts(Posterior(em, project=False), star, method, m)
        best = min(r[2] for r in rows if r[0] == method)
        print(f"baseline, likelihood pixel by pixel, {method}: {wall:.1f} s (with compilation), min bulk ESS "
              f"{min_ess(ref, names):.0f} -> the projected density is {wall / best:.1f}x faster")
    if args.skip_emcee:
        return
    nuts_wall, nuts_ess = min((r[2], r[3]) for r in rows if r[1] == rows[-1][1])
    pilot_steps = 1000
    t0 = time.perf_counter()
    pilot = sample(post, star, sampler="emcee", num_warmup=500, num_samples=pilot_steps,
                   num_walkers=args.walkers, seed=0, map_row=m, progress=False)
    t_pilot = time.perf_counter() - t0
    ess_per_step = min_ess(pilot, names) / pilot_steps
    steps = int(np.ceil(nuts_ess / ess_per_step))
    t0 = time.perf_counter()
    run = sample(post, star, sampler="emcee", num_warmup=500, num_samples=steps,
                 num_walkers=args.walkers, seed=1, map_row=m, progress=False)
    emcee_wall = time.perf_counter() - t0
    emcee_ess = min_ess(run, names)
    print(f"emcee pilot {args.walkers} walkers × 1500 steps: {t_pilot:.1f} s; ESS/step {ess_per_step:.3f}")
    print(f"emcee to ESS {nuts_ess:.0f}: {steps} steps + 500 warm-up → {emcee_wall:.1f} s, "
          f"min bulk ESS reached {emcee_ess:.0f}")
    print(f"ratio emcee / NUTS wall time at equal ESS: {emcee_wall / nuts_wall:.2f}  "
          f"(ESS per second: NUTS {nuts_ess / nuts_wall:.1f}, emcee {emcee_ess / emcee_wall:.1f})")


if __name__ == "__main__":
    main()
