import numpy as np
import pytest
from astropy.table import Table

from slambayes import Spectra, SpectraWarning


def make(n=3, p=10):
    wave = np.linspace(4000, 5000, p)
    return wave, np.ones((n, p)), np.full((n, p), 100.0)


def test_nan_flux_is_masked_with_count():
    wave, flux, ivar = make()
    flux[1, 3] = np.nan
    with pytest.warns(SpectraWarning, match="1 pixel"):
        s = Spectra(wave, flux, ivar)
    assert s.ivar[1, 3] == 0 and np.isfinite(s.flux).all()


def test_inf_ivar_is_masked():
    wave, flux, ivar = make()
    ivar[0, 0] = np.inf
    with pytest.warns(SpectraWarning):
        s = Spectra(wave, flux, ivar)
    assert s.ivar[0, 0] == 0


def test_negative_ivar_is_masked():
    wave, flux, ivar = make()
    ivar[2, 5:7] = -1
    with pytest.warns(SpectraWarning, match="2 pixel"):
        s = Spectra(wave, flux, ivar)
    assert (s.ivar[2, 5:7] == 0).all() and s.good.sum() == 28


def test_decreasing_wavelength_is_an_error():
    wave, flux, ivar = make()
    with pytest.raises(ValueError, match="strictly increasing"):
        Spectra(wave[::-1], flux, ivar)


def test_mismatched_shapes_are_an_error():
    wave, flux, ivar = make()
    with pytest.raises(ValueError, match="pixels per star"):
        Spectra(wave, flux[:, :-1], ivar[:, :-1])
    with pytest.raises(ValueError, match="differ in shape"):
        Spectra(wave, flux, ivar[:2])
    with pytest.raises(ValueError, match="labels has 2 rows"):
        Spectra(wave, flux, ivar, labels=np.ones((2, 3)))


def test_selection_by_int_slice_index_and_mask():
    wave, flux, ivar = make(5)
    flux *= np.arange(5)[:, None]
    s = Spectra(wave, flux, ivar, labels=np.arange(10.0).reshape(5, 2), label_names=["a", "b"],
                meta=Table({"id": list("vwxyz")}))
    assert s[2].n_star == 1 and s[2].flux[0, 0] == 2 and s[2].meta["id"][0] == "x"
    assert list(s[1:3].meta["id"]) == ["w", "x"]
    assert s[np.array([4, 0])].labels[:, 0].tolist() == [8.0, 0.0]
    assert s[s.labels[:, 1] > 5].n_star == 2


def test_npz_round_trip(tmp_path):
    wave, flux, ivar = make()
    flux += np.arange(30).reshape(3, 10) * 1e-3
    s = Spectra(wave, flux, ivar, labels=np.ones((3, 2)), label_names=["teff", "logg"],
                meta={"id": ["a", "b", "c"], "snr": [1.0, 2.0, 3.0]})
    s.to_npz(tmp_path / "s.npz")
    r = Spectra.from_npz(tmp_path / "s.npz")
    assert np.array_equal(r.flux, s.flux) and np.array_equal(r.ivar, s.ivar)
    assert r.label_names == ["teff", "logg"] and list(r.meta["id"]) == ["a", "b", "c"]
    np.load(tmp_path / "s.npz", allow_pickle=False)   # no pickled members


