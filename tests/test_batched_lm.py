"""The batched engine against scipy's least_squares: the generic solver, and fit_map's two engines."""
import numpy as np
import pytest
from conftest import assert_engines_agree
from scipy.optimize import least_squares

from slambayes import fit_map
from slambayes.batched_lm import least_squares_batch
from slambayes.datasets import make_demo

T = np.linspace(0.0, 4.0, 60)
SIGMA = 0.05


def _model(x):
    return x[0] * np.exp(-x[1] * T) + x[2] * np.sin(x[3] * T)


def _jac(x, y=None):
    e = np.exp(-x[1] * T)
    return -np.column_stack([e, -x[0] * T * e, np.sin(x[3] * T), x[2] * T * np.cos(x[3] * T)]) / SIGMA


def _resid(x, y):
    return (y - _model(x)) / SIGMA


LO, HI = np.array([0.0, 0.0, 0.0, 0.3]), np.array([5.0, 3.0, 2.0, 1.8])


def _problems(n, seed):
    rng = np.random.default_rng(seed)
    truth = rng.uniform([1.0, 0.2, 0.3, 0.5], [3.0, 1.5, 1.0, 2.1], (n, 4))    # some frequencies beyond HI
    ys = [_model(x) + rng.normal(0, SIGMA, T.size) for x in truth]
    x0 = np.clip(truth + rng.normal(0, 0.1, truth.shape), LO + 0.05, HI - 0.05)
    return ys, x0


def test_batch_agrees_with_scipy_inside_and_at_the_bounds():
    ys, x0 = _problems(40, seed=0)
    calls = []

    def residuals(idx, X):
        calls.append(len(idx))
        return [(_resid(x, ys[i]), _jac(x), i) for i, x in zip(idx, X)]

    sols = least_squares_batch(residuals, x0, LO, HI)
    at_bound = 0
    for i, sol in enumerate(sols):
        ref = least_squares(_resid, x0[i], jac=_jac, args=(ys[i],), bounds=(LO, HI), x_scale="jac")
        J = _jac(ref.x)
        free = (ref.x > LO + 1e-6) & (ref.x < HI - 1e-6)
        at_bound += int(not free.all())
        sd = np.sqrt(np.diag(np.linalg.inv((J.T @ J)[np.ix_(free, free)])))
        assert sol.success and sol.state == i
        # scipy's reflective trust region stops a little short at a bound: 0.004 σ on one of these
        assert np.all(np.abs(sol.x[free] - ref.x[free]) / sd < 0.01), (i, sol.x, ref.x)
        assert np.allclose(sol.x[~free], ref.x[~free], atol=1e-6)
        assert sol.cost - ref.cost < 1e-6 * ref.cost
        assert np.all((sol.x >= LO) & (sol.x <= HI))
    assert at_bound >= 3                      # the constrained case is exercised
    # one call per iteration for all problems still running; converged ones leave the batch
    assert calls[0] == 40 and calls[-1] < 40 and len(calls) < 40


def test_batch_stops_a_problem_with_nonfinite_residuals_and_solves_the_others():
    ys, x0 = _problems(3, seed=1)
    ys[1] = ys[1].copy()
    ys[1][5] = np.nan
    sols = least_squares_batch(lambda idx, X: [(_resid(x, ys[i]), _jac(x), None) for i, x in zip(idx, X)],
                               x0, LO, HI)
    assert not sols[1].success and "not finite" in sols[1].message
    assert sols[0].success and sols[2].success


def test_batch_is_unbounded_with_infinite_bounds_and_respects_max_nfev():
    ys, x0 = _problems(5, seed=2)

    def residuals(idx, X):
        return [(_resid(x, ys[i]), _jac(x), None) for i, x in zip(idx, X)]

    free = least_squares_batch(residuals, x0, -np.inf, np.inf)
    for i, sol in enumerate(free):
        ref = least_squares(_resid, x0[i], jac=_jac, args=(ys[i],), method="lm")
        assert abs(sol.cost - ref.cost) < 1e-6 * ref.cost
    short = least_squares_batch(residuals, x0 + 0.3, LO, HI, max_nfev=2)
    assert all(s.nfev <= 2 for s in short) and not all(s.success for s in short)


class _Gauss:
    def __init__(self, names, mean, cov):
        self.names, self.mean, self.cov = names, mean, cov

    def gaussian_terms(self):
        return [(self.names, self.mean, self.cov)]


@pytest.mark.parametrize("extra", [{}, {"prior": _Gauss(["logg"], [3.5], [[0.3**2]])}, {"fit_rv": True},
                                   {"model_error": "cv", "n_starts": 2}])
def test_fit_map_engines_agree(demo_calibrated, extra):
    """The batched engine's catalog is scipy's: labels within 0.05 σ, errors within 5 % (the issue's
    limits; measured ≤ 0.01 σ and ≤ 0.5 %), the same flags, with the correlated model error (the
    default here), a Gaussian prior, a fitted rv_resid, Eq. 8 with two starts; spikes clipped alike."""
    em, train = demo_calibrated
    sp = make_demo(24, snr=np.resize([15.0, 40.0, 120.0], 24), seed=21, wave=train.wave)
    sp.flux[3, 40] += 1.0                      # a cosmic ray: both engines clip it and refit
    cats = {eng: fit_map(em, sp, engine=eng, progress=False, **extra) for eng in ("scipy", "batched")}
    a, b = cats["scipy"], cats["batched"]
    assert a.meta["ENGINE"] == "scipy" and b.meta["ENGINE"] == "batched"
    names = list(em.label_names_) + (["rv_resid"] if extra.get("fit_rv") else [])
    assert_engines_agree(a, b, names)
    assert np.array_equal(a["n_clipped"], b["n_clipped"])
    assert a["n_clipped"][3] >= 1
    assert np.array_equal(a["laplace_ok"], b["laplace_ok"])
    # fewer evaluations than scipy needs, not more
    assert np.median(b["nfev"]) <= np.median(a["nfev"])


def test_engine_choice_is_checked(demo_small):
    em, train = demo_small
    sp = make_demo(2, snr=50.0, seed=3, wave=train.wave)
    with pytest.raises(ValueError, match="engine must be one of"):
        fit_map(em, sp, engine="gpu", progress=False)
    with pytest.raises(ValueError, match="use engine='scipy'"):
        fit_map(em, sp, engine="batched", loss="soft_l1", progress=False)
    # "auto" picks scipy's engine where the batched one does not apply
    assert fit_map(em, sp, loss="soft_l1", progress=False).meta["ENGINE"] == "scipy"
    assert fit_map(em, sp, progress=False).meta["ENGINE"] == "batched"
