"""Is the MAP's Gaussian (Laplace) approximation good enough? ArviZ diagnostics and plots.

`compare_to_laplace(idata, map_row)` checks the sampler first (R-hat, ESS,
divergences), then compares the posterior with the LM Gaussian N(MAP, Σ_LM):

- shift = (posterior mean − MAP) / σ_LM per parameter,
- width = σ_post / σ_LM per parameter,
- KL(N(μ_post, Σ_post) ‖ N(MAP, Σ_LM)) in nats, for the whole vector.

Thresholds (module constants, documented so that flags are reproducible):
``sampling_ok`` needs R-hat < 1.01, bulk and tail ESS > 400 and no
divergences; ``laplace_ok`` needs sampling_ok, |shift| < 0.5, 0.8 < width <
1.25 for every parameter and KL < 0.25 nats (one parameter 25 % too wide and
0.5 σ off gives ≈ 0.18).
"""
from __future__ import annotations

import numpy as np

from .laplace_check import LAPLACE_LIMITS

__all__ = ["compare_to_laplace", "gaussian_kl", "plot_corner", "plot_trace", "plot_spectrum",
           "THRESHOLDS"]

THRESHOLDS = dict(r_hat=1.01, ess=400.0, divergences=0, kl=0.25, **LAPLACE_LIMITS)


def gaussian_kl(mean_p, cov_p, mean_q, cov_q):
    """KL(N_p ‖ N_q) in nats for k-dimensional Gaussians."""
    mean_p, mean_q = np.asarray(mean_p, float), np.asarray(mean_q, float)
    cov_p, cov_q = np.atleast_2d(cov_p), np.atleast_2d(cov_q)
    k = mean_p.size
    q_inv = np.linalg.inv(cov_q)
    d = mean_q - mean_p
    _, logdet_p = np.linalg.slogdet(cov_p)
    _, logdet_q = np.linalg.slogdet(cov_q)
    return 0.5 * float(np.trace(q_inv @ cov_p) + d @ q_inv @ d - k + logdet_q - logdet_p)


class NoiseMismatchError(ValueError):
    """The MAP row and the posterior come from different likelihoods (noise models)."""


def _map_dict(idata, map_row):
    from .sampling import map_from_idata

    if map_row is None:
        return map_from_idata(idata)                        # the sampler's own MAP: same density
    if isinstance(map_row, dict):
        m = map_row
    else:                                                   # an astropy Row of fit_map's catalog
        names = [n for n in idata.posterior.data_vars if n in map_row.colnames]
        m = dict(names=tuple(names), values=np.array([map_row[n] for n in names], float),
                 cov=np.asarray(map_row["cov"], float)[:len(names), :len(names)],
                 noise=str(getattr(map_row, "meta", {}).get("NOISETAG", "")))
    post_noise = str(idata.posterior.attrs.get("noise", ""))
    if m.get("noise") is None or not post_noise:
        raise NoiseMismatchError("cannot tell which likelihood the MAP row was made with (no noise "
                                 "model recorded); compare rows of a catalog written by this slambayes")
    if m["noise"] != post_noise:
        raise NoiseMismatchError(f"the MAP row comes from another likelihood ({m['noise']!r}) than the "
                                 f"posterior ({post_noise!r}); fit the catalog with the same model_error "
                                 f"and calibration as the sampler, or compare with the MAP stored in the "
                                 f"posterior (map_row=None)")
    return m


def _laplace_and_draws(idata, map_row, names=None, group="posterior"):
    """(names, MAP values, LM covariance, draws (n_draw, k)) for the parameters both hold."""
    m = _map_dict(idata, map_row)
    names = names or [n for n in m["names"] if n in idata.posterior.data_vars]
    idx = [list(m["names"]).index(n) for n in names]
    mu, cov = np.asarray(m["values"], float)[idx], np.asarray(m["cov"], float)[np.ix_(idx, idx)]
    draws = np.stack([getattr(idata, group)[n].values.ravel() for n in names], -1)
    return m, names, mu, cov, draws


