"""Reading spectra and label catalogues from survey files."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ._interp import interp_rows
from .progress import bar
from .spectra import Spectra

__all__ = ["read_lamost", "read_lamost_file", "read_files", "read_label_catalog", "join_labels", "SpectrumReadError"]


LAMOST_ROWS = ("flux", "ivar", "norm_flux", "andmask", "ormask")
LAMOST_SNR_KEYS = ("SN_U", "SN_G", "SN_R", "SN_I", "SN_Z")
MIN_PIXELS = 10             # fewer is no spectrum (a damaged or cut file)


class SpectrumReadError(ValueError):
    """A spectrum file could not be read; the message names the file."""


def _header_value(hdr, key, default):
    v = hdr.get(key, default)
    return default if v is None or (isinstance(v, str) and not v.strip()) else v


def read_lamost_file(path, flux="raw"):
    """Read one LAMOST low-resolution FITS file (plain or gzipped).

    Parameters
    ----------
    path : str or Path
    flux : {"raw", "normalized"}
        "raw" returns the calibrated flux and its ivar; "normalized" the
        pipeline's continuum-normalized row with ivar·(flux/norm)².

    Returns
    -------
    wave : (n_pix,) vacuum wavelength in Å (observed frame)
    flux, ivar : (n_pix,) arrays; ivar = 0 where ormask ≠ 0, ivar ≤ 0 or non-finite
    meta : dict of header values (filename, designation, ra, dec, z, snr_*, class, ...)
    """
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            hdr = hdul[0].header
            data = hdul[0].data
            if data is None or data.ndim != 2 or data.shape[0] != 5:
                raise SpectrumReadError(
                    f"{path}: not a LAMOST low-resolution spectrum (primary HDU shape "
                    f"{None if data is None else data.shape}, expected (5, n_pix))")
            if "COEFF0" not in hdr or "COEFF1" not in hdr:
                raise SpectrumReadError(f"{path}: no COEFF0/COEFF1 wavelength solution in header")
            data = np.asarray(data, dtype=float)
    except SpectrumReadError:
        raise
    except Exception as exc:  # astropy raises OSError/TypeError/ValueError for broken files
        raise SpectrumReadError(f"{path}: cannot read FITS ({type(exc).__name__}: {exc})") from exc
    n_pix = data.shape[1]
    if n_pix < MIN_PIXELS:
        raise SpectrumReadError(f"{path}: {n_pix} pixel(s); a spectrum needs at least {MIN_PIXELS}")
    step = float(hdr["COEFF1"])
    if not (np.isfinite(step) and step > 0):
        raise SpectrumReadError(f"{path}: the wavelength grid is not increasing (COEFF1 = {hdr['COEFF1']!r}, "
                                f"the log10 Å step, must be > 0)")
    wave = 10.0 ** (float(hdr["COEFF0"]) + step * np.arange(n_pix))
    raw, ivar_raw, norm, _andmask, ormask = data[:5]
    with np.errstate(divide="ignore", invalid="ignore"):
        good = (ormask == 0) & (ivar_raw > 0) & np.isfinite(raw) & np.isfinite(ivar_raw)
        if flux == "raw":
            f, iv = raw, ivar_raw
        elif flux == "normalized":
            cont = raw / norm
            good &= np.isfinite(norm) & np.isfinite(cont) & (cont > 0)
            f, iv = norm, ivar_raw * cont**2
        else:
            raise ValueError(f"flux must be 'raw' or 'normalized', not {flux!r}")
    f = np.where(good, f, 1.0)
    iv = np.where(good, iv, 0.0)
    meta = dict(
        filename=str(_header_value(hdr, "FILENAME", path.name)),
        path=str(path),
        designation=str(_header_value(hdr, "DESIG", "")).replace("LAMOST ", ""),
        obsname=str(_header_value(hdr, "OBJNAME", "")),
        ra=float(_header_value(hdr, "RA", np.nan)),
        dec=float(_header_value(hdr, "DEC", np.nan)),
        z=float(_header_value(hdr, "Z", np.nan)),
        z_err=float(_header_value(hdr, "Z_ERR", np.nan)),
        cls=str(_header_value(hdr, "CLASS", "")),
        subclass=str(_header_value(hdr, "SUBCLASS", "")),
        lmjd=int(_header_value(hdr, "LMJD", -1)),
        planid=str(_header_value(hdr, "PLANID", "")).strip(),
        spid=int(_header_value(hdr, "SPID", -1)),
        fiberid=int(_header_value(hdr, "FIBERID", -1)),
    )
    for key in LAMOST_SNR_KEYS:
        meta["snr_" + key[-1].lower()] = float(_header_value(hdr, key, np.nan))
    return wave, f, iv, meta


def read_lamost(paths, flux="raw", on_error="skip", progress=False):
    """Read LAMOST low-resolution FITS files into one `Spectra`.

    Parameters
    ----------
    paths : str, Path or iterable of them (a directory reads every spec-*.fits[.gz])
    flux : {"raw", "normalized"}, see `read_lamost_file`
    on_error : {"skip", "raise"}
        "skip" logs and warns about a bad file and goes on; "raise" stops at it.
    progress : bool, show a tqdm bar

    Returns
    -------
    Spectra on the wavelength grid of the first good file (other grids are
    interpolated onto it). `meta` holds the header values; ``meta.meta['skipped']``
    lists the files that could not be read, with the reason.
    """
    spectra = read_files(paths, lambda p: read_lamost_file(p, flux=flux), "LAMOST", on_error, progress)
    spectra.meta.rename_column("cls", "class")
    spectra.meta.meta["flux"] = flux
    return spectra


def read_files(paths, read_one, survey, on_error="skip", progress=False):
    """Read files with `read_one(path) -> (wave, flux, ivar, meta dict)` into one `Spectra`.

    A file that raises `SpectrumReadError` or `OSError` is skipped with a warning naming it
    (``on_error="skip"``, listed in ``meta.meta['skipped']``) or stops the read
    (``"raise"``). Spectra on other grids than the first good file's are interpolated onto it.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    paths = _expand_paths(paths)
    if not paths:
        raise FileNotFoundError(f"no {survey} files given")
    rows, skipped = [], []
    for p in bar(paths, progress, desc=f"reading {survey}", unit="file"):
        try:
            rows.append(read_one(p))
        except (SpectrumReadError, OSError) as exc:
            if on_error == "raise":
                raise
            msg = str(exc) if str(p) in str(exc) else f"{p}: {exc}"
            skipped.append(msg)
            warnings.warn(f"skipped unreadable file: {msg}", stacklevel=3)
    if not rows:
        raise SpectrumReadError("none of the files could be read:\n" + "\n".join(skipped))
    wave = rows[0][0]
    flux_arr = np.empty((len(rows), wave.size))
    ivar_arr = np.empty_like(flux_arr)
    for i, (w, f, iv, _) in enumerate(rows):
        if w.shape == wave.shape and np.allclose(w, wave, rtol=0, atol=1e-6):
            flux_arr[i], ivar_arr[i] = f, iv
        else:
            fi, ivi = interp_rows(w, f[None], iv[None], wave)
            flux_arr[i], ivar_arr[i] = fi[0], ivi[0]
    meta = Table(rows=[r[3] for r in rows])
    meta.meta["skipped"] = skipped
    return Spectra(wave, flux_arr, ivar_arr, meta=meta)


