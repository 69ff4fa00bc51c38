"""Calibrated uncertainties, learned from out-of-fold fits of the training stars only."""
import copy
from dataclasses import replace

import numpy as np
import pytest

from slambayes import Emulator, Spectra, calibrate, fit_map, sample
from slambayes.calibration import Calibration, fit_calibration, t_consistency
from slambayes.datasets import make_demo
from slambayes.diagnostics import compare_to_laplace
from slambayes.validation import calibration, labels_from_catalog


def test_t_scale_is_consistent_at_the_gaussian():
    # a t(5) ML scale of N(0, 1) data is 1/κ: checked against a brute-force fit on draws
    rng = np.random.default_rng(0)
    e, s = rng.standard_normal(20000), np.ones(20000)
    quality = np.column_stack([np.ones(20000), np.full(20000, 0.5)])      # χ²_ν as expected
    cal = fit_calibration(e[:, None], s[:, None], s[:, None], quality, np.zeros((20000, 2)),
                          rng.standard_normal((50, 1)), np.array([10.0]))
    sigma = np.exp(cal.a[0])
    print("kappa", t_consistency(), "fitted σ of N(0, 1) residuals", sigma, "floor", cal.c[0])
    assert abs(sigma - 1) < 0.02 and cal.c[0] < 0.05


def test_calibration_grows_with_misfit_and_unusual_labels():
    rng = np.random.default_rng(1)
    n = 3000
    lr, lu = rng.uniform(0.0, 1.5, n), rng.uniform(-1, 1.5, n)
    true_scale = np.exp(0.3 + 0.5 * lr + 0.8 * lu)
    sigma = rng.uniform(0.5, 2, n)
    e = true_scale * sigma * rng.standard_normal(n)
    # half of the formal variance is observed noise (kept as it is), half model error (scaled)
    e = np.sqrt(0.5 + 0.5 * true_scale**2) * sigma * rng.standard_normal(n)
    # a share below 2 % leaves ρ = 1, so the misfit feature is ln χ²_ν itself
    quality = np.column_stack([np.exp(lr), np.full(n, 0.01)])
    cal = fit_calibration(e[:, None], sigma[:, None], sigma[:, None] / np.sqrt(2), quality,
                          np.column_stack([lu, np.zeros(n)]), rng.standard_normal((100, 1)), np.array([100.0]))
    # the fit is a t(5) scale made consistent at the Gaussian: on Gaussian residuals, the truth
    print("a w c", cal.a, cal.w[:, 0], cal.c)
    assert abs(cal.a[0] - 0.3) < 0.1 and abs(cal.w[0, 0] - 0.5) < 0.1 and abs(cal.w[1, 0] - 0.8) < 0.1


def test_demo_model_calibration_round_trip_and_generated_z_scores(demo_calibrated, tmp_path):
    em, train = demo_calibrated
    st = em.calibration_.stats
    print("calibration", em.calibration_.describe())
    assert st["n_fit"] >= 0.95 * train.n_star and st["model_error"] == "correlated"
    em.save(tmp_path / "m.npz")
    back = Emulator.load(tmp_path / "m.npz")
    assert isinstance(back.calibration_, Calibration)
    for f in ("a", "w", "c", "X_ref"):
        assert np.array_equal(getattr(back.calibration_, f), getattr(em.calibration_, f))
    # the training set's label distribution, at S/N from below to above the training spectra's 100
    test = make_demo(600, snr=np.resize([20.0, 50.0, 150.0], 600), seed=34, wave=train.wave)
    cat = fit_map(back, test, progress=False)
    assert cat.meta["CALIB"] == "out-of-fold" and cat.meta["NOISETAG"].endswith("+calibrated")
    same = fit_map(em, test, progress=False)
    assert np.array_equal(np.asarray(cat["teff_err"]), np.asarray(same["teff_err"]))
    est, err = labels_from_catalog(cat, em.label_names_)
    formal = np.column_stack([cat[n + "_err_formal"] for n in em.label_names_])
    ok = cat["flag"] == 0
    z_std = []
    for snr in (20.0, 50.0, 150.0):
        sel = ok & (test.meta["snr"] == snr)
        c = calibration(est[sel], err[sel], test.labels[sel])
        f = calibration(est[sel], formal[sel], test.labels[sel])
        print(f"S/N {snr:.0f}: z-std calibrated {np.round(c['z_std'], 2)} (formal {np.round(f['z_std'], 2)}), "
              f"68% coverage {np.round(c['coverage68'], 2)} (formal {np.round(f['coverage68'], 2)})")
        z_std.append((c["z_std"], f["z_std"]))
    cal_z, formal_z = np.array(z_std).transpose(1, 0, 2)
    # ~200 stars per S/N: a z-std is known to ±0.07 (heavier tails: ±0.1), hence 1.3 (the formal ones reach 2)
    # and closer to 1 than the formal ones, or as close as the z-std can be told (about 2 × 0.07) where
    # those are already right (faint stars, whose error is the noise's)
    assert np.all((cal_z > 0.8) & (cal_z < 1.3)) and np.all(np.abs(cal_z - 1) < np.maximum(np.abs(formal_z - 1), 0.15))
    assert np.all(err[ok] >= 0.5 * formal[ok])