def test_not_an_npz_names_the_file(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        Spectra.from_npz(p)


# ----------------------------------------------------------------- units and specutils
def _three(rng):
    w = np.linspace(3900.0, 5800.0, 60)
    f = rng.normal(1.0, 0.05, (3, 60))
    iv = np.full((3, 60), 400.0)
    iv[1, 7] = 0.0
    return w, f, iv


def test_wavelength_quantity_in_any_spectral_unit_gives_the_same_spectra(rng):
    import astropy.units as u

    w, f, iv = _three(rng)
    ref = Spectra(w, f, iv)
    for q in (w * u.AA, (w / 10) * u.nm, (w / 1e4) * u.um):
        s = Spectra(q, f, iv)
        np.testing.assert_allclose(s.wave, ref.wave, rtol=1e-12)
        np.testing.assert_array_equal(s.flux, ref.flux)
    # a grid increasing in frequency is decreasing in wavelength: reversed, flux and ivar with it
    nu = (w * u.AA).to(u.Hz, equivalencies=u.spectral())[::-1]
    s = Spectra(nu, f[:, ::-1], iv[:, ::-1])
    np.testing.assert_allclose(s.wave, w, rtol=1e-12)
    np.testing.assert_array_equal(s.flux, f)
    np.testing.assert_array_equal(s.ivar, iv)
    with pytest.raises(ValueError, match="unit s, which is not a spectral unit"):
        Spectra(w * u.s, f, iv)


def test_specutils_round_trip_keeps_wave_flux_ivar_mask_and_meta(rng):
    w, f, iv = _three(rng)
    sp = Spectra(w, f, iv, labels=rng.normal(size=(3, 2)), label_names=["teff", "logg"],
                 meta={"obsid": [11, 12, 13]})
    su = sp.to_specutils()
    assert su.shape == (3, 60) and su.mask.sum() == 1 and su.spectral_axis.unit == "Angstrom"
    back = Spectra.from_specutils(su)
    np.testing.assert_array_equal(back.wave, sp.wave)
    np.testing.assert_array_equal(back.flux, sp.flux)
    np.testing.assert_array_equal(back.ivar, sp.ivar)
    np.testing.assert_array_equal(back.labels, sp.labels)
    assert list(back.meta["obsid"]) == [11, 12, 13] and back.label_names == ["teff", "logg"]


def test_from_specutils_list_with_stddev_and_nm_axis(rng):
    import astropy.units as u
    from astropy.nddata import StdDevUncertainty
    from specutils import Spectrum

    w, f, _ = _three(rng)
    mask = np.zeros(60, bool)
    mask[3] = True
    items = [Spectrum(flux=f[i] * u.Jy, spectral_axis=(w / 10) * u.nm, uncertainty=StdDevUncertainty(np.full(60, 0.05)),
                      mask=mask, meta={"star": f"s{i}", "snr": 20.0}) for i in range(3)]
    sp = Spectra.from_specutils(items)
    np.testing.assert_allclose(sp.wave, w, rtol=1e-12)
    np.testing.assert_allclose(sp.ivar[:, 4], 400.0)
    assert np.all(sp.ivar[:, 3] == 0) and list(sp.meta["star"]) == ["s0", "s1", "s2"]
    assert sp.meta.meta["flux_unit"] == "Jy"
    items[2] = Spectrum(flux=f[2] * u.Jy, spectral_axis=w * u.AA * 1.001, uncertainty=StdDevUncertainty(np.ones(60)))
    with pytest.raises(ValueError, match="spectrum 2 has a different spectral axis"):
        Spectra.from_specutils(items)
    with pytest.raises(ValueError, match="no uncertainty"):
        Spectra.from_specutils(Spectrum(flux=f[0] * u.Jy, spectral_axis=w * u.AA))


def test_fit_map_runs_on_a_spectrum_read_by_specutils(demo_small, tmp_path):
    from specutils import Spectrum

    from slambayes import fit_map
    from slambayes.datasets import make_demo

    em, _ = demo_small
    star = make_demo(1, snr=80.0, seed=5, wave=em.wave_)
    star.meta.meta["flux_unit"] = "erg / (s cm2 Angstrom)"   # specutils' FITS reader needs a flux unit
    su = star.to_specutils()
    Spectrum(flux=su.flux[0], spectral_axis=su.spectral_axis, uncertainty=su.uncertainty[0],
             mask=su.mask[0]).write(tmp_path / "star.fits", format="tabular-fits")
    read = Spectra.from_specutils(Spectrum.read(tmp_path / "star.fits", format="tabular-fits"))
    a, b = fit_map(em, star, progress=False), fit_map(em, read, progress=False)
    for name in em.label_names_:
        assert abs(a[name][0] - b[name][0]) < 1e-6 * max(1.0, abs(a[name][0]))
    assert abs(b["teff"][0] - star.labels[0, 0]) < 4 * b["teff_err"][0]


def test_spectra_file_reads_the_same_rows_as_from_npz(tmp_path):
    import pickle

    from slambayes.datasets import make_demo
    from slambayes.spectra_file import SpectraFile

    sp = make_demo(40, snr=30.0, seed=3)
    sp.to_npz(tmp_path / "stored.npz")
    np.savez_compressed(tmp_path / "packed.npz", wave=sp.wave, flux=sp.flux, flux_err=1 / np.sqrt(sp.ivar))
    for name in ("stored.npz", "packed.npz"):
        f = SpectraFile(tmp_path / name)
        ref = Spectra.from_npz(tmp_path / name)
        for a, b in [(0, 7), (30, 45), (2, 3), (0, 40)]:          # forward, past the end, backward
            flux, ivar = f.rows(a, b)
            assert np.array_equal(flux, ref.flux[a:b]) and np.allclose(ivar, ref.ivar[a:b], rtol=1e-12)
        assert np.array_equal(pickle.loads(pickle.dumps(f)).rows(5, 9)[0], ref.flux[5:9])
    assert list(SpectraFile(tmp_path / "stored.npz")[3:6].meta["id"]) == list(sp.meta["id"][3:6])
