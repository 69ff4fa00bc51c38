"""A parallax prior on a calibrated model: do the posteriors stay calibrated, and does log g tighten?

    python bench/parallax_prior.py [--n-train 600] [--n-test 100] [--stride 4]

Generated APOGEE dwarfs (`bench/dwarf_cases.py`: the dwarfsim generating model, correlated
labels), an emulator trained (3-fold CV) and calibrated on 600 of them at S/N 100. Each of
`--n-test` test stars at S/N uniform in 20–50 gets a mass from the prior's own log-normal
(median 1 M☉, 0.3 in ln M), an apparent G magnitude uniform in 9–13, and the parallax that the
prior's physics (`slambayes.priors.parallax.predicted_parallax`) gives for its true labels,
observed with a 3 % error (plus 0.02 mas). NUTS (2 chains × 1000 draws after 500 warm-up) samples
each star's posterior under `Parallax(ϖ_obs, σ_ϖ, G)`, the mass marginalized. Prints, per label,
the z-score std and 68 % coverage of the posterior (mean, σ) against the truth, the same for the
catalog without a prior, and the median σ(posterior) / σ(catalog). Targets: z-std in [0.8, 1.25]
for every label, σ(log g) below the catalog's.
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
sys.path.insert(0, str(HERE))

from dwarf_cases import NAMES, dwarf_population, observe  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--stride", type=int, default=4)
    a = p.parse_args()
    warnings.simplefilter("ignore")
    from slambayes import Emulator, Posterior, Spectra, calibrate, fit_map, sample
    from slambayes.priors import Parallax
    from slambayes.priors.parallax import predicted_parallax

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    train, _ = observe(dwarf_population(rng, a.n_train), a.stride, rng, snr=100.0)
    em = Emulator(C=(10.0, 100.0), gamma=(0.01, 0.1), cv=3, n_jobs=2, block_size=64, progress=False).fit(train)
    calibrate(em, train, progress=False)
    print(f"trained and calibrated on {a.n_train} dwarfs in {time.perf_counter() - t0:.0f} s", flush=True)

    rng = np.random.default_rng(1)
    truth = dwarf_population(rng, a.n_test)
    snr = rng.uniform(20.0, 50.0, a.n_test)
    stars = [observe(truth[i:i + 1], a.stride, rng, snr=snr[i])[0] for i in range(a.n_test)]
    mass = np.exp(np.log(1.0) + 0.3 * rng.standard_normal(a.n_test))
    mag = rng.uniform(9.0, 13.0, a.n_test)
    plx_true = predicted_parallax(truth[:, 0], truth[:, 1], mass, mag)
    plx_err = 0.03 * plx_true + 0.02
    plx_obs = plx_true + plx_err * rng.standard_normal(a.n_test)
    test = Spectra(stars[0].wave, np.vstack([s.flux for s in stars]), np.vstack([s.ivar for s in stars]))
    cat = fit_map(em, test, progress=False)
    cat_est = np.column_stack([cat[n] for n in NAMES])
    cat_err = np.column_stack([cat[n + "_err"] for n in NAMES])
    post_mean, post_sd = np.full_like(cat_est, np.nan), np.full_like(cat_est, np.nan)
    t1 = time.perf_counter()
    for i in range(a.n_test):
        prior = Parallax(plx_obs[i], plx_err[i], mag[i])
        post = Posterior(em, prior)
        assert post.calibrated
        idata = sample(post, stars[i], num_warmup=500, num_samples=1000, num_chains=2, seed=i,
                       chain_method="vectorized", progress=False)
        post_mean[i] = [float(idata.posterior[n].mean()) for n in NAMES]
        post_sd[i] = [float(idata.posterior[n].std()) for n in NAMES]
        if (i + 1) % 10 == 0:
            print(f"  {i + 1} stars sampled ({time.perf_counter() - t1:.0f} s)", flush=True)

    def zs(est, err):
        z = (est - truth) / err
        return np.std(z, 0), np.mean(np.abs(z) < 1, 0)
    z_post, c_post = zs(post_mean, post_sd)
    z_cat, c_cat = zs(cat_est, cat_err)
    ratio = np.median(post_sd / cat_err, 0)
    print(f"\n{a.n_test} dwarfs at S/N 20-50, parallax error 3 % + 0.02 mas; labels {', '.join(NAMES)}")
    print("posterior with the parallax prior: z-std " + " / ".join(f"{v:.2f}" for v in z_post)
          + "   68 %: " + " / ".join(f"{100 * v:.0f}" for v in c_post))
    print("catalog without a prior:          z-std " + " / ".join(f"{v:.2f}" for v in z_cat)
          + "   68 %: " + " / ".join(f"{100 * v:.0f}" for v in c_cat))
    print("median sigma(posterior) / sigma(catalog): " + " / ".join(f"{v:.2f}" for v in ratio))
    print("scatter posterior / catalog: " + " / ".join(
        f"{a_:.3g} / {b_:.3g}" for a_, b_ in zip(np.std(post_mean - truth, 0), np.std(cat_est - truth, 0))))
    (HERE / "parallax_prior.json").write_text(json.dumps(dict(
        n_test=a.n_test, labels=NAMES, z_std_posterior=z_post.tolist(), coverage68_posterior=c_post.tolist(),
        z_std_catalog=z_cat.tolist(), coverage68_catalog=c_cat.tolist(), sigma_ratio_median=ratio.tolist()), indent=1))


if __name__ == "__main__":
    main()