def test_calibrate_refuses_other_spectra(demo_small):
    em, train = demo_small
    with pytest.raises(ValueError, match="own training spectra"):
        calibrate(copy.deepcopy(em), train[:100])


def test_posterior_carries_the_catalog_calibration(demo_calibrated):
    em, train = demo_calibrated
    sp = make_demo(1, snr=30.0, seed=41, wave=train.wave, ranges=[[5400, 6000], [3.2, 4.0], [-0.6, -0.2]])
    row = fit_map(em, sp, progress=False)[0]
    idata = sample(em, sp, num_warmup=400, num_samples=600, num_chains=4, seed=2, progress=False)
    assert "posterior_formal" not in idata.groups() and idata.posterior.attrs["calibrated"] == 1
    t = compare_to_laplace(idata, row)
    print(t["name", "map", "sigma_lm", "post_sd", "shift", "width"], t.meta["laplace_ok"])
    assert np.allclose(t["sigma_lm"], [row[n + "_err"] for n in em.label_names_])
    assert np.all((t["width"] > 0.8) & (t["width"] < 1.25)) and np.all(np.abs(t["shift"]) < 0.5)
    formal = np.array([row[n + "_err_formal"] for n in em.label_names_])
    assert np.all(np.array(t["post_sd"]) > formal)          # calibration widens, as in the catalog
    lo, hi = np.asarray(idata.posterior.attrs["support_low"]), np.asarray(idata.posterior.attrs["support_high"])
    assert np.allclose(lo, em.label_min_) and np.allclose(hi, em.label_max_)
    assert np.all(np.asarray(idata.posterior.attrs["edge_fraction"]) < 0.05)


def test_posterior_piled_at_the_edge_warns(demo_small):
    em, train = demo_small
    edge = em.label_max_ * np.array([1.0, 1.0, 1.0]) + np.array([0.0, 0.0, 0.3])   # [Fe/H] beyond the range
    flux = em.predict(np.clip(edge, em.label_min_, em.label_max_))
    sp = Spectra(em.wave_, (flux + 0.02)[None], np.full((1, em.wave_.size), 30.0**2))
    with pytest.warns(UserWarning, match="edge of the support"):
        idata = sample(em, sp, num_warmup=200, num_samples=200, num_chains=2, seed=0, progress=False)
    assert np.max(idata.posterior.attrs["edge_fraction"]) > 0.05


def test_expected_misfit_follows_the_noise_budget():
    from slambayes.calibration import expected_rchi2, fit_rho, misfit_feature

    share = np.array([0.1, 0.5, 0.9])
    rho = 0.4                                 # the true model variance is 40 % of the CV estimate
    quality = np.column_stack([expected_rchi2(share, rho), share])
    assert abs(fit_rho(quality) - rho) < 1e-12
    assert np.allclose(misfit_feature(quality, rho), 0)          # good fits at any S/N: no inflation
    assert np.allclose(misfit_feature(quality * [2.0, 1.0], rho), np.log(2))


def test_fit_checks_flag_gross_cases_and_spare_normal_stars(demo_calibrated, tmp_path):
    from slambayes.map_fit import FLAGS

    em, train = demo_calibrated
    checks = em.checks_
    print("check limits", checks.describe())
    em.save(tmp_path / "m.npz")
    assert Emulator.load(tmp_path / "m.npz").checks_.describe() == checks.describe()
    normal = make_demo(200, snr=np.resize([20.0, 50.0, 150.0], 200), seed=35, wave=train.wave)
    cat = fit_map(em, normal, progress=False)
    check_bits = FLAGS["poor_fit"] | FLAGS["out_of_distribution"] | FLAGS["not_normalized"]
    false = np.mean((np.asarray(cat["flag"]) & check_bits) != 0)
    print(f"normal stars flagged by the checks: {false:.1%}")
    assert false <= 0.02
    base = make_demo(4, snr=50.0, seed=36, wave=train.wave, ranges=[[5200, 6200], [3, 4.2], [-0.8, 0]])
    flux = base.flux.copy()
    flux[0] *= 100                                 # never normalized
    flux[1] *= 1e30                                # absurd
    flux[2, 120] = 50.0                            # one unflagged cosmic ray
    flux[3] = 1.0 + 0.3 * np.sin(base.wave / 7.0)  # not a star
    bad = fit_map(em, Spectra(base.wave, flux, base.ivar), progress=False)
    print(bad["flag", "teff", "rchi2", "n_clipped", "status"])
    assert np.all(np.asarray(bad["flag"])[[0, 1, 3]] != 0)
    assert bad["flag"][0] & FLAGS["not_normalized"] and bad["flag"][1] & FLAGS["not_normalized"]
    # the cosmic ray is clipped, and what is left is an ordinary good fit
    assert bad["n_clipped"][2] == 1 and bad["flag"][2] == 0 and bad["rchi2"][2] < 1.5
    assert "FLAGS" in bad.meta and "poor_fit" in bad.meta["FLAGS"] and bad.meta["CHECKS"] != "none"


