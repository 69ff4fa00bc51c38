"""Real spectra's artefacts injected into generated spectra: the defaults must shrug them off or flag them."""
import numpy as np
import pytest

from slambayes import Spectra, fit_map
from slambayes.artefacts import add_spikes, scale_flux
from slambayes.datasets import make_demo
from slambayes.validation import calibration, labels_from_catalog


def test_add_spikes_and_scale_flux_are_deterministic_and_checked(demo_small):
    _, train = demo_small
    sp = train[:5]
    a, hit = add_spikes(sp, 0.02, seed=3)
    b, hit_b = add_spikes(sp, 0.02, seed=3)
    assert np.array_equal(a.flux, b.flux) and np.array_equal(hit, hit_b)
    assert np.all(hit.sum(1) == round(0.02 * sp.n_pix))
    assert np.array_equal(a.flux[~hit], sp.flux[~hit]) and np.all(a.flux[hit] != sp.flux[hit])
    assert np.all(a.flux > 0) and np.array_equal(a.ivar, sp.ivar)
    s = scale_flux(sp, 100.0)
    assert np.allclose(s.flux, 100 * sp.flux) and np.allclose(s.ivar * 1e4, sp.ivar)
    with pytest.raises(ValueError, match="fraction"):
        add_spikes(sp, 0.0)
    with pytest.raises(ValueError, match="factor"):
        scale_flux(sp, -1.0)


@pytest.mark.slow
def test_preselected_start_equals_the_exhaustive_capped_ranking(demo_small):
    from slambayes.start_points import start_indices
    from slambayes.map_fit import training_models

    em, _ = demo_small
    models = training_models(em)[1]
    test = make_demo(150, snr=30.0, seed=21, wave=em.wave_)
    for sp in (test, add_spikes(test, 0.02, seed=22)[0]):
        w = sp.ivar / (1 + sp.ivar * em.cv_error**2)
        exhaustive = [np.argsort(np.minimum((models - f) ** 2 * ww, 25.0).sum(1), kind="stable")[:3]
                      for f, ww in zip(sp.flux, w)]
        assert np.array_equal(start_indices(models, sp.flux, w, 3, cap=5.0), np.array(exhaustive))


def test_dwarfsim_spikes_in_one_percent_of_pixels_change_nothing(dwarf_emulator):
    em, d, pix = dwarf_emulator
    sel = np.concatenate([np.flatnonzero(d["test"]["snr"] == s)[:40] for s in (20.0, 50.0, 100.0, 200.0)])
    te = Spectra(d["wave"][pix], d["test"]["flux"][sel][:, pix], d["test"]["ivar"][sel][:, pix])
    truth = d["test"]["labels"][sel]
    spiked, hit = add_spikes(te, 0.01, seed=5)
    out = {}
    for name, sp in (("clean", te), ("spiked", spiked), ("spiked, not clipped", None)):
        cat = fit_map(em, spiked, clip_sigma=None, progress=False) if sp is None else fit_map(em, sp, progress=False)
        est, err = labels_from_catalog(cat, em.label_names_)
        out[name] = (np.std(est - truth, 0), calibration(est, err, truth)["z_std"], cat)
        print(f"{name:20s} scatter {np.round(out[name][0], 3)} z-std {np.round(out[name][1], 2)}")
    ratio = out["spiked"][0] / out["clean"][0]
    assert np.all(ratio < 1.1), ratio
    assert np.all(out["spiked"][1] < 1.3)
    # without clipping the same spikes ruin the fit: the test can tell
    assert np.all(out["spiked, not clipped"][0] > 1.5 * out["clean"][0])
    # most spikes are found (the faint ones at low S/N hide in the noise and do no harm)
    n_clip = np.asarray(out["spiked"][2]["n_clipped"])
    assert np.median(n_clip) >= 0.75 * np.median(hit.sum(1)) and np.all(out["clean"][2]["n_clipped"] <= 1)


