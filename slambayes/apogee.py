"""Reading APOGEE `aspcapStar` and `apStar` spectra (SDSS DR16/DR17 layout).

The layout follows the SDSS data model (data.sdss.org/datamodel, files
APOGEE_ASPCAP/.../aspcapStar.html and APOGEE_REDUX/.../apStar.html):

- both: the wavelength grid is log-linear in vacuum Å, given in the header of
  HDU 1: λ_i = 10 ** (CRVAL1 + CDELT1 · (i + 1 − CRPIX1)), CRVAL1 ≈ 4.179,
  CDELT1 = 6e-6, 8575 pixels;
- aspcapStar: HDU 1 the pseudo-continuum-normalized flux (8575,), HDU 2 its
  error, HDU 3 the ASPCAP best-fit model, HDU 4 a table (APOGEE_ID, SNR, …).
  There is no pixel mask: the chip gaps and rejected pixels have flux 0 or a
  huge / non-positive error;
- apStar: HDU 1 flux (n_row, 8575) in 1e-17 erg/s/cm²/Å, HDU 2 error, HDU 3
  the APOGEE_PIXMASK bitmask, HDU 4–7 sky and telluric, … Row 0 is the combined
  spectrum (pixel-based weighting), row 1 the globally weighted one, then one
  row per visit; a single-visit star has one row only.

Pixels with a masked bit (`BAD_BITS`: BADPIX, CRPIX, SATPIX, UNFIXABLE, BADDARK,
BADFLAT, BADERR, NOSKY and SIG_SKYLINE, the set ASPCAP itself rejects), with
flux 0 or with an error that is non-finite, ≤ 0 or ≥ `MAX_ERROR` get ivar 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from .io import SpectrumReadError, read_files

__all__ = ["read_apogee", "read_apogee_file", "BAD_BITS", "MAX_ERROR"]

BAD_BITS = sum(1 << b for b in (0, 1, 2, 3, 4, 5, 6, 7, 12))
MAX_ERROR = 1e9      # the value the reduction writes for "no information" is ~1e10


def _wave(hdr, n_pix, path):
    for key in ("CRVAL1", "CDELT1"):
        if key not in hdr:
            raise SpectrumReadError(f"{path}: no {key} in the header of HDU 1 (no log-linear wavelength solution)")
    crpix = float(hdr.get("CRPIX1", 1.0))
    return 10.0 ** (float(hdr["CRVAL1"]) + float(hdr["CDELT1"]) * (np.arange(n_pix) + 1.0 - crpix))


def _kind(hdul, path):
    """"aspcapStar" or "apStar", from the file name or, failing that, the HDU layout."""
    name = Path(path).name
    if name.startswith("aspcapStar"):
        return "aspcapStar"
    if name.startswith(("apStar", "asStar")):
        return "apStar"
    return "apStar" if len(hdul) > 4 and isinstance(hdul[3], fits.ImageHDU) and \
        np.issubdtype(hdul[3].data.dtype, np.integer) else "aspcapStar"


def read_apogee_file(path, row=0, bad_bits=BAD_BITS):
    """Read one APOGEE aspcapStar or apStar FITS file (plain or gzipped).

    path : str or Path; the kind is told by the name (aspcapStar-*, apStar-*/asStar-*) or layout
    row : apStar row to read (0: the combined spectrum); ignored for aspcapStar
    bad_bits : APOGEE_PIXMASK bits (an int mask) that set ivar 0 (apStar)

    Returns wave (8575,) vacuum Å, flux, ivar (8575,) and a meta dict (filename, path, kind,
    apogee_id, telescope, field, ra, dec, snr, vhelio; missing header values are "" or NaN).
    """
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            if len(hdul) < 3 or hdul[1].data is None or hdul[2].data is None:
                raise SpectrumReadError(f"{path}: not an APOGEE aspcapStar/apStar file "
                                        f"({len(hdul)} HDUs, expected flux in HDU 1 and its error in HDU 2)")
            kind = _kind(hdul, path)
            hdr0, hdr1 = hdul[0].header, hdul[1].header
            flux, err = np.atleast_2d(np.asarray(hdul[1].data, float)), np.atleast_2d(np.asarray(hdul[2].data, float))
            mask = np.atleast_2d(np.asarray(hdul[3].data)) if kind == "apStar" else None
            table = hdul[4].data if kind == "aspcapStar" and len(hdul) > 4 and \
                isinstance(hdul[4], fits.BinTableHDU) else None
    except SpectrumReadError:
        raise
    except Exception as exc:  # astropy raises OSError/TypeError/ValueError for broken files
        raise SpectrumReadError(f"{path}: cannot read FITS ({type(exc).__name__}: {exc})") from exc
    if flux.shape != err.shape or (mask is not None and mask.shape != flux.shape):
        raise SpectrumReadError(f"{path}: flux {flux.shape}, error {err.shape}"
                                f"{'' if mask is None else f' and mask {mask.shape}'} differ in shape")
    if not 0 <= row < flux.shape[0] or (kind == "aspcapStar" and row):
        raise SpectrumReadError(f"{path}: has {flux.shape[0]} spectrum row(s), row {row} asked for")
    wave = _wave(hdr1, flux.shape[1], path)
    f, e = flux[row], err[row]
    with np.errstate(divide="ignore", invalid="ignore"):
        good = np.isfinite(f) & (f != 0) & np.isfinite(e) & (e > 0) & (e < MAX_ERROR)
        if mask is not None:
            good &= (mask[row].astype(np.int64) & int(bad_bits)) == 0
        ivar = np.where(good, 1.0 / e**2, 0.0)
    meta = dict(filename=path.name, path=str(path), kind=kind,
                apogee_id=str(hdr0.get("OBJID", hdr0.get("APOGEE_ID", ""))).strip(),
                telescope=str(hdr0.get("TELESCOP", "")).strip(), field=str(hdr0.get("FIELD", "")).strip(),
                ra=float(hdr0.get("RA", np.nan)), dec=float(hdr0.get("DEC", np.nan)),
                snr=float(hdr0.get("SNR", np.nan)), vhelio=float(hdr0.get("VHELIO", np.nan)))
    if table is not None and len(table):
        names = [n.upper() for n in table.columns.names]
        if not meta["apogee_id"] and "APOGEE_ID" in names:
            meta["apogee_id"] = str(table["APOGEE_ID"][0]).strip()
        if not np.isfinite(meta["snr"]) and "SNR" in names:
            meta["snr"] = float(table["SNR"][0])
    return wave, np.where(good, f, 1.0), ivar, meta


def read_apogee(paths, row=0, bad_bits=BAD_BITS, on_error="skip", progress=False):
    """Read APOGEE aspcapStar/apStar files into one `Spectra`.

    paths : str, Path or iterable of them (a directory reads every *.fits[.gz] in it)
    row, bad_bits : see `read_apogee_file`
    on_error : "skip" (warn naming the file and go on; listed in ``meta.meta['skipped']``) or "raise"

    aspcapStar flux is already normalized; apStar flux is not (use `slambayes.preprocess.normalize`).
    Wavelengths are vacuum, in the star's rest frame (the reduction shifts them).
    """
    return read_files(paths, lambda p: read_apogee_file(p, row=row, bad_bits=bad_bits), "APOGEE", on_error, progress)
