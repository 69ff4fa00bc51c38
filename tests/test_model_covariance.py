import numpy as np
import pytest

from slambayes import Emulator, Spectra, fit_map
from slambayes.datasets import make_demo
from slambayes.model_covariance import Whitener, error_factor
from slambayes.validation import labels_from_catalog


def test_whitener_matches_the_dense_inverse_and_determinant(rng):
    n, m = 60, 5
    d = rng.uniform(0.2, 3.0, n)
    F = rng.normal(size=(n, m))
    S = np.diag(d) + F @ F.T
    w = Whitener(d, F)
    x, X = rng.normal(size=n), rng.normal(size=(n, 3))
    assert w(x) @ w(x) == pytest.approx(x @ np.linalg.solve(S, x), rel=1e-12)
    assert np.allclose(w(X).T @ w(X), X.T @ np.linalg.solve(S, X), rtol=1e-12, atol=1e-12)
    assert w.logdet == pytest.approx(np.linalg.slogdet(S)[1], rel=1e-12)
    diag = Whitener(d)
    assert np.allclose(diag(x), x / np.sqrt(d)) and diag.logdet == pytest.approx(np.log(d).sum())


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
    assert np.all((F**2).sum(1) <= em.model_error("cv") ** 2 * (1 + 1e-9))
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
    with pytest.raises(ValueError, match="available in fit_map"):
        Posterior(em, model_error="correlated")
