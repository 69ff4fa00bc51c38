"""`slambayes demo`: the whole journey on the embedded synthetic data."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .datasets import make_demo
from .emulator import Emulator
from .label_space import LabelSpace
from .map_fit import fit_map
from .out_of_fold import calibrate
from .preprocess import default_grid
from .validation import calibration, fit_error_model, labels_from_catalog, scatter_by_snr

DEMO_GRID = default_grid(step=2.0)          # 951 px: keeps the demo within a few minutes
DEMO_SNRS = (10.0, 20.0, 40.0, 80.0)


def run_demo(out, n_train=400, n_test=300, n_jobs=-1, seed=0, echo=print, progress=True):
    """Train on synthetic spectra at S/N 100, fit held-out ones at several S/N,
    write the catalog, a validation table and plots into `out`. Returns a dict
    of paths and figures. `echo` prints the messages; `progress` shows the bars (on a terminal)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train = make_demo(n_train, snr=100.0, seed=seed, wave=DEMO_GRID)
    snr = np.resize(np.asarray(DEMO_SNRS), n_test)
    test = make_demo(n_test, snr=snr, seed=seed + 1, wave=DEMO_GRID)
    echo(f"[demo] {train.n_star} training and {test.n_star} test spectra "
         f"({train.n_pix} px, synthetic, labels {train.label_names})")

    em = Emulator(C=(3.0, 30.0), gamma=(0.1,), cv=3, n_jobs=n_jobs, random_state=seed, progress=progress).fit(train)
    calibrate(em, train)
    model_path = out / "demo_model.npz"
    em.save(model_path)
    echo(f"[demo] emulator trained in {time.perf_counter() - t0:.1f} s, "
         f"median CV MSE {np.nanmedian(em.cv_mse_):.3f}, errors calibrated on out-of-fold fits "
         f"of the training stars → {model_path}")

    t1 = time.perf_counter()
    cat_path = out / "demo_catalog.fits"
    cat = fit_map(em, test, output=cat_path, overwrite=True, n_jobs=1, progress=progress)
    dt = time.perf_counter() - t1
    echo(f"[demo] MAP fit of {len(cat)} spectra in {dt:.1f} s ({len(cat) / dt:.0f} spectra/s) → {cat_path}")

    names = em.label_names_
    est, err = labels_from_catalog(cat, names)
    by_snr = scatter_by_snr(est, test.labels, test.meta["snr"], DEMO_SNRS)
    cal = calibration(est, err, test.labels)
    echo("[demo] scatter per S/N:  " + "  ".join(
        f"S/N {r['snr']:.0f}: " + "/".join(f"{v:.3g}" for v in r["scatter"]) for r in by_snr))
    echo("[demo] z-score std " + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, cal["z_std"])))
    coeffs = [fit_error_model(by_snr["snr"], by_snr["scatter"][:, j]) for j in range(len(names))]

    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.6))
    for j, n in enumerate(names):
        ax = axes[j]
        ax.errorbar(test.labels[:, j], est[:, j], err[:, j], fmt=".", ms=3, alpha=0.5)
        lim = [test.labels[:, j].min(), test.labels[:, j].max()]
        ax.plot(lim, lim, "k-", lw=0.8)
        ax.set_xlabel(f"true {n}")
        ax.set_ylabel(f"MAP {n}")
    ax = axes[-1]
    sc = ax.scatter(est[:, 0], est[:, 1], c=est[:, 2], s=6, cmap="viridis")
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel("Teff [K]")
    ax.set_ylabel("log g")
    fig.colorbar(sc, ax=ax, label="[Fe/H]")
    fig.tight_layout()
    fig_path = out / "demo_labels.png"
    fig.savefig(fig_path, dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    s_grid = np.linspace(min(DEMO_SNRS), max(DEMO_SNRS), 100)
    for j, n in enumerate(names):
        axes[j].plot(by_snr["snr"], by_snr["scatter"][:, j], "o")
        axes[j].plot(s_grid, [coeffs[j][0] * np.exp(-coeffs[j][1] * s) + coeffs[j][2] for s in s_grid])
        axes[j].set_xlabel("S/N")
        axes[j].set_ylabel(f"scatter {n}")
    fig.tight_layout()
    err_path = out / "demo_error_model.png"
    fig.savefig(err_path, dpi=90)
    plt.close(fig)
    echo(f"[demo] plots → {fig_path}, {err_path}")

    post = _posterior_of_one_star(em, test, cat, out, seed, echo)
    echo(f"[demo] done in {time.perf_counter() - t0:.1f} s; outputs in {out.resolve()}")
    return dict(model=model_path, catalog=cat_path, plots=[fig_path, err_path] + post["plots"],
                posterior=post["path"], laplace=post["table"], by_snr=by_snr, calibration=cal,
                error_model=coeffs)


def _posterior_of_one_star(em, test, cat, out, seed, echo):
    """NUTS for an S/N-20 star well inside the training domain (flag 0, MAP in the central 70 %
    of every label's range, so its posterior is not cut by the support box): InferenceData
    file, Laplace table, corner and spectrum plots."""
    from .diagnostics import compare_to_laplace, plot_corner, plot_spectrum
    from .sampling import sample

    space = LabelSpace.from_emulator(em)
    frac = (labels_from_catalog(cat, em.label_names_)[0] - space.low) / (space.high - space.low)
    ok = (np.asarray(test.meta["snr"]) == 20.0) & (np.asarray(cat["flag"]) == 0) & \
        np.all((frac > 0.15) & (frac < 0.85), axis=1)
    i = int(np.flatnonzero(ok)[0]) if ok.any() else int(np.flatnonzero(np.asarray(test.meta["snr"]) == 20.0)[0])
    t = time.perf_counter()
    idata = sample(em, test[i:i + 1], num_warmup=500, num_samples=500, num_chains=4, seed=seed,
                   progress=False)
    nc_path = out / "demo_star_posterior.nc"
    idata.to_netcdf(str(nc_path))
    table = compare_to_laplace(idata)
    echo(f"[demo] NUTS 4×500 draws for star {cat['id'][i]} (S/N 20) in {time.perf_counter() - t:.1f} s → {nc_path}")
    echo("[demo]   label      truth        MAP ± σ_LM          posterior mean ± sd    R-hat  ESS")
    for j, r in enumerate(table):
        echo(f"[demo]   {r['name']:8s} {test.labels[i, j]:10.3f} {r['map']:10.3f} ± {r['sigma_lm']:<8.3g} "
             f"{r['post_mean']:10.3f} ± {r['post_sd']:<8.3g} {r['r_hat']:6.3f} {r['ess_bulk']:5.0f}")
    echo(f"[demo]   laplace_ok {table.meta['laplace_ok']} (KL {table.meta['kl']:.3f} nats, "
         f"{table.meta['divergences']} divergences); inspect with: slambayes diagnose {nc_path}")
    corner_path, spec_path = out / "demo_star_corner.png", out / "demo_star_spectrum.png"
    plot_corner(idata, path=corner_path)
    plot_spectrum(idata, path=spec_path)
    echo(f"[demo] plots → {corner_path}, {spec_path}")
    return dict(path=nc_path, table=table, plots=[corner_path, spec_path])
