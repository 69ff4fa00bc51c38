"""Posterior sampling: exactness on a linear-Gaussian toy, simulation-based calibration,
convergence on generated dwarfs, and what priors do to the posterior."""
import numpy as np
import pytest
from scipy import stats

from slambayes import Spectra
from slambayes.diagnostics import compare_to_laplace
from slambayes.posterior import Posterior, fit_map_posterior
from slambayes.priors import GalacticModel, Gaussian, Parallax
from slambayes.priors.parallax import predicted_parallax
from slambayes.sampling import run_nuts, sample


class LinearEmulator:
    """f(θ) = b + A θ: the posterior with a Gaussian prior is Gaussian and known exactly."""

    def __init__(self, A, b, wave, names=("a", "b", "c")):
        self.A, self.b, self.wave_ = A, b, wave
        self.label_names_ = tuple(names)
        k = A.shape[1]
        self.label_mean_, self.label_std_ = np.zeros(k), np.ones(k)
        self.label_min_, self.label_max_ = np.full(k, -30.0), np.full(k, 30.0)

    def model_error_sigma(self, kind):
        return np.full(self.wave_.size, 0.0 if kind == "none" else 0.02)

    def predict_and_jacobian(self, labels):
        return self.b + self.A @ labels, self.A

    def jax_predictor(self):
        import jax.numpy as jnp
        A, b = jnp.asarray(self.A), jnp.asarray(self.b)
        return lambda labels: b + labels @ A.T


def analytic_posterior(A, b, flux, w, mu0, cov0):
    prec = A.T @ (w[:, None] * A) + np.linalg.inv(cov0)
    cov = np.linalg.inv(prec)
    mean = cov @ (A.T @ (w * (flux - b)) + np.linalg.solve(cov0, mu0))
    return mean, cov


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(3)
    n_pix = 60
    wave = np.linspace(5000.0, 5100.0, n_pix)
    A = rng.normal(0, 0.05, (n_pix, 3))
    A[:, 2] = A[:, 0] * 0.8 + rng.normal(0, 0.02, n_pix)          # correlated labels
    b = np.ones(n_pix)
    em = LinearEmulator(A, b, wave)
    truth = np.array([0.5, -1.0, 2.0])
    ivar = np.full(n_pix, 50.0**2)
    ivar[::7] = 0.0                                                  # masked pixels drop out
    flux = b + A @ truth + rng.normal(0, 1 / 50.0, n_pix)
    prior = Gaussian(em.label_names_, mean=[0.0, 0.0, 1.0], sigma=[1.0, 2.0, 1.5])
    w = np.where(ivar > 0, ivar / (1 + ivar * 0.02**2), 0.0)
    mean, cov = analytic_posterior(A, b, flux, w, prior.mean, prior.cov)
    sp = Spectra(wave, flux[None], ivar[None])
    return em, sp, prior, mean, cov


@pytest.mark.parametrize("sampler", ["nuts", "emcee"])
def test_linear_gaussian_posterior_is_exact(toy, sampler):
    em, sp, prior, mean, cov = toy
    kw = dict(num_chains=4) if sampler == "nuts" else dict(num_walkers=32, thin=5)
    idata = sample(em, sp, prior=prior, sampler=sampler, num_warmup=1000, num_samples=1000, seed=1,
                   progress=False, **kw)
    draws = np.stack([idata.posterior[n].values.ravel() for n in em.label_names_], -1)
    import arviz as az
    ess = az.ess(idata, var_names=list(em.label_names_))
    sd = np.sqrt(np.diag(cov))
    for i, n in enumerate(em.label_names_):
        mcse = sd[i] / np.sqrt(float(ess[n]))
        assert abs(draws[:, i].mean() - mean[i]) < 4 * mcse, (n, draws[:, i].mean(), mean[i], mcse)
    c = np.cov(draws, rowvar=False)
    assert np.allclose(np.sqrt(np.diag(c)) / sd, 1, atol=0.08)
    corr_s, corr_a = c / np.outer(np.sqrt(np.diag(c)), np.sqrt(np.diag(c))), cov / np.outer(sd, sd)
    assert np.allclose(corr_s, corr_a, atol=0.05)
    # the MAP of a linear-Gaussian problem is the analytic mean, its Laplace cov the exact cov
    m = Posterior(em, prior).find_map(sp)
    assert np.allclose(m["values"], mean, atol=1e-5 * sd.max())
    assert np.allclose(m["cov"], cov, rtol=1e-4, atol=1e-10)
    ll = idata.log_likelihood["flux"]
    assert ll.dims == ("chain", "draw", "pixel") and ll.shape[:2] == (idata.posterior.sizes["chain"],
                                                                     idata.posterior.sizes["draw"])


