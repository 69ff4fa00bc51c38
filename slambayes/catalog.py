"""Chunked, resumable catalog writing.

Each finished chunk is written atomically (temporary file, then rename) into
`<output>.parts/rows-<start>-<stop>.fits` (the input rows it holds), so an
interrupted run (even SIGKILL) keeps every chunk that finished and never a
half-written one. A re-run with the same output and the same inputs computes
only the chunks whose rows no part holds yet, whatever the chunk size of
either run; when every row is there they are stacked in input order into
`<output>` (again atomically) and the parts are removed. A manifest holds a
fingerprint of the run (what determines the results, not how the work is cut)
so that parts of a different run are never mixed in; a lock on the parts folder
refuses a second run on the same output while one is writing it, and a part
damaged outside slambayes is fitted again.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from .progress import bar
from .workers import run_parallel

__all__ = ["run_chunked", "write_table", "read_table", "CatalogMismatchError", "CatalogLockedError"]


class CatalogMismatchError(RuntimeError):
    """The output belongs to a different run (other inputs, model or settings)."""


def _fmt(path):
    suffix = "".join(Path(path).suffixes[-2:]).lower()
    if suffix.endswith(".ecsv"):
        return "ascii.ecsv"
    if suffix.endswith(".parquet"):
        return "parquet"
    if suffix.endswith((".fits", ".fit", ".fits.gz")):
        return "fits"
    raise ValueError(f"{path}: unknown catalog format; use .fits, .ecsv or .parquet")


def write_table(table, path):
    """Write atomically in the format given by the file name. In FITS every column with a unit
    gets its TUNITn (dex too, which astropy has no FITS form for) and every column with a
    description its TCOMMn."""
    path = Path(path)
    fmt = _fmt(path)
    tmp = path.with_name(path.name + ".tmp" + "".join(path.suffixes[-1:]))
    if fmt == "fits":
        _write_fits(table, tmp)
    else:
        table.write(tmp, format=fmt, overwrite=True)
    os.replace(tmp, path)


def _unit_string(unit):
    """The unit as FITS writes it, or its generic name where FITS has none (dex)."""
    try:
        return unit.to_string("fits")
    except (ValueError, TypeError):
        return unit.to_string()


def _write_fits(table, path):
    """One write: astropy's table HDU, with the TUNITn it cannot write (dex) and a TCOMMn per
    described column set before it goes to disk."""
    import warnings

    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The unit .* could not be saved")   # dex: set below
        hdu = fits.table_to_hdu(table, character_as_bytes=True)
    hdr = hdu.header
    for i, name in enumerate(table.colnames, 1):
        col = table[name]
        if col.unit is not None and f"TUNIT{i}" not in hdr:
            hdr.set(f"TUNIT{i}", _unit_string(col.unit), after=f"TFORM{i}")
        if col.description:
            text = col.description.encode("ascii", "replace").decode()[:68]
            hdr.set(f"TCOMM{i}", text, after=f"TUNIT{i}" if f"TUNIT{i}" in hdr else f"TFORM{i}")
    hdu.writeto(path, overwrite=True)


def read_table(path):
    """Read a catalog; dex units written by `write_table` come back as `astropy.units.dex`."""
    import warnings

    import astropy.units as u

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        table = Table.read(path, format=_fmt(path))
    for col in table.itercols():
        if isinstance(col.unit, u.UnrecognizedUnit) and col.unit.name == "dex":
            col.unit = u.dex
    return table


def _part_path(parts, span):
    return parts / f"rows-{span[0]:010d}-{span[1]:010d}.fits"


def _existing_parts(parts_dir):
    """{(start, stop): path} of the finished parts."""
    out = {}
    for path in parts_dir.glob("rows-*-*.fits"):
        try:
            start, stop = (int(v) for v in path.stem.split("-")[1:3])
        except ValueError:
            continue
        out[(start, stop)] = path
    return out


def _stack_rows(parts, n_rows):
    """Rows 0 … n_rows−1 in order from parts {(start, stop): Table of stop − start rows}, each row
    taken from the first part (by start) that holds it; None if a row is missing."""
    taken = np.zeros(n_rows, bool)
    tables = []
    for (start, stop), table in sorted(parts.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        new = ~taken[start:stop]
        if new.any():
            tables.append(table[new])
            taken[start:stop] = True
    return vstack(tables, metadata_conflicts="silent") if taken.all() else None


def run_chunked(tasks, output=None, fingerprint="", meta=None, n_jobs=1, backend=None,
                progress=True, overwrite=False, desc="fitting", rows=None):
    """Run joblib-delayed `tasks` (list, one per chunk, each returning a Table)
    and return their rows stacked in order.

    rows : [(start, stop), ...] per task, the input rows each task's Table holds (default:
        task i holds row i); with `output`, finished chunks are kept on disk as they complete
        and a re-run resumes, with any cut of the same rows (see module docstring).
    `fingerprint` identifies the run.
    """
    rows = [(i, i + 1) for i in range(len(tasks))] if rows is None else [tuple(map(int, r)) for r in rows]
    n_rows = max((r[1] for r in rows), default=0)
    meta = dict(meta or {}, FINGERPR=fingerprint, NCHUNKS=len(tasks))
    if output is None:
        res = run_parallel(tasks, n_jobs, backend)
        parts = list(bar(res, progress, total=len(tasks), desc=desc, unit="chunk"))
        out = vstack(parts, metadata_conflicts="silent")
        out.meta.update(meta)
        return out

    output = Path(output)
    _fmt(output)  # fail early on an unknown format
    parts_dir = output.with_name(output.name + ".parts")
    if overwrite:
        shutil.rmtree(parts_dir, ignore_errors=True)
        output.unlink(missing_ok=True)
    if output.exists():
        done = _read_finished(output)
        if done.meta.get("FINGERPR") == fingerprint:
            return done
        raise CatalogMismatchError(f"{output} exists and comes from a different run; "
                                   f"use overwrite=True (--overwrite) or another name")
    parts_dir.mkdir(parents=True, exist_ok=True)
    with _locked(parts_dir, output):
        _check_manifest(parts_dir, fingerprint, n_rows)
        parts = _readable_parts(parts_dir)
        covered = np.zeros(n_rows, bool)
        for start, stop in parts:
            covered[start:stop] = True
        todo = [i for i, (start, stop) in enumerate(rows) if not covered[start:stop].all()]
        res = run_parallel((_tagged(i, tasks[i]) for i in todo), n_jobs, backend, ordered=False)
        for i, table in bar(res, progress, total=len(todo), initial=0, desc=desc, unit="chunk"):
            write_table(table, _part_path(parts_dir, rows[i]))
            parts[rows[i]] = table
        out = _stack_rows(parts, n_rows)
        out.meta.clear()
        out.meta.update(meta)
        write_table(out, output)
        shutil.rmtree(parts_dir, ignore_errors=True)
    return read_table(output)


def _read_finished(output):
    try:
        return read_table(output)
    except Exception as exc:            # astropy raises many types for a damaged file
        raise CatalogMismatchError(f"{output} exists but cannot be read ({type(exc).__name__}: {exc}); "
                                   f"it may be truncated: use overwrite=True (--overwrite) to fit again") from None


class CatalogLockedError(RuntimeError):
    """Another run is writing the same output."""


@contextmanager
def _locked(parts_dir, output):
    """An exclusive lock on the run's parts folder for as long as the run writes (released
    when the process ends, however it ends); a second run on the same output is refused."""
    try:
        import fcntl
    except ImportError:                 # not POSIX: no locking
        yield
        return
    with open(parts_dir / "lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CatalogLockedError(f"another run is writing {output} (it holds {parts_dir / 'lock'}); "
                                     f"wait for it to finish, or write to another output") from None
        yield


def _check_manifest(parts_dir, fingerprint, n_rows):
    """Write the run's manifest, or check that the parts already there belong to this run."""
    manifest = parts_dir / "manifest.json"
    if not manifest.exists():
        tmp = manifest.with_name("manifest.json.tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "n_rows": n_rows}))
        os.replace(tmp, manifest)
        return
    try:
        old = json.loads(manifest.read_text())
    except (ValueError, OSError) as exc:
        raise CatalogMismatchError(f"{manifest} cannot be read ({exc}), so the chunks in {parts_dir} cannot be "
                                   f"checked against this run; use overwrite=True (--overwrite) to start again") from None
    if old.get("fingerprint") != fingerprint or old.get("n_rows") != n_rows:
        raise CatalogMismatchError(
            f"{parts_dir} holds chunks of a different run (other inputs, model or "
            f"settings); use overwrite=True (--overwrite) to start again")


def _readable_parts(parts_dir):
    """{(start, stop): Table} of the finished parts; a part that cannot be read (a file damaged
    outside slambayes: parts are written atomically) is removed, with a warning, and its rows
    are fitted again."""
    import logging
    import warnings

    out = {}
    for span, path in _existing_parts(parts_dir).items():
        try:
            table = read_table(path)
            if len(table) != span[1] - span[0]:
                raise ValueError(f"{len(table)} rows, expected {span[1] - span[0]}")
        except Exception as exc:        # astropy raises many types for a damaged file
            msg = f"{path} is damaged ({type(exc).__name__}: {exc}); its rows are fitted again"
            logging.getLogger(__name__).warning(msg)
            warnings.warn(msg, stacklevel=3)
            path.unlink(missing_ok=True)
            continue
        out[span] = table
    return out


def _tagged(i, task):
    """Wrap a joblib delayed (func, args, kwargs) so that it returns (i, result)."""
    func, args, kwargs = task
    return _call_tagged, (i, func, args, kwargs), {}


def _call_tagged(i, func, args, kwargs):
    return i, func(*args, **kwargs)
