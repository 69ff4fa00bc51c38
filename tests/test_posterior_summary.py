"""The catalog's posterior summaries (`slambayes.posterior_summary`) against exact posteriors:
quadrature of a skewed one-label model, the closed form of a linear-Gaussian model with the
calibration's offset and a Gaussian prior, the escalation and its budget, and simulation-based
calibration of the catalog's percentiles on the calibrated density."""
import numpy as np
import pytest
from scipy import stats

from slambayes.label_space import LabelSpace
from slambayes.likelihood import NoiseModel
from slambayes.map_core import FLAGS, MapOptions, fit_star
from slambayes.posterior_summary import PERCENTILES, khat_limit, posterior_summary, t_draws
from test_laplace_check import SaturatingEmulator


def _fit(em, flux, ivar, start, draws=128):
    noise = NoiseModel.resolve(em, "cv", "none").star(ivar)
    options = MapOptions(posterior_draws=draws, clip_sigma=None)
    space = options.parameter_space(LabelSpace.from_emulator(em))
    return fit_star(em, flux, noise, space, np.atleast_2d(start), options), space


def _summary(fit, space, delta=None, prior=None, budget=6.0, n_draws=128):
    d = fit.draws
    n = d.center.size
    return posterior_summary(d, d.evaluate, d.center, d.cov, np.zeros((n, n)) if delta is None else delta,
                             prior, space, n_draws, budget)


def test_draws_are_antithetic_and_their_densities_normalized():
    """The Gaussian (covariance G_SCALE² I) and the Student-t draws (antithetic pairs), and the
    densities they report: the t's covariance T_SCALE² ν/(ν−2) I and its tail, P(|x_1| > 3 T_SCALE) = 0.030 for t_5;
    the densities are the normalized ones (scipy's), as pooling rounds needs."""
    from slambayes.posterior_summary import G_SCALE, T_DOF, T_SCALE

    x, log_q = t_draws(4096, 3, seed=0)
    np.testing.assert_array_equal(x[:2048], -x[2048:])
    np.testing.assert_allclose(np.cov(x.T), G_SCALE**2 * np.eye(3), atol=0.03)
    np.testing.assert_allclose(log_q, stats.multivariate_normal(np.zeros(3), G_SCALE**2).logpdf(x), rtol=1e-12)
    x, log_q = t_draws(4096, 3, seed=0, heavy=True)
    np.testing.assert_array_equal(x[:2048], -x[2048:])
    np.testing.assert_allclose(np.cov(x.T), T_SCALE**2 * T_DOF / (T_DOF - 2) * np.eye(3), atol=0.2)
    assert abs(np.mean(np.abs(x[:, 0]) > 3 * T_SCALE) - 2 * stats.t.sf(3, T_DOF)) < 0.005
    ref = stats.multivariate_t(np.zeros(3), T_SCALE**2 * np.eye(3), df=T_DOF).logpdf(x)
    np.testing.assert_allclose(log_q, ref, rtol=1e-10)


@pytest.mark.parametrize("heavy", [False, True])
def test_pooled_rounds_weigh_each_draw_by_the_mixture(heavy):
    """The densities a round reports at its own draws are the ones pooling evaluates
    (`_log_proposal`), and two rounds pooled have the mixture's: ½ q_1 + ½ q_2 where they have
    the same size."""
    from slambayes.posterior_summary import _log_proposal, pooled, propose

    cov = np.array([[2.0, 0.3], [0.3, 0.5]])
    a = propose(lambda p: np.zeros(len(p)), np.array([0.1, -0.2]), cov, 64, heavy=heavy)
    b = propose(lambda p: np.zeros(len(p)), np.array([0.5, 0.0]), 2 * cov, 64, seed=3, heavy=heavy)
    np.testing.assert_allclose(_log_proposal(a.phi, a), a.log_q, rtol=1e-12)
    both = pooled([a, b])
    mix = np.logaddexp(np.log(0.5) + _log_proposal(both.phi, a), np.log(0.5) + _log_proposal(both.phi, b))
    np.testing.assert_allclose(both.log_q, mix, rtol=1e-12)


