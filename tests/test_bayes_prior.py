"""The calibrated density is what every consumer uses, so priors combine as Bayes says.

With a Gaussian prior N(m, s) on a near-Gaussian star, the posterior is the product
of the catalog's Gaussian (MAP, calibrated covariance) and the prior: from `fit_map`,
from the single-star MAP under a prior it cannot take as residuals, and from NUTS.
"""
import copy
import warnings
from dataclasses import replace

import arviz as az
import numpy as np
import pytest

from slambayes import MapOptions, Posterior, fit_map, sample
from slambayes import map_fit
from conftest import assert_bayes_product, non_gaussianity
from slambayes.datasets import make_demo
from slambayes.priors import Gaussian
from slambayes.priors.base import Prior


def bayes(m0, s0, m, s):
    """Mean and σ of N(m0, s0²) × N(m, s²)."""
    w = 1 / s0**2 + 1 / s**2
    return (m0 / s0**2 + m / s**2) / w, w**-0.5


class HiddenGaussian(Prior):
    """A Gaussian that does not say so: `fit_map` refuses it, `Posterior` maximizes it with jax."""

    def __init__(self, inner):
        self.inner, self.label_names = inner, inner.label_names

    def log_prob(self, values):
        return self.inner.log_prob(values)


@pytest.fixture(scope="module")
def widened(demo_calibrated):
    """The calibrated demo emulator with its model-error scale tripled (e^a × 3), so that the
    calibrated errors differ clearly from the formal ones, and a few clean S/N 60 stars with
    their catalog rows; the star whose likelihood is closest to Gaussian first."""
    em, train = demo_calibrated
    em = copy.deepcopy(em)
    em.calibration_ = replace(em.calibration_, a=em.calibration_.a + np.log(3.0))
    sp = make_demo(12, snr=60.0, seed=77, wave=train.wave, ranges=[[5000, 6500], [3.0, 4.5], [-0.8, 0.0]])
    cat = fit_map(em, sp, progress=False)
    names = em.label_names_
    ok = np.asarray(cat["laplace_ok"]) & (np.asarray(cat["flag"]) == 0)
    badness = non_gaussianity(cat, names)
    order = [int(i) for i in np.argsort(np.where(ok, badness, np.inf)) if ok[i]]
    assert order, "no clean laplace_ok star"
    ratio = np.array([[cat[n + "_err"][i] / cat[n + "_err_formal"][i] for n in names] for i in order])
    assert np.all(ratio > 1.3), ratio                 # the calibration matters for these stars
    return em, sp, cat, order


@pytest.mark.parametrize("factor", [0.3, 3.0])
def test_fit_map_with_gaussian_prior_is_the_bayes_product(widened, factor):
    em, sp, cat, order = widened
    i = order[0]
    for label in ("logg", "feh"):
        m0, s0 = cat[label][i], cat[label + "_err"][i]
        s = factor * s0
        m = m0 + 1.0 * s0
        row = fit_map(em, sp[i:i + 1], prior=Gaussian([label], [m], [s]), progress=False)[0]
        mb, sb_ = bayes(m0, s0, m, s)
        print(label, factor, "Bayes", mb, sb_, "fit_map", row[label], row[label + "_err"])
        assert abs(row[label] - mb) < 0.05 * sb_ and abs(row[label + "_err"] / sb_ - 1) < 0.05
        # the posterior summary samples the density itself (no Laplace form): the same within its
        # Monte Carlo error
        print("  summary", row[label + "_mean"], row[label + "_std"], row["posterior_method"], row["posterior_khat"])
        assert abs(row[label + "_mean"] - mb) < 0.1 * sb_ and abs(row[label + "_std"] / sb_ - 1) < 0.1
        # the formal errors are the uncalibrated likelihood's, as without the prior
        assert row[label + "_err_formal"] == pytest.approx(cat[label + "_err_formal"][i], rel=1e-9)


def test_single_star_map_under_a_non_gaussian_prior_keeps_the_calibration(widened):
    em, sp, cat, order = widened
    i, label = order[0], "feh"
    m0, s0 = cat[label][i], cat[label + "_err"][i]
    prior = HiddenGaussian(Gaussian([label], [m0 - s0], [0.5 * s0]))
    post = Posterior(em, prior)
    assert not post.is_gaussian() and post.calibrated
    fit = post.find_map(sp[i:i + 1])
    j = list(post.names).index(label)
    mb, sb_ = bayes(m0, s0, m0 - s0, 0.5 * s0)
    assert abs(fit["values"][j] - mb) < 0.05 * sb_
    assert abs(np.sqrt(fit["cov"][j, j]) / sb_ - 1) < 0.05


def test_nuts_with_gaussian_prior_is_the_bayes_product(widened):
    em, sp, cat, order = widened
    print("NUTS with a [Fe/H] prior, (shift / σ, σ ratio) against Bayes:", assert_bayes_product(em, sp, cat, "feh"))
    # without a prior NUTS has the catalog's calibrated width, not the formal one
    i = order[0]
    free = sample(em, sp[i:i + 1], num_warmup=500, num_samples=1500, num_chains=4, seed=3, progress=False)
    for n in em.label_names_:
        w = float(free.posterior[n].std()) / cat[n + "_err"][i]
        assert 0.9 < w < 1.1, (n, w)