def test_same_seed_same_draws(toy):
    em, sp, prior, _, _ = toy
    a = sample(em, sp, prior=prior, num_warmup=200, num_samples=100, num_chains=2, seed=7, progress=False)
    b = sample(em, sp, prior=prior, num_warmup=200, num_samples=100, num_chains=2, seed=7, progress=False)
    assert np.array_equal(a.posterior["a"].values, b.posterior["a"].values)
    c = sample(em, sp, prior=prior, sampler="emcee", num_warmup=50, num_samples=50, seed=7, progress=False)
    d = sample(em, sp, prior=prior, sampler="emcee", num_warmup=50, num_samples=50, seed=7, progress=False)
    assert np.array_equal(c.posterior["b"].values, d.posterior["b"].values)


def test_simulation_based_calibration(demo_small):
    """≥ 100 stars drawn from the prior, spectra from the emulator itself plus noise:
    the posterior rank of the truth is uniform and 68 % intervals cover 68 %."""
    em, _ = demo_small
    mid, span = 0.5 * (em.label_min_ + em.label_max_), em.label_max_ - em.label_min_
    prior = Gaussian(em.label_names_, mid, span / 6)
    post = Posterior(em, prior, model_error="none")
    rng = np.random.default_rng(2024)
    n_star, thin, n_draw = 200, 4, 400
    ranks, covered = [], []
    for i in range(n_star):
        while True:                                     # the prior truncated to the support box
            truth = mid + span / 6 * rng.standard_normal(3)
            if np.all((truth > em.label_min_) & (truth < em.label_max_)):
                break
        snr = 30.0
        flux = em.predict(truth) + rng.normal(0, 1 / snr, em.wave_.size)
        sp = Spectra(em.wave_, flux[None], np.full((1, em.wave_.size), snr**2))
        theta, _ = run_nuts(post, post.data(sp), post.find_map(sp), 300, n_draw, 1, seed=i, progress=False)
        draws = post.from_std(theta[0, ::thin])
        ranks.append((draws < truth).sum(0))
        lo, hi = np.percentile(draws, [16, 84], axis=0)
        covered.append((truth > lo) & (truth < hi))
    ranks, covered = np.array(ranks), np.array(covered)
    n_bins = 10
    for j, name in enumerate(em.label_names_):
        counts = np.histogram(ranks[:, j], bins=n_bins, range=(0, n_draw // thin + 1))[0]
        p = stats.chisquare(counts).pvalue
        cov68 = covered[:, j].mean()
        print(f"SBC {name}: rank chi2 p = {p:.3f}, 68% coverage = {cov68:.2f} ({n_star} stars)")
        assert p > 0.01, (name, counts)
        assert 0.60 <= cov68 <= 0.76, (name, cov68)


def test_unknown_prior_label_is_a_clear_error(demo_small):
    em, _ = demo_small
    with pytest.raises(KeyError, match="alpha_m"):
        Posterior(em, Gaussian(["alpha_m"], [0.1], [0.1]))


@pytest.mark.slow
def test_dwarf_snr100_converges_and_matches_laplace(dwarf_emulator):
    em, d, pix = dwarf_emulator
    sel = np.flatnonzero(d["test"]["snr"] == 100.0)
    lab = d["test"]["labels"][sel]
    lo, hi = em.label_min_, em.label_max_
    central = np.all(np.abs((lab - 0.5 * (lo + hi)) / (hi - lo)) < 0.3, axis=1)   # away from the box edges
    i = int(sel[np.flatnonzero(central)[0]])
    sp = Spectra(d["wave"][pix], d["test"]["flux"][i:i + 1, pix], d["test"]["ivar"][i:i + 1, pix])
    idata = sample(em, sp, num_warmup=500, num_samples=1000, num_chains=4, seed=0, progress=False)
    t = compare_to_laplace(idata)
    print(t["name", "r_hat", "ess_bulk", "shift", "width"], "\ndivergences", t.meta["divergences"],
          "KL", round(t.meta["kl"], 3), "laplace_ok", t.meta["laplace_ok"],
          "time", round(idata.posterior.attrs["sampling_time_s"], 1), "s")
    assert np.all(t["r_hat"] < 1.01)
    assert np.all(t["ess_bulk"] > 400)
    assert t.meta["divergences"] == 0
    assert np.all((t["width"] > 0.8) & (t["width"] < 1.25))
    assert np.all(np.abs(t["shift"]) < 0.5)
    assert t.meta["laplace_ok"]


@pytest.mark.slow
def test_parallax_prior_tightens_logg_at_snr20(dwarf_emulator):
    em, d, pix = dwarf_emulator
    sel = np.flatnonzero(d["test"]["snr"] == 20.0)
    i = int(sel[np.argmin(np.abs(d["test"]["labels"][sel, 1] - 4.3))])   # a main-sequence dwarf
    teff, logg = d["test"]["labels"][i, :2]
    sp = Spectra(d["wave"][pix], d["test"]["flux"][i:i + 1, pix], d["test"]["ivar"][i:i + 1, pix])
    mag = 11.0
    plx = float(predicted_parallax(teff, logg, 1.0, mag))
    prior = Parallax(plx, 0.02 * plx, mag)                           # 2 % parallax, mass marginalized
    kw = dict(num_warmup=500, num_samples=1000, num_chains=2, seed=3, progress=False)
    free = sample(em, sp, **kw)
    with_plx = sample(em, sp, prior=prior, **kw)
    s0, s1 = float(free.posterior["logg"].std()), float(with_plx.posterior["logg"].std())
    print(f"dwarf S/N 20 (true logg {logg:.2f}): sigma(logg) {s0:.3f} without, {s1:.3f} with parallax; "
          f"mass {float(with_plx.posterior['mass'].mean()):.2f} ± {float(with_plx.posterior['mass'].std()):.2f}")
    assert "mass" in with_plx.posterior                              # the nuisance parameter is sampled
    # log g = log(M T⁴/L) + const: the parallax (2 % → 4 % in L) with the log-normal mass prior
    # pins log g to ≈ sqrt(σ_lnM² + 0.04²)/ln 10; combined with the spectrum's σ(log g) alone:
    s_plx = np.hypot(prior.mass_sigma_ln, 0.04) / np.log(10)
    expected = (s0**-2 + s_plx**-2) ** -0.5
    print(f"  expected sigma(logg) with parallax ≈ {expected:.3f}")
    assert s1 < 0.9 * s0 and abs(s1 / expected - 1) < 0.25
    assert abs(float(with_plx.posterior["logg"].mean()) - logg) < 3 * s1


@pytest.mark.slow
def test_galactic_prior_pulls_feh_towards_halo(dwarf_emulator):
    em, d, pix = dwarf_emulator
    sel = np.flatnonzero(d["test"]["snr"] == 20.0)
    i = int(sel[np.argmin(np.abs(d["test"]["labels"][sel, 2] + 0.6))])
    sp = Spectra(d["wave"][pix], d["test"]["flux"][i:i + 1, pix], d["test"]["ivar"][i:i + 1, pix])
    halo = GalacticModel(l_deg=30.0, b_deg=70.0, parallax=0.1, parallax_err=0.02)   # ~10 kpc above the disk
    disk = GalacticModel(l_deg=30.0, b_deg=0.5, parallax=2.0, parallax_err=0.1)     # 500 pc in the plane
    assert halo.weights["halo"] > 0.9 and disk.weights["thin"] > 0.9
    kw = dict(num_warmup=400, num_samples=800, num_chains=2, seed=5, progress=False)
    feh = {name: sample(em, sp, prior=p, **kw).posterior["feh"].values.ravel()
           for name, p in (("none", None), ("halo", halo), ("disk", disk))}
    m = {k: v.mean() for k, v in feh.items()}
    print(f"[Fe/H] posterior mean: no prior {m['none']:.3f}, halo sight line {m['halo']:.3f}, "
          f"disk sight line {m['disk']:.3f} (true {d['test']['labels'][i, 2]:.2f})")
    # the spectrum alone gives N(m, s²); times the dominant component's N(μ_k, σ_k²) the mean
    # moves to the precision-weighted average: predicted here and checked against the samples
    s2 = feh["none"].var()
    for name, (mu_k, sig_k) in (("halo", (-1.5, 0.5)), ("disk", (-0.1, 0.2))):
        expected = (m["none"] / s2 + mu_k / sig_k**2) / (1 / s2 + 1 / sig_k**2)
        print(f"  {name}: expected {expected:.3f}, sampled {m[name]:.3f}")
        assert abs(m[name] - expected) < 0.02
    assert m["halo"] < m["none"] - 0.02 < m["disk"] - 0.04


def test_fit_map_posterior_with_nuisance_mass(demo_small):
    em, train = demo_small
    sp = train[:2]
    t = fit_map_posterior(em, sp, prior=Parallax(1.0, 0.05, 10.0), progress=False)
    assert list(t.meta["PARAMS"].split(",")) == ["teff", "logg", "feh", "mass"]
    assert np.all(t["converged"]) and np.all(np.isfinite(t["logg_err"]))
    assert t["cov"].shape == (2, 4, 4)


def test_inference_data_is_self_describing_and_works_with_loo_and_ppc(demo_calibrated, tmp_path):
    import arviz as az
    import matplotlib
    matplotlib.use("Agg")

    from slambayes.datasets import make_demo
    from slambayes.priors import Gaussian

    em, train = demo_calibrated
    star = make_demo(1, snr=60.0, seed=8, wave=em.wave_, ranges=[[5600, 6200], [3.2, 4.0], [-0.6, -0.1]])
    star.meta["id"] = ["star-42"]
    prior = Gaussian(["feh"], mean=[-0.3], sigma=[0.2])
    idata = sample(em, star, prior=prior, num_warmup=150, num_samples=100, num_chains=2, seed=3, progress=False)
    path = tmp_path / "star.nc"
    idata.to_netcdf(path)
    back = az.from_netcdf(path)
    a = back.posterior.attrs
    assert a["star_id"] == "star-42" and a["prior"] == repr(prior) == "Gaussian(label_names=['feh'], mean=[-0.3], sigma=[0.2])"
    assert a["model_hash"] == em.model_hash and a["model_error"] == "correlated"
    for group in ("posterior", "log_likelihood", "posterior_predictive", "sample_stats"):
        assert back[group].attrs["inference_library"] == "numpyro", group
    assert back.posterior["teff"].attrs["units"] == "K" and back.posterior["logg"].attrs["units"] == "dex"
    n_good = int((star.ivar[0] > 0).sum())
    assert back.log_likelihood["flux"].shape == (2, 100, n_good)
    loo = az.loo(back)
    assert loo.n_data_points == n_good and np.isfinite(loo.elpd_loo)
    assert back.posterior_predictive["flux"].shape == (2, 100, n_good)
    axes = az.plot_ppc(back, num_pp_samples=20)
    assert np.size(axes) >= 1


def test_posterior_does_not_switch_the_session_to_float64():
    """slambayes runs its jax code in float64 inside its own calls; the user's session keeps its setting."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from slambayes import Emulator, Posterior, sample
        from slambayes.datasets import make_demo
        from slambayes.preprocess import default_grid
        wave = default_grid(5000.0, 5200.0, 4.0)
        em = Emulator(C=(10.0,), gamma=(0.3,), cv=0, n_jobs=1, progress=False).fit(make_demo(60, seed=1, wave=wave))
        star = make_demo(1, snr=50.0, seed=2, wave=wave)
        post = Posterior(em, calibration="none")
        m = post.find_map(star)
        ll = post.log_likelihood(jnp.asarray(m["values"]), *post.data(star)[:5])
        idata = sample(post, star, num_warmup=30, num_samples=20, num_chains=1, progress=False)
        assert not jax.config.jax_enable_x64, "the session was switched to float64"
        assert jnp.ones(1).dtype == jnp.float32
        assert ll.dtype == jnp.float64 and idata.posterior["teff"].dtype == np.float64
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
