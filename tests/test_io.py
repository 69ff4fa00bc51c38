import gzip
import shutil

import numpy as np
import pytest
from astropy.io import fits

from slambayes import join_labels, read_label_catalog, read_lamost
from slambayes.io import SpectrumReadError, read_lamost_file


@pytest.fixture(scope="module")
def lamost(lamost_dir):
    return read_lamost(lamost_dir)


def test_reads_all_176_real_files(lamost):
    assert lamost.n_star == 176
    assert lamost.n_pix == 3904
    # log-linear vacuum wavelength 10**(3.5682 + 1e-4 i)
    assert lamost.wave[0] == pytest.approx(10**3.5682)
    assert lamost.wave[-1] == pytest.approx(10 ** (3.5682 + 1e-4 * 3903))
    for col in ("filename", "ra", "dec", "z", "snr_g", "class", "subclass"):
        assert col in lamost.meta.colnames
    assert set(lamost.meta["class"]) == {"STAR"}
    assert np.all(np.isfinite(lamost.flux)) and np.all(lamost.ivar >= 0)
    assert lamost.meta.meta["skipped"] == []


def test_ormask_and_bad_ivar_become_masked(lamost_dir):
    path = sorted(lamost_dir.iterdir())[0]
    data = fits.getdata(path)
    wave, flux, ivar, meta = read_lamost_file(path)
    expect_bad = (data[4] != 0) | (data[1] <= 0)
    assert expect_bad.any()
    assert np.array_equal(ivar == 0, expect_bad)
    assert meta["filename"] == path.name


def test_131_join_to_lasp_labels(lamost, lamost_catalog):
    cat = read_label_catalog(lamost_catalog)
    joined = join_labels(lamost, cat, ["teff", "logg", "feh"], key="filename")
    assert joined.n_star == 131
    assert np.all(np.isfinite(joined.labels))
    # spot check one star against the catalogue text
    row = cat[cat["filename"] == joined.meta["filename"][0]][0]
    assert joined.labels[0, 0] == pytest.approx(row["teff"])
    assert "obsid" in joined.meta.colnames


def test_gzipped_file_reads_the_same(lamost_dir, tmp_path):
    src = sorted(lamost_dir.iterdir())[3]
    gz = tmp_path / (src.name + ".gz")
    with open(src, "rb") as fi, gzip.open(gz, "wb") as fo:
        shutil.copyfileobj(fi, fo)
    a, b = read_lamost([src]), read_lamost([gz])
    assert np.array_equal(a.flux, b.flux) and np.array_equal(a.ivar, b.ivar)


def test_truncated_fits_names_the_file_and_batch_goes_on(lamost_dir, tmp_path):
    src = sorted(lamost_dir.iterdir())[0]
    bad = tmp_path / "spec-truncated.fits"
    bad.write_bytes(src.read_bytes()[:20000])
    with pytest.raises(SpectrumReadError, match="spec-truncated.fits"):
        read_lamost_file(bad)
    with pytest.warns(UserWarning, match="spec-truncated.fits"):
        s = read_lamost([src, bad])
    assert s.n_star == 1 and "spec-truncated.fits" in s.meta.meta["skipped"][0]
    with pytest.raises(SpectrumReadError, match="spec-truncated.fits"):
        read_lamost([src, bad], on_error="raise")


def test_fits_of_the_wrong_kind(tmp_path):
    p = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((64, 64), np.float32)).writeto(p)
    with pytest.raises(SpectrumReadError, match="image.fits.*not a LAMOST"):
        read_lamost_file(p)
    p2 = tmp_path / "nowave.fits"
    fits.PrimaryHDU(np.zeros((5, 100), np.float32)).writeto(p2)
    with pytest.raises(SpectrumReadError, match="nowave.fits.*COEFF0"):
        read_lamost_file(p2)


def test_no_readable_file_is_an_error(tmp_path):
    p = tmp_path / "a.fits"
    p.write_text("hello")
    with pytest.warns(UserWarning):
        with pytest.raises(SpectrumReadError, match="none of the files"):
            read_lamost([p])


def test_a_file_without_redshift_is_skipped_by_the_preprocessing_naming_it(lamost_dir, tmp_path):
    from slambayes.preprocess import preprocess_lamost

    srcs = sorted(lamost_dir.iterdir())[:2]
    with fits.open(srcs[1]) as hdul:
        del hdul[0].header["Z"]
        hdul.writeto(tmp_path / "spec-noz.fits")
    sp = read_lamost([srcs[0], tmp_path / "spec-noz.fits"])
    assert sp.n_star == 2
    with pytest.warns(UserWarning, match="spec-noz.fits: no finite redshift Z"):
        out = preprocess_lamost(sp)
    assert out.n_star == 1 and "spec-noz.fits" in out.meta.meta["skipped"][-1]