def test_posterior_file_is_one_set_of_draws(widened, tmp_path):
    em, sp, cat, order = widened
    i = order[0]
    star = sp[i:i + 1]
    ivar = star.ivar.copy()
    ivar[0, 40:50] = 0.0                      # a masked stretch: left out, not stored as flux 0
    star = type(star)(star.wave, star.flux, ivar, labels=star.labels, label_names=star.label_names)
    idata = sample(em, star, num_warmup=300, num_samples=500, num_chains=4, seed=1, progress=False)
    idata.to_netcdf(str(tmp_path / "star.nc"))
    back = az.from_netcdf(str(tmp_path / "star.nc"))
    assert sorted(back.groups()) == sorted(set(back.groups())) and "posterior_formal" not in back.groups()
    assert "pixel_wave" in back.observed_data.coords
    shape = (back.posterior.sizes["chain"], back.posterior.sizes["draw"])
    n_used = back.observed_data.sizes["pixel"]
    assert n_used == star.n_pix - 10 and not np.isin(np.arange(40, 50), back.observed_data["pixel"].values).any()
    for group in ("log_likelihood", "posterior_predictive"):
        assert back[group]["flux"].shape == shape + (n_used,)
    assert back.sample_stats["lp"].shape == shape
    pit = az.loo_pit(back, y="flux")
    assert pit.shape == (n_used,) and np.all((pit >= 0) & (pit <= 1))
    assert np.isfinite(az.loo(back).elpd_loo)
    # the replicated spectra scatter as the noise model says: σ² = 1/ivar + σ²_model per pixel
    pix = back.observed_data["pixel"].values
    sigma = np.sqrt(1 / ivar[0, pix] + back.constant_data["sigma_model"].values[pix] ** 2)
    spread = back.posterior_predictive["flux"].values.reshape(-1, n_used).std(0)
    ratio = spread / sigma
    print("ppc spread / σ: median", np.median(ratio), "5-95 %", np.percentile(ratio, [5, 95]))
    assert abs(np.median(ratio) - 1) < 0.05 and np.all(np.abs(np.percentile(ratio, [5, 95]) - 1) < 0.1)


def test_posterior_uses_the_catalog_options(demo_calibrated):
    em, train = demo_calibrated
    sp = make_demo(6, snr=40.0, seed=5, wave=train.wave)
    options = MapOptions(clip_sigma=4.0, n_starts=3, bounds_pad=0.05, fit_rv=True)
    cat = fit_map(em, sp, options=options, progress=False)
    back = MapOptions.from_header(cat.meta)
    assert back == options
    post = Posterior(em, options=back)
    assert post.names[-1] == "rv_resid" and np.allclose(post.low[:3], em.label_min_ - 0.05 * (em.label_max_ - em.label_min_))
    for i in range(3):
        m = post.find_map(sp[i:i + 1])
        for j, n in enumerate(post.names):
            assert abs(m["values"][j] - cat[n][i]) < 0.05 * cat[n + "_err"][i], (i, n)
            assert np.sqrt(m["cov"][j, j]) == pytest.approx(cat[n + "_err"][i], rel=1e-6)
    # the same settings given one by one to fit_map are the same options
    again = fit_map(em, sp[:2], clip_sigma=4.0, n_starts=3, bounds_pad=0.05, fit_rv=True, progress=False)
    assert MapOptions.from_header(again.meta) == options
    with pytest.raises(KeyError, match="MAPOPTS"):
        MapOptions.from_header({})


def test_uncalibrated_fit_warns_once(demo_small):
    em, train = demo_small
    sp = make_demo(3, snr=40.0, seed=9, wave=train.wave)
    map_fit._WARNED.clear()
    with pytest.warns(UserWarning, match="formal ones"):
        cat = fit_map(em, sp, progress=False)
    np.testing.assert_allclose(cat["feh_err"], cat["feh_err_formal"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_map(em, sp, progress=False)


def test_simulation_based_calibration_of_the_calibrated_density(floor_calibrated):
    """Stars drawn from the errors-in-variables model itself: θ from a Gaussian prior, the
    spectrum the emulator's at θ + δ, δ ~ N(0, diag(c²)), plus noise. With a calibration whose
    only term is that floor (a = w = 0: Δ = diag(c²) for every star), NUTS on the calibrated
    density must give uniform ranks of the true θ and 68 % coverage."""
    from scipy import stats

    from slambayes import Spectra
    from slambayes.sampling import run_nuts

    em, mid, span, c = floor_calibrated
    prior = Gaussian(em.label_names_, mid, span / 6)
    post = Posterior(em, prior, model_error="none")
    assert post.calibrated
    rng = np.random.default_rng(7)
    n_star, thin, n_draw = 120, 4, 400
    ranks, covered = [], []
    for i in range(n_star):
        while True:
            truth = mid + span / 6 * rng.standard_normal(3)
            if np.all((truth > em.label_min_) & (truth < em.label_max_)):
                break
        snr = 30.0
        flux = em.predict(truth + c * rng.standard_normal(3)) + rng.normal(0, 1 / snr, em.wave_.size)
        sp = Spectra(em.wave_, flux[None], np.full((1, em.wave_.size), snr**2))
        m = post.find_map(sp)
        np.testing.assert_allclose(np.diag(m["label_cov"]), c**2, rtol=1e-9)
        theta, _ = run_nuts(post, post.data(sp, m), m, 300, n_draw, 1, seed=i, progress=False)
        draws = post.from_std(theta[0, ::thin, :3])
        ranks.append((draws < truth).sum(0))
        lo, hi = np.percentile(draws, [16, 84], axis=0)
        covered.append((truth > lo) & (truth < hi))
    ranks, covered = np.array(ranks), np.array(covered)
    for j, name in enumerate(em.label_names_):
        counts = np.histogram(ranks[:, j], bins=8, range=(0, n_draw // thin + 1))[0]
        p = stats.chisquare(counts).pvalue
        cov68 = covered[:, j].mean()
        print(f"SBC (calibrated) {name}: rank chi2 p = {p:.3f}, 68% coverage = {cov68:.2f} ({n_star} stars)")
        assert p > 0.01, (name, counts)
        assert 0.58 <= cov68 <= 0.78, (name, cov68)
