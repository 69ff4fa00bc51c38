"""The `Spectra` container: a batch of spectra on one wavelength grid."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table

__all__ = ["Spectra", "SpectraWarning", "wave_in_angstrom", "mask_bad_pixels"]


class SpectraWarning(UserWarning):
    """Bad pixels were found and masked (ivar set to 0)."""


def wave_in_angstrom(wave):
    """(wave in Å as floats, reversed?) for a bare array (taken as Å) or an astropy Quantity
    of any spectral unit (length, frequency, energy, wavenumber): a grid that is increasing in
    frequency or energy is decreasing in wavelength, and is reversed."""
    unit = getattr(wave, "unit", None)
    if unit is None:
        return np.asarray(wave, dtype=float), False
    import astropy.units as u

    try:
        wave = np.asarray(wave.to_value(u.AA, equivalencies=u.spectral()), dtype=float)
    except u.UnitConversionError:
        raise ValueError(f"wave has unit {unit!s}, which is not a spectral unit (a length, "
                         "frequency, energy or wavenumber)") from None
    flip = wave.ndim == 1 and wave.size > 1 and bool(np.all(np.diff(wave) < 0))
    return (wave[::-1] if flip else wave), flip


def mask_bad_pixels(flux, ivar, stacklevel=2):
    """Give pixels with NaN/inf flux or NaN/inf/negative ivar ivar = 0 and flux = 1 (a neutral
    value), in place, with a `SpectraWarning` that says how many."""
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | (np.nan_to_num(ivar, nan=-1.0) < 0)
    n_bad = int(bad.sum())
    if n_bad:
        warnings.warn(f"{n_bad} pixel(s) with NaN/inf flux or NaN/inf/negative ivar "
                      f"were masked (ivar=0)", SpectraWarning, stacklevel=stacklevel + 1)
        ivar[bad] = 0.0
        flux[bad] = 1.0


def ivar_from_error(err):
    """1/σ² where σ is finite and > 0, else 0."""
    err = np.asarray(err, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(np.isfinite(err) & (err > 0), 1.0 / err**2, 0.0)


def _as_2d(name, a, n_pix):
    a = np.asarray(a, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (n_star, n_pix); got ndim={a.ndim}")
    if a.shape[1] != n_pix:
        raise ValueError(f"{name} has {a.shape[1]} pixels per star but wave has {n_pix}")
    return a


def open_npz(path):
    """np.load of a spectra npz, with a clear error if it is not one (it needs `wave`, `flux`
    and `ivar` or `flux_err`)."""
    path = Path(path)
    try:
        d = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile/ValueError/OSError: all mean "not a readable npz"
        raise ValueError(f"{path}: not a readable npz file ({exc})") from exc
    keys = set(getattr(d, "files", ()))
    if not {"wave", "flux"} <= keys or not keys & {"ivar", "flux_err"}:
        raise ValueError(f"{path}: npz needs arrays 'wave', 'flux' and 'ivar' "
                         f"(or 'flux_err'); it has {sorted(keys)}")
    return d


def npz_star_columns(d, label_names=None):
    """(labels or None, label_names, meta dict or None) of an open spectra npz."""
    labels = d["labels"] if "labels" in d.files else None
    if labels is not None and label_names is None and "label_names" in d.files:
        label_names = [str(x) for x in d["label_names"]]
    meta = {k[6:]: d[k] for k in d.files if k.startswith("meta__")} or None
    return labels, label_names, meta


class Spectra:
    """A batch of spectra sharing one wavelength grid.

    Parameters
    ----------
    wave : array (n_pix,) or astropy Quantity
        Wavelength in Å, strictly increasing; a Quantity in any spectral unit (nm, µm,
        Hz, eV, …) is converted to Å (a grid increasing in frequency is reversed, flux
        and ivar with it).
    flux : array (n_star, n_pix)
        Flux (any unit; normalized flux after `preprocess.normalize`).
    ivar : array (n_star, n_pix)
        Inverse variance of `flux`; 0 marks a bad or masked pixel.
    labels : array (n_star, n_label), optional
        Known stellar labels (physical units), e.g. for training.
    label_names : sequence of str, optional
        Names of the label columns.
    meta : astropy Table or dict of columns, optional
        One row per star (id, snr, ra, dec, parallax, ...).

    Non-finite flux, non-finite ivar and negative ivar are not an error: those
    pixels get ivar = 0 (and flux = 1, a neutral value) and a `SpectraWarning`
    says how many, so that bad values never reach a fit.
    """

    def __init__(self, wave, flux, ivar, labels=None, label_names=None, meta=None):
        wave, flip = wave_in_angstrom(wave)
        if wave.ndim != 1 or wave.size < 2:
            raise ValueError(f"wave must be 1-D with at least 2 pixels; got shape {wave.shape}")
        if not np.all(np.isfinite(wave)):
            raise ValueError("wave contains NaN or inf")
        if not np.all(np.diff(wave) > 0):
            raise ValueError("wave must be strictly increasing (is the spectrum reversed?)")
        flux = _as_2d("flux", flux, wave.size).copy()
        ivar = _as_2d("ivar", ivar, wave.size).copy()
        if flip:
            flux, ivar = flux[:, ::-1].copy(), ivar[:, ::-1].copy()
        if flux.shape != ivar.shape:
            raise ValueError(f"flux {flux.shape} and ivar {ivar.shape} differ in shape")
        mask_bad_pixels(flux, ivar, stacklevel=3)
        self.wave, self.flux, self.ivar = wave, flux, ivar
        self.labels, self.label_names = self._check_labels(labels, label_names, flux.shape[0])
        self.meta = self._check_meta(meta, flux.shape[0])

    @staticmethod
    def _check_labels(labels, label_names, n_star):
        if labels is None:
            return None, (list(label_names) if label_names is not None else None)
        labels = np.asarray(labels, dtype=float)
        if labels.ndim == 1:
            labels = labels[:, None] if n_star > 1 or label_names is None or len(label_names) == 1 \
                else labels[None, :]
        if labels.shape[0] != n_star:
            raise ValueError(f"labels has {labels.shape[0]} rows but there are {n_star} spectra")
        if label_names is None:
            label_names = [f"label{i}" for i in range(labels.shape[1])]
        label_names = list(label_names)
        if len(label_names) != labels.shape[1]:
            raise ValueError(f"{len(label_names)} label names for {labels.shape[1]} label columns")
        return labels, label_names

    @staticmethod
    def _check_meta(meta, n_star):
        if meta is None:
            return Table({"index": np.arange(n_star)})
        meta = meta if isinstance(meta, Table) else Table(meta)
        if len(meta) != n_star:
            raise ValueError(f"meta has {len(meta)} rows but there are {n_star} spectra")
        return meta

    # ------------------------------------------------------------------ basics
    @property
    def n_star(self) -> int:
        return self.flux.shape[0]

    @property
    def n_pix(self) -> int:
        return self.wave.size

    def __len__(self) -> int:
        return self.n_star

    def __repr__(self) -> str:
        lab = f", labels={self.label_names}" if self.labels is not None else ""
        return (f"Spectra(n_star={self.n_star}, n_pix={self.n_pix}, "
                f"wave={self.wave[0]:.1f}..{self.wave[-1]:.1f} Å{lab})")

    def __getitem__(self, idx) -> "Spectra":
        if isinstance(idx, (int, np.integer)):
            idx = [int(idx)]
        idx = np.arange(self.n_star)[idx]
        return self.replace(flux=self.flux[idx], ivar=self.ivar[idx],
                            labels=None if self.labels is None else self.labels[idx],
                            meta=self.meta[idx])

    def rows(self, start, stop):
        """(flux, ivar) of stars start … stop − 1, each (stop − start, n_pix); the same call
        as `slambayes.spectra_file.SpectraFile.rows`, which reads them from disk."""
        return self.flux[start:stop], self.ivar[start:stop]

    def replace(self, **changes) -> "Spectra":
        """A new `Spectra` with some fields replaced (the rest shared)."""
        kw = dict(wave=self.wave, flux=self.flux, ivar=self.ivar, labels=self.labels,
                  label_names=self.label_names, meta=self.meta)
        kw.update(changes)
        return Spectra(**kw)

    @property
    def good(self) -> np.ndarray:
        """Boolean (n_star, n_pix): pixels with information (ivar > 0)."""
        return self.ivar > 0

    def snr(self) -> np.ndarray:
        """Median per-pixel S/N over good pixels, shape (n_star,); 0 if none."""
        s = np.where(self.good, np.abs(self.flux) * np.sqrt(self.ivar), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = np.nanmedian(s, axis=1)
        return np.nan_to_num(out, nan=0.0)

    # ------------------------------------------------------------------- I/O
    def to_npz(self, path) -> None:
        """Write to an uncompressed-pickle-free npz file."""
        cols = {}
        for name in self.meta.colnames:
            col = np.asarray(self.meta[name])
            if col.dtype.kind == "O":
                col = col.astype(str)
            cols[f"meta__{name}"] = col
        extra = {}
        if self.labels is not None:
            extra = dict(labels=self.labels, label_names=np.array(self.label_names, dtype=str))
        np.savez(path, wave=self.wave, flux=self.flux, ivar=self.ivar, **extra, **cols)

    @classmethod
    def from_npz(cls, path, label_names=None) -> "Spectra":
        """Read an npz with `wave`, `flux`, `ivar` (or `flux_err`), optional
        `labels` + `label_names`, and `meta__*` columns."""
        with open_npz(path) as d:
            ivar = d["ivar"] if "ivar" in d.files else ivar_from_error(d["flux_err"])
            labels, label_names, meta = npz_star_columns(d, label_names)
            try:
                return cls(d["wave"], d["flux"], ivar, labels=labels, label_names=label_names, meta=meta)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def from_specutils(cls, spectrum) -> "Spectra":
        """From a specutils `Spectrum` (1-D or (n_star, n_pix)) or a list of them on one
        spectral axis; see `slambayes.specutils_bridge.from_specutils`."""
        from .specutils_bridge import from_specutils
        return from_specutils(spectrum)

    def to_specutils(self):
        """A specutils `Spectrum` of shape (n_star, n_pix); see
        `slambayes.specutils_bridge.to_specutils`."""
        from .specutils_bridge import to_specutils
        return to_specutils(self)

    @classmethod
    def from_table(cls, table, wave, flux_col="flux", ivar_col="ivar", label_names=None) -> "Spectra":
        """Build from an astropy Table with array columns `flux_col`/`ivar_col`
        (one row per star) and, optionally, label columns; other scalar
        columns become `meta`."""
        table = table if isinstance(table, Table) else Table(table)
        labels = None
        if label_names:
            labels = np.column_stack([np.asarray(table[n], float) for n in label_names])
        skip = {flux_col, ivar_col, *(label_names or [])}
        meta = Table({n: table[n] for n in table.colnames
                      if n not in skip and np.ndim(table[n][0]) == 0}) if len(table) else None
        return cls(wave, np.asarray(table[flux_col]), np.asarray(table[ivar_col]),
                   labels=labels, label_names=label_names, meta=meta)
