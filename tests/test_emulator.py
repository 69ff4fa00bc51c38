import copy
import io
import json
import zipfile

import numpy as np
import pytest

from slambayes import Emulator, Spectra
from slambayes.model_file import ModelFileError
from slambayes.svr_training import fit_pixel


def compressed(em, tolerance=0.002):
    """The emulator evaluated through low-rank coefficients (`Emulator.compression`)."""
    low = copy.copy(em)
    low.compression = tolerance
    return low


def test_prediction_equals_sklearn_svr_predict(demo_small):
    em, train = demo_small
    X = em.X_train_
    Y = (train.flux - em.flux_mean_) / em.flux_std_
    theta = em.to_std(train.labels[:40] * [1.01, 0.98, 1.0] + [10, 0.05, 0.03])
    assert em.compression == 0.0                         # the default is the exact expansion
    ours = em.expansion.predict(theta)
    worst = 0.0
    for j in range(train.n_pix):
        svr = fit_pixel(X, Y[:, j], train.good[:, j], em.C_[j], em.gamma_[j], em.epsilon)
        worst = max(worst, np.max(np.abs(svr.predict(theta) - ours[:, j])))
    assert worst < 1e-10


def test_analytic_jacobian_matches_finite_differences_and_jax(demo_small):
    import jax
    jax.config.update("jax_enable_x64", True)
    em, train = demo_small
    lab = train.labels[:5]
    f, J = em.predict_and_jacobian(lab)
    assert np.allclose(f, em.predict(lab), rtol=0, atol=1e-13)
    h = 1e-5 * em.label_std_
    Jfd = np.stack([(em.predict(lab + np.eye(3)[l] * h[l]) - em.predict(lab - np.eye(3)[l] * h[l])) / (2 * h[l])
                    for l in range(3)], -1)
    assert np.max(np.abs(J - Jfd)) / np.max(np.abs(J)) < 1e-6
    pred = em.jax_predictor()
    Jjax = np.asarray(jax.vmap(jax.jacfwd(pred))(jax.numpy.asarray(lab)))
    assert np.allclose(Jjax, J, rtol=1e-9, atol=1e-12)
    assert np.allclose(np.asarray(pred(jax.numpy.asarray(lab))), f, rtol=0, atol=1e-12)


def test_compressed_expansion_keeps_its_error_bound_on_new_labels_and_exact_derivatives(demo_small):
    from slambayes.datasets import make_demo

    exact, train = demo_small
    em = compressed(exact)
    ranks, full = em.expansion.ranks, exact.expansion.ranks
    assert ranks[0] <= full[0] / 3 and sum(ranks) < sum(full) / 2      # the big γ group is low rank
    lab = make_demo(150, snr=100.0, seed=12, wave=train.wave).labels    # labels it was not built on
    f, J = em.predict_and_jacobian(lab)
    f0, J0 = exact.predict_and_jacobian(lab)
    change = np.sqrt(np.mean((f - f0) ** 2, axis=0)) / em.cv_error
    assert change.max() < 0.01 and np.median(change) < 1e-3             # ≪ the emulator's own error
    assert np.max(np.abs(J - J0)) < 0.01 * np.max(np.abs(J0))
    # the compressed model's own derivatives are exact: Hessian against differences of its Jacobian
    w = np.random.default_rng(3).normal(size=train.n_pix)
    h = 1e-5 * em.label_std_
    H_fd = np.stack([(em.jacobian(lab[0] + np.eye(3)[l] * h[l]) - em.jacobian(lab[0] - np.eye(3)[l] * h[l])).T @ w
                     / (2 * h[l]) for l in range(3)])
    H = em.flux_curvature(lab[0], w)
    assert np.allclose(H, H_fd, rtol=1e-5, atol=1e-6 * np.abs(H).max())
    assert np.allclose(exact.flux_curvature(lab[0], w), H, rtol=0.01, atol=0.01 * np.abs(H).max())