def compare_to_laplace(idata, map_row=None):
    """Per-parameter comparison of the samples with the MAP's Laplace approximation.

    Parameters
    ----------
    idata : InferenceData from `slambayes.sample`
    map_row : dict(names, values, cov, noise), a row of `fit_map`'s catalog, or None
        (the MAP stored in `idata` by `sample`). A row made with another noise model
        (model error or calibration) than the posterior is refused (`NoiseMismatchError`).

    Returns
    -------
    astropy Table, one row per parameter: name, map, sigma_lm, post_mean, post_sd,
    r_hat, ess_bulk, ess_tail, shift, width. ``meta``: divergences, kl,
    sampling_ok, laplace_ok, thresholds. The draws are the sampler's own, of the calibrated
    density, compared with the catalog's (calibrated) covariance.
    """
    import arviz as az
    from astropy.table import Table

    m, names, mu_lm, cov_lm, draws = _laplace_and_draws(idata, map_row)
    mu_p, cov_p = draws.mean(0), np.atleast_2d(np.cov(draws, rowvar=False))
    summ = az.summary(az.InferenceData(posterior=idata.posterior), var_names=names, kind="diagnostics",
                      round_to="none")
    sig_lm = np.sqrt(np.diag(cov_lm))
    t = Table(dict(name=names, map=mu_lm, sigma_lm=sig_lm, post_mean=mu_p, post_sd=np.sqrt(np.diag(cov_p)),
                   r_hat=summ["r_hat"].to_numpy(float), ess_bulk=summ["ess_bulk"].to_numpy(float),
                   ess_tail=summ["ess_tail"].to_numpy(float)))
    t["shift"] = (t["post_mean"] - t["map"]) / t["sigma_lm"]
    t["width"] = t["post_sd"] / t["sigma_lm"]
    div = int(idata.sample_stats["diverging"].values.sum()) if "diverging" in idata.sample_stats else 0
    try:
        kl = gaussian_kl(mu_p, cov_p, mu_lm, cov_lm)
    except np.linalg.LinAlgError:
        kl = float("inf")
    th = THRESHOLDS
    sampling_ok = bool(np.all(t["r_hat"] < th["r_hat"]) and np.all(t["ess_bulk"] > th["ess"])
                       and np.all(t["ess_tail"] > th["ess"]) and div <= th["divergences"])
    gauss_ok = bool(np.all(np.abs(t["shift"]) < th["shift"]) and np.all(t["width"] > th["width"][0])
                    and np.all(t["width"] < th["width"][1]) and kl < th["kl"])
    t.meta.update(divergences=div, kl=kl, sampling_ok=sampling_ok, laplace_ok=sampling_ok and gauss_ok,
                  thresholds=th, map_method=m.get("method", ""))
    return t


def _ellipse(ax, mean, cov, n_sigma, **kw):
    vals, vecs = np.linalg.eigh(cov)
    t = np.linspace(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(t), np.sin(t)])
    pts = mean[:, None] + n_sigma * vecs @ (np.sqrt(np.clip(vals, 0, None))[:, None] * circle)
    ax.plot(pts[0], pts[1], **kw)


def plot_corner(idata, map_row=None, path=None, var_names=None):
    """Corner plot of the samples with the LM Gaussian on top (1σ and 2σ ellipses,
    marginal densities). Returns the figure; saves it when `path` is given."""
    import corner
    import matplotlib.pyplot as plt

    _, names, mu, cov, draws = _laplace_and_draws(idata, map_row, var_names)
    fig = corner.corner(draws, labels=names, truths=mu, truth_color="C3", levels=(0.393, 0.865),
                        hist_kwargs=dict(density=True))
    k = len(names)
    axes = np.array(fig.axes).reshape(k, k)
    for i in range(k):
        ax = axes[i, i]
        x = np.linspace(*ax.get_xlim(), 200)
        s = np.sqrt(cov[i, i])
        ax.plot(x, np.exp(-0.5 * ((x - mu[i]) / s) ** 2) / (s * np.sqrt(2 * np.pi)), color="C3")
        for j in range(i):
            sub = cov[np.ix_([j, i], [j, i])]
            for n_sig in (1, 2):
                _ellipse(axes[i, j], mu[[j, i]], sub, n_sig, color="C3", lw=1)
    fig.suptitle("posterior samples (black) vs LM Laplace approximation (red)", fontsize=10)
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def plot_trace(idata, path=None):
    """ArviZ trace plot of every parameter; returns the figure."""
    import arviz as az
    import matplotlib.pyplot as plt

    axes = az.plot_trace(idata, compact=True)
    fig = np.ravel(axes)[0].figure
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def plot_spectrum(idata, path=None):
    """Observed spectrum vs the posterior-median model, with residuals in units of
    the total σ (observed ⊕ model error). Returns the figure."""
    import matplotlib.pyplot as plt

    wave = idata.constant_data["wave"].values
    ivar = idata.constant_data["ivar"].values
    model = idata.constant_data["model_median"].values
    s_model = idata.constant_data["sigma_model"].values
    # the observed flux is stored on the pixels the density uses (masked and clipped left out)
    good = np.zeros(wave.size, bool)
    good[idata.observed_data["pixel"].values] = True
    flux = np.zeros(wave.size)
    flux[good] = idata.observed_data["flux"].values
    sigma = np.sqrt(1.0 / np.where(good, ivar, 1.0) + s_model**2)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, height_ratios=(2, 1))
    a1.plot(wave[good], flux[good], "k-", lw=0.7, label="observed")
    a1.plot(wave, model, "C3-", lw=0.8, label="model (posterior median)")
    a1.set_ylabel("normalized flux")
    a1.legend(loc="lower left", fontsize=8)
    a2.plot(wave[good], ((flux - model) / sigma)[good], "k-", lw=0.5)
    a2.axhline(0, color="C3", lw=0.8)
    a2.set_ylabel("residual / σ")
    a2.set_xlabel("wavelength (Å)")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