def _one_label_star(em_class, c, truth, seed):
    """A faint star of a one-label model on [−3, 3] and its exact posterior by quadrature:
    (emulator, flux, ivar, mean, σ, percentiles (len(PERCENTILES),))."""
    rng = np.random.default_rng(seed)
    n_pix = 40
    em = em_class(rng.normal(0, 0.05, (n_pix, 1)), c, -3.0, 3.0)
    flux = em.predict(np.array([truth]))[0] + rng.normal(0, 0.05, n_pix)
    ivar = np.full(n_pix, 0.05**-2)
    grid = np.linspace(-3.0, 3.0, 200001)
    chi2 = np.sum(ivar * (flux - em.predict(grid[:, None])) ** 2, 1)
    p = np.exp(-0.5 * (chi2 - chi2.min()))
    p /= p.sum()
    mean = p @ grid
    sd = np.sqrt(p @ (grid - mean) ** 2)
    return em, flux, ivar, mean, sd, np.interp(np.array(PERCENTILES) / 100, np.cumsum(p) - 0.5 * p, grid)


@pytest.mark.parametrize("c, truth", [(0.3, 1.0), (1.5, 0.5), (2.5, 0.9)])
def test_percentiles_match_quadrature(c, truth):
    """A faint star of the saturating one-label model: nearly Gaussian (c = 0.3), skewed
    (c = 1.5) and with a long one-sided tail towards where the lines saturate (c = 2.5): every
    percentile, the mean and σ within 0.1 posterior σ of quadrature, with 128 draws."""
    em, flux, ivar, mean, sd, exact = _one_label_star(SaturatingEmulator, c, truth, 1)
    fit, space = _fit(em, flux, ivar, [0.0])
    s = _summary(fit, space)
    print(c, "exact", np.round(exact, 3), mean, sd, "summary", np.round(s.percentiles[:, 0], 3), s.mean, s.std,
          s.khat, s.method)
    assert s.khat <= khat_limit(s.n_draws) and s.method in ("importance", "importance_adapted")
    assert np.max(np.abs(s.percentiles[:, 0] - exact)) < 0.1 * sd
    assert abs(s.mean[0] - mean) < 0.1 * sd and abs(s.std[0] / sd - 1) < 0.1


def _linear_star(seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(0, 0.05, (80, 3))
    em = SaturatingEmulator(A, 0.0, -30.0, 30.0)
    flux = em.predict(np.array([0.3, -0.5, 1.0]))[0] + rng.normal(0, 0.02, 80)
    return _fit(em, flux, np.full(80, 0.02**-2), np.zeros(3))


@pytest.mark.parametrize("tight", [False, True])
def test_calibrated_offset_and_gaussian_prior_give_the_closed_form(tight):
    """Linear model, the calibration's offset δ ~ N(0, Δ) and a prior on the first label: the
    posterior is N(φ̂, cov + Δ) × prior in closed form. Mean, σ and percentiles within 0.05 σ;
    a prior far narrower than the likelihood still needs no more than the first round and the
    one about the product (θ | φ is drawn from the prior's conditional, not weighted by it)."""
    fit, space = _linear_star()
    cov = fit.cov                                   # unit scale: standardized = physical
    delta = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]]) * np.mean(np.diag(cov))
    s0 = np.sqrt(cov[0, 0] + delta[0, 0])
    width = 0.05 * s0 if tight else 0.7 * s0
    A, b = np.array([[1 / width, 0.0, 0.0]]), np.array([(fit.values[0] + 2 * s0) / width])
    s = _summary(fit, space, delta, (A, b))
    C = cov + delta
    P = np.linalg.inv(np.linalg.inv(C) + A.T @ A)
    mu = P @ (np.linalg.solve(C, fit.values) + A.T @ b)
    sd = np.sqrt(np.diag(P))
    exact = mu + stats.norm.ppf(np.array(PERCENTILES) / 100)[:, None] * sd
    print("closed form", mu, sd, "summary", s.mean, s.std, s.khat, s.method, s.ess)
    assert s.method == "importance" and s.khat <= khat_limit(s.n_draws) and s.n_draws == 256
    assert np.all(np.abs(s.mean - mu) < 0.05 * sd) and np.all(np.abs(s.std / sd - 1) < 0.05)
    assert np.all(np.abs(s.percentiles - exact) < 0.08 * sd)


