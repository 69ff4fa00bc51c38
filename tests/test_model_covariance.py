import numpy as np
import pytest

from slambayes import Emulator, fit_map
from slambayes.datasets import make_demo
from slambayes.model_covariance import error_factor
from slambayes.validation import labels_from_catalog


def test_star_noise_matches_the_dense_inverse_determinant_and_split(rng):
    from slambayes.likelihood import NoiseModel

    n, m = 60, 5
    F = rng.normal(size=(n, m))
    sigma_model = np.sqrt((F**2).sum(1) + rng.uniform(0.05, 0.5, n))
    ivar = 1 / rng.uniform(0.2, 3.0, n)
    ivar[::11] = 0.0
    g = ivar > 0
    star = NoiseModel("correlated", sigma_model, F).star(ivar)
    S_obs = np.diag(1 / ivar[g])
    S_model = np.diag(sigma_model[g] ** 2 - (F[g] ** 2).sum(1)) + F[g] @ F[g].T
    S = S_obs + S_model
    x, X = rng.normal(size=n), rng.normal(size=(n, 3))
    wx, wX = star.whiten(x), star.whiten(X)
    assert np.all(wx[~g] == 0)
    assert wx @ wx == pytest.approx(x[g] @ np.linalg.solve(S, x[g]), rel=1e-12)
    assert np.allclose(wX.T @ wX, X[g].T @ np.linalg.solve(S, X[g]), rtol=1e-12, atol=1e-12)
    assert star.norm == pytest.approx(-0.5 * (g.sum() * np.log(2 * np.pi) + np.linalg.slogdet(S)[1]), rel=1e-12)
    assert np.allclose(star.whiten_T(wX)[g], np.linalg.solve(S, X[g]), rtol=1e-10, atol=1e-12)
    # the model error's share of a fit's covariance, against its dense definition
    cov = np.linalg.inv(wX.T @ wX)
    B = np.linalg.solve(S, X[g])
    assert np.allclose(star.model_part(wX, cov), cov @ B.T @ S_model @ B @ cov, rtol=1e-9, atol=1e-14)
    diag = NoiseModel("cv", sigma_model, np.zeros((n, 0))).star(ivar)
    assert np.allclose(diag.whiten(x)[g], x[g] / np.sqrt(1 / ivar[g] + sigma_model[g] ** 2))


def test_error_factor_recovers_a_shared_error_pattern(rng):
    # 400 training stars, 30 pixels: one error pattern shared by all pixels (loading 0.8)
    # plus independent noise; a few residuals masked
    n, p = 400, 30
    load = np.linspace(-1, 1, p)
    load = 0.8 * load / np.abs(load).max()
    resid = rng.normal(size=(n, 1)) * load + rng.normal(size=(n, p)) * np.sqrt(1 - load**2)
    good = rng.uniform(size=(n, p)) > 0.05
    F = error_factor(np.where(good, resid, np.nan), good, rank=3)
    assert F.shape == (p, 3)
    assert np.all((F**2).sum(1) <= 1 + 1e-12)                 # never more than the pixel's variance
    lead = F[:, 0] * np.sign(F[:, 0] @ load)
    assert np.corrcoef(lead, load)[0, 1] > 0.98
    assert np.linalg.norm(lead - load) < 0.15 * np.linalg.norm(load)
    assert error_factor(resid, np.zeros_like(good), rank=3).any() == False  # noqa: E712


def test_correlated_model_error_fits_saves_and_loads(demo_small, tmp_path):
    em, train = demo_small
    F = em.error_factor_
    assert F.shape == (train.n_pix, train.n_star // 5)              # error_rank "auto"
    assert np.all((F**2).sum(1) <= em.cv_error ** 2 * (1 + 1e-9))
    em.save(tmp_path / "m.npz")
    back = Emulator.load(tmp_path / "m.npz")
    assert np.array_equal(back.error_factor_, F) and back.error_rank == "auto"
    test = make_demo(60, snr=50.0, seed=21, wave=train.wave, ranges=[[4800, 6800], [2, 4.5], [-1.2, 0.1]])
    cats = {me: fit_map(back, test, model_error=me, progress=False) for me in ("cv", "correlated")}
    for me, cat in cats.items():
        est, err = labels_from_catalog(cat, back.label_names_)
        res = est - test.labels
        print(me, "scatter", np.round(res.std(0), 3), "z-std", np.round((res / err).std(0), 2))
        assert np.all(cat["converged"]) and np.all(np.isfinite(err))
        assert np.std(res[:, 0]) < 150 and np.std(res[:, 1]) < 0.3
    # correlations only add information-free directions: errors never shrink below Eq. 8's
    e_cv = labels_from_catalog(cats["cv"], back.label_names_)[1]
    e_corr = labels_from_catalog(cats["correlated"], back.label_names_)[1]
    assert np.median(e_corr / e_cv) > 0.9


def test_correlated_model_error_needs_a_factor(demo_small):
    em, train = demo_small
    flat = Emulator(C=(10.0,), gamma=(0.1,), cv=0, n_jobs=1, progress=False).fit(train)
    assert flat.error_factor_.shape == (train.n_pix, 0)
    with pytest.raises(ValueError, match="correlated.*cross-validation"):
        fit_map(flat, make_demo(2, wave=train.wave), model_error="correlated", progress=False)
    from slambayes import Posterior
    with pytest.raises(ValueError, match="correlated.*cross-validation"):
        Posterior(flat, model_error="correlated")
    assert Posterior(flat).noise.kind == "cv" and Posterior(em).noise.kind == "correlated"