def test_out_of_fold_models_do_not_choose_their_hyperparameters_on_their_own_stars():
    from slambayes.svr_training import choice_without_each_fold

    # grid of 2 × 1 points, 3 folds of 10 stars: point 0 wins overall only because of fold 0
    fold_sse = np.array([[[0.0, 5.0, 5.0]], [[9.0, 4.0, 4.0]]])      # (n_C, n_γ, n_fold)
    fold_n = np.array([10, 10, 10])
    assert np.argmin(fold_sse.sum(-1).ravel()) == 0
    # without fold 0, point 1 is better (8 < 10); without fold 1 or 2, point 0 (5 < 13)
    assert choice_without_each_fold(fold_sse, fold_n).tolist() == [1, 0, 0]


def test_fold_choices_are_kept_and_saved(demo_small, tmp_path):
    from slambayes import Emulator

    em, _ = demo_small
    assert em.fold_C_.shape == (em.wave_.size, em.cv) and em.fold_gamma_.shape == (em.wave_.size, em.cv)
    assert set(np.unique(em.fold_gamma_)) <= set(em.gamma) and set(np.unique(em.fold_C_)) <= set(em.C)
    # most pixels choose the same (C, γ) without any one fold
    same = np.mean(em.fold_gamma_ == em.gamma_[:, None])
    assert 0.5 < same <= 1.0
    em.save(tmp_path / "m.npz")
    back = Emulator.load(tmp_path / "m.npz")
    assert np.array_equal(back.fold_C_, em.fold_C_) and np.array_equal(back.fold_gamma_, em.fold_gamma_)


def test_fit_correlation_recovers_the_correlation_of_the_calibration_term():
    """Residuals drawn with covariance cov + D R D (cov the formal part, D R D the calibration's
    term with a known R): the maximum-likelihood R is recovered."""
    from slambayes.calibration import fit_correlation

    rng = np.random.default_rng(3)
    n, k = 3000, 3
    R = np.array([[1.0, 0.85, 0.6], [0.85, 1.0, 0.4], [0.6, 0.4, 1.0]])
    sd = rng.uniform(0.5, 2.0, (n, k))
    cov = np.einsum("ni,ij,nj->nij", 0.3 * sd, 0.5 * np.eye(k) + 0.5, 0.3 * sd)
    d = sd
    delta = d[:, :, None] * np.eye(k) * d[:, None, :]          # only its diagonal is used
    total = cov + d[:, :, None] * R * d[:, None, :]
    resid = np.einsum("nij,nj->ni", np.linalg.cholesky(total), rng.standard_normal((n, k)))
    got = fit_correlation(resid, cov, delta)
    print(np.round(got, 3))
    assert np.allclose(np.diag(got), 1) and np.max(np.abs(got - R)) < 0.05


def test_calibration_learns_the_label_correlations(demo_calibrated, tmp_path):
    """The calibrated model carries R, its term keeps each label's calibrated σ, and it survives
    the model file."""
    em, _ = demo_calibrated
    cal = em.calibration_
    assert cal.R is not None and np.allclose(np.diag(cal.R), 1) and np.all(np.linalg.eigvalsh(cal.R) > 0)
    s = np.array([[1.5, 2.0, 1.2]])
    cm = np.array([[[1.0, 0.3, 0.1], [0.3, 2.0, 0.2], [0.1, 0.2, 0.5]]])
    plain = replace(cal, R=None).term(cm, s)
    with_r = cal.term(cm, s)
    np.testing.assert_allclose(np.diagonal(with_r, axis1=1, axis2=2), np.diagonal(plain, axis1=1, axis2=2))
    em.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(Emulator.load(tmp_path / "m.npz").calibration_.R, cal.R)
