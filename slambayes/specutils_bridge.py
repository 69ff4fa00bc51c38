"""`Spectra` to and from specutils' `Spectrum`, so that anything specutils reads is input.

A specutils spectrum carries its spectral axis with units, its uncertainty as an
`astropy.nddata` uncertainty and a boolean mask (True = bad). `Spectra` keeps
wavelength in Å, inverse variance and ivar = 0 for bad pixels; the flux unit
travels in `Spectra.meta.meta["flux_unit"]`, and per-star metadata and labels
ride in the specutils `meta` dict under "slambayes_meta", "labels" and
"label_names", so that a round trip loses nothing.
"""
from __future__ import annotations

import numpy as np

from .spectra import Spectra

__all__ = ["from_specutils", "to_specutils"]


def _ivar(spectrum):
    """Inverse variance (array, the flux's shape) of a specutils spectrum's uncertainty."""
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    unc = spectrum.uncertainty
    if unc is None:
        raise ValueError("the specutils spectrum has no uncertainty: slambayes needs the noise of every "
                         "pixel (set Spectrum(uncertainty=InverseVariance(ivar)) or StdDevUncertainty)")
    a = np.asarray(unc.array, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if isinstance(unc, InverseVariance):
            ivar = a
        elif isinstance(unc, StdDevUncertainty):
            ivar = np.where(a > 0, 1.0 / a**2, 0.0)
        elif isinstance(unc, VarianceUncertainty):
            ivar = np.where(a > 0, 1.0 / a, 0.0)
        else:
            raise ValueError(f"uncertainty of type {type(unc).__name__} is not supported: use "
                             "InverseVariance, StdDevUncertainty or VarianceUncertainty")
    ivar = np.broadcast_to(ivar, spectrum.flux.shape).copy()
    if spectrum.mask is not None:
        ivar[np.broadcast_to(np.asarray(spectrum.mask, bool), ivar.shape)] = 0.0
    return ivar


def from_specutils(spectrum):
    """A `Spectra` from a specutils `Spectrum` (1-D, or (n_star, n_pix) with the spectral axis
    last) or a list of them sharing one spectral axis.

    The spectral axis may be in any spectral unit (converted to Å); the mask's True pixels and
    pixels of zero or non-finite uncertainty get ivar 0. Scalar entries of each spectrum's
    `meta` become columns of `Spectra.meta`.
    """
    import astropy.units as u

    many = isinstance(spectrum, (list, tuple))
    spectra = list(spectrum) if many else [spectrum]
    if not spectra:
        raise ValueError("from_specutils needs at least one spectrum")
    first = spectra[0]
    axis = first.spectral_axis
    flux_unit = first.flux.unit
    for i, s in enumerate(spectra[1:], 1):
        if s.spectral_axis.shape != axis.shape or not np.allclose(
                s.spectral_axis.to_value(axis.unit, equivalencies=u.spectral()), axis.value, rtol=1e-10, atol=0):
            raise ValueError(f"spectrum {i} has a different spectral axis from spectrum 0: put them on one "
                             "grid first (slambayes.preprocess.resample)")
        if s.flux.unit != flux_unit:
            raise ValueError(f"spectrum {i} has flux unit {s.flux.unit}, spectrum 0 {flux_unit}")
    flux = np.vstack([np.atleast_2d(s.flux.value) for s in spectra])
    ivar = np.vstack([np.atleast_2d(_ivar(s)) for s in spectra])
    meta, labels, label_names = _meta(spectra)
    out = Spectra(u.Quantity(axis), flux, ivar, labels=labels, label_names=label_names, meta=meta)
    out.meta.meta["flux_unit"] = flux_unit.to_string()
    return out


def _meta(spectra):
    """(meta Table or None, labels, label_names) from the spectra's meta dicts."""
    from astropy.table import Table, vstack

    if len(spectra) == 1 and "slambayes_meta" in spectra[0].meta:
        m = spectra[0].meta
        return Table(m["slambayes_meta"]), m.get("labels"), m.get("label_names")
    rows = [{k: v for k, v in s.meta.items() if np.ndim(v) == 0 and isinstance(v, (str, int, float, np.generic))}
            for s in spectra]
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    n = [np.atleast_2d(s.flux.value).shape[0] for s in spectra]
    if not keys:
        return None, None, None
    return vstack([Table({k: [r[k]] * m for k in keys}) for r, m in zip(rows, n)]), None, None


def to_specutils(spectra):
    """A specutils `Spectrum` of shape (n_star, n_pix): spectral axis in Å, flux in
    `spectra.meta.meta["flux_unit"]` (dimensionless if absent), `InverseVariance`
    uncertainty, mask = (ivar == 0); meta holds the per-star Table and the labels."""
    import astropy.units as u
    from astropy.nddata import InverseVariance
    from specutils import Spectrum

    unit = u.Unit(spectra.meta.meta.get("flux_unit", ""))
    meta = dict(slambayes_meta=spectra.meta.copy())
    if spectra.labels is not None:
        meta.update(labels=np.array(spectra.labels), label_names=list(spectra.label_names))
    return Spectrum(flux=spectra.flux * unit, spectral_axis=spectra.wave * u.AA,
                    uncertainty=InverseVariance(spectra.ivar / unit**2), mask=spectra.ivar == 0, meta=meta)
