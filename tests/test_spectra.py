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