def test_projection_on_the_coefficient_basis_is_exact(demo_small, rng):
    from slambayes.kernel_expansion import KernelExpansion

    # fewer training stars than pixels: the exact projection is the kernel row (R = n_train per γ)
    X = rng.normal(size=(30, 3))
    gamma = np.where(np.arange(200) < 150, 0.1, 0.5)
    exp = KernelExpansion.from_dense(X, rng.normal(size=(200, 30)), rng.normal(size=200), gamma)
    theta = rng.normal(size=(5, 3))
    assert exp.projection_rank == 60
    np.testing.assert_allclose(exp.coefficients(theta) @ exp.basis() + exp.intercept(), exp.predict(theta),
                               rtol=0, atol=1e-12)
    em = compressed(demo_small[0])                                      # low rank: R = Σ ranks
    exp, theta = em.expansion, em.X_train_[:5] + 0.1
    assert exp.projection_rank == sum(exp.ranks) < em.wave_.size
    np.testing.assert_allclose(exp.coefficients(theta) @ exp.basis() + exp.intercept(), exp.predict(theta),
                               rtol=0, atol=1e-12)


def test_compression_setting_is_saved_checked_and_old_files_load_exact(demo_small, tmp_path):
    em = compressed(demo_small[0])
    train = demo_small[1]
    em.save(tmp_path / "m.npz")
    again = Emulator.load(tmp_path / "m.npz")
    assert again.compression == 0.002 and again.model_hash == em.model_hash
    assert demo_small[0].model_hash != em.model_hash                    # it changes the catalog
    with zipfile.ZipFile(tmp_path / "m.npz") as z, zipfile.ZipFile(tmp_path / "old.npz", "w") as out:
        for name in z.namelist():                                        # a file from before the setting
            data = z.read(name)
            if name == "header.npy":
                header = json.loads(str(np.load(io.BytesIO(data))))
                del header["params"]["compression"]
                buf = io.BytesIO()
                np.save(buf, np.array(json.dumps(header)))
                data = buf.getvalue()
            out.writestr(name, data)
    old = Emulator.load(tmp_path / "old.npz")
    assert old.compression == 0.0 and old.model_hash == demo_small[0].model_hash
    with pytest.raises(ValueError, match="compression must be a number ≥ 0"):
        Emulator(compression=-1).fit(train)


def test_masked_training_pixels_get_zero_weight(demo_small):
    _, train = demo_small
    ivar = train.ivar.copy()
    flux = train.flux.copy()
    ivar[:50, 10] = 0
    flux[:50, 10] = 1e6      # garbage behind the mask must not matter
    sp = train.replace(flux=flux, ivar=ivar)
    em = Emulator(C=(10.0,), gamma=(0.1,), cv=0, n_jobs=1, progress=False).fit(sp)
    assert np.all(em.dual_coef_[10, :50] == 0)
    assert abs(em.flux_mean_[10] - train.flux[50:, 10].mean()) < 1e-12


def test_model_file_round_trip_is_bit_for_bit(demo_small, tmp_path):
    em, train = demo_small
    path = tmp_path / "model.npz"
    em.save(path)
    with np.load(path, allow_pickle=False) as d:      # readable without pickle
        header = json.loads(str(d["header"]))
        assert header["schema"] == "slambayes.emulator/1"
        assert header["label_names"] == ["teff", "logg", "feh"]
        assert header["label_units"] == ["K", "dex", "dex"]
        assert header["training_hash"] == em.training_hash_
        assert "numpy" in header["versions"] and header["created"]
        assert d["wave_"].shape == (train.n_pix,)
    em2 = Emulator.load(path)
    lab = train.labels[:20]
    assert np.array_equal(em.predict(lab), em2.predict(lab))
    assert np.array_equal(em.cv_error, em2.cv_error)


def test_corrupted_and_truncated_model_files(demo_small, tmp_path):
    em, _ = demo_small
    path = tmp_path / "model.npz"
    em.save(path)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="trunc.npz.*corrupted or truncated"):
        Emulator.load(trunc)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\0" * 100)
    with pytest.raises(ModelFileError, match="garbage.npz"):
        Emulator.load(garbage)
    with pytest.raises(FileNotFoundError):
        Emulator.load(tmp_path / "missing.npz")


def _saved_arrays(em, tmp_path):
    """The arrays of `em`'s model file, as written."""
    path = tmp_path / "model.npz"
    em.save(path)
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def test_other_schema_version_is_refused(demo_small, tmp_path):
    em, _ = demo_small
    arrays = _saved_arrays(em, tmp_path)
    header = json.loads(str(arrays["header"]))
    header["schema"] = "slambayes.emulator/99"
    arrays["header"] = np.array(json.dumps(header))
    other = tmp_path / "v99.npz"
    np.savez(other, **arrays)
    with pytest.raises(ModelFileError, match="schema.*emulator/99"):
        Emulator.load(other)


