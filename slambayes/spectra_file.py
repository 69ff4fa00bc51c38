"""Spectra in an npz file, read a block of stars at a time.

A survey's batch need not fit in memory: `SpectraFile` reads the small arrays (wave, labels,
meta) at once and flux/ivar only for the rows asked for, so `fit_map` on a file of 20,000
spectra holds no more of them than its chunks in flight. Members stored uncompressed
(`np.savez`, as `Spectra.to_npz` writes) are read at their offset; compressed ones
(`np.savez_compressed`) are decompressed forward from where the last read stopped
(a read further back restarts the member, as `zipfile` seeks do).
"""
from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np

from .spectra import Spectra, ivar_from_error, mask_bad_pixels, npz_star_columns, open_npz

__all__ = ["SpectraFile"]


class SpectraFile:
    """The spectra of an npz file (`Spectra.to_npz`'s layout), flux and ivar read on demand.

    Parameters
    ----------
    path : npz with `wave` (n_pix,) Å, `flux` and `ivar` (or `flux_err`) (n_star, n_pix),
        optional `labels`, `label_names` and `meta__<column>` arrays.

    Attributes: `path`, `wave`, `meta` (Table, one row per star), `labels`, `label_names`,
    `n_star`, `n_pix`. `rows(a, b)` gives (flux, ivar) of stars a … b − 1 with the same
    masking of bad pixels as `Spectra`; `load()` reads everything into a `Spectra`.
    """

    def __init__(self, path):
        self.path = Path(path)
        with open_npz(self.path) as d:
            wave = np.asarray(d["wave"], dtype=float)
            labels, label_names, meta = npz_star_columns(d)
            self._error = "ivar" not in d.files
        self._flux = _Member(self.path, "flux")
        self._ivar = _Member(self.path, "flux_err" if self._error else "ivar")
        self.n_star = self._flux.shape[0]
        try:        # the small arrays are checked by a Spectra of one star (the same rules as in memory)
            self.wave = Spectra(wave, np.ones((1, wave.size)), np.ones((1, wave.size))).wave
            for m in (self._flux, self._ivar):
                if m.shape != (self.n_star, wave.size):
                    raise ValueError(f"{m.name} has shape {m.shape}, expected (n_star, {wave.size}) "
                                     f"like flux and wave")
            self.labels, self.label_names = Spectra._check_labels(labels, label_names, self.n_star)
            self.meta = Spectra._check_meta(meta, self.n_star)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None

    @property
    def n_pix(self) -> int:
        return self.wave.size

    def __len__(self) -> int:
        return self.n_star

    def __repr__(self) -> str:
        return f"SpectraFile({str(self.path)!r}, n_star={self.n_star}, n_pix={self.n_pix})"

    def rows(self, start, stop):
        """(flux, ivar) of stars start … stop − 1, float64 arrays (stop − start, n_pix)."""
        flux = self._flux.read(start, stop)
        ivar = self._ivar.read(start, stop)
        if self._error:
            ivar = ivar_from_error(ivar)
        mask_bad_pixels(flux, ivar)
        return flux, ivar

    def __getitem__(self, idx) -> Spectra:
        """The stars of an index or a contiguous slice as a `Spectra` (only they are read)."""
        if isinstance(idx, (int, np.integer)):
            i = range(self.n_star)[idx]          # negative and out-of-range as for a list
            idx = slice(i, i + 1)
        if not isinstance(idx, slice) or idx.step not in (None, 1):
            return self.load()[idx]
        a, b, _ = idx.indices(self.n_star)
        b = max(a, b)
        flux, ivar = self.rows(a, b)
        return Spectra(self.wave, flux, ivar, labels=None if self.labels is None else self.labels[a:b],
                       label_names=self.label_names, meta=self.meta[a:b])

    def load(self) -> Spectra:
        """All of it in memory."""
        return self[:]


class _Member:
    """One 2-D C-ordered array of the npz, read by rows."""

    def __init__(self, path, name):
        self.path, self.name = path, name
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(name + ".npy")
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0(fh))
                self._header = fh.tell()
        if len(shape) != 2 or fortran or dtype.hasobject:
            raise ValueError(f"{path}: {name} must be a 2-D C-ordered numeric array "
                             f"(shape (n_star, n_pix)); it is {len(shape)}-D"
                             f"{', Fortran-ordered' if fortran else ''} of {dtype}")
        self.shape, self.dtype = tuple(shape), dtype
        self._row_bytes = int(shape[1]) * dtype.itemsize
        self._stored = info.compress_type == zipfile.ZIP_STORED
        if self._stored:
            with open(path, "rb") as f:     # the local file header's own lengths set the data offset
                f.seek(info.header_offset + 26)
                n_name, n_extra = np.frombuffer(f.read(4), "<u2")
            self._offset = info.header_offset + 30 + int(n_name) + int(n_extra) + self._header
        else:
            self._lock, self._zip, self._stream = threading.Lock(), None, None

    def read(self, start, stop):
        start, stop = max(int(start), 0), min(int(stop), self.shape[0])
        n = max(stop - start, 0)
        if self._stored:
            with open(self.path, "rb") as f:
                f.seek(self._offset + start * self._row_bytes)
                buf = f.read(n * self._row_bytes)
        else:
            with self._lock:                 # joblib may ask for chunks from several threads
                if self._stream is None:
                    self._zip = zipfile.ZipFile(self.path)
                    self._stream = self._zip.open(self.name + ".npy")
                # forward: decompresses from the last read; backward: zipfile restarts the member
                self._stream.seek(self._header + start * self._row_bytes)
                buf = self._stream.read(n * self._row_bytes)
        if len(buf) != n * self._row_bytes:
            raise ValueError(f"{self.path}: {self.name} is truncated (rows {start}–{stop - 1} cannot be read)")
        return np.frombuffer(buf, self.dtype).reshape(n, self.shape[1]).astype(float)

    def __getstate__(self):
        state = self.__dict__.copy()
        if not self._stored:
            state.update(_lock=None, _zip=None, _stream=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if not self._stored:
            self._lock = threading.Lock()
