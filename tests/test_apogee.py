"""APOGEE aspcapStar / apStar reader, on files written in the DR17 layout from a real APOGEE spectrum."""
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import DATA, need
from slambayes.apogee import BAD_BITS, read_apogee, read_apogee_file
from slambayes.io import SpectrumReadError

CRVAL1, CDELT1, N_PIX = 4.179, 6e-6, 8575


@pytest.fixture(scope="module")
def real():
    """The real APOGEE spectrum on the 8575-pixel grid: (index of its 7214 pixels, wave, flux, err)."""
    base = need(DATA / "apogee_real_spectra")
    spec = np.load(next(base.glob("spectrum_*.npz")), allow_pickle=True)
    wave = np.load(need(DATA / "apogee_dwarf_emulator" / "apogee_wavelength.npz"))["wavelength"].astype(float)
    idx = np.round((np.log10(wave) - CRVAL1) / CDELT1).astype(int)
    return idx, wave, np.asarray(spec["spectrum"], float), np.asarray(spec["spec_err"], float)


def _header():
    h = fits.Header()
    h["CRVAL1"], h["CDELT1"], h["CRPIX1"], h["CTYPE1"] = CRVAL1, CDELT1, 1, "LOG-LINEAR"
    return h


def write_aspcapstar(path, real):
    idx, _, flux, err = real
    f, e = np.zeros(N_PIX, np.float32), np.full(N_PIX, 1e10, np.float32)   # chip gaps as ASPCAP writes them
    f[idx], e[idx] = flux, err
    hdr0 = fits.Header()
    hdr0["OBJID"], hdr0["RA"], hdr0["DEC"], hdr0["TELESCOP"] = "2M13012770+5754582", 195.365, 57.916, "apo25m"
    table = Table(dict(APOGEE_ID=["2M13012770+5754582"], SNR=[143.0]))
    fits.HDUList([fits.PrimaryHDU(header=hdr0), fits.ImageHDU(f, header=_header()), fits.ImageHDU(e, header=_header()),
                  fits.ImageHDU(f, header=_header()), fits.BinTableHDU(table)]).writeto(path)


def write_apstar(path, real, cont=2.5e2):
    """apStar: 3 rows (combined, global, one visit) in flux units, with a bitmask."""
    idx, _, flux, err = real
    rows = 3
    f, e = np.zeros((rows, N_PIX), np.float32), np.full((rows, N_PIX), 1e10, np.float32)
    mask = np.zeros((rows, N_PIX), np.int32)
    for r in range(rows):
        f[r, idx], e[r, idx] = flux * cont * (1 + 0.01 * r), err * cont
    mask[:, idx[100]] = 1 << 1                 # CRPIX: rejected
    mask[:, idx[200]] = 1 << 12                # SIG_SKYLINE: rejected
    mask[:, idx[300]] = 1 << 11                # PERSIST_LOW: kept
    hdr0 = fits.Header()
    hdr0["OBJID"], hdr0["SNR"], hdr0["VHELIO"], hdr0["NVISITS"] = "2M13012770+5754582", 143.0, -12.5, 1
    hdus = [fits.PrimaryHDU(header=hdr0), fits.ImageHDU(f, header=_header()), fits.ImageHDU(e, header=_header()),
            fits.ImageHDU(mask, header=_header())]
    hdus += [fits.ImageHDU(np.zeros((rows, N_PIX), np.float32), header=_header()) for _ in range(4)]  # sky, telluric
    fits.HDUList(hdus).writeto(path)
    return f, e, mask


def test_aspcapstar_reads_back_the_arrays_it_was_made_from(real, tmp_path):
    idx, wave, flux, err = real
    p = tmp_path / "aspcapStar-dr17-2M13012770+5754582.fits"
    write_aspcapstar(p, real)
    w, f, iv, meta = read_apogee_file(p)
    assert w.size == N_PIX
    np.testing.assert_allclose(w[idx], wave, rtol=1e-9)
    good = np.zeros(N_PIX, bool)
    good[idx] = True
    np.testing.assert_allclose(f[idx], flux.astype(np.float32), rtol=1e-7)
    np.testing.assert_allclose(iv[idx], 1 / err.astype(np.float32).astype(float) ** 2, rtol=1e-12)
    assert np.all(iv[~good] == 0)                      # chip gaps carry no information
    assert meta["kind"] == "aspcapStar" and meta["apogee_id"] == "2M13012770+5754582" and meta["snr"] == 143.0


def test_apstar_row_and_bitmask(real, tmp_path):
    idx, _, _, _ = real
    p = tmp_path / "apStar-dr17-2M13012770+5754582.fits"
    f, e, mask = write_apstar(p, real)
    for row in (0, 2):
        w, flux, iv, meta = read_apogee_file(p, row=row)
        keep = idx[[0, 300]]
        np.testing.assert_allclose(flux[keep], f[row, keep])
        np.testing.assert_allclose(iv[keep], 1 / e[row, keep].astype(float) ** 2)
        assert iv[idx[100]] == 0 and iv[idx[200]] == 0          # CRPIX and SIG_SKYLINE rejected
    assert meta["kind"] == "apStar" and meta["vhelio"] == -12.5
    assert read_apogee_file(p, bad_bits=BAD_BITS | (1 << 11))[2][idx[300]] == 0
    with pytest.raises(SpectrumReadError, match="row 3"):
        read_apogee_file(p, row=3)


def test_truncated_file_is_skipped_with_a_warning_naming_it(real, tmp_path):
    good = tmp_path / "aspcapStar-good.fits"
    write_aspcapstar(good, real)
    bad = tmp_path / "aspcapStar-truncated.fits"
    bad.write_bytes(good.read_bytes()[:30000])
    with pytest.warns(UserWarning, match="aspcapStar-truncated.fits"):
        sp = read_apogee(tmp_path)
    assert sp.n_star == 1 and sp.meta["filename"][0] == "aspcapStar-good.fits"
    assert "aspcapStar-truncated.fits" in sp.meta.meta["skipped"][0]
    with pytest.raises(SpectrumReadError, match="aspcapStar-truncated.fits"):
        read_apogee(tmp_path, on_error="raise")


def test_a_file_without_wavelength_solution(tmp_path):
    p = tmp_path / "aspcapStar-nowave.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones(10, np.float32)),
                  fits.ImageHDU(np.ones(10, np.float32))]).writeto(p)
    with pytest.raises(SpectrumReadError, match="aspcapStar-nowave.fits.*CRVAL1"):
        read_apogee_file(p)
