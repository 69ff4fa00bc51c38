"""One noise model: numpy (least squares) and jax (samplers) give the same density, the
catalog and the single-star MAP are the same fit, and the settings are resolved once."""
import copy
import re
from pathlib import Path

import numpy as np
import pytest

from slambayes import Posterior, Spectra, fit_map
from slambayes.datasets import make_demo
from slambayes.diagnostics import NoiseMismatchError, compare_to_laplace
from slambayes.likelihood import MODEL_ERRORS, NoiseModel


def _star(train, seed=4):
    sp = make_demo(1, snr=40.0, seed=seed, wave=train.wave, ranges=[[5200, 6200], [3, 4.2], [-0.8, 0]])
    ivar = sp.ivar.copy()
    ivar[0, ::9] = 0.0                                   # masked pixels drop out of both forms
    return Spectra(sp.wave, sp.flux, ivar, meta=sp.meta), sp.labels[0]


@pytest.mark.parametrize("kind", ["cv", "correlated"])
def test_jax_density_equals_numpy_residuals(demo_small, kind):
    em, train = demo_small
    sp, labels = _star(train)
    noise = NoiseModel.resolve(em, kind)
    star = noise.star(sp.ivar[0])
    model = em.predict(labels * [1.01, 0.97, 1.0] + [0, 0, 0.05])
    r = np.where(star.good, sp.flux[0] - model, 0.0)
    chi2_numpy = float(np.sum(star.whiten(r) ** 2))
    # the dense covariance on the good pixels, built from its definition
    g = star.good
    F = noise.factor[g]
    cov = np.diag(1 / sp.ivar[0][g] + noise.sigma_model[g] ** 2 - (F**2).sum(1)) + F @ F.T
    chi2_dense = float(r[g] @ np.linalg.solve(cov, r[g]))
    norm_dense = -0.5 * (g.sum() * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1])
    post = Posterior(em, model_error=kind, calibration="none")
    data = post.data(sp)[:5]               # the likelihood's arrays (the offset factor is last)
    # numpy (float64) in: jax arrays made outside slambayes' float64 scope would be float32
    ll_jax = float(post.log_likelihood(np.asarray(labels * [1.01, 0.97, 1.0] + [0, 0, 0.05]), *data))
    chi2_jax = -2 * (ll_jax - float(data[-1]))
    print(kind, "rank", noise.rank, "chi2 numpy", chi2_numpy, "jax", chi2_jax, "dense", chi2_dense)
    assert abs(chi2_jax / chi2_numpy - 1) < 1e-10
    # the samplers' form with a low-rank emulator: its density projected on the coefficient basis
    low = copy.copy(em)
    low.compression = 0.002
    post_low = Posterior(low, model_error=kind, calibration="none")
    assert post._projection is None and post_low._projection is not None
    assert post_low.density_data(data)[2].shape[0] < train.n_pix
    theta = np.asarray(labels * [1.01, 0.97, 1.0] + [0, 0, 0.05])
    full, sampled = (float(f(theta, *d)) - float(data[-1]) for f, d in (
        (post_low.log_likelihood, data), (post_low.sampled_log_likelihood, post_low.density_data(data)[:-1])))
    assert abs(sampled / full - 1) < 1e-10
    assert abs(chi2_numpy / chi2_dense - 1) < 1e-8
    assert abs(star.norm - norm_dense) < 1e-8 * abs(norm_dense)
    assert (noise.rank > 0) == (kind == "correlated")
    # the per-pixel terms (InferenceData's log_likelihood, for az.loo) sum to the density
    theta = np.asarray(labels * [1.01, 0.97, 1.0] + [0, 0, 0.05])
    pointwise = np.asarray(post.pointwise_log_likelihood(theta, *data))
    assert abs(pointwise.sum() / ll_jax - 1) < 1e-10 and np.all(pointwise[~star.good] == 0)
    if kind == "cv":     # independent pixels: each term is that pixel's Gaussian log density
        sd = 1 / np.sqrt(star.weights[g])
        np.testing.assert_allclose(pointwise[g], -0.5 * (r[g] / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi),
                                   rtol=1e-10)