def _expand_paths(paths):
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.iterdir()
                          if q.name.endswith((".fits", ".fits.gz", ".fit", ".fit.gz")))
        else:
            out.append(p)
    return out


def read_label_catalog(path):
    """Read a label catalogue (CSV, ECSV, FITS, or anything astropy reads) as a Table."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label catalogue not found: {path}")
    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(path.suffix.lower())
    try:
        return Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read label catalogue ({exc})") from exc


def join_labels(spectra, catalog, label_names, key="filename", drop_missing=True):
    """Attach labels from `catalog` to `spectra` by matching `key`.

    The key is compared after stripping directories and a trailing ".gz".
    Returns a new `Spectra` with `labels` (n_star, len(label_names)); with
    `drop_missing`, stars without a catalogue row are removed (otherwise
    they get NaN labels). The matched catalogue columns are added to meta.
    """
    cat = catalog if isinstance(catalog, Table) else read_label_catalog(catalog)
    missing = [n for n in [key, *label_names] if n not in cat.colnames]
    if missing:
        raise KeyError(f"catalogue has no column(s) {missing}; it has {cat.colnames}")

    def norm(v):
        return Path(str(v)).name.removesuffix(".gz")

    lookup = {}
    for i, v in enumerate(cat[key]):
        lookup.setdefault(norm(v), i)
    if key not in spectra.meta.colnames:
        raise KeyError(f"spectra meta has no column {key!r} to join on")
    idx = np.array([lookup.get(norm(v), -1) for v in spectra.meta[key]])
    labels = np.full((spectra.n_star, len(label_names)), np.nan)
    hit = idx >= 0
    for j, n in enumerate(label_names):
        labels[hit, j] = np.asarray(cat[n], float)[idx[hit]]
    meta = spectra.meta.copy()
    for n in cat.colnames:
        if n not in meta.colnames and n not in label_names and cat[n].ndim == 1:
            col = np.asarray(cat[n])
            filler = np.zeros(1, dtype=col.dtype)[0] if col.dtype.kind not in "fc" else np.nan
            meta[n] = np.where(hit, col[np.maximum(idx, 0)], filler)
    out = spectra.replace(labels=labels, label_names=list(label_names), meta=meta)
    return out[hit] if drop_missing else out