def test_escalation_and_its_budget():
    """A star whose first-round weights fail (a proposal far too narrow for its posterior: the
    fit's covariance shrunk 30×) is sampled again from adapted proposals until k̂ ≤ 0.7; with
    no budget it keeps the best round and says "unreliable"."""
    fit, space = _linear_star()
    cov, d = fit.cov, fit.draws

    def summary(budget):
        return posterior_summary(None, d.evaluate, d.center, cov / 30.0, np.zeros((3, 3)), None, space, 128, budget)
    first = summary(0.0)
    assert first.method == "unreliable" and first.khat > khat_limit(128) and first.n_draws == 128
    again = summary(6.0)
    sd = np.sqrt(np.diag(cov))
    print("escalated", again.method, again.khat, again.n_draws, (again.mean - fit.values) / sd, again.std / sd)
    assert again.method == "importance_adapted" and again.khat <= khat_limit(again.n_draws) and again.n_draws <= 128 * 7
    assert np.all(np.abs(again.mean - fit.values) < 0.1 * sd) and np.all(np.abs(again.std / sd - 1) < 0.1)


def test_catalog_flags_unreliable_summaries(demo_small):
    """In the catalog a summary the budget could not make trustworthy is flagged
    (`posterior_unsure`) and says so in its status; posterior_budget=0 leaves every star with
    k̂ above the limit for 128 draws there, the default budget less than half as many."""
    from slambayes import fit_map
    from slambayes.datasets import make_demo

    em, train = demo_small
    stars = make_demo(60, snr=np.resize([8.0, 15.0], 60), seed=9, wave=train.wave)
    none = fit_map(em, stars, progress=False, posterior_budget=0.0)
    some = fit_map(em, stars, progress=False)
    for cat in (none, some):
        unsure = (np.asarray(cat["flag"]) & FLAGS["posterior_unsure"]) != 0
        np.testing.assert_array_equal(unsure, np.asarray(cat["posterior_method"]) == "unreliable")
        assert all("unreliable" in st for st in cat["status"][unsure])
    k = np.asarray(none["posterior_khat"])
    failed = k > khat_limit(128)
    np.testing.assert_array_equal(np.asarray(none["posterior_method"]) == "unreliable", failed)
    print("unreliable without budget", failed.sum(), "with", np.sum(some["posterior_method"] == "unreliable"))
    assert failed.sum() > 0
    assert np.sum(some["posterior_method"] == "unreliable") < failed.sum() / 2
    # a star the first round answered in both is the same in both
    first = (np.asarray(none["posterior_method"]) == "importance") & (np.asarray(some["posterior_method"]) == "importance")
    assert first.sum() > 5
    np.testing.assert_array_equal(np.asarray(none["teff_p16"])[first], np.asarray(some["teff_p16"])[first])


def test_simulation_based_calibration_of_the_catalog_percentiles(floor_calibrated):
    """Stars drawn from the calibrated density itself: θ from a Gaussian prior, the spectrum
    the emulator's at θ + δ, δ ~ N(0, diag(c²)), plus noise at S/N 10–200. The catalog's
    percentiles (fit_map with that prior) put the truths in their six bins (below p05, p05–p16,
    …, above p95) as often as they should (χ² p > 0.01 per label), and [p16, p84] covers 68 %."""
    from slambayes import Spectra, fit_map
    from slambayes.priors import Gaussian

    em, mid, span, c = floor_calibrated
    rng = np.random.default_rng(17)
    n_star = 1000
    truth = mid + span / 6 * rng.standard_normal((3 * n_star, 3))
    truth = truth[np.all((truth > em.label_min_) & (truth < em.label_max_), 1)][:n_star]
    snr = np.exp(rng.uniform(np.log(10.0), np.log(200.0), n_star))
    flux = em.predict(truth + c * rng.standard_normal(truth.shape))
    flux = flux + rng.standard_normal(flux.shape) / snr[:, None]
    sp = Spectra(em.wave_, flux, np.repeat(snr[:, None] ** 2, em.wave_.size, 1))
    cat = fit_map(em, sp, prior=Gaussian(em.label_names_, mid, span / 6), model_error="none", progress=False)
    expected = np.diff(np.r_[0, PERCENTILES, 100]) / 100
    print("methods", dict(zip(*np.unique(cat["posterior_method"], return_counts=True))))
    for j, name in enumerate(em.label_names_):
        edges = np.column_stack([cat[f"{name}_p{q:02d}"] for q in PERCENTILES])
        bins = np.sum(truth[:, j, None] > edges, 1)
        counts = np.bincount(bins, minlength=6)
        p = stats.chisquare(counts, expected * n_star).pvalue
        cov68 = np.mean((bins >= 2) & (bins <= 3))
        print(f"SBC (catalog percentiles) {name}: bins {counts}, chi2 p = {p:.3f}, 68% coverage {cov68:.3f}")
        assert p > 0.01, (name, counts)
        assert 0.64 <= cov68 <= 0.72, (name, cov68)


