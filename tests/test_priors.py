import numpy as np
import pytest
from scipy.stats import multivariate_normal

from slambayes import fit_map, priors
from slambayes.datasets import make_demo


def test_gaussian_log_prob_matches_scipy():
    cov = [[100.0**2, 5.0], [5.0, 0.2**2]]
    g = priors.Gaussian(["teff", "logg"], [5000.0, 4.0], cov=cov)
    x = np.array([[5100.0, 3.9], [4800.0, 4.4]])
    assert np.allclose(np.asarray(g.log_prob(x)), multivariate_normal([5000, 4], cov).logpdf(x), atol=1e-9)


def test_product_and_selection_and_uniform():
    p = priors.get("gaussian", label_names=["logg"], mean=[4.0], sigma=[0.1]) + \
        priors.Uniform(["teff", "logg"], [4000, 0], [7000, 5])
    assert p.label_names == ("logg", "teff")
    full = np.array([[5000.0, 4.0, 0.0], [8000.0, 4.0, 0.0]])
    lp = np.asarray(p.log_prob_of(full, ["teff", "logg", "feh"]))
    expect = -0.5 * np.log(2 * np.pi * 0.01) - np.log(3000 * 5)
    assert lp[0] == pytest.approx(expect) and lp[1] == -np.inf
    assert p.gaussian_terms() is None
    with pytest.raises(KeyError, match="vmacro"):
        priors.Gaussian(["vmacro"], [1.0], sigma=[1.0]).log_prob_of(full, ["teff", "logg", "feh"])
    with pytest.raises(KeyError, match="available"):
        priors.get("no-such-prior")


def test_gaussian_prior_object_in_map(demo_small):
    em, train = demo_small
    sp = make_demo(2, snr=15.0, seed=8, wave=train.wave, ranges=[[5000, 6000], [3, 4], [-1, 0]])
    tight = fit_map(em, sp, prior=priors.Gaussian(["logg"], [2.0], sigma=[0.05]), progress=False)
    assert np.all(np.abs(np.asarray(tight["logg"]) - 2.0) < 0.15)
    with pytest.raises(TypeError, match="not Gaussian"):
        fit_map(em, sp, prior=priors.Uniform.from_emulator(em), progress=False)