def test_model_file_with_arrays_of_the_wrong_shape_is_refused(demo_small, tmp_path):
    em, _ = demo_small
    arrays = _saved_arrays(em, tmp_path)
    for name, bad in (("dual_coef_", arrays["dual_coef_"][:, :-1]), ("intercept_", arrays["intercept_"][:10]),
                      ("X_train_", arrays["X_train_"][:, :2])):
        other = tmp_path / f"bad_{name}.npz"
        np.savez(other, **dict(arrays, **{name: bad}))
        with pytest.raises(ModelFileError, match=f"bad_{name}.npz: {name} has shape"):
            Emulator.load(other)


def test_cv_statistics_and_model_error(demo_small):
    em, _ = demo_small
    assert em.cv_mse_.shape == em.C_.shape == em.gamma_.shape == (em.wave_.size,)
    assert set(np.unique(em.C_)) <= {3.0, 30.0} and set(np.unique(em.gamma_)) <= {0.1, 0.3}
    assert np.all(em.train_mse_ <= em.cv_mse_ + 1e-12)
    from slambayes.likelihood import model_sigma
    full = model_sigma(em, "cv")
    assert np.allclose(full, em.flux_std_ * np.sqrt(em.cv_mse_)) and np.array_equal(full, em.cv_error)
    assert np.all(model_sigma(em, "cv_minus_noise") <= full + 1e-15)
    assert np.all(model_sigma(em, "none") == 0)


def test_untrained_and_unlabelled_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        Emulator().predict([5000, 4, 0])
    s = Spectra(np.arange(5.0), np.ones((6, 5)), np.ones((6, 5)))
    with pytest.raises(ValueError, match="need labels"):
        Emulator().fit(s)


@pytest.mark.slow
def test_real_apogee_giants(bench_datasets):
    d = bench_datasets.load("apogee100", 0)
    tr = Spectra(d["wave"], d["train"]["flux"], d["train"]["ivar"], labels=d["train"]["labels"],
                 label_names=d["label_names"])
    em = Emulator(C=(1.0, 10.0, 100.0), gamma=(0.01, 0.1), n_jobs=2, progress=False).fit(tr)
    med = float(np.median(em.cv_mse_))
    print(f"apogee100 fold 0: median CV MSE {med:.3f}, fraction < 1: {np.mean(em.cv_mse_ < 1):.2f}")
    assert med < 1 and np.mean(em.cv_mse_ < 1) > 0.8
    good = d["test"]["ivar"] > 0
    model = em.predict(d["test"]["labels"])
    rms_model = np.sqrt(np.mean((d["test"]["flux"] - model)[good] ** 2))
    rms_mean = np.sqrt(np.mean((d["test"]["flux"] - em.flux_mean_)[good] ** 2))
    print(f"held-out rms: model {rms_model:.4f}, mean spectrum {rms_mean:.4f}")
    assert rms_model < 0.75 * rms_mean


def test_coefficients_of_dependence_follow_the_physics():
    from slambayes.datasets import make_demo
    from slambayes.dependence import coefficients_of_dependence
    from slambayes.preprocess import default_grid
    wave = np.array([4340.0, 4341.7, 5168.9, 5174.1, 5185.0, 5700.0])   # Hγ core, Mg b, continuum
    wave = np.sort(np.r_[wave, default_grid(4860, 4864, 2.0)])
    sp = make_demo(200, snr=200.0, seed=4, wave=wave, ranges=[[6000, 7500], [3, 5], [-2, 0.5]])
    cod = coefficients_of_dependence(sp, C=(10.0,), gamma=(0.3,), cv=3, n_jobs=1, progress=False)
    assert cod.shape == (3, wave.size)
    hg = np.flatnonzero(np.isclose(wave, 4341.7))[0]
    mgb = np.flatnonzero(np.isclose(wave, 5185.0))[0]
    assert cod[0, hg] > cod[2, hg]          # Balmer core: Teff matters more than [Fe/H]
    assert cod[2, mgb] > cod[1, mgb]        # Mg b: [Fe/H] matters more than log g