class SquareEmulator(SaturatingEmulator):
    """f(θ) = b + A θ²: the spectrum of θ and −θ is the same, so the posterior of a star at θ₀
    has two modes, ±θ₀."""

    def _g(self, labels):
        return labels ** 2, 2 * labels


def test_a_second_start_in_another_mode_joins_the_summary():
    """With two starts, one in each mode of a two-mode posterior, the summary samples both: its
    mean (the modes' shares), σ and outer percentiles match quadrature (the median lies
    anywhere in the gap between the modes, where the CDF is flat); with one start it describes
    one mode only."""
    em, flux, ivar, mean, sd, exact = _one_label_star(SquareEmulator, 1.0, 1.2, 2)
    one, space = _fit(em, flux, ivar, [0.8])
    two, _ = _fit(em, flux, ivar, [[0.8], [-0.8]])
    assert len(one.draws.modes) == 0 and len(two.draws.modes) == 1
    s1, s2 = _summary(one, space), _summary(two, space)
    print("exact", exact, "one start", s1.percentiles[:, 0], "two", s2.percentiles[:, 0], s2.method, s2.khat)
    outer = [0, 1, 3, 4]
    assert np.max(np.abs(s2.percentiles[outer, 0] - exact[outer])) < 0.05 * sd
    assert abs(s2.mean[0] - mean) < 0.1 * sd and abs(s2.std[0] / sd - 1) < 0.05
    assert np.all(s1.percentiles[:, 0] > 0)                  # one mode only


def test_a_non_gaussian_posterior_gets_one_round_for_precision():
    """Trusted weights of a posterior that is the catalog's Gaussian end the sampling at the
    first round; where the posterior is not that Gaussian (here: the catalog's mean moved by
    1 σ) and the effective sample size is below ESS_TARGET, one round of twice the draws is
    added, and no more."""
    from slambayes.posterior_summary import ESS_TARGET

    fit, space = _linear_star()
    d = fit.draws
    sd = np.sqrt(np.diag(fit.cov))

    def summary(shift):
        laplace = (space.to_std(fit.values + shift * sd), sd / space.scale)
        return posterior_summary(d, d.evaluate, d.center, d.cov, np.zeros((3, 3)), None, space, 128, 6.0,
                                 laplace=laplace)
    same, moved = summary(0.0), summary(1.0)
    assert same.method == "importance" and same.n_draws == 128 and same.ess < ESS_TARGET
    assert moved.method == "importance_adapted" and moved.n_draws == 128 + 256
    assert moved.ess > same.ess
    np.testing.assert_allclose(moved.mean, same.mean, atol=0.05 * sd.max())


def test_too_few_draws_in_the_support_are_never_trusted():
    """A round with fewer than MIN_FINITE draws of nonzero weight (a star whose draws nearly all
    fall outside the box, or whose flux is non-finite there) is not smoothed and not trusted:
    k̂ = inf, and the weights it has still sum to 1."""
    from slambayes.posterior_summary import MIN_FINITE, Draws, summarize

    rng = np.random.default_rng(0)
    phi = rng.normal(size=(64, 2))
    log_target = np.full(64, -np.inf)
    log_target[:MIN_FINITE - 1] = 0.0
    got = summarize(Draws(phi, log_target, np.zeros(64)), np.zeros((2, 2)), None, np.full(2, -9.0), np.full(2, 9.0))
    assert got[3] == np.inf and np.isclose(got[1].sum(), 1.0)