def test_gross_cases_are_flagged_or_harmless(demo_calibrated):
    em, _ = demo_calibrated
    sp = make_demo(1, snr=50.0, seed=21, wave=em.wave_, ranges=[[5500, 6500], [3.0, 4.0], [-0.8, -0.2]])
    base = fit_map(em, sp, progress=False)[0]
    assert base["flag"] == 0
    for factor in (100.0, 1e30):
        row = fit_map(em, scale_flux(sp, factor), progress=False)[0]
        assert row["flag"] != 0, factor                     # not normalized (and more)
    # one pixel at 50: clipped, and the labels stay within their error of the clean fit
    flux = sp.flux.copy()
    flux[0, sp.n_pix // 2] = 50.0
    row = fit_map(em, sp.replace(flux=flux), progress=False)[0]
    assert row["n_clipped"] >= 1
    for n in em.label_names_:
        assert abs(row[n] - base[n]) < 0.5 * base[n + "_err"], n


def test_doppler_shift_is_exact_at_zero_smooth_and_differentiable():
    import jax
    import jax.numpy as jnp

    from slambayes.doppler import C_KMS, DopplerShift

    jax.config.update("jax_enable_x64", True)
    wave = np.exp(np.log(15100.0) + np.arange(2000) * 1.38e-5)          # APOGEE's log-linear step
    wave = np.delete(wave, np.arange(700, 760))                         # a chip gap
    line = lambda lam: 1 - 0.5 * np.exp(-0.5 * ((lam - 15200) / 0.4) ** 2) - 0.3 * np.exp(-0.5 * ((lam - 15500) / 0.5) ** 2)
    d = DopplerShift(wave)
    f = line(wave)
    assert d.n_runs == 2
    assert np.array_equal(d.shift(f, 0.0), f) and np.allclose(d.shift(np.ones(wave.size), 2.7), 1.0, rtol=0, atol=1e-14)
    for v in (-5.0, 1.0, 3.0):
        err = np.abs(d.shift(f, v) - line(wave / (1 + v / C_KMS)))
        assert err.max() < 3e-3, (v, err.max())       # 0.3 % of the continuum, lines of 4.5 px FWHM
    _, Jv, dv = d.shift_and_derivatives(f, np.column_stack([f, 2 * f]), 2.0)
    assert np.allclose(Jv, np.column_stack([d.shift(f, 2.0), 2 * d.shift(f, 2.0)]), rtol=1e-12)
    numeric = (d.shift(f, 2.0 + 1e-3) - d.shift(f, 2.0 - 1e-3)) / 2e-3
    assert np.allclose(dv, numeric, rtol=0, atol=1e-7 * np.abs(numeric).max())
    g = jax.grad(lambda v: jnp.sum(d.shift(jnp.asarray(f), v, xp=jnp) ** 2))(2.0)
    assert np.isclose(float(g), 2 * np.sum(d.shift(f, 2.0) * dv), rtol=1e-9)


@pytest.mark.slow
def test_residual_rv_is_fitted_and_sampled_on_apogee_resolution_spectra(bench_datasets):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from dwarf_cases import dwarf_population, full_block, observe_full

    from slambayes import Emulator, sample
    from slambayes.diagnostics import compare_to_laplace

    pix, bad = full_block(1000, 300)
    rng = np.random.default_rng(0)
    train, _ = observe_full(dwarf_population(rng, 300), pix, rng, snr=100.0)
    em = Emulator(C=(10.0, 100.0), gamma=(0.01, 0.1), cv=3, n_jobs=2, progress=False).fit(train)
    rng = np.random.default_rng(1)
    lab = dwarf_population(rng, 40)
    rv = rng.normal(0, 3.0, 40)
    zero, _ = observe_full(lab, pix, np.random.default_rng(2), snr=100.0, bad=bad)
    shifted, _ = observe_full(lab, pix, np.random.default_rng(2), snr=100.0, rv=rv, bad=bad)
    cat0 = fit_map(em, zero, progress=False)
    cat_no = fit_map(em, shifted, progress=False)
    cat = fit_map(em, shifted, fit_rv=True, progress=False)
    assert cat["rv_resid"].unit == "km / s" and cat.meta["FITRV"]
    names = em.label_names_
    s0, s_no, s_rv = (np.std(labels_from_catalog(c, names)[0] - lab, 0) for c in (cat0, cat_no, cat))
    d = np.asarray(cat["rv_resid"]) - rv
    print("scatter zero RV", np.round(s0, 3), "RV not fitted", np.round(s_no, 3), "fitted", np.round(s_rv, 3),
          "rv_resid − v std", np.std(d))
    assert np.std(d) < 0.6 and abs(np.mean(d)) < 0.3                 # km/s at S/N 100
    assert 0.7 < np.std(d / cat["rv_resid_err"]) < 1.4
    assert np.all(s_rv < 1.15 * s0) and s_no[0] > 1.2 * s0[0]
    # NUTS samples the same density: rv_resid's posterior agrees with the catalog row
    idata = sample(em, shifted[0:1], num_warmup=300, num_samples=300, num_chains=2, seed=1, fit_rv=True,
                   progress=False)
    row = dict(zip(cat.colnames, cat[0]))
    t = compare_to_laplace(idata)
    print(t["name", "shift", "width"], t.meta)
    assert list(t["name"]) == list(names) + ["rv_resid"] and t.meta["divergences"] == 0
    assert np.all(np.abs(t["shift"]) < 0.5) and np.all((t["width"] > 0.8) & (t["width"] < 1.25)), t
    post_rv = idata.posterior["rv_resid"].values.ravel()
    assert abs(np.mean(post_rv) - row["rv_resid"]) < 0.5 * row["rv_resid_err"]
    assert 0.8 < np.std(post_rv) / row["rv_resid_err"] < 1.25