def test_resolution_of_the_settings(demo_small):
    em, _ = demo_small
    assert NoiseModel.resolve(em).kind == "correlated"           # auto: the emulator has the factor
    assert NoiseModel.resolve(em, "cv").rank == 0
    assert NoiseModel.resolve(em, "none").sigma_model.max() == 0
    resolved = NoiseModel.resolve(em, "cv")
    assert NoiseModel.resolve(em, resolved) is resolved
    with pytest.raises(ValueError, match="model_error must be one of"):
        NoiseModel.resolve(em, "independent")
    with pytest.raises(ValueError, match="calibration must be one of"):
        NoiseModel.resolve(em, "cv", calibration="yes")


def test_model_error_strings_are_resolved_in_one_module():
    pkg = Path(__file__).resolve().parents[1] / "slambayes"
    comparisons = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](%s)["']""" % "|".join(m for m in MODEL_ERRORS if m != "auto"))
    hits = [f"{p.name}:{i + 1}" for p in pkg.glob("*.py") if p.name != "likelihood.py"
            for i, line in enumerate(p.read_text().splitlines()) if comparisons.search(line)]
    assert hits == []


def test_catalog_row_and_single_star_map_are_the_same_fit(demo_small):
    em, train = demo_small
    sp, _ = _star(train, seed=8)
    row = fit_map(em, sp, progress=False)[0]
    m = Posterior(em).find_map(sp)
    k = len(em.label_names_)
    values = np.array([row[n] for n in em.label_names_])
    assert np.allclose(m["values"], values, rtol=0, atol=1e-9 * np.abs(values).max())
    assert np.allclose(m["cov"], np.asarray(row["cov"]).reshape(k, k), rtol=1e-8)
    assert m["noise"] == row.meta["NOISETAG"] == "correlated(m=50)"


def test_compare_to_laplace_refuses_a_row_of_another_likelihood(demo_small):
    from slambayes import sample

    em, train = demo_small
    sp, _ = _star(train, seed=9)
    idata = sample(em, sp, num_warmup=150, num_samples=150, num_chains=2, seed=0, progress=False)
    eq8 = fit_map(em, sp, model_error="cv", progress=False)[0]
    with pytest.raises(NoiseMismatchError, match="another likelihood"):
        compare_to_laplace(idata, eq8)
    same = fit_map(em, sp, progress=False)[0]
    t = compare_to_laplace(idata, same)
    assert np.allclose(t["map"], [same[n] for n in em.label_names_])


def test_catalog_covariance_is_the_laplace_approximation_of_the_sampled_density(demo_small):
    """The catalog's formal covariance is the inverse of the exact Hessian (jax autodiff of the
    density NUTS samples) at the MAP, not Gauss–Newton's (JᵀΣ⁻¹J)⁻¹ where the two differ."""
    import jax
    import jax.numpy as jnp

    from slambayes.float64 import enabled

    em, train = demo_small
    sp, _ = _star(train, seed=9)
    row = fit_map(em, sp, progress=False, calibration="none")[0]
    post = Posterior(em, calibration="none")
    values = np.array([row[n] for n in em.label_names_])
    with enabled():
        data = [jnp.asarray(d) for d in post.data(sp)[:5]]
        H = np.asarray(jax.hessian(lambda p: -post.log_likelihood(p, *data))(jnp.asarray(values)))
        J = np.asarray(jax.jacfwd(post.model_flux)(jnp.asarray(values)))
    cov = np.asarray(row["cov_formal"])
    np.testing.assert_allclose(cov, np.linalg.inv(H), rtol=1e-6, atol=0)
    star = NoiseModel.resolve(em, "auto").star(sp.ivar[0])
    Jw = star.whiten(J)
    gauss_newton = np.linalg.inv(Jw.T @ Jw)
    assert np.max(np.abs(np.sqrt(np.diag(gauss_newton) / np.diag(cov)) - 1)) > 1e-4   # the term matters here
