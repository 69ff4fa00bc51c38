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


def test_training_density_matches_sklearn_and_stays_on_the_training_cloud(rng):
    from sklearn.mixture import GaussianMixture
    dwarfs = np.column_stack([rng.normal(5600, 300, 300), rng.normal(4.4, 0.1, 300)])
    giants = np.column_stack([rng.normal(4700, 200, 300), rng.normal(2.5, 0.3, 300)])
    labels = np.vstack([dwarfs, giants])
    td = priors.TrainingDensity(labels, ["teff", "logg"], n_components=4)
    gm = GaussianMixture(4, covariance_type="full", reg_covar=1e-2, random_state=0)
    gm.fit((labels - labels.mean(0)) / labels.std(0))
    x = np.array([[5600.0, 4.4], [4700.0, 2.5], [5600.0, 2.5]])
    ref = gm.score_samples((x - labels.mean(0)) / labels.std(0)) - np.log(labels.std(0)).sum()
    assert np.allclose(np.asarray(td.log_prob(x)), ref, atol=1e-8)
    assert td.log_prob(x)[2] < td.log_prob(x)[0] - 5          # between the two clouds: unlikely
    import jax
    draws = np.asarray(td.sample(jax.random.PRNGKey(0), 4000))
    assert np.allclose(draws.mean(0), labels.mean(0), rtol=0.02)


def test_parallax_prior_physics():
    from slambayes.priors.parallax import bc_g, predicted_parallax
    # the Sun at 10 pc: M_G = 4.74 − BC_G(5772) = 4.68 mag, parallax 100 mas
    assert float(bc_g(5772.0)) == pytest.approx(0.06)
    assert float(predicted_parallax(5772.0, 4.438, 1.0, 4.68)) == pytest.approx(100.0, rel=1e-9)
    assert abs(float(bc_g(3999.9)) - float(bc_g(4000.0))) < 0.01    # the two polynomials meet
    p = priors.Parallax(100.0, 1.0, 4.68)
    assert p.label_names == ("teff", "logg", "mass") and "mass" in p.nuisance
    lp = np.asarray(p.log_prob(np.array([[5772.0, 4.438, 1.0], [5772.0, 3.438, 1.0]])))
    assert lp[0] > lp[1] + 100                                # a giant at 100 mas would be far too bright
    fixed = priors.Parallax(100.0, 1.0, 4.68, mass=1.0)
    assert fixed.label_names == ("teff", "logg") and not fixed.nuisance
    with pytest.raises(ValueError, match="parallax_err"):
        priors.Parallax(1.0, 0.0, 10.0)
    with pytest.raises(ValueError, match="band"):
        priors.Parallax(1.0, 0.1, 10.0, band="K")


def test_galactic_model_weights_and_normalization():
    from scipy.integrate import quad
    halo = priors.GalacticModel(0.0, 80.0, parallax=0.1, parallax_err=0.02)
    plane = priors.GalacticModel(0.0, 0.0, parallax=2.0, parallax_err=0.1)
    near_pole = priors.GalacticModel(0.0, 80.0, parallax=1.0, parallax_err=0.05)   # 1 kpc up
    assert halo.weights["halo"] > 0.9 and plane.weights["thin"] > 0.9
    assert near_pole.weights["thick"] > plane.weights["thick"]
    assert sum(halo.weights.values()) == pytest.approx(1.0)
    area = quad(lambda f: float(np.exp(halo.log_prob(np.array([[f]]))[0])), -5, 3)[0]
    assert area == pytest.approx(1.0, abs=1e-6)
    a = priors.GalacticModel(0.0, 80.0, alpha="alpha_m")
    assert a.label_names == ("feh", "alpha_m")
    assert float(a.log_prob(np.array([-1.5, 0.3]))) > float(a.log_prob(np.array([-1.5, 0.0])))


def test_register_a_prior_by_name():
    class Slope(priors.Prior):
        def __init__(self, k=1.0):
            self.label_names, self.k = ("feh",), k

        def log_prob(self, values):
            return self.k * values[..., 0]

    priors.register("my_slope", Slope)
    assert "myslope" in priors.available()
    p = priors.get("My_Slope", k=2.0) + priors.Uniform(["feh"], [-1.0], [0.5])
    assert p.support() == {"feh": (-1.0, 0.5)} and float(p.log_prob(np.array([0.25]))) == pytest.approx(0.5 - np.log(1.5))
    with pytest.raises(TypeError):
        priors.register("bad", 3)


def test_gaussian_prior_refuses_a_non_positive_sigma():
    from slambayes.priors import Gaussian

    for bad in (-0.1, 0.0, float("nan")):
        with pytest.raises(ValueError, match="sigma must be positive"):
            Gaussian(["feh"], [-0.5], [bad])
